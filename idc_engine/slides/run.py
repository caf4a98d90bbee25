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

import dataclasses
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


@dataclasses.dataclass
class SlidePlan:
    """A slide ready for the model: info (reader.SlideInfo), grid (tiles.TileGrid), thumb
    (uint8 [h, w, 3]), mask (tissue.TissueMask), col and row (int [N]: the tissue tiles),
    started (time.time() when planning began) and seconds (planning's wall time)."""
    path: str
    info: object
    grid: object
    thumb: np.ndarray
    mask: object
    col: np.ndarray
    row: np.ndarray
    started: float
    seconds: float


def plan_slide(path: str, config: SlideConfig, scale: dict) -> SlidePlan:
    """Phases 1 and 2 (scale, tissue); SlideError naming the file when it cannot be opened or
    read, its scale is unknown or unusable, or it holds no tissue tile."""
    started, start = time.time(), time.perf_counter()
    with reader.openslide_errors(path, "the slide"):  # what the reader's own checks missed
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
    return SlidePlan(path, info, grid, thumb, mask, col[keep], row[keep], started,
                     time.perf_counter() - start)


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


@dataclasses.dataclass
class SlidePrediction:
    """Phase 3's result: index (int64 [n]) and probability (float32 [n]) of the tiles read, in
    tile order; unreadable regions (tiles.ReadReport's); seconds of reading and inference."""
    index: np.ndarray
    probability: np.ndarray
    unreadable: list
    seconds: float


def predict_slide(plan: SlidePlan, config: SlideConfig, served, strategy, scale: dict,
                  runtime=None) -> SlidePrediction:
    """Phase 3: the plan's tissue tiles read and served; SlideError if the reading stopped, or
    the slide ran past --slide_timeout_seconds (its planning counted in, not any wait)."""
    path, report = plan.path, tiles.ReadReport()
    with reader.openslide_errors(path, "the slide"):
        if config.slide_timeout_seconds:
            report.deadline = time.monotonic() + config.slide_timeout_seconds - plan.seconds
            report.timeout_message = (
                f"{path}: stopped after --slide_timeout_seconds="
                f"{config.slide_timeout_seconds:g} ({len(plan.col):,} tissue tiles)")
        dataset = tiles.tile_dataset(path, plan.grid, plan.col, plan.row, config.batch_size,
                                     config.read_threads, report)
        start = time.perf_counter()
        if runtime is not None and runtime.name == "int8":  # numpy in, numpy out: no strategy
            index, probability = predict.predict_batches_on_host(
                dataset, tta.with_tta(served, config.tta), scale["patch_size"])
        else:
            signature = (served.signature if config.tta == "none"
                         else tta.augmented_signature(served.signature))
            index, probability = predict.predict_batches(dataset, signature, strategy,
                                                         scale["patch_size"])
        seconds = time.perf_counter() - start
    if report.stopped_by is not None:
        raise report.stopped_by
    order = np.argsort(index)
    return SlidePrediction(index[order], probability[order], report.unreadable, seconds)


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
    plan = plan_slide(path, config, scale)
    prediction = predict_slide(plan, config, served, strategy, scale, runtime)
    return write_slide(plan, prediction, config, threshold, scale, devices, runtime, name, record)


def write_slide(plan: SlidePlan, prediction: SlidePrediction, config: SlideConfig, threshold,
                scale: dict, devices: str = "", runtime=None, name: str | None = None,
                record: dict | None = None) -> dict:
    """Phase 4: OUT/<name>/ replaced in one step by the slide's outputs, summary.json last;
    returns the summary (run_slide's arguments)."""
    start, path, info, grid = time.perf_counter(), plan.path, plan.info, plan.grid
    name = name or outputs.slide_output_name(path)
    with outputs.staged_slide_dir(config.output_dir, name) as folder:
        outputs.write_png(os.path.join(folder, outputs.MASK_PNG), plan.mask.mask)
        counts = _write_outputs(folder, plan, prediction, threshold)
        write_seconds = time.perf_counter() - start
        summary = {
            "slide": os.path.abspath(path), "slide_quickhash": info.quickhash,
            "vendor": info.vendor, "level0_dimensions": list(info.dimensions),
            "scale": _scale_record(info, grid, scale),
            "tissue": {"saturation_threshold": plan.mask.threshold,
                       "source": plan.mask.threshold_source,
                       "min_tissue_fraction": config.min_tissue_fraction,
                       "mask_tissue_fraction": plan.mask.fraction},
            **counts, "threshold": threshold.value, "threshold_source": threshold.source,
            "unreadable_regions": prediction.unreadable,
            "seconds": round(plan.seconds + prediction.seconds + write_seconds, 3),
            "plan_seconds": round(plan.seconds, 3),
            "inference_seconds": round(prediction.seconds, 3),
            "write_seconds": round(write_seconds, 3),
            "tiles_per_second": round(len(prediction.probability) / prediction.seconds, 1),
            "started": _iso(plan.started), "finished": _iso(time.time()),
            "devices": devices, "tta": config.tta,
            "model_dir": os.path.abspath(config.model_dir) if config.model_dir else "",
            **(runtime.record() if runtime else {
                "runtime": "savedmodel", "runtime_reason": "run_slide given no runtime"}),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "output_dir": os.path.join(config.output_dir, name), **(record or {})}
        outputs.write_summary(os.path.join(folder, outputs.SUMMARY_JSON), summary)
    return summary


def _iso(seconds: float) -> str:
    """UTC to the millisecond (the cohort benchmark orders slides by it)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


def _write_outputs(folder: str, plan: SlidePlan, prediction: SlidePrediction, threshold) -> dict:
    """tiles.csv, idc.geojson and heatmap.png in `folder`; returns the counts (_counts)."""
    grid, col, row, index = plan.grid, plan.col, plan.row, prediction.index
    probability = prediction.probability
    x, y = grid.level0_xy(col[index], row[index])
    idc = probability >= threshold.value
    size = grid.level0_size
    outputs.write_tiles_csv(os.path.join(folder, outputs.TILES_CSV), x, y, size, probability, idc)
    outputs.write_geojson(os.path.join(folder, outputs.GEOJSON), x[idc], y[idc], size,
                          probability[idc])
    counts = _counts(grid, plan.info, len(col), probability, idc, prediction.unreadable)
    heatmap.render_heatmap(
        os.path.join(folder, outputs.HEATMAP_PNG), plan.thumb, plan.info.dimensions,
        heatmap.probability_grid(col[index], row[index], probability, (grid.rows, grid.columns)),
        grid.size * grid.downsample, threshold.value,
        f"{os.path.basename(plan.path)}: {counts['idc_tiles']:,} IDC tiles of "
        f"{counts['tiles_read']:,} tissue tiles ({counts['idc_area_mm2']:.2f} mm^2)")
    return counts
