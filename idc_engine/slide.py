"""Runs an exported model on whole-slide images: tissue tiles at the model's scale, a heatmap.

    python -m idc_engine.slide --model_dir=runs/demo/cancernet --output_dir=slides_out SLIDE...
    python -m idc_engine.slide ... --slide_um_per_pixel=0.25 --num_cpu_devices=2 scan.tiff
    python -m idc_engine.slide ... --slide_um_per_pixel=0.5 --override_slide_scale 72dpi.tiff
    python -m idc_engine.slide ... /data/cohort/ @more_slides.txt      # folders, lists
    python -m idc_engine.slide --summarize OUT                         # the cohort table alone

Every format OpenSlide reads (.svs, .ndpi, .mrxs, pyramidal TIFF, DICOM, ...). Each slide is
tiled at the model's training scale (export/preprocessing.json: 4.0 um/px, 50x50 patches) from
the pyramid level nearest it without being coarser, its background glass skipped by a tissue
mask; tiles are read in parallel, streamed through tf.data and resized to 50x50 on the device,
under the same tf.distribute strategies as training. OUT/<name>/ gets tiles.csv,
idc.geojson (QuPath), heatmap.png, tissue_mask.png and summary.json (idc_engine/slides/outputs.py),
all at once when the slide is done; OUT/cohort.csv a row per slide. Reruns skip finished
slides, and workers sharing a list (--shard, Slurm arrays, Indexed Jobs) never process one
slide twice: idc_engine/slides/cohort.py.

The slide's scale is its file's (OpenSlide's openslide.mpp-x/mpp-y: a vendor's field or a TIFF's
resolution tags), else --slide_um_per_pixel; --override_slide_scale makes the flag win over a
file whose scale is wrong. A scale no microscope produces (outside 0.05-10 um/px), or a finest
level more than 1.25x coarser than the model's patches, is refused, naming both scales and
where the slide's came from.

A slide that cannot be used (OpenSlide cannot open or decode it, its scale is missing or
refused, it is smaller than one tile or holds no tissue) is reported on an `error:` line naming
the file, its output folder is left as it was, and the other slides go on; the command then
exits with 2. Every flag: --helpfull.
"""

import json
import os
import time

from absl import app, flags
from absl import logging as absl_logging

from idc_engine import cli
from idc_engine.slides.config import SlideConfig, model_scale
from idc_engine.slides.reader import SlideError


def define_flags() -> None:
    cli.define_flags(SlideConfig)
    flags.DEFINE_string("summarize", None, "OUTPUT_DIR: rebuild its cohort.csv, cohort.json and "
                        "cohort_idc_fraction.png from the slides' outputs, and nothing else "
                        "(no model, no slide is read).")


def _report(summary: dict) -> str:
    scale = summary["scale"]
    return (f"{summary['slide']}: {summary['level0_dimensions'][0]:,}x"
            f"{summary['level0_dimensions'][1]:,} px at {scale['slide_um_per_pixel']:g} um/px; "
            f"level {scale['level']} ({scale['level_um_per_pixel']:g} um/px), "
            f"{scale['tile_size_at_level']}-px tiles resized to {scale['model_patch_size']} "
            f"({scale['tile_um_per_pixel_after_resize']:.3g} um/px)\n"
            f"  {summary['tissue_tiles']:,} tissue tiles of {summary['grid_tiles']:,} "
            f"({summary['unreadable_tiles']} unreadable): {summary['idc_tiles']:,} IDC at "
            f"threshold {summary['threshold']:.3g}, {summary['idc_area_mm2']:.3f} of "
            f"{summary['tissue_area_mm2']:.3f} mm^2 tissue (IDC fraction "
            f"{summary['idc_fraction']:.1%})\n"
            f"  {summary['seconds']:.1f} s, {summary['tiles_per_second']:,.0f} tiles/s "
            f"(reading + model, {summary['runtime']} runtime), peak memory "
            f"{summary['peak_rss_mb']:,.0f} MB\n"
            f"  summary: {summary['output_dir']}/summary.json\n"
            f"  heatmap: {summary['output_dir']}/heatmap.png")


def summarize(output_dir: str) -> int:
    """--summarize: the cohort table of OUTPUT_DIR rebuilt alone."""
    from idc_engine.slides import cohort_table

    if not os.path.isdir(output_dir):
        raise SlideError(f"--summarize={output_dir}: no such directory")
    totals = cohort_table.write_cohort(output_dir)
    print(json.dumps({key: value for key, value in totals.items() if key != "errors"}))
    print(f"cohort: {os.path.join(output_dir, cohort_table.COHORT_CSV)}")
    return 0


def main(argv) -> int:
    if flags.FLAGS.summarize:
        if len(argv) > 1:
            raise app.UsageError("--summarize takes no slides")
        return summarize(flags.FLAGS.summarize)
    if len(argv) < 2:
        raise app.UsageError("give one or more slide files, directories or @lists")
    config = cli.config_from_flags(SlideConfig)
    config.validate()
    cli.keep_engine_logs_only()
    from idc_engine.slides import cohort_inputs, cohort_shards

    slides = cohort_inputs.expand_slides(argv[1:])
    shard = cohort_shards.resolve_shard(config.shard, config.num_shards)
    mine = shard.take(slides)
    absl_logging.info("%d slides; this worker takes %d: shard %d of %d (%s)", len(slides),
                      len(mine), shard.index, shard.count, shard.source)
    from idc_engine.training.run_dir import find_export, load_threshold

    paths = find_export(config.model_dir)  # before TensorFlow loads: a wrong path fails fast
    from idc_engine.inference import runtime as runtime_lib
    from idc_engine.slides import cohort
    from idc_engine.training import devices

    devices.configure_cpu_devices(config.num_cpu_devices)
    runtime = runtime_lib.choose(paths, config.runtime)
    strategy, description = devices.make_strategy(config.strategy, config.num_cpu_devices)
    if runtime.name == "int8":
        description = "the CPU (LiteRT, int8)"
    absl_logging.info("slides on %s", description)
    with strategy.scope():
        served = runtime_lib.load(paths, runtime)
    threshold, scale = load_threshold(paths, config.threshold), model_scale(paths)
    os.makedirs(config.output_dir, exist_ok=True)
    worker = f"shard_{shard.index}_of_{shard.count}_{time.strftime('%Y%m%d-%H%M%S')}"
    failed = cohort.run_cohort(mine, config, served, strategy, threshold, scale, description,
                               cohort.export_fingerprint(paths.saved_model), _report, worker,
                               runtime)
    print(f"cohort: {os.path.join(config.output_dir, 'cohort.csv')}")
    print(json.dumps({"slides": len(mine), "failed": failed}))
    if failed:
        raise SlideError(f"{len(failed)} of {len(mine)} slides failed: {', '.join(failed)}")
    return 0


def run() -> None:
    """Console-script entry point (idc-slide)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
