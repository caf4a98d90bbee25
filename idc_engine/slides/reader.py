"""A whole-slide image through OpenSlide: its scale, its pyramid, the level to read, regions.

Every format OpenSlide reads works (.svs, .ndpi, .mrxs, pyramidal TIFF, ...). The slide's scale
is OpenSlide's `openslide.mpp-x`/`mpp-y`, or the user's --slide_um_per_pixel when it has none.

OpenSlide's C handle is unusable after any read error (every later call fails), so a region
that cannot be decoded is reported as `UnreadableRegion` and the reader's handle is reopened:
the rest of the slide goes on. Each reading thread has its own handle (no lock shared between
threads; openslide-python releases the GIL while the C library decodes).
"""

import dataclasses
import os
import threading

import numpy as np

from idc_engine import errors


class SlideError(errors.EngineError, ValueError):
    """A slide that cannot be used (unreadable file, unknown scale, no tissue); names the file."""


class UnreadableRegion(Exception):
    """A region OpenSlide could not decode; the run reports its coordinates and goes on."""


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    path: str
    vendor: str
    dimensions: tuple[int, int]           # level-0 (width, height), pixels
    level_dimensions: tuple               # ((width, height), ...) per level
    level_downsamples: tuple              # (1.0, ...) per level
    um_per_pixel: float                   # level-0 scale (mean of x and y)
    scale_source: str                     # "openslide.mpp-x/mpp-y" or "--slide_um_per_pixel"


def _open(path: str):
    import openslide

    try:
        return openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as e:  # OpenSlideUnsupportedFormatError included
        raise SlideError(f"{path}: OpenSlide cannot open this file ({type(e).__name__}: {e})") from e


def slide_scale(properties, path: str, override: float | None) -> tuple[float, str]:
    """(level-0 um/px, where it came from): OpenSlide's mpp properties, else the override.

    Raises SlideError when the slide has no scale and no override was given."""
    try:
        mpp = (float(properties["openslide.mpp-x"]) + float(properties["openslide.mpp-y"])) / 2
    except (KeyError, ValueError):
        mpp = None
    if mpp and mpp > 0:
        return mpp, "openslide.mpp-x/mpp-y"
    if override:
        return float(override), "--slide_um_per_pixel"
    raise SlideError(f"{path}: the slide has no scale (no openslide.mpp-x/mpp-y property); give "
                     "--slide_um_per_pixel=UM (micrometres per level-0 pixel, e.g. 0.25 at 40x)")


def open_info(path: str, um_per_pixel: float | None = None) -> SlideInfo:
    """The slide's geometry and scale; SlideError naming the file if OpenSlide cannot read it.

    um_per_pixel: used only when the slide has no mpp properties (--slide_um_per_pixel)."""
    if not os.path.isfile(path):
        raise SlideError(f"{path}: no such file")
    slide = _open(path)
    try:
        mpp, source = slide_scale(slide.properties, path, um_per_pixel)
        return SlideInfo(path, slide.properties.get("openslide.vendor", "unknown"),
                         tuple(slide.dimensions), tuple(slide.level_dimensions),
                         tuple(slide.level_downsamples), mpp, source)
    finally:
        slide.close()


def choose_level(downsamples, slide_um_per_pixel: float, target_um_per_pixel: float) -> int:
    """The pyramid level nearest the target scale without being coarser: the largest
    downsample whose um/px is <= the target (level 0 if even that is coarser)."""
    best = 0
    for level, downsample in enumerate(downsamples):
        if slide_um_per_pixel * downsample <= target_um_per_pixel * (1 + 1e-6) and \
                downsample > downsamples[best]:
            best = level
    return best


def thumbnail(path: str, max_size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3]: the slide fitted in max_size (width, height), from a low level."""
    slide = _open(path)
    try:
        return np.asarray(slide.get_thumbnail(max_size).convert("RGB"))
    finally:
        slide.close()


def to_rgb(region) -> np.ndarray:
    """OpenSlide's PIL RGBA region [h, w] (not premultiplied; alpha 0 outside the scanned area)
    -> uint8 [h, w, 3] on white, as the dataset pads its edge patches."""
    if region.getchannel("A").getextrema()[0] == 255:  # all scanned: drop alpha in C
        return np.asarray(region.convert("RGB"))
    rgba = np.asarray(region)
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


class RegionReader:
    """read(level, x, y, width, height) from any thread; one OpenSlide handle per thread."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._handles = []
        self._lock = threading.Lock()

    def _handle(self):
        handle = getattr(self._local, "slide", None)
        if handle is None:
            handle = self._local.slide = _open(self.path)
            with self._lock:
                self._handles.append(handle)
        return handle

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 [height, width, 3] at `level`, its top-left at level-0 pixel (x, y).

        Raises UnreadableRegion (and reopens this thread's handle) when OpenSlide fails."""
        import openslide

        try:
            region = self._handle().read_region((x, y), level, (width, height))
        except openslide.OpenSlideError as e:
            self._local.slide = None  # the C handle is dead after an error
            raise UnreadableRegion(str(e)) from e
        return to_rgb(region)

    def close(self) -> None:
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
