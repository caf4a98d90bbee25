"""A whole-slide image through OpenSlide: its scale, its pyramid, the level to read, regions.

Every format OpenSlide reads works (.svs, .ndpi, .mrxs, pyramidal TIFF, DICOM, ...). The slide's
scale is OpenSlide's `openslide.mpp-x`/`mpp-y` (a vendor's own field, or for a generic TIFF its
resolution tags), or the user's --slide_um_per_pixel when it has none or when
--override_slide_scale says the file's is wrong. A scale no microscope produces, or a finest
level too much coarser than the model's patches to be scored, is refused, naming its source.

Every OpenSlide error is a SlideError naming the file and what was being read, so the command
reports the slide and goes on to the next. OpenSlide's C handle is unusable after any read error
(every later call fails), so a region that cannot be decoded is reported as `UnreadableRegion`
and the reader's handle is reopened: the rest of the slide goes on. Each reading thread has its
own handle (no lock shared between threads; openslide-python releases the GIL while the C
library decodes).
"""

import contextlib
import dataclasses
import math
import os
import threading

import numpy as np

from idc_engine import errors

# Level-0 scales microscopes produce: from ~0.1 um/px (100x oil objectives) to a few um/px (a 2x
# overview). A scale outside is a file's wrong resolution tags (72 dpi is 352.8 um/px).
MICROSCOPE_UM_PER_PIXEL = (0.05, 10.0)
# The most a slide's finest level may be coarser than the model's patches: its tiles are
# magnified by as much to the model's input, beyond that too blurred to be what it was trained on.
SCALE_TOLERANCE = 1.25
OVERRIDE_HINT = ("if the file's scale is wrong, give the true one: --slide_um_per_pixel=UM "
                 "--override_slide_scale")


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
    scale_source: str                     # the properties or flags it came from (slide_scale)
    quickhash: str = ""                   # openslide.quickhash-1: the slide's identity


@contextlib.contextmanager
def openslide_errors(path: str, reading: str):
    """Turns an OpenSlide error raised in the block into a SlideError naming the file, what was
    being read and OpenSlide's message."""
    import openslide

    try:
        yield
    except openslide.OpenSlideError as e:  # OpenSlideUnsupportedFormatError included
        raise SlideError(f"{path}: OpenSlide failed reading {reading} "
                         f"({type(e).__name__}: {e})") from e


def _open(path: str):
    import openslide

    try:
        return openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as e:  # OpenSlideUnsupportedFormatError included
        raise SlideError(f"{path}: OpenSlide cannot open this file ({type(e).__name__}: {e})") from e


