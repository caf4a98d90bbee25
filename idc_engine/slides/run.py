"""One slide through the phases: scale -> tissue -> tiles -> model -> outputs.

    1. scale: the slide's um/px (OpenSlide's mpp, or --slide_um_per_pixel), the level nearest
       the model's scale without being coarser, the tile grid on it (reader, tiles);
    2. tissue: Otsu on the thumbnail's saturation; tiles with too little tissue are skipped and
       the mask is saved (tissue);
    3. model: the tissue tiles read by blocks in threads, streamed through tf.data with
       prefetch, resized to 50x50 on the device and served under the strategy (predict);
    4. outputs: tiles.csv, idc.geojson, heatmap.png, summary.json last (outputs, heatmap).
"""

import os
import resource
import time

import numpy as np

from idc_engine.inference import tta
from idc_engine.slides import heatmap, outputs, predict, reader, tiles, tissue
from idc_engine.slides.config import SlideConfig

THUMBNAIL_MAX = 4096   # the mask's longer side at most (pixels)
MASK_PER_TILE = 4      # mask pixels per tile side aimed at, so the tissue fraction means something


def _thumbnail_size(info: reader.SlideInfo, tile_level0: float) -> tuple[int, int]:
    width, height = info.dimensions
    side = int(min(THUMBNAIL_MAX, max(512, max(width, height) * MASK_PER_TILE / tile_level0)))
    return side, side


def _plan(path: str, config: SlideConfig, scale: dict):
    """(info, grid, thumbnail, mask, tissue tiles' col and row int [N]); SlideError naming the
    file when it cannot be opened, has no scale or no tissue."""
    info = reader.open_info(path, config.slide_um_per_pixel)
    target = scale["patch_um_per_pixel"]
    level = reader.choose_level(info.level_downsamples, info.um_per_pixel, target)
    grid = tiles.make_grid(level, info.level_dimensions[level], info.level_downsamples[level],
                           info.um_per_pixel, target, scale["patch_size"])
    thumb = reader.thumbnail(path, _thumbnail_size(info, grid.level0_size))
    mask = tissue.detect_tissue(thumb, info.dimensions, config.tissue_threshold)
    col, row = (a.ravel() for a in np.meshgrid(np.arange(grid.columns), np.arange(grid.rows)))
    x, y = grid.level0_xy(col, row)
    keep = tissue.tile_fractions(mask, x, y, grid.level0_size, grid.level0_size) >= \
        config.min_tissue_fraction
    if not keep.any():
        raise reader.SlideError(
            f"{path}: no tissue found (saturation threshold {mask.threshold:.3f} from "
            f"{mask.threshold_source}; {mask.fraction:.1%} of the thumbnail above it, no tile "
            f"with >= {config.min_tissue_fraction:.0%} tissue); lower --tissue_threshold or "
            "--min_tissue_fraction if the slide does hold tissue")
    return info, grid, thumb, mask, col[keep], row[keep]


def _scale_record(info, grid: tiles.TileGrid, scale: dict) -> dict:
    return {"slide_um_per_pixel": info.um_per_pixel, "slide_scale_source": info.scale_source,
            "model_um_per_pixel": scale["patch_um_per_pixel"], "model_patch_size":
            scale["patch_size"], "model_scale_source": scale["source"], "level": grid.level,
            "level_downsample": grid.downsample, "level_um_per_pixel": grid.level_um_per_pixel,
            "tile_size_at_level": grid.size, "tile_size_level0": grid.level0_size,
            "tile_um_per_pixel_after_resize": grid.tile_um_per_pixel}


def _counts(grid, info, num_tissue: int, probability, idc, unreadable: list) -> dict:
    tile_mm2 = (grid.level0_size * info.um_per_pixel / 1000.0) ** 2
    num_idc = int(np.sum(idc))
    return {"grid_tiles": grid.columns * grid.rows, "tissue_tiles": num_tissue,
            "tiles_read": int(len(probability)), "unreadable_tiles": len(unreadable),
            "idc_tiles": num_idc, "tissue_area_mm2": round(len(probability) * tile_mm2, 4),
            "idc_area_mm2": round(num_idc * tile_mm2, 4),
            "idc_fraction": num_idc / len(probability) if len(probability) else None,
            "mean_idc_probability": float(np.mean(probability)) if len(probability) else None}


def run_slide(path: str, config: SlideConfig, served, strategy, threshold, scale: dict,
              devices: str = "") -> dict:
    """Runs the phases on one slide; returns its summary (also OUT/<name>/summary.json).

    served: inference.serving.ServedModel loaded under `strategy`'s scope; threshold:
    training.run_dir.Threshold; scale: config.model_scale(...); devices: the strategy's
    description, for the summary."""
    start = time.perf_counter()
    info, grid, thumb, mask, col, row = _plan(path, config, scale)
    folder = outputs.slide_output_dir(config.output_dir, path)
    outputs.write_png(os.path.join(folder, outputs.MASK_PNG), mask.mask)
    unreadable = []
    dataset = tiles.tile_dataset(path, grid, col, row, config.batch_size, config.read_threads,
                                 unreadable)
    inference_start = time.perf_counter()
    signature = (served.signature if config.tta == "none"
                 else tta.augmented_signature(served.signature))
    index, probability = predict.predict_batches(dataset, signature, strategy,
                                                 scale["patch_size"])
    inference_seconds = time.perf_counter() - inference_start
    order = np.argsort(index)
    index, probability = index[order], probability[order]
    x, y = grid.level0_xy(col[index], row[index])
    idc = probability >= threshold.value
    size = grid.level0_size
    outputs.write_tiles_csv(os.path.join(folder, outputs.TILES_CSV), x, y, size, probability, idc)
    outputs.write_geojson(os.path.join(folder, outputs.GEOJSON), x[idc], y[idc], size,
                          probability[idc])
    counts = _counts(grid, info, len(col), probability, idc, unreadable)
    heatmap.render_heatmap(
        os.path.join(folder, outputs.HEATMAP_PNG), thumb, info.dimensions,
        heatmap.probability_grid(col[index], row[index], probability, (grid.rows, grid.columns)),
        grid.size * grid.downsample, threshold.value,
        f"{os.path.basename(path)}: {counts['idc_tiles']:,} IDC tiles of "
        f"{counts['tiles_read']:,} tissue tiles ({counts['idc_area_mm2']:.2f} mm^2)")
    seconds = time.perf_counter() - start
    summary = {"slide": os.path.abspath(path), "vendor": info.vendor,
               "level0_dimensions": list(info.dimensions), "scale": _scale_record(info, grid, scale),
               "tissue": {"saturation_threshold": mask.threshold, "source": mask.threshold_source,
                          "min_tissue_fraction": config.min_tissue_fraction,
                          "mask_tissue_fraction": mask.fraction},
               **counts, "threshold": threshold.value, "threshold_source": threshold.source,
               "unreadable_regions": unreadable, "seconds": round(seconds, 3),
               "inference_seconds": round(inference_seconds, 3),
               "tiles_per_second": round(len(probability) / inference_seconds, 1),
               "devices": devices, "tta": config.tta,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "output_dir": folder}
    outputs.write_summary(os.path.join(folder, outputs.SUMMARY_JSON), summary)
    return summary
