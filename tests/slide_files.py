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


# Slides in the layouts other tools write (tests/test_slide_field_files.py): JPEG tiles encoded
# by Pillow's libjpeg, stripped TIFFs written by Pillow, resolution tags in inches or absent.

def mosaic(patches: np.ndarray, um_per_pixel: float, columns: int, cells: int) -> np.ndarray:
    """uint8 [H, W, 3]: the 50x50 patches (at the dataset's 4.0 um/px) resized to um_per_pixel,
    laid row by row `columns` across in the top-left corner of a white square of `cells` x
    `cells` patch cells."""
    from PIL import Image

    cell = int(round(50 * 4.0 / um_per_pixel))
    image = np.full((cells * cell, cells * cell, 3), 255, np.uint8)
    for i, patch in enumerate(patches):
        top, left = (i // columns) * cell, (i % columns) * cell
        image[top:top + cell, left:left + cell] = np.asarray(
            Image.fromarray(patch).resize((cell, cell), Image.Resampling.BICUBIC))
    return image


def _jpeg_tiles(image: np.ndarray, tile: int):
    """The image's tiles, row by row, each a JPEG (YCbCr 4:2:0, as scanners store them)."""
    import io

    from PIL import Image

    for top in range(0, image.shape[0], tile):
        for left in range(0, image.shape[1], tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = image[top:top + tile, left:left + tile]
            block[:part.shape[0], :part.shape[1]] = part
            encoded = io.BytesIO()
            Image.fromarray(block).save(encoded, "JPEG", quality=90, subsampling="4:2:0")
            yield encoded.getvalue()


def write_tiled_tiff(path: str, image: np.ndarray, levels: int, um_per_pixel: float | None,
                     dpi: float | None = None, jpeg: bool = False) -> None:
    """A pyramidal tiled TIFF (256-px tiles; level k halves level k-1 with Pillow) of `image`
    uint8 [H, W, 3]: resolution tags in pixels per centimetre for um_per_pixel, else in
    pixels per inch for `dpi`, else none. jpeg: the tiles are JPEGs encoded by Pillow and
    the TIFF's tags then say so (tifffile writes JPEG itself only with imagecodecs)."""
    import tifffile
    from PIL import Image

    tile = pyramid_tiff.TIFF_TILE
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            if level:
                image = np.asarray(Image.fromarray(image).resize(
                    (image.shape[1] // 2, image.shape[0] // 2), Image.Resampling.BOX))
            tags = {}
            if um_per_pixel is not None:
                tags = {"resolution": (1e4 / (um_per_pixel * 2 ** level),) * 2,
                        "resolutionunit": "CENTIMETER"}
            elif dpi is not None:
                tags = {"resolution": (dpi / 2 ** level,) * 2, "resolutionunit": "INCH"}
            data = _jpeg_tiles(image, tile) if jpeg else image
            tif.write(data, shape=image.shape, dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", compression=None if jpeg else "zlib",
                      subfiletype=1 if level else 0,
                      extratags=[(530, "H", 2, (2, 2), True)] if jpeg else [], **tags)
    if jpeg:
        with tifffile.TiffFile(path, mode="r+b") as tif:
            for page in tif.pages:
                page.tags["Compression"].overwrite(7)                  # JPEG
                page.tags["PhotometricInterpretation"].overwrite(6)    # YCbCr


def write_stripped_tiff(path: str, image: np.ndarray, um_per_pixel: float) -> None:
    """One level in deflate-compressed strips (not tiles), written by Pillow, with resolution
    tags in pixels per centimetre."""
    from PIL import Image

    Image.fromarray(image).save(path, compression="tiff_deflate", resolution_unit=3,
                                x_resolution=1e4 / um_per_pixel, y_resolution=1e4 / um_per_pixel)
