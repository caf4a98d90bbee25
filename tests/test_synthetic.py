"""The synthetic IDC-like generator: real layout, determinism, a learnable but imperfect signal,
and every real-world quirk exactly where the summary says it is."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idc_engine.data import synthetic

NAME_RE = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)_class([01])\.png$")
SMALL = dict(num_patients=5, seed=3, min_patches=60, max_patches=140)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root: str) -> dict[str, bytes]:
    """{relative path with '/': bytes} of every file below root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root).replace(os.sep, "/")] = f.read()
    return out


def _top_level_patches(files: dict[str, bytes]) -> dict[str, re.Match]:
    """{relpath: name match} of the files at <pid>/<0|1>/ whose name parses."""
    out = {}
    for rel in files:
        parts = rel.split("/")
        if len(parts) == 3 and parts[0].isdigit() and (m := NAME_RE.match(parts[2])):
            out[rel] = m
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clean") / "IDC")
    return root, synthetic.write_dataset(root, **SMALL)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("quirky") / "IDC")
    return root, synthetic.write_dataset(root, quirks=True, **SMALL)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """The default size (20 patients): images (N, 50, 50, 3), labels and patient ids."""
    root = str(tmp_path_factory.mktemp("large") / "IDC")
    summary = synthetic.write_dataset(root, num_patients=20, seed=0)
    images, labels, pids = [], [], []
    for rel, m in sorted(_top_level_patches({r: b"" for r in _files(root)}).items()):
        images.append(np.asarray(Image.open(os.path.join(root, rel)).convert("RGB")))
        labels.append(int(m.group(4)))
        pids.append(m.group(1))
    return summary, np.stack(images), np.array(labels), np.array(pids)


# --- layout -----------------------------------------------------------------------------------

def test_layout_names_and_images_are_like_the_real_dataset(clean):
    root, summary = clean
    files = _files(root)
    patches = _top_level_patches(files)
    assert set(files) == set(patches), "a clean tree holds nothing but patches"
    positions = set()
    for rel, m in patches.items():
        pid, folder, _ = rel.split("/")
        assert m.group(1) == pid and m.group(4) == folder
        x, y = int(m.group(2)), int(m.group(3))
        assert x % 50 == 1 and y % 50 == 1
        positions.add((pid, x, y))
        image = Image.open(os.path.join(root, rel))
        assert (image.size, image.mode) == ((50, 50), "RGB")
    assert len(positions) == len(patches) == summary["num_patches"]
    assert summary["num_positive"] == sum(m.group(4) == "1" for m in patches.values())
    assert summary["num_png_files"] == summary["num_patches"]


def test_patients_have_both_folders_their_own_counts_and_realistic_ids(clean):
    root, summary = clean
    assert sorted(os.listdir(root)) == sorted(summary["patients"])
    assert len(summary["patients"]) == SMALL["num_patients"]
    for pid, info in summary["patients"].items():
        assert re.fullmatch(r"\d{4,5}", pid)
        assert sorted(os.listdir(os.path.join(root, pid))) == ["0", "1"]
        n0, n1 = (len(os.listdir(os.path.join(root, pid, c))) for c in "01")
        assert (info["num_patches"], info["num_positive"]) == (n0 + n1, n1)
        assert SMALL["min_patches"] <= info["num_patches"] <= SMALL["max_patches"]
    assert len({i["num_patches"] for i in summary["patients"].values()}) > 1
    json.dumps(summary)
    assert summary["duplicate_root"] is None
    assert not any(summary[k] for k in ("undersized", "truncated", "mislabelled", "unparseable", "litter"))


def test_given_patient_ids_are_used_and_override_num_patients(tmp_path):
    summary = synthetic.write_dataset(str(tmp_path / "t"), num_patients=9, patient_ids=["10253", "8863"],
                                      min_patches=20, max_patches=30)
    assert sorted(summary["patients"]) == sorted(os.listdir(tmp_path / "t")) == ["10253", "8863"]


