"""The slides the slide benchmarks generate: synthetic patches on a grid, an ellipse of tissue in
white glass (idc_engine/slides/pyramid_tiff.py), three levels, zlib-compressed TIFF tiles."""

import os

import numpy as np


def patch_pool(work: str) -> np.ndarray:
    """uint8 [N, 50, 50, 3]: ~1,500 patches of a small synthetic tree (idc_engine.synthetic),
    generated into `work` once."""
    from PIL import Image

    from idc_engine.data import synthetic

    root = os.path.join(work, "tree")
    if not os.path.isdir(root):
        synthetic.write_dataset(root, num_patients=8, seed=0, min_patches=150, max_patches=250)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.endswith(".png"))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def ellipse_cells(grid: int) -> np.ndarray:
    """int [N, 2] (column, row): the cells of a grid x grid grid inside its inscribed ellipse
    (~0.785 x grid^2)."""
    r, c = np.mgrid[0:grid, 0:grid]
    inside = np.hypot((r + 0.5) / grid - 0.5, (c + 0.5) / grid - 0.5) < 0.5
    return np.stack([c[inside], r[inside]], axis=1)


def grid_for_cells(cells: int) -> int:
    """The smallest grid whose ellipse holds at least `cells` cells."""
    grid = max(2, int(np.sqrt(cells / (np.pi / 4))))
    while len(ellipse_cells(grid)) < cells:
        grid += 1
    return grid


def write_ellipse_slide(path: str, grid: int, um_per_pixel: float, pool: np.ndarray,
                        offset: int = 0) -> int:
    """Writes the slide; returns its number of tissue cells. offset: the pool's first patch (so
    that slides of one cohort differ)."""
    from idc_engine.slides import pyramid_tiff

    cells = ellipse_cells(grid)
    patches = pool[(offset + np.arange(len(cells))) % len(pool)]
    pyramid_tiff.write_slide(path, patches, cells, (grid, grid), um_per_pixel)
    return len(cells)
