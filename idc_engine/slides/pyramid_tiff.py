"""A pyramidal tiled TIFF made of 50x50 patches laid on a grid: a slide whose truth is known.

The demo, the tests and benchmarks/slide_inference.py build their slides here: patch i (at the
dataset's 4.0 um/px) fills grid cell (cells[i, 0] = column, cells[i, 1] = row), magnified to the
slide's level-0 scale `um_per_pixel`; cells without a patch are white glass. Each level halves
the previous one and carries its resolution tags (pixels per centimetre), which OpenSlide reads
as `openslide.mpp-x`/`mpp-y`. Written TIFF tile by TIFF tile (never a whole level in memory), so
a slide of any size can be made; levels are rendered from the patches at their own scale, not
downsampled from level 0 (what a scanner's pyramid holds up to interpolation).
"""

import numpy as np
from PIL import Image

from idc_engine.data import records

TIFF_TILE = 256


def cell_pixels(um_per_pixel: float, levels: int) -> int:
    """Level-0 pixels per grid cell (one 50x50 patch at 4.0 um/px), checked to halve exactly at
    every level so that each level's cells stay whole pixels."""
    size = records.PATCH_SIZE * records.PATCH_UM_PER_PIXEL / um_per_pixel
    if abs(size - round(size)) > 1e-6 or round(size) % (1 << (levels - 1)):
        raise ValueError(f"um_per_pixel={um_per_pixel}: a 50-pixel patch at 4.0 um/px must be a "
                         f"whole number of level-0 pixels divisible by 2^{levels - 1}")
    return int(round(size))


def _resized(patches: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 50, 50, 3] -> uint8 [N, size, size, 3] (bicubic; box filter when shrinking)."""
    method = Image.Resampling.BICUBIC if size >= patches.shape[1] else Image.Resampling.BOX
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), method)) for p in patches])


def _tiles(pool: np.ndarray, where: dict, shape: tuple[int, int], cell: int):
    """Yields the level's TIFF tiles, uint8 [256, 256, 3], row by row.

    pool: uint8 [N, cell, cell, 3]; where: {(row, col): patch index}; shape: (height, width)."""
    height, width = shape
    for top in range(0, height, TIFF_TILE):
        for left in range(0, width, TIFF_TILE):
            tile = np.full((TIFF_TILE, TIFF_TILE, 3), 255, np.uint8)
            for row in range(top // cell, min(-(-(top + TIFF_TILE) // cell), -(-height // cell))):
                for col in range(left // cell, min(-(-(left + TIFF_TILE) // cell),
                                                   -(-width // cell))):
                    index = where.get((row, col))
                    if index is None:
                        continue
                    y0, x0 = row * cell - top, col * cell - left
                    ys, xs = slice(max(y0, 0), min(y0 + cell, TIFF_TILE)), slice(
                        max(x0, 0), min(x0 + cell, TIFF_TILE))
                    tile[ys, xs] = pool[index][ys.start - y0:ys.stop - y0,
                                               xs.start - x0:xs.stop - x0]
            yield tile


def write_slide(path: str, patches, cells, grid_shape: tuple[int, int], um_per_pixel: float,
                levels: int = 3, compression: str = "zlib") -> tuple[int, int]:
    """Writes the slide (atomically: complete or absent); returns its level-0 (width, height) in pixels.

    patches uint8 [N, 50, 50, 3]; cells int [N, 2] (column, row), each cell at most once;
    grid_shape (rows, columns); level k is at um_per_pixel * 2^k.
    """
    import tifffile

    from idc_engine import atomic_files

    patches = np.asarray(patches, np.uint8)
    cell = cell_pixels(um_per_pixel, levels)
    where = {(int(r), int(c)): i for i, (c, r) in enumerate(np.asarray(cells))}
    rows, columns = grid_shape
    with atomic_files.replace_atomically(path, "wb") as f, \
            tifffile.TiffWriter(f, bigtiff=True) as tif:
        for level in range(levels):
            size = cell >> level
            shape = (rows * size, columns * size)
            pixels_per_cm = 1e4 / (um_per_pixel * (1 << level))
            tif.write(_tiles(_resized(patches, size), where, shape, size), shape=(*shape, 3),
                      dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), photometric="rgb",
                      compression=compression, resolution=(pixels_per_cm, pixels_per_cm),
                      resolutionunit="CENTIMETER", subfiletype=1 if level else 0)
    return columns * cell, rows * cell
