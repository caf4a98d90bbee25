"""Slide maps: a patient's slide reassembled from its patches' (x, y), with truth and prediction.

Each patch file of the dataset is named by the slide position of its top-left corner
(x, y = 1, 51, 101, ... in pixels of the 2.5x scan). A slide map puts every patch back there:

    tissue (the patch mosaic) | ground truth (IDC / non-IDC per patch) | predicted IDC probability

one PNG per patient, the three panels sharing slide coordinates (axes in slide pixels, origin at
the patient's top-left-most patch). Places without a patch (background never cut into patches,
or patches lost in conversion) are white. The probability panel outlines the ground-truth IDC
region and its colour bar marks the decision threshold.

Undersized edge patches are stored padded with white at the bottom/right, so drawing the full
50x50 patch shows them as they were.
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from idc_engine.data import records  # noqa: E402
from idc_engine.evaluation import plots  # noqa: E402

MAX_MOSAIC_PIXELS = 1600  # the mosaic is downsampled so its longer side is at most this
OUTLINE_COLOUR = "#00bcd4"  # cyan: the outline of the true IDC patches on the probability map


def slide_origin(x, y) -> tuple[int, int]:
    """(x0, y0): the top-left corner of the patient's slide map, in slide pixels."""
    return int(np.min(x)), int(np.min(y))


