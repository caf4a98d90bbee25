"""What a slide's run writes in OUT/<name>/, each file atomically (complete or absent):

    tiles.csv         x,y,width,height,idc_probability,idc: one row per tissue tile read, x, y
                      its top-left corner and width, height its size, in level-0 pixels; idc =
                      1 when idc_probability >= the threshold
    idc.geojson       the IDC tiles as polygons in level-0 pixel coordinates: a FeatureCollection
                      QuPath imports (File > Import objects), classification "IDC", the
                      probability as the measurement "idc_probability"
    tissue_mask.png   the tissue mask on the thumbnail (white: tissue)
    heatmap.png       idc_engine/slides/heatmap.py
    summary.json      written last: counts, areas, the scale, timings, unreadable regions,
                      the model (model_dir) and when the run finished (UTC)

The files are written into OUT/<name>.partial/, which replaces OUT/<name>/ in one
step once summary.json is in it (staged_slide_dir): a slide that fails part-way leaves no
folder of its own, and an earlier run's complete one as it was, never old and new files mixed.
"""

import contextlib
import glob
import json
import os
import shutil

import numpy as np
from PIL import Image

from idc_engine import atomic_files

TILES_CSV = "tiles.csv"
GEOJSON = "idc.geojson"
MASK_PNG = "tissue_mask.png"
HEATMAP_PNG = "heatmap.png"
SUMMARY_JSON = "summary.json"
IDC_RGB = [192, 57, 43]  # the evaluation figures' IDC red


def write_tiles_csv(path: str, x, y, size: int, probability, idc) -> None:
    """x, y int [N] level-0 corners; size the tiles' level-0 side; probability float [N];
    idc bool [N]."""
    with atomic_files.replace_atomically(path) as f:
        f.write("x,y,width,height,idc_probability,idc\n")
        for row in zip(np.asarray(x).tolist(), np.asarray(y).tolist(),
                       np.asarray(probability).tolist(), np.asarray(idc, np.int64).tolist()):
            f.write(f"{row[0]},{row[1]},{size},{size},{row[2]:.6f},{row[3]}\n")


def idc_features(x, y, size: int, probability) -> list[dict]:
    """GeoJSON Features (closed square polygons, level-0 pixels) of the tiles given."""
    features = []
    for left, top, p in zip(np.asarray(x).tolist(), np.asarray(y).tolist(),
                            np.asarray(probability).tolist()):
        ring = [[left, top], [left + size, top], [left + size, top + size],
                [left, top + size], [left, top]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": "IDC", "color": IDC_RGB},
                                        "measurements": {"idc_probability": round(p, 6)}}})
    return features


def write_geojson(path: str, x, y, size: int, probability) -> None:
    with atomic_files.replace_atomically(path) as f:
        json.dump({"type": "FeatureCollection", "features": idc_features(x, y, size, probability)},
                  f)
        f.write("\n")


def write_png(path: str, image: np.ndarray) -> None:
    """image uint8 [h, w] or [h, w, 3], or bool [h, w] (white where True)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    with atomic_files.replace_atomically(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def write_summary(path: str, summary: dict) -> None:
    atomic_files.write_json_atomically(path, summary)


def read_summary(output_dir: str, name: str) -> dict | None:
    """OUT/<name>/summary.json, or None where there is no complete one (summary.json is
    written last, atomically: present means complete)."""
    try:
        with open(os.path.join(output_dir, name, SUMMARY_JSON), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def slide_output_name(slide_path: str) -> str:
    """The slide's file name up to its first dot (a cohort adds _2, _3, ... to a name another
    slide has: slides/cohort_locks.claim_name)."""
    name = os.path.basename(slide_path)
    return name.split(".")[0] or name


def slide_names(output_dir: str) -> list[str]:
    """The output folders in OUT that hold a summary.json, sorted: not NAME.partial, a run's
    staging folder (a slide's name stops at its file name's first dot), which holds one too
    from the moment summary.json is written until the folder takes its name."""
    pattern = os.path.join(glob.escape(output_dir), "*", SUMMARY_JSON)
    return sorted(name for name in (os.path.basename(os.path.dirname(path))
                                    for path in glob.glob(pattern)) if "." not in name)


@contextlib.contextmanager
def staged_slide_dir(output_dir: str, name: str):
    """`with staged_slide_dir(OUT, name) as staging:` the slide's files go into `staging`
    (OUT/<name>.partial, emptied first: a killed run's), which replaces OUT/<name> in one step
    when the block ends (atomic_files.replace_directory). If the block raises, staging is
    removed and OUT/<name> left as it was. One worker at a time per name: the cohort's lock."""
    final = os.path.join(output_dir, name)
    staging = final + ".partial"  # names stop at the first dot: no slide's own folder
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_files.replace_directory(staging, final)
