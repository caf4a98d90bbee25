"""The overlay's data: every analysed tile's P(IDC) at its cell of the run's grid, for the page to
colour (idc_engine/view/static/viewer.js) at any threshold without asking the server again.

    {"columns", "rows": the grid (tiles.make_grid on the slide, as the run laid it),
     "cell": a cell's side in level-0 pixels (float: tile size x the level's downsample),
     "threshold": the exported one (the idc column's), "colours": the heatmap's 256 colours,
     "col", "row": int [N] the cells of tiles.csv's rows, "p": float [N] their idc_probability,
     "unreadable_col", "unreadable_row": the cells of the summary's unreadable regions}

Cells in neither list were never analysed (glass, or outside the tissue mask). tiles.csv keeps
6 decimals of each probability, and its idc column was decided on the unrounded one: a tile
within that rounding of the threshold gets its probability moved to its side of the threshold
(the threshold itself, or the float just below it), so that the page at the exported threshold
colours exactly the idc column's tiles.
"""

import csv
import json
import math
import os

import numpy as np

from idc_engine.slides import heatmap, outputs
from idc_engine.view.catalog import CatalogSlide, ViewError

CSV_ROUNDING = 5e-7  # half the last of tiles.csv's 6 decimals


def _read_tiles_csv(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y int64 [N] level-0 corners, probability float64 [N], idc bool [N]) of tiles.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        x = np.array([int(r["x"]) for r in rows], np.int64)
        y = np.array([int(r["y"]) for r in rows], np.int64)
        p = np.array([float(r["idc_probability"]) for r in rows], np.float64)
        idc = np.array([r["idc"] == "1" for r in rows], bool)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ViewError(f"{path}: not a tiles.csv idc-slide wrote ({type(e).__name__}: {e})") \
            from e
    return x, y, p, idc


def _on_the_idc_side(p: np.ndarray, idc: np.ndarray, threshold: float) -> np.ndarray:
    """p with each tile whose rounded probability falls on the other side of the threshold than
    its idc flag, by no more than the CSV's rounding, moved to its flag's side."""
    p = p.copy()
    flipped = ((p >= threshold) != idc) & (np.abs(p - threshold) <= CSV_ROUNDING)
    p[flipped & idc] = threshold
    p[flipped & ~idc] = math.nextafter(threshold, -math.inf)
    return p


def _cells(x, y, cell: float) -> tuple[np.ndarray, np.ndarray]:
    return (np.round(np.asarray(x) / cell).astype(np.int64),
            np.round(np.asarray(y) / cell).astype(np.int64))


def overlay_record(entry: CatalogSlide) -> dict:
    """The overlay's JSON record (the module docstring) of a viewable catalog slide."""
    grid, summary = entry.grid, entry.summary
    cell = grid.size * grid.downsample
    threshold = float(summary["threshold"])
    x, y, p, idc = _read_tiles_csv(os.path.join(entry.folder, outputs.TILES_CSV))
    col, row = _cells(x, y, cell)
    regions = summary.get("unreadable_regions", [])
    bad_col, bad_row = _cells([r["x"] for r in regions], [r["y"] for r in regions], cell)
    return {"columns": grid.columns, "rows": grid.rows, "cell": cell, "threshold": threshold,
            "colours": heatmap.colour_table().tolist(),
            "col": col.tolist(), "row": row.tolist(),
            "p": _on_the_idc_side(p, idc, threshold).tolist(),
            "unreadable_col": bad_col.tolist(), "unreadable_row": bad_row.tolist()}


def overlay_json(entry: CatalogSlide) -> bytes:
    return json.dumps(overlay_record(entry), separators=(",", ":")).encode()