def assemble_mosaic(images, x, y, patch: int = records.PATCH_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Puts each patch at its slide position.

    Args:
      images: uint8 [N, patch, patch, 3].
      x, y: int [N], each patch's top-left corner on the slide (pixels).

    Returns:
      (canvas uint8 [H, W, 3], (x0, y0)): patch i covers canvas[y_i - y0 : y_i - y0 + patch,
      x_i - x0 : x_i - x0 + patch]; pixels no patch covers are white (255).
    """
    images, x, y = np.asarray(images), np.asarray(x, np.int64), np.asarray(y, np.int64)
    if not len(images):
        raise ValueError("no patches to assemble")
    x0, y0 = slide_origin(x, y)
    height, width = int(y.max() - y0 + patch), int(x.max() - x0 + patch)
    canvas = np.full((height, width, images.shape[-1]), 255, np.uint8)
    for image, left, top in zip(images, x - x0, y - y0):
        canvas[top:top + patch, left:left + patch] = image
    return canvas, (x0, y0)


def patch_grid(values, x, y, patch: int = records.PATCH_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """One cell per patch position: float [rows, cols], nan where the slide has no patch.

    values float [N]; x, y int [N]. Cell (r, c) holds the patch at x = x0 + c * patch,
    y = y0 + r * patch; positions off the patch grid are rounded down to it.
    """
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    x0, y0 = slide_origin(x, y)
    cols, rows = (x - x0) // patch, (y - y0) // patch
    grid = np.full((int(rows.max()) + 1, int(cols.max()) + 1), np.nan)
    grid[rows, cols] = np.asarray(values, np.float64)
    return grid, (x0, y0)


def _downsample(canvas: np.ndarray, max_pixels: int) -> np.ndarray:
    factor = math.ceil(max(canvas.shape[:2]) / max_pixels)
    if factor <= 1:
        return canvas
    from PIL import Image

    size = (canvas.shape[1] // factor, canvas.shape[0] // factor)
    return np.asarray(Image.fromarray(canvas).resize(size, Image.Resampling.BOX))


def outline_segments(mask, x0: int, y0: int, patch: int = records.PATCH_SIZE) -> list:
    """The boundary of the True cells of a patch grid: [((x, y), (x, y)), ...] in slide pixels,
    one segment per cell edge that borders a False cell or the outside."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)  # cell (r, c) is padded[r + 1, c + 1]
    segments = []
    for r, c in zip(*np.nonzero(mask)):
        left, top = x0 + int(c) * patch, y0 + int(r) * patch
        right, bottom = left + patch, top + patch
        if not padded[r, c + 1]:       # nothing above
            segments.append(((left, top), (right, top)))
        if not padded[r + 2, c + 1]:   # nothing below
            segments.append(((left, bottom), (right, bottom)))
        if not padded[r + 1, c]:       # nothing to the left
            segments.append(((left, top), (left, bottom)))
        if not padded[r + 1, c + 2]:   # nothing to the right
            segments.append(((right, top), (right, bottom)))
    return segments


def _figure_size(height: int, width: int) -> tuple[float, float]:
    """Three panels at one slide scale, at most 3.7 in wide and 4.6 in tall each; tall slides
    keep a panel slot of >= 2.3 in so the two-line titles fit."""
    panel_height = min(4.6, 3.7 * height / width)
    panel_width = panel_height * width / height
    return 3 * max(panel_width, 2.3) + 2.0, panel_height + 1.9


def _draw_truth(axes, truth: np.ndarray, grid_extent, labels: np.ndarray) -> None:
    """The ground-truth panel: truth float [rows, cols] (0, 1, nan where no patch)."""
    cmap = ListedColormap([plots.NON_IDC_COLOUR + "55", plots.IDC_COLOUR]).with_extremes(
        bad="white")
    axes.imshow(np.ma.masked_invalid(truth), cmap=cmap, vmin=0, vmax=1, extent=grid_extent,
                interpolation="nearest")
    num_idc = int((labels == 1).sum())
    axes.set_title(f"ground truth\n{num_idc:,} IDC patches "
                   f"({num_idc / max(len(labels), 1):.1%})")


def _draw_probability(axes, predicted: np.ndarray, truth_outline: list, grid_extent,
                      prob: np.ndarray, threshold: float):
    """The predicted-probability panel, outlined where the truth is IDC; returns its image.

    predicted float [rows, cols] (nan where no patch); prob float64 [N]."""
    cmap = plt.get_cmap("magma_r").with_extremes(bad="white")
    image = axes.imshow(np.ma.masked_invalid(predicted), cmap=cmap, vmin=0, vmax=1,
                        extent=grid_extent, interpolation="nearest")
    axes.add_collection(LineCollection(truth_outline, colors=OUTLINE_COLOUR, linewidths=0.9))
    called = float(np.mean(prob >= threshold)) if len(prob) else math.nan
    axes.set_title(f"predicted IDC probability\n{called:.1%} of patches >= "
                   f"threshold {threshold:.3g}")
    return image


def _add_legend_and_colour_bar(figure, image, axes, threshold: float) -> None:
    """The figure's legend (classes, no patch, outline) and the probability's colour bar with
    the threshold marked."""
    figure.legend(handles=[Patch(color=plots.IDC_COLOUR, label="IDC (ground truth)"),
                           Patch(color=plots.NON_IDC_COLOUR + "55", label="non-IDC (ground truth)"),
                           Patch(facecolor="white", edgecolor="grey", label="no patch"),
                           Patch(facecolor="none", edgecolor=OUTLINE_COLOUR,
                                 label="outline of the true IDC patches")],
                  loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    # an inset follows the panel's equal-aspect box, so the bar is exactly as tall as the map
    bar = figure.colorbar(image, cax=axes.inset_axes([1.04, 0.0, 0.035, 1.0]))
    bar.set_label(f"IDC probability (green: threshold {threshold:.3g})")
    bar.ax.axhline(threshold, color="#00e676", lw=2.5)


def render_slide_map(path: str, patient_id: str, images, labels, idc_probability, x, y,
                     threshold: float, subtitle: str = "", patch: int = records.PATCH_SIZE) -> str:
    """Writes the three-panel slide map of one patient to `path` (PNG); returns the path.

    images uint8 [N, 50, 50, 3], labels int [N], idc_probability float [N], x, y int [N].
    """
    labels = np.asarray(labels)
    prob = np.asarray(idc_probability, np.float64)
    mosaic, (x0, y0) = assemble_mosaic(images, x, y, patch)
    truth, _ = patch_grid(labels, x, y, patch)
    predicted, _ = patch_grid(prob, x, y, patch)
    height, width = mosaic.shape[:2]
    # extent in slide pixels: (left, right, bottom, top) with y growing downwards, like the slide
    extent = (x0, x0 + width, y0 + height, y0)
    grid_extent = (x0, x0 + truth.shape[1] * patch, y0 + truth.shape[0] * patch, y0)
    with plt.rc_context({**plots.STYLE, "axes.grid": False}):
        figure, panels = plt.subplots(1, 3, figsize=_figure_size(height, width), sharex=True,
                                      sharey=True, layout="constrained")
        panels[0].imshow(_downsample(mosaic, MAX_MOSAIC_PIXELS), extent=extent,
                         interpolation="antialiased")
        panels[0].set_title(f"tissue\n{len(labels):,} patches of {patch}x{patch} px")
        _draw_truth(panels[1], truth, grid_extent, labels)
        image = _draw_probability(panels[2], predicted, outline_segments(truth == 1, x0, y0, patch),
                                  grid_extent, prob, threshold)
        _add_legend_and_colour_bar(figure, image, panels[2], threshold)
        for axes in panels:
            axes.set_xlim(extent[0], max(extent[1], grid_extent[1]))
            axes.set_ylim(max(extent[2], grid_extent[2]), extent[3])
            axes.set_xlabel("x (slide pixels)")
            axes.set_aspect("equal")
        panels[0].set_ylabel("y (slide pixels)")
        figure.suptitle(f"patient {patient_id}" + (f" - {subtitle}" if subtitle else ""),
                        fontsize=11)
        return plots.save_figure(figure, path)


def select_patients(rows: list[dict], selection: str) -> list[str]:
    """Which patients get a slide map.

    selection: "all"; a count N (N patients spread evenly over the range of true IDC fraction,
    so low-, mid- and high-extent slides are all shown); or comma-separated patient ids. A single
    number that is a patient id of `rows` is taken as that id. "0" or "" selects none.
    Raises ValueError for ids not in `rows`, naming the patients it has.
    """
    known = [r["patient_id"] for r in rows]
    text = str(selection).strip()
    if text.lower() == "all":
        return known
    if text in ("", "0", "none"):
        return []
    if text.isdigit() and text not in known:
        count = min(int(text), len(rows))
        ranked = sorted(rows, key=lambda r: (r["true_idc_fraction"], r["patient_id"]))
        picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, count)).astype(int))
        return [ranked[i]["patient_id"] for i in picks]
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise ValueError(f"--slides: patients {', '.join(unknown)} are not in this split; it has "
                         f"{', '.join(known)}")
    return wanted


def parse_selection(selection: str) -> None:
    """Checks the form of --slides before any work (ids are checked against the split later)."""
    text = str(selection).strip()
    if not text or text.lower() in ("all", "none") or text.isdigit():
        return
    if any(not part.strip() for part in text.split(",")):
        raise ValueError(f"--slides={selection!r}: use all, a count N, or comma-separated "
                         "patient ids")
