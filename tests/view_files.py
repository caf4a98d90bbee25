"""An OUT folder for the viewer's tests, made in a second: real slides OpenSlide reads, each with
the outputs idc-slide writes (idc_engine/slides/outputs.py's writers, the summary's fields of
run_slide), at probabilities chosen here so that the tests know them.

    ok        a pyramidal TIFF (pyramid_tiff.write_slide) of 12 x 8 cells of 160 level-0 pixels
              at 1.25 um/px, 3 levels; 70 cells hold a patch (tissue), the others glass; the
              model's grid is read at level 1 (80-px tiles). Every tissue cell but one is in
              tiles.csv; that one is an unreadable region of the summary. One probability is
              within tiles.csv's rounding of the threshold, below it (idc 0, "0.500000").
    labelled  an Aperio SVS (tifffile) with a label and a macro image of pure green (LABEL_RGB),
              which OpenSlide lists as associated images; its levels hold no green
    moved     an output whose slide file is gone
    REPLACED  an output whose slide file is another slide (its quickhash differs); its name
              needs quoting in a URL
"""

import http.client
import json
import os
import shutil
import threading

import numpy as np

from idc_engine.slides import outputs, pyramid_tiff, reader
from idc_engine.view import catalog, server

UM_PER_PIXEL, LEVELS, CELL = 1.25, 3, 160
COLUMNS, ROWS = 12, 8
THRESHOLD = 0.5
NEAR_THRESHOLD = THRESHOLD - 4e-7   # written "0.500000" with idc 0
LABEL_RGB = (0, 255, 0)
REPLACED = "replaced ä #1?"   # a folder name that a URL must quote


def _patches(count: int, seed: int) -> np.ndarray:
    """uint8 [count, 50, 50, 3] of pink-purple noise (no green: LABEL_RGB never appears)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, (count, 1, 1, 3))
    noise = rng.integers(0, 50, (count, 50, 50, 3))
    pink = np.array([200, 120, 190])
    return np.clip(pink - base + noise - 25, 0, 255).astype(np.uint8)


def tissue_cells() -> np.ndarray:
    """int [70, 2] (column, row): an ellipse of tissue in the 12 x 8 grid."""
    col, row = np.meshgrid(np.arange(COLUMNS), np.arange(ROWS))
    inside = ((col - 5.5) / 6.2) ** 2 + ((row - 3.5) / 4.1) ** 2 <= 1
    cells = np.stack([col[inside], row[inside]], 1)
    return cells[:70]


def _summary(path: str, out: str, name: str, x, y, p, unreadable: list) -> dict:
    info = reader.open_info(path)
    idc = p >= THRESHOLD
    tile_mm2 = (CELL * UM_PER_PIXEL / 1000) ** 2
    return {"slide": os.path.abspath(path), "slide_quickhash": info.quickhash,
            "vendor": info.vendor, "level0_dimensions": list(info.dimensions),
            "scale": {"slide_um_per_pixel": UM_PER_PIXEL, "model_um_per_pixel": 4.0,
                      "model_patch_size": 50, "level": 1, "level_downsample": 2.0,
                      "level_um_per_pixel": 2.5, "tile_size_at_level": 80,
                      "tile_size_level0": CELL, "tile_um_per_pixel_after_resize": 4.0},
            "grid_tiles": COLUMNS * ROWS, "tissue_tiles": len(x) + len(unreadable),
            "tiles_read": len(x), "unreadable_tiles": len(unreadable),
            "idc_tiles": int(idc.sum()), "tissue_area_mm2": round(len(x) * tile_mm2, 4),
            "idc_area_mm2": round(int(idc.sum()) * tile_mm2, 4),
            "idc_fraction": float(idc.mean()), "threshold": THRESHOLD,
            "threshold_source": "tests/view_files.py", "unreadable_regions": unreadable,
            "model_dir": "/models/test", "finished": "2026-01-02T03:04:05+00:00",
            "runtime": "savedmodel", "output_dir": os.path.join(out, name)}


def write_outputs(out: str, name: str, path: str, probability: np.ndarray,
                  cells: np.ndarray, unreadable_cells: np.ndarray) -> dict:
    """OUT/<name>/ as idc-slide leaves it: tiles.csv, heatmap.png, summary.json (last)."""
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    x, y = cells[:, 0] * CELL, cells[:, 1] * CELL
    outputs.write_tiles_csv(os.path.join(folder, outputs.TILES_CSV), x, y, CELL, probability,
                            probability >= THRESHOLD)
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 200
    outputs.write_png(os.path.join(folder, outputs.HEATMAP_PNG), image)
    unreadable = [{"x": int(c) * CELL, "y": int(r) * CELL, "width": CELL, "height": CELL,
                   "error": "TIFFReadEncodedTile failed"} for c, r in unreadable_cells]
    summary = _summary(path, out, name, x, y, probability, unreadable)
    outputs.write_summary(os.path.join(folder, outputs.SUMMARY_JSON), summary)
    return summary


def write_labelled_svs(path: str) -> None:
    """An Aperio SVS of 1536 x 1024 at 0.5 um/px (2 levels) with a thumbnail, and a label and
    a macro image of LABEL_RGB, the layout OpenSlide's Aperio reader expects."""
    import tifffile

    level0 = np.tile(_patches(1, 5)[0], (21, 31, 1))[:1024, :1536]
    label = np.zeros((200, 300, 3), np.uint8)
    label[...] = LABEL_RGB
    head = "Aperio Image Library v12.0.15\r\n"
    pages = [(level0, "1536x1024 [0,0 1536x1024] (256x256) RAW|AppMag = 20|MPP = 0.5", 0, True),
             (level0[::8, ::8], "1536x1024 -> 192x128 - |AppMag = 20|MPP = 0.5", 0, False),
             (level0[::4, ::4], "1536x1024 -> 384x256 - |AppMag = 20|MPP = 2.0", 0, True),
             (label, "label 300x200", 1, False), (label, "macro 300x200", 9, False)]
    with tifffile.TiffWriter(path) as tif:
        for image, description, kind, tiled in pages:
            layout = {"tile": (256, 256)} if tiled else {"rowsperstrip": 16}
            tif.write(np.ascontiguousarray(image), photometric="rgb", compression="zlib",
                      description=head + description, subfiletype=kind, metadata=None,
                      **layout)


