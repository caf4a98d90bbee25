"""The PNG figures of explanations: a patch's Grad-CAM (patch | heatmap | overlay), a grid of
every channel of one block's output, and a sheet of all overlays side by side.

matplotlib draws them off-screen (Agg); a dashed cyan line marks where an undersized patch
ends and the converter's white padding starts.
"""

import numpy as np

from idc_engine.data import records

_SHEET_COLUMNS = 8
_SHEET_MAX = 64


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _verdict(probability: float, threshold: float) -> str:
    return "IDC" if probability >= threshold else "non-IDC"


def _label_text(label) -> str:
    return {0: "non-IDC", 1: "IDC"}.get(label, "unknown")


def _mark_padding(axis, height, width) -> None:
    """A dashed line where the original (undersized) patch ends and the converter's white starts."""
    size = records.PATCH_SIZE
    if height and width and (height, width) != (size, size):
        axis.plot([-0.5, width - 0.5, width - 0.5], [height - 0.5, height - 0.5, -0.5],
                  "--", color="cyan", linewidth=1.2)


def _overlay(axis, image, heatmap, strength: float = 0.6) -> None:
    """The patch with the heatmap on top, transparent where the map is 0: tissue stays visible."""
    plt = _pyplot()
    colours = plt.get_cmap("turbo")(np.asarray(heatmap, np.float32))
    colours[..., 3] = strength * np.asarray(heatmap, np.float32)
    axis.imshow(image, interpolation="nearest")
    axis.imshow(colours, interpolation="bilinear")


def render_gradcam(path: str, image, heatmap, probability: float, threshold: float, title: str,
                   label=None, layer: str = "", height=None, width=None,
                   evidence: str = "IDC") -> None:
    """Writes patch | heatmap | overlay as one PNG.

    image uint8 [50, 50, 3]; heatmap float [50, 50] in [0, 1]; probability = P(IDC).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.9), dpi=110)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("patch")
    shown = axes[1].imshow(heatmap, cmap="turbo", vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title(f"Grad-CAM ({layer})" if layer else "Grad-CAM")
    if not np.any(heatmap > 0):
        axes[1].text(0.5, 0.5, f"zero everywhere:\nno evidence for {evidence}\nin this layer",
                     transform=axes[1].transAxes, ha="center", va="center", color="white",
                     fontsize=10)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
    _overlay(axes[2], image, heatmap)
    axes[2].set_title("overlay")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
        _mark_padding(axis, height, width)
    annotated = f"   annotated: {_label_text(label)}" if label is not None else ""
    fig.suptitle(f"{title}\nP(IDC) = {probability:.3f} -> {_verdict(probability, threshold)} "
                 f"at threshold {threshold:g}{annotated}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def feature_mosaic(maps: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[h, w, C] -> one float image of every channel (each scaled to [0, 1]), NaN gaps between.

    Channels in index order, row-major, so a channel sits in the same place for every patch.
    """
    h, w, channels = maps.shape
    columns = columns or (8 if channels <= 64 else 16)
    rows = -(-channels // columns)
    mosaic = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, np.float32)
    low, high = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    scaled = (maps - low) / np.where(high > low, high - low, 1.0)
    for c in range(channels):
        r, q = divmod(c, columns)
        mosaic[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = scaled[:, :, c]
    return mosaic


def render_feature_grid(path: str, image, maps: np.ndarray, block: str, layer: str,
                        title: str) -> None:
    """Writes the patch beside every channel of one block's output, maps float [h, w, C]."""
    plt = _pyplot()
    h, w, channels = maps.shape
    mosaic = feature_mosaic(maps)
    constant = int(np.sum(maps.max(axis=(0, 1)) == maps.min(axis=(0, 1))))
    aspect = mosaic.shape[1] / mosaic.shape[0]
    fig_height = 4.4
    fig = plt.figure(figsize=(fig_height * 0.9 + fig_height * aspect * 0.85, fig_height), dpi=110)
    grid = fig.add_gridspec(1, 2, width_ratios=[1, aspect * 0.95])
    left, right = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    left.imshow(image, interpolation="nearest")
    left.set_title("patch", fontsize=9)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    right.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    dead = f"; {constant} constant (dark)" if constant else ""
    right.set_title(f"{block} output ({layer}): {channels} channels of {h}x{w}\nin channel order, "
                    f"row by row, each scaled to its own range{dead}", fontsize=9)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the two-line title above the grid
    fig.savefig(path)
    plt.close(fig)


def render_sheet(path: str, items: list, heatmaps, probabilities, threshold: float,
                 numbers: list | None = None) -> None:
    """All overlays side by side (at most _SHEET_MAX), P(IDC) and annotation above each.

    items: PatchItem (patch_selection) with an image; heatmaps float [N, 50, 50] in [0, 1];
    probabilities P(IDC) [N]; numbers: the figures' file numbers ("#007"), so a tile leads to
    its gradcam/ file.
    """
    numbers = numbers or [f"#{i}" for i in range(len(items))]
    plt = _pyplot()
    count = min(len(items), _SHEET_MAX)
    columns = min(_SHEET_COLUMNS, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.75 * columns, 2.0 * rows + 0.5), dpi=110,
                             squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for i in range(count):
        axis = axes.ravel()[i]
        _overlay(axis, items[i].image, heatmaps[i])
        p = float(probabilities[i])
        annotated = "" if items[i].label is None else f"\nannot. {_label_text(items[i].label)}"
        wrong = items[i].label is not None and int(p >= threshold) != items[i].label
        axis.set_title(f"{numbers[i]} P(IDC)={p:.2f}{annotated}", fontsize=8,
                       color="red" if wrong else "black")
    shown = "" if count == len(items) else f" (first {count} of {len(items)})"
    fig.suptitle(f"Grad-CAM overlays{shown}; red: prediction at {threshold:g} disagrees with "
                 "the annotation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