@pytest.mark.parametrize("kwargs", [dict(patient_ids=["12a"]), dict(patient_ids=["1", "1"]),
                                    dict(min_patches=50, max_patches=10), dict(num_patients=0)])
def test_bad_arguments_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synthetic.write_dataset(str(tmp_path / "t"), **kwargs)


def test_refuses_to_write_into_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synthetic.write_dataset(str(tmp_path), num_patients=1, max_patches=60)


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(clean, tmp_path):
    root, summary = clean
    again = str(tmp_path / "again")
    assert synthetic.write_dataset(again, **SMALL) == summary
    assert _files(again) == _files(root)
    other = str(tmp_path / "other")
    synthetic.write_dataset(other, patient_ids=sorted(summary["patients"]), **{**SMALL, "seed": 4})
    a, b = _files(root), _files(other)
    shared = set(a) & set(b)
    assert sum(a[rel] == b[rel] for rel in shared) < len(shared) / 10


def test_quirks_leave_every_other_patch_unchanged(clean, quirky):
    (clean_root, _), (quirky_root, summary) = clean, quirky
    a, b = _files(clean_root), _files(quirky_root)
    touched = {u["path"] for u in summary["undersized"]} | set(summary["truncated"])
    moved = {rel.split("/")[0] + "/" + str(1 - int(rel.split("/")[1])) + "/" + rel.split("/")[2]
             for rel in summary["mislabelled"]}
    for rel, data in a.items():
        if rel not in touched and rel not in moved:
            assert b[rel] == data, rel


# --- class signal -----------------------------------------------------------------------------

def test_positive_fraction_is_realistic_and_varies_between_patients(large):
    summary, _, labels, pids = large
    assert 0.15 <= summary["num_positive"] / summary["num_patches"] <= 0.45
    assert summary["num_positive"] == labels.sum() and summary["num_patches"] == len(labels)
    fractions = [p["num_positive"] / p["num_patches"] for p in summary["patients"].values()]
    assert min(fractions) < 0.12 and max(fractions) > 0.45
    counts = [p["num_patches"] for p in summary["patients"].values()]
    assert 60 <= min(counts) and max(counts) <= 300 and max(counts) - min(counts) > 100


def _patient_split(pids):
    ordered = sorted(set(pids))
    return np.isin(pids, ordered[::3])


def test_darker_patches_are_mostly_idc_but_not_always(large):
    _, images, labels, pids = large
    darkness = 255 - images.reshape(len(images), -1).mean(axis=1)
    test = _patient_split(pids)
    threshold = np.quantile(darkness[~test], 1 - labels[~test].mean())   # fitted on training patients
    accuracy = ((darkness[test] > threshold) == labels[test]).mean()
    majority = max(labels[test].mean(), 1 - labels[test].mean())
    assert majority + 0.08 < accuracy < 0.99


def test_a_linear_model_on_8x8_thumbnails_learns_it_on_unseen_patients_but_not_perfectly(large):
    from sklearn.linear_model import LogisticRegression

    _, images, labels, pids = large
    thumbs = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.Resampling.BOX)) for im in images])
    features = thumbs.reshape(len(images), -1) / 255.0
    features = (features - features.mean(axis=0)) / features.std(axis=0)   # converges much faster
    test = _patient_split(pids)
    model = LogisticRegression(max_iter=2000).fit(features[~test], labels[~test])
    accuracy = model.score(features[test], labels[test])
    majority = max(labels[test].mean(), 1 - labels[test].mean())
    assert majority + 0.08 < accuracy < 0.99


# --- quirks -----------------------------------------------------------------------------------

def test_duplicate_tree_holds_the_same_bytes(quirky):
    root, summary = quirky
    dup = summary["duplicate_root"]
    assert dup == "IDC_regular_ps50_idx5"
    files = _files(root)
    top = {rel: data for rel, data in files.items() if rel.split("/")[0] in summary["patients"]}
    copy = {rel[len(dup) + 1:]: data for rel, data in files.items()
            if rel.startswith(dup + "/") and rel != f"{dup}/.DS_Store"}
    assert top == copy
    assert len(_top_level_patches(files)) == summary["num_patches"]
    assert sum(rel.endswith(".png") and not os.path.basename(rel).startswith("._")
               for rel in files) == summary["num_png_files"] == 2 * (summary["num_patches"] + 1)