def write_out(base) -> dict:
    """The OUT folder (module docstring) under `base`; returns what the tests need to know."""
    base = str(base)
    out = os.path.join(base, "out")
    os.makedirs(out, exist_ok=True)
    slide = os.path.join(base, "ok.tiff")
    cells = tissue_cells()
    pyramid_tiff.write_slide(slide, _patches(len(cells), 0), cells, (ROWS, COLUMNS),
                             UM_PER_PIXEL, LEVELS)
    read, unreadable = cells[:-1], cells[-1:]
    probability = np.random.default_rng(1).uniform(0, 1, len(read)).astype(np.float32)
    probability[3] = NEAR_THRESHOLD
    summary = write_outputs(out, "ok", slide, probability, read, unreadable)

    labelled = os.path.join(base, "labelled.svs")
    write_labelled_svs(labelled)
    write_outputs(out, "labelled", labelled, np.array([0.9, 0.1], np.float32),
                  np.array([[0, 0], [1, 0]]), np.zeros((0, 2), int))
    moved = os.path.join(base, "moved.tiff")
    shutil.copy(slide, moved)
    write_outputs(out, "moved", moved, probability, read, unreadable)
    os.remove(moved)
    replaced = os.path.join(base, "replaced.tiff")
    shutil.copy(slide, replaced)
    write_outputs(out, REPLACED, replaced, probability, read, unreadable)
    shutil.copy(labelled, replaced)
    return {"out": out, "slide": slide, "summary": summary, "cells": read,
            "unreadable": unreadable, "probability": probability, "labelled": labelled}


class Served:
    """A ViewerServer on a free localhost port, in a thread; get(path) -> (status, headers,
    body) on a new connection."""

    def __init__(self, output_dir: str):
        self.httpd = server.ViewerServer(("127.0.0.1", 0), catalog.load_catalog(output_dir),
                                         64 << 20)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.slides = {s["name"]: s for s in json.loads(self.get("/api/slides")[2])}

    def request(self, method: str, path: str, connection=None):
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            if own:
                connection.close()

    def get(self, path: str):
        return self.request("GET", path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