def _positive(value) -> float | None:
    """A property's value as a finite float > 0, else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None


def file_scale(properties) -> tuple[float | None, str]:
    """(level-0 um/px or None, the properties it came from) of OpenSlide's properties.

    OpenSlide's `openslide.mpp-x`/`mpp-y` are a vendor's own field (aperio.MPP, DICOM's
    PixelSpacing, ...), or for a generic TIFF its resolution tags: the source names the tags
    whenever the mpp is what they give (10,000 / pixels per cm, 25,400 / pixels per inch)."""
    mpp_x, mpp_y = (_positive(properties.get(f"openslide.mpp-{a}")) for a in "xy")
    if not (mpp_x and mpp_y):
        return None, "no openslide.mpp-x/mpp-y"
    per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(properties.get("tiff.ResolutionUnit"))
    resolution = _positive(properties.get("tiff.XResolution"))
    if per_unit and resolution and math.isclose(per_unit / resolution, mpp_x, rel_tol=1e-4):
        return (mpp_x + mpp_y) / 2, " ".join(
            f"{k}={properties[k]}" for k in ("tiff.XResolution", "tiff.YResolution",
                                              "tiff.ResolutionUnit") if k in properties)
    vendor = properties.get("openslide.vendor", "unknown")
    return (mpp_x + mpp_y) / 2, (f"openslide.mpp-x={properties['openslide.mpp-x']} "
                                 f"openslide.mpp-y={properties['openslide.mpp-y']} ({vendor})")


def slide_scale(properties, path: str, flag_um_per_pixel: float | None = None,
                override: bool = False) -> tuple[float, str]:
    """(level-0 um/px, where it came from): the file's own scale (file_scale), else
    --slide_um_per_pixel; the flag's value first when `override` (--override_slide_scale).

    Raises SlideError when the slide has no scale and no flag was given."""
    mpp, source = file_scale(properties)
    if flag_um_per_pixel and override:
        own = f"{mpp:g} um/px from {source}" if mpp else source
        return float(flag_um_per_pixel), \
            f"--slide_um_per_pixel={flag_um_per_pixel:g} --override_slide_scale (the file's: {own})"
    if mpp:
        return mpp, source
    if flag_um_per_pixel:
        return float(flag_um_per_pixel), \
            f"--slide_um_per_pixel={flag_um_per_pixel:g} (the file has no openslide.mpp-x/mpp-y)"
    raise SlideError(f"{path}: the slide has no scale (no openslide.mpp-x/mpp-y property); give "
                     "--slide_um_per_pixel=UM (micrometres per level-0 pixel, e.g. 0.25 at 40x)")


def check_scale(path: str, um_per_pixel: float, source: str, model_um_per_pixel: float) -> None:
    """Raises SlideError, naming the slide's scale, its source and the model's, when the
    level-0 scale is outside MICROSCOPE_UM_PER_PIXEL or coarser than the model's patches by
    more than SCALE_TOLERANCE (no level of the slide then shows what the model learnt)."""
    low, high = MICROSCOPE_UM_PER_PIXEL
    hint = "" if source.startswith("--") else f"; {OVERRIDE_HINT}"
    if not low <= um_per_pixel <= high:
        raise SlideError(
            f"{path}: its scale, {um_per_pixel:g} um/px ({source}), is not one a microscope "
            f"produces ({low:g} to {high:g} um/px); the model's patches are "
            f"{model_um_per_pixel:g} um/px{hint}")
    ratio = um_per_pixel / model_um_per_pixel
    if ratio > SCALE_TOLERANCE:
        raise SlideError(
            f"{path}: its finest level, {um_per_pixel:g} um/px ({source}), is {ratio:.3g}x "
            f"coarser than the model's {model_um_per_pixel:g} um/px patches (at most "
            f"{SCALE_TOLERANCE:g}x is accepted: the model cannot score tiles magnified further)"
            f"{hint}")


def open_info(path: str, um_per_pixel: float | None = None, override: bool = False) -> SlideInfo:
    """The slide's geometry and scale (slide_scale); SlideError naming the file if OpenSlide
    cannot read it or it has no scale."""
    if not os.path.isfile(path):
        raise SlideError(f"{path}: no such file")
    slide = _open(path)
    try:
        with openslide_errors(path, "its properties"):
            mpp, source = slide_scale(slide.properties, path, um_per_pixel, override)
            return SlideInfo(path, slide.properties.get("openslide.vendor", "unknown"),
                             tuple(slide.dimensions), tuple(slide.level_dimensions),
                             tuple(slide.level_downsamples), mpp, source,
                             slide.properties.get("openslide.quickhash-1", ""))
    finally:
        slide.close()


def quickhash(path: str) -> str:
    """OpenSlide's openslide.quickhash-1 of the slide (its identity: a hash of its properties
    and smallest level), "" if the format has none; SlideError if it cannot be opened."""
    if not os.path.isfile(path):
        raise SlideError(f"{path}: no such file")
    slide = _open(path)
    try:
        return slide.properties.get("openslide.quickhash-1", "")
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
    """uint8 [h, w, 3]: the slide fitted in max_size (width, height), from a low level: the
    slide's first pixels read, so a slide OpenSlide cannot decode is named here."""
    slide = _open(path)
    try:
        with openslide_errors(path, "its levels"):  # the level get_thumbnail reads whole
            level = slide.get_best_level_for_downsample(
                max(d / m for d, m in zip(slide.dimensions, max_size)))
            last = slide.level_count - 1
        with openslide_errors(path, f"its thumbnail (level {level} of levels 0-{last}, read whole "
                                    "for the tissue mask)"):
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
