"""The tissue mask: which tiles are stained tissue, and which are background glass to skip.

Computed on a low-resolution image of the slide (its thumbnail): stained tissue is saturated
(H&E's pink and purple), glass and empty scanner background are grey-white (saturation ~0).
The threshold on HSV saturation is Otsu's (the split that best separates the two largest
populations), kept within [MIN_SATURATION, MAX_SATURATION]: on a slide that is nearly all glass
Otsu would split the glass's own noise, and on a slide of little glass and two stain
populations (pale stroma, dark purple tumour) it splits the tissue between them, dropping the
pale half. --tissue_threshold replaces the choice.

A tile is tissue when at least `min_fraction` of its area is tissue in the mask; the fraction is
read from a summed-area table of the mask, so the cost does not grow with the tiles' size.
"""

import dataclasses

import numpy as np

MIN_SATURATION = 0.05  # glass and scanner background stay below this (0..1 HSV saturation)
MAX_SATURATION = 0.12  # faint eosin-stained tissue stays above this


def saturation(rgb: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> float32 [h, w] in [0, 1]: HSV saturation (max - min) / max."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold in [0, 1] maximizing the between-class variance of values (float [...])."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(counts * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(counts * centres) - np.cumsum(counts * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


@dataclasses.dataclass
class TissueMask:
    mask: np.ndarray          # bool [h, w]: the thumbnail's tissue pixels
    scale: tuple              # (sx, sy): level-0 pixels per mask pixel
    threshold: float          # the saturation threshold used
    threshold_source: str     # "otsu", "otsu (raised to the floor ...)" or "--tissue_threshold"

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def detect_tissue(thumb: np.ndarray, level0_size: tuple[int, int],
                  threshold: float | None = None) -> TissueMask:
    """thumb uint8 [h, w, 3] of the whole slide whose level 0 is level0_size (width, height)."""
    sat = saturation(thumb)
    if threshold is not None:
        value, source = float(threshold), "--tissue_threshold"
    else:
        otsu = otsu_threshold(sat)
        value = min(max(otsu, MIN_SATURATION), MAX_SATURATION)
        source = "otsu" if value == otsu else f"otsu ({otsu:.3f}) clipped to [{MIN_SATURATION}, "\
            f"{MAX_SATURATION}]"
    scale = (level0_size[0] / thumb.shape[1], level0_size[1] / thumb.shape[0])
    return TissueMask(sat > value, scale, value, source)


def tile_fractions(tissue: TissueMask, x, y, width: int, height: int) -> np.ndarray:
    """float32 [N]: the tissue fraction of each tile (level-0 top-left x, y int [N], size in
    level-0 pixels), from the mask pixels the tile overlaps (at least one)."""
    table = np.pad(tissue.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = tissue.mask.shape
    sx, sy = tissue.scale
    x0 = np.clip(np.floor(np.asarray(x) / sx).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.floor(np.asarray(y) / sy).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.ceil((np.asarray(x) + width) / sx).astype(np.int64), x0 + 1, w)
    y1 = np.clip(np.ceil((np.asarray(y) + height) / sy).astype(np.int64), y0 + 1, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return (inside / ((x1 - x0) * (y1 - y0))).astype(np.float32)
