"""Slides for the tests: pyramidal tiled TIFFs whose truth is known, and broken ones.

The good slide is the eval_data test split's patches (the synthetic generator's) laid back at
their (x, y) at 1.25 um/px, three levels (1.25, 2.5, 5.0 um/px): the model's 4.0 um/px is
read from level 1 (2.5 um/px, the nearest not coarser), 80-pixel tiles resized to 50.
"""

import numpy as np

from idc_engine.slides import pyramid_tiff, truth_slide

UM_PER_PIXEL = 1.25
LEVELS = 3
CELL = 160  # level-0 pixels per patch at 1.25 um/px


def split_patches(data_dir: str, num_patients: int = 2) -> dict:
    """read_split's dict for the first num_patients patients (sorted) of the test split."""
    patches = truth_slide.read_split(data_dir, "test")
    keep = np.isin(patches["patient_id"], sorted(set(patches["patient_id"]))[:num_patients])
    return {k: v[keep] for k, v in patches.items()}


def write_blank_slide(path: str, um_per_pixel: float | None = 2.5) -> None:
    """A 3-level slide of white glass only (no tissue); without resolution tags if
    um_per_pixel is None (then OpenSlide reports no mpp)."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(2):
            size = 1024 >> level
            extra = {} if um_per_pixel is None else {
                "resolution": (1e4 / (um_per_pixel * (1 << level)),) * 2,
                "resolutionunit": "CENTIMETER"}
            tif.write(np.full((size, size, 3), 250, np.uint8), tile=(256, 256),
                      photometric="rgb", compression="zlib", subfiletype=1 if level else 0,
                      **extra)


def corrupt_tile(path: str, level: int, x: int, y: int) -> tuple[int, int]:
    """Overwrites the compressed bytes of the TIFF tile of `level` holding level pixel (x, y);
    returns that tile's level pixel (left, top)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        across = -(-page.imagewidth // page.tilewidth)
        tile = (y // page.tilelength) * across + x // page.tilewidth
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes())
    return (x // pyramid_tiff.TIFF_TILE) * pyramid_tiff.TIFF_TILE, \
        (y // pyramid_tiff.TIFF_TILE) * pyramid_tiff.TIFF_TILE
