"""One slide through the phases: scale -> tissue -> tiles -> model -> outputs.

    1. scale: the slide's um/px (OpenSlide's mpp, or --slide_um_per_pixel), refused if no
       microscope produces it or it is too much coarser than the model's; the level nearest the
       model's scale without being coarser, the tile grid on it (reader, tiles);
    2. tissue: Otsu on the thumbnail's saturation (the slide's first pixels read); tiles with
       too little tissue are skipped and the mask is saved (tissue);
    3. model: the tissue tiles read by blocks in threads, streamed through tf.data with
       prefetch, resized to 50x50 on the device and served under the strategy (predict);
    4. outputs: tiles.csv, idc.geojson, heatmap.png, summary.json last, in a staging folder
       that replaces the slide's output folder in one step (outputs, heatmap).

Any OpenSlide error is a SlideError naming the file (reader.openslide_errors): the command
reports the slide and goes on to the next.
"""

import datetime
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
    file when it cannot be opened or read, its scale is unknown or unusable, or it holds no
    tissue tile."""
    info = reader.open_info(path, config.slide_um_per_pixel, config.override_slide_scale)
    target = scale["patch_um_per_pixel"]
    reader.check_scale(path, info.um_per_pixel, info.scale_source, target)
    level = reader.choose_level(info.level_downsamples, info.um_per_pixel, target)
    grid = tiles.make_grid(level, info.level_dimensions[level], info.level_downsamples[level],
                           info.um_per_pixel, target, scale["patch_size"])
    thumb = reader.thumbnail(path, _thumbnail_size(info, grid.level0_size))
    _check_holds_a_tile(path, info, grid, scale)
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


def _check_holds_a_tile(path: str, info: reader.SlideInfo, grid: tiles.TileGrid,
                        scale: dict) -> None:
    """SlideError when the slide is narrower or lower than one tile: its only tiles would be
    mostly white padding, nothing like the patches the model learnt. After the thumbnail, so
    that a slide OpenSlide cannot decode is named as such first."""
    width, height = info.dimensions
    if min(width, height) < grid.level0_size:
        um = info.um_per_pixel
        raise reader.SlideError(
            f"{path}: the slide, {width:,}x{height:,} px ({width * um:,.0f}x{height * um:,.0f} "
            f"um), is smaller than one tile ({grid.level0_size:,} px = "
            f"{grid.level0_size * um:,.0f} um at level 0: what a {scale['patch_size']}-px patch "
            f"at {scale['patch_um_per_pixel']:g} um/px covers)")


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


def _predict(path: str, grid, col, row, config: SlideConfig, served, strategy, scale: dict,
             start: float, runtime=None):
    """(index int64 [n], probability float32 [n] in tile order, unreadable regions, seconds)
    of the tissue tiles (col, row int [N]); SlideError if the reading stopped, or ran past
    --slide_timeout_seconds from `start` (time.perf_counter())."""
    report = tiles.ReadReport()
    if config.slide_timeout_seconds:
        report.deadline = time.monotonic() + config.slide_timeout_seconds - (
            time.perf_counter() - start)
        report.timeout_message = (f"{path}: stopped after --slide_timeout_seconds="
                                  f"{config.slide_timeout_seconds:g} ({len(col):,} tissue tiles)")
    dataset = tiles.tile_dataset(path, grid, col, row, config.batch_size, config.read_threads,
                                 report)
    inference_start = time.perf_counter()
    if runtime is not None and runtime.name == "int8":  # numpy in, numpy out: no strategy
        index, probability = predict.predict_batches_on_host(
            dataset, tta.with_tta(served, config.tta), scale["patch_size"])
    else:
        signature = (served.signature if config.tta == "none"
                     else tta.augmented_signature(served.signature))
        index, probability = predict.predict_batches(dataset, signature, strategy,
                                                     scale["patch_size"])
    seconds = time.perf_counter() - inference_start
    if report.stopped_by is not None:
        raise report.stopped_by
    order = np.argsort(index)
    return index[order], probability[order], report.unreadable, seconds


def run_slide(path: str, config: SlideConfig, served, strategy, threshold, scale: dict,
              devices: str = "", runtime=None, name: str | None = None,
              record: dict | None = None) -> dict:
    """Runs the phases on one slide; returns its summary (also OUT/<name>/summary.json).

    served: inference.serving.ServedModel loaded under `strategy`'s scope, or the int8 model
    (runtime: inference.runtime.Runtime, whose choice the summary records; None: the
    SavedModel); threshold: training.run_dir.Threshold; scale: config.model_scale(...);
    devices: the strategy's description, for the summary; name: the output folder's (default:
    the file name up to its first dot); record: more fields for summary.json (a cohort's
    fingerprint). Raises SlideError naming the file; OUT/<name> is then as it was before."""
    start = time.perf_counter()
    name = name or outputs.slide_output_name(path)
    with reader.openslide_errors(path, "the slide"):  # what the reader's own checks missed
        info, grid, thumb, mask, col, row = _plan(path, config, scale)
        with outputs.staged_slide_dir(config.output_dir, name) as folder:
            outputs.write_png(os.path.join(folder, outputs.MASK_PNG), mask.mask)
            index, probability, unreadable, inference_seconds = _predict(
                path, grid, col, row, config, served, strategy, scale, start, runtime)
            counts = _write_outputs(folder, path, info, grid, thumb, col, row, index,
                                    probability, unreadable, threshold)
            summary = {
                "slide": os.path.abspath(path), "slide_quickhash": info.quickhash,
                "vendor": info.vendor,
                "level0_dimensions": list(info.dimensions),
                "scale": _scale_record(info, grid, scale),
                "tissue": {"saturation_threshold": mask.threshold,
                           "source": mask.threshold_source,
                           "min_tissue_fraction": config.min_tissue_fraction,
                           "mask_tissue_fraction": mask.fraction},
                **counts, "threshold": threshold.value, "threshold_source": threshold.source,
                "unreadable_regions": unreadable,
                "seconds": round(time.perf_counter() - start, 3),
                "inference_seconds": round(inference_seconds, 3),
                "tiles_per_second": round(len(probability) / inference_seconds, 1),
                "devices": devices, "tta": config.tta,
                "model_dir": os.path.abspath(config.model_dir) if config.model_dir else "",
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                **(runtime.record() if runtime else {
                    "runtime": "savedmodel", "runtime_reason": "run_slide given no runtime"}),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "output_dir": os.path.join(config.output_dir, name), **(record or {})}
            outputs.write_summary(os.path.join(folder, outputs.SUMMARY_JSON), summary)
    return summary


def _write_outputs(folder: str, path: str, info, grid, thumb, col, row, index, probability,
                   unreadable: list, threshold) -> dict:
    """tiles.csv, idc.geojson and heatmap.png in `folder`; returns the counts (_counts)."""
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
    return counts
