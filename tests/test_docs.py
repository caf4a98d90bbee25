"""The documentation: the site (mkdocs.yml over docs/) builds in strict mode, and every relative
link of README.md and BUILD.md names a file of the repository.

The build is mkdocs itself in a subprocess, as `make docs` runs it: strict mode (mkdocs.yml's
`validation`) makes a link to a missing page, file or anchor, a nav entry without its page, a
page left out of the nav and a missing included file (BUILD.md, in docs/building.md) errors.
Each check has its negative control: a copy of the docs broken on purpose must fail it.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# An inline link or image, [text](target "title"), or a reference definition, [label]: target.
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _build_site(config_dir: pathlib.Path, site_dir: pathlib.Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of config_dir/mkdocs.yml into site_dir, in a subprocess."""
    environment = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner, on every build
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(config_dir / "mkdocs.yml"), "--site-dir", str(site_dir)],
        cwd=config_dir, capture_output=True, text=True, env=environment, timeout=300)


def _built_page(site_dir: pathlib.Path, page: pathlib.Path) -> pathlib.Path:
    """The HTML that docs/<page>.md becomes (use_directory_urls: false; README.md is an index)."""
    relative = page.relative_to(DOCS)
    if relative.name == "README.md":
        return site_dir / relative.parent / "index.html"
    return site_dir / relative.with_suffix(".html")


def _relative_link_targets(markdown: str) -> list[str]:
    """The targets of the text's links and images that are paths (no URL, no same-page anchor),
    without their #anchor, in order."""
    targets = _INLINE_LINK.findall(markdown) + _REFERENCE_LINK.findall(markdown)
    paths = [target.split("#")[0] for target in targets
             if not _URL_SCHEME.match(target) and not target.startswith("#")]
    return [path for path in paths if path]


def _missing_link_targets(markdown: str, base_dir: pathlib.Path) -> list[str]:
    """The relative link targets of the text that name no file or folder under base_dir."""
    return [path for path in _relative_link_targets(markdown) if not (base_dir / path).exists()]


def test_site_builds_strict_with_every_page_figure_and_result(tmp_path):
    site_dir = tmp_path / "site"
    result = _build_site(ROOT, site_dir)
    assert result.returncode == 0, result.stderr
    pages = sorted(DOCS.rglob("*.md"))
    assert [page for page in pages if not _built_page(site_dir, page).is_file()] == []
    html = "\n".join(_built_page(site_dir, page).read_text() for page in pages)
    shown = set(re.findall(r'<img[^>]*\ssrc="(?:\.\./)*([^"]+)"', html))
    figures = sorted(path.relative_to(DOCS).as_posix() for path in (DOCS / "figures").glob("*.png"))
    assert figures and [figure for figure in figures if figure not in shown] == []
    assert all((site_dir / figure).is_file() for figure in figures)
    results = [path.name for path in (DOCS / "benchmarks").glob("*.json")]
    assert results and all((site_dir / "benchmarks" / name).is_file() for name in results)
    # BUILD.md is one text for the repository and the site: its headings are on the page.
    building = (site_dir / "building.html").read_text()
    headings = re.findall(r"^#+ (.+)$", (ROOT / "BUILD.md").read_text(), re.MULTILINE)
    assert headings and [heading for heading in headings if heading not in building] == []


@pytest.mark.parametrize("damage, named", [
    ("link", "no_such_page.md"),
    ("anchor", "#no-such-section"),
    ("figure", "figures/no_such_figure.png"),
    ("included file", "BUILD.md"),
])
def test_strict_build_fails_on_a_broken_copy(tmp_path, damage, named):
    for name in ("mkdocs.yml", "BUILD.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(DOCS, tmp_path / "docs")
    training = tmp_path / "docs" / "training.md"
    if damage == "link":
        training.write_text(training.read_text() + "\nSee [the page](no_such_page.md).\n")
    elif damage == "anchor":
        training.write_text(training.read_text() + "\nSee [a section](converting.md#no-such-section).\n")
    elif damage == "figure":
        training.write_text(training.read_text() + "\n![a figure](figures/no_such_figure.png)\n")
    else:
        (tmp_path / "BUILD.md").unlink()
    result = _build_site(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert named in result.stderr


@pytest.mark.parametrize("name", ["README.md", "BUILD.md"])
def test_relative_links_name_existing_files(name):
    text = (ROOT / name).read_text()
    assert _missing_link_targets(text, ROOT) == []


def test_link_check_finds_a_missing_target():
    text = ("[a page](docs/training.md#checkpoints), ![a figure](docs/figures/none.png), "
            "[the web](https://example.org/x.md), [here](#top)\n[build]: BUILD.md\n[gone]: NO_SUCH.md\n")
    assert _relative_link_targets(text) == ["docs/training.md", "docs/figures/none.png", "BUILD.md",
                                            "NO_SUCH.md"]
    assert _missing_link_targets(text, ROOT) == ["docs/figures/none.png", "NO_SUCH.md"]
