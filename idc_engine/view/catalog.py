"""The viewer's catalog: the slides `idc-slide` wrote into OUT, by folder name, and nothing else.

Every OUT/<name>/summary.json complete (outputs.read_summary) is a slide of the catalog. Its
slide file is opened with OpenSlide once, here; a file that has moved, no longer opens, or is
not the one analysed (its openslide.quickhash-1 differs from the summary's) leaves the slide
listed with its summary, heatmap.png and a message saying why, without deep zoom or overlay.

The server looks slides up by name in this dict only: no file path is ever built from a URL.
Each slide's `version` (a hash of its summary.json and its slide file's size and mtime) is in
every URL of its files, so a browser may cache them for good, and a rerun changes the URLs.
"""

import dataclasses
import datetime
import hashlib
import os
import urllib.parse

from idc_engine import errors
from idc_engine.slides import outputs, tiles


class ViewError(errors.EngineError, ValueError):
    """An OUT_DIR, host or port the viewer cannot serve; the message names it."""


@dataclasses.dataclass
class CatalogSlide:
    name: str                       # OUT/<name>/
    folder: str
    summary: dict
    version: str                    # 12 hex digits
    message: str = ""               # why the slide cannot be shown; "" when it can
    slide: object = None            # openslide.OpenSlide, None when message
    grid: tiles.TileGrid | None = None

    @property
    def viewable(self) -> bool:
        return self.slide is not None


def _version(summary_path: str, slide_path: str) -> str:
    digest = hashlib.sha256()
    with open(summary_path, "rb") as f:
        digest.update(f.read())
    try:
        status = os.stat(slide_path)
        digest.update(f"{status.st_size}:{status.st_mtime_ns}".encode())
    except OSError:
        digest.update(b"absent")
    return digest.hexdigest()[:12]


def _open_slide(summary: dict):
    """(openslide.OpenSlide, "") or (None, why the slide file cannot be shown)."""
    import openslide

    path = summary.get("slide", "")
    if not os.path.isfile(path):
        return None, (f"the slide file {path} is no longer there (moved or deleted): its "
                      "summary and heatmap only")
    try:
        slide = openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as e:
        return None, f"OpenSlide cannot open {path} any more ({type(e).__name__}: {e})"
    wanted = summary.get("slide_quickhash", "")
    found = slide.properties.get("openslide.quickhash-1", "")
    if wanted and found != wanted:
        slide.close()
        return None, (f"{path} is not the file analysed (its openslide.quickhash-1 differs from "
                      "the summary's): replaced since the run; rerun idc-slide on it")
    return slide, ""


def _grid(slide, summary: dict) -> tiles.TileGrid:
    """The run's tile grid on the slide (tiles.make_grid with the summary's scale)."""
    scale = summary["scale"]
    level = scale["level"]
    return tiles.make_grid(level, slide.level_dimensions[level], slide.level_downsamples[level],
                           scale["slide_um_per_pixel"], scale["model_um_per_pixel"],
                           scale["model_patch_size"])


def load_slide(output_dir: str, name: str) -> CatalogSlide | None:
    """OUT/<name> as a catalog entry, or None where it holds no complete summary.json."""
    summary = outputs.read_summary(output_dir, name)
    if summary is None:
        return None
    folder = os.path.join(output_dir, name)
    version = _version(os.path.join(folder, outputs.SUMMARY_JSON), summary.get("slide", ""))
    slide, message = _open_slide(summary)
    entry = CatalogSlide(name, folder, summary, version, message, slide)
    if slide is not None:
        try:
            entry.grid = _grid(slide, summary)
        except (KeyError, IndexError, TypeError) as e:
            slide.close()
            entry.slide, entry.message = None, f"summary.json lacks the run's scale ({e!r})"
    return entry


def load_catalog(output_dir: str) -> dict[str, CatalogSlide]:
    """{name: CatalogSlide} of every complete slide output in OUT, sorted by name; ViewError
    naming OUT when it is not a directory or holds none."""
    if not os.path.isdir(output_dir):
        raise ViewError(f"{output_dir}: no such directory (give the --output_dir idc-slide "
                        "wrote into)")
    names = outputs.slide_names(output_dir)
    catalog = {}
    for name in names:
        entry = load_slide(output_dir, name)
        if entry is not None:
            catalog[name] = entry
    if not catalog:
        raise ViewError(f"{output_dir}: no slide outputs in it (no <slide>/summary.json); give "
                        "the --output_dir idc-slide wrote into")
    return catalog


def _date(entry: CatalogSlide) -> str:
    """When the run finished: summary.json's `finished`, else its file's time (older runs)."""
    if entry.summary.get("finished"):
        return entry.summary["finished"]
    stamp = os.stat(os.path.join(entry.folder, outputs.SUMMARY_JSON)).st_mtime
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(
        timespec="seconds")


def _model(summary: dict) -> str:
    """The model: its model_dir, with the export's fingerprint and runtime when recorded."""
    parts = [summary.get("model_dir") or "model_dir not recorded"]
    fingerprint = summary.get("fingerprint", {}).get("export")
    if fingerprint:
        parts.append(f"export {fingerprint}")
    if summary.get("runtime"):
        parts.append(summary["runtime"])
    return ", ".join(parts)


def describe(entry: CatalogSlide) -> dict:
    """What the page lists and needs of a slide (the /api/slides record)."""
    summary = entry.summary
    base = f"/slides/{urllib.parse.quote(entry.name, safe='')}/{entry.version}"
    record = {
        "name": entry.name, "slide": summary.get("slide", ""), "message": entry.message,
        "idc_fraction": summary.get("idc_fraction"),
        "tissue_area_mm2": summary.get("tissue_area_mm2"),
        "idc_area_mm2": summary.get("idc_area_mm2"), "tiles": summary.get("tiles_read"),
        "idc_tiles": summary.get("idc_tiles"), "threshold": summary.get("threshold"),
        "threshold_source": summary.get("threshold_source", ""), "model": _model(summary),
        "model_name": os.path.basename((summary.get("model_dir") or "").rstrip("/")) or "?",
        "date": _date(entry), "dimensions": summary.get("level0_dimensions"),
        "um_per_pixel": summary.get("scale", {}).get("slide_um_per_pixel"),
        "heatmap": f"{base}/heatmap.png"}
    if entry.viewable:
        record.update(dzi=f"{base}/slide.dzi", overlay=f"{base}/overlay.json")
    return record
