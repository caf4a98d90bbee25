"""heatmap.png: the slide's thumbnail with the IDC probability of each tissue tile laid over it
and a colour bar marking the threshold, in the colours of evaluate's slide maps."""

import matplotlib
import matplotlib.cm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from idc_engine import atomic_files  # noqa: E402
from idc_engine.evaluation import plots  # noqa: E402

THRESHOLD_COLOUR = "#00e676"  # green, as on evaluate's slide maps
COLORMAP = "magma_r"          # P(IDC) 0 -> 1: pale yellow -> black through red
ALPHA = 0.6                   # the probabilities' opacity over the thumbnail


def probability_grid(col, row, probability, shape: tuple[int, int]) -> np.ndarray:
    """float32 [rows, cols]: each tile's probability at its grid cell, nan where no tile."""
    grid = np.full(shape, np.nan, np.float32)
    grid[np.asarray(row), np.asarray(col)] = probability
    return grid


def colour_table() -> np.ndarray:
    """uint8 [256, 3]: the heatmap's colour of a probability p at index min(floor(256 p), 255),
    matplotlib's own lookup of a float in a 256-colour map (the viewer's overlay uses it)."""
    return np.round(plt.get_cmap(COLORMAP)(np.arange(256))[:, :3] * 255).astype(np.uint8)


def render_heatmap(path: str, thumb: np.ndarray, level0_size: tuple[int, int], grid: np.ndarray,
                   tile_level0: float, threshold: float, title: str) -> None:
    """thumb uint8 [h, w, 3] of the slide (level-0 size (width, height)); grid float [rows,
    cols] of probabilities (nan: not tissue) whose cells are tile_level0 level-0 pixels."""
    width, height = level0_size
    with plt.rc_context({**plots.STYLE, "axes.grid": False}):
        figure, axes = plt.subplots(figsize=(7.5, max(3.0, 6.0 * height / width) + 0.8),
                                    layout="constrained")
        axes.imshow(thumb, extent=(0, width, height, 0), interpolation="antialiased")
        cmap = plt.get_cmap(COLORMAP).with_extremes(bad=(1, 1, 1, 0))
        extent = (0, grid.shape[1] * tile_level0, grid.shape[0] * tile_level0, 0)
        image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, alpha=ALPHA,
                            extent=extent, interpolation="nearest")
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        axes.set_xlabel("x (level-0 pixels)")
        axes.set_ylabel("y (level-0 pixels)")
        axes.set_title(title)
        # the bar shows the colours at full strength, not as blended over the tissue
        bar = figure.colorbar(matplotlib.cm.ScalarMappable(image.norm, image.cmap), ax=axes,
                              fraction=0.04)
        bar.set_label(f"IDC probability (green: threshold {threshold:.3g})")
        bar.ax.axhline(threshold, color=THRESHOLD_COLOUR, lw=2.5)
        with atomic_files.replace_atomically(path, "wb") as f:
            # zlib level 1: half the render time of the default level for a 17% larger file
            figure.savefig(f, format="png", pil_kwargs={"compress_level": 1})
        plt.close(figure)
