"""The one PNG patch decoder: a file of the Kaggle tree -> the 50x50x3 uint8 pixels a record holds.

The converter's workers (idc_engine/data/shard_writer.py) and python -m idc_engine.predict both
decode through `decode_patch`, so a patch gets the same pixels, and the same probability, from
its PNG as from the converted TFRecords.
"""

import io

import numpy as np
from PIL import Image, PngImagePlugin

from idc_engine.data import records

# Undersized edge patches are padded at the bottom/right with white: the glass background of an
# H&E slide, i.e. "no tissue here". The record keeps the original height and width.
PAD_VALUE = 255


def _open_png(f) -> Image.Image:
    """Image.open for a file expected to be a PNG, without Image.open's generic path.

    The PNG plugin's class is asked directly (Image.open tries each registered format's
    signature check and wraps more layers, for every patch); anything that is not a PNG still
    goes through Image.open, so a JPEG named .png decodes as Image.open decodes it.
    """
    try:
        return PngImagePlugin.PngImageFile(f)
    except SyntaxError:  # not a PNG signature: let Image.open identify it
        f.seek(0)
        return Image.open(f)


def decode_patch(path: str, keep_png: bool = True) -> tuple[bytes, int, int, bytes | None]:
    """Decodes one PNG into the raw uint8 HWC bytes of a 50x50x3 patch (padded if smaller).

    Returns (pixels, original height, original width, the file's bytes if `keep_png` and it is
    an RGB PNG, else None). Raises ValueError with the reason for files that are not usable
    patches, OSError for files that cannot be read.
    """
    with open(path, "rb") as f:  # an OSError here: the file cannot be read
        data = f.read() if keep_png else None
        try:
            with _open_png(io.BytesIO(data) if keep_png else f) as image:
                image.load()
                is_rgb_png = image.format == "PNG" and image.mode == "RGB"
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                width, height = rgb.size
                pixels = rgb.tobytes()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"not a readable PNG ({e})") from None
    if height > records.PATCH_SIZE or width > records.PATCH_SIZE:
        raise ValueError(f"larger than {records.PATCH_SIZE}x{records.PATCH_SIZE}: {height}x{width}")
    if (height, width) != (records.PATCH_SIZE, records.PATCH_SIZE):
        padded = np.full(records.IMAGE_SHAPE, PAD_VALUE, np.uint8)
        padded[:height, :width] = np.frombuffer(pixels, np.uint8).reshape(height, width, 3)
        pixels = padded.tobytes()
    return pixels, height, width, data if is_rgb_png else None