def test_no_two_patches_share_a_position_except_across_the_copies(quirky):
    root, _ = quirky
    patches = _top_level_patches(_files(root))
    keys = [(m.group(1), m.group(2), m.group(3)) for m in patches.values()]
    assert len(keys) == len(set(keys))


def test_undersized_patches_really_are_smaller(quirky):
    root, summary = quirky
    assert 1 <= len(summary["undersized"]) <= 6
    for u in summary["undersized"]:
        assert u["height"] < 50 or u["width"] < 50
        for base in (root, os.path.join(root, summary["duplicate_root"])):
            image = Image.open(os.path.join(base, u["path"]))
            image.load()
            assert image.size == (u["width"], u["height"]) and image.mode == "RGB"


def test_truncated_pngs_cannot_be_decoded_in_either_copy(quirky):
    root, summary = quirky
    assert summary["truncated"]
    for rel in summary["truncated"]:
        assert NAME_RE.match(os.path.basename(rel))
        for base in (root, os.path.join(root, summary["duplicate_root"])):
            with pytest.raises(OSError):
                Image.open(os.path.join(base, rel)).load()


def test_exactly_the_reported_patch_is_in_the_wrong_folder(quirky):
    root, summary = quirky
    wrong = sorted(rel for rel, m in _top_level_patches(_files(root)).items()
                   if rel.split("/")[1] != m.group(4))
    assert wrong == sorted(summary["mislabelled"]) and len(wrong) == 1


def test_the_unparseable_png_is_a_real_image_with_a_bad_name(quirky):
    root, summary = quirky
    assert len(summary["unparseable"]) == 1
    for rel in summary["unparseable"]:
        assert rel.endswith(".png") and not NAME_RE.match(os.path.basename(rel))
        assert Image.open(os.path.join(root, rel)).size == (50, 50)
    others = {rel for rel in _files(root)
              if rel.endswith(".png") and not os.path.basename(rel).startswith("._")
              and rel not in summary["unparseable"] and not rel.startswith(summary["duplicate_root"] + "/")}
    assert all(NAME_RE.match(os.path.basename(rel)) for rel in others)


def test_litter_is_all_there_and_nothing_else_is_unreported(quirky):
    root, summary = quirky
    files = _files(root)
    litter = summary["litter"]
    names = {os.path.basename(rel) for rel in litter}
    assert ".DS_Store" in names and "Thumbs.db" in names
    assert any(rel.startswith("__MACOSX/") for rel in litter)
    apple = [rel for rel in litter if os.path.basename(rel).startswith("._")]
    assert apple and all(rel.endswith(".png") for rel in apple)
    for rel in apple:
        with pytest.raises(OSError):
            Image.open(os.path.join(root, rel))
    reported = set(litter) | set(summary["unparseable"]) | set(_top_level_patches(files))
    dup = summary["duplicate_root"] + "/"
    reported |= {dup + rel for rel in reported if rel.split("/")[0] in summary["patients"]}
    reported.add(dup + ".DS_Store")
    assert set(files) == reported


# --- command line -----------------------------------------------------------------------------

def test_command_line_writes_a_tree_and_reports_speed(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "idc_engine.synthetic", f"--output_dir={out}",
                             "--num_patients=2", "--min_patches=30", "--max_patches=40", "--quirks"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "patches/s" in result.stdout and "truncated" in result.stdout
    assert (out / "IDC_regular_ps50_idx5").is_dir()


def test_importing_defines_no_flags_and_no_tensorflow():
    code = ("import sys; from absl import flags; import idc_engine.data.synthetic; "
            "assert 'output_dir' not in flags.FLAGS; assert 'tensorflow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
