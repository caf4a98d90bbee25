"""Whole-slide inference throughput: python -m idc_engine.slide's phases beside what they cost
alone, and beside the loop a user writes first, on one generated pyramidal TIFF.

    python -m benchmarks.slide_inference                      # untrained CancerNet, 180x180 grid
    python -m benchmarks.slide_inference --model=runs/demo/cancernet --grid=200
    python -m benchmarks.slide_inference --quick              # every figure at tiny sizes

The slide (idc_engine/slides/pyramid_tiff.py): synthetic patches on a --grid x --grid cell grid,
an ellipse of tissue (>= 20,000 tiles at the default) in white glass, level 0 at --um_per_pixel
(3.125: a tile is 64 level-0 pixels, resized to 50), three levels, zlib-compressed TIFF tiles.
Figures, in tissue tiles per second, each the median of --repeats runs (the first three
alternate within each repetition so that they see the same machine load; warm-up excluded):

    engine_end_to_end   run_slide (idc_engine/slides/run.py) whole: thumbnail, tissue mask,
                        tiles read and predicted, every output written
    engine_streaming    its read + tf.data + model phase alone (summary's tiles_per_second)
    read_alone          (a) the same tiles read by the engine's reader (blocks, threads), no model
    model_alone         (b) the SavedModel on the same tiles, already in memory at 50x50
    plain_loop          (c) read_region one tile at a time, PIL resize, the SavedModel on each
                        batch of --batch_size (timed once, after the others)
    engine_end_to_end_int8, model_alone_int8
                        the same with the export's int8 model (--runtime=int8; quantized here
                        for an export without one, benchmarks/litert.py), LiteRT on the
                        usable cores (--model_threads when given)

Targets (issue 16): engine_end_to_end >= 0.8 x min(read_alone, model_alone) and >= 3 x
plain_loop. Two caps hold for any pipeline and are reported beside them:
    shared_cores_ceiling = 1 / (1 / read_alone + 1 / model_alone): where reading and the model
        share the same cores (a CPU-only machine) the end to end needs the CPU time of both
        (0.8 x the slower only if reading is >= 4x faster than the model);
    model_alone_vs_plain_loop: the end to end is never faster than the model alone.
end_to_end_vs_shared_cores_ceiling says how much of the reachable speed the engine gets.
--model_threads=1 --read_threads=1 gives the model and the reader a core each, as a GPU and its
host would. Peak memory: peak RSS of python -m idc_engine.slide in fresh processes on this
slide and on one of a quarter of its tiles (flat in the slide's size: streaming).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from benchmarks import generated_slides, litert, quick, untrained_model
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A model_dir or export dir; default: an untrained CancerNet.")
flags.DEFINE_integer("grid", 180, "Grid cells per side of the slide (tissue: the inscribed "
                     "ellipse, ~0.785 x grid^2 tiles).")
flags.DEFINE_float("um_per_pixel", 3.125, "Level-0 scale of the generated slide.")
flags.DEFINE_integer("repeats", 3, "Timed runs of each alternating figure (median reported).")
flags.DEFINE_integer("batch_size", 256, "Tiles per model call, in every path.")
flags.DEFINE_integer("read_threads", 2, "The engine's --read_threads (read_alone and end to end).")
flags.DEFINE_integer("model_threads", 0, "TensorFlow's intra-op threads (0: one per core). With "
                     "1 and --read_threads=1 the model and the reader each get one of 2 cores, "
                     "as a GPU and the host would: the overlap the engine is built for.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
quick.define_flag()
QUICK_SIZES = {"grid": 16, "repeats": 1, "batch_size": 32}


def _int8_paths(paths, work: str):
    """(export paths with an int8 model, where it comes from): benchmarks/litert.py's."""
    import keras

    from idc_engine.training.run_dir import load_preprocessing

    model = keras.saving.load_model(paths.keras)
    return litert.int8_export_paths(paths, model, load_preprocessing(paths),
                                    generated_slides.patch_pool(work), work)


def _engine_plan(slide: str, paths, int8_paths):
    """({figure: fn()} of the alternating figures, the SavedModel run's summaries, plain_loop(),
    tiles) over the same tissue tiles."""
    import tensorflow as tf

    from idc_engine.inference import runtime
    from idc_engine.inference.serving import ServedModel
    from idc_engine.slides import predict, run, tiles
    from idc_engine.slides.config import SlideConfig, model_scale
    from idc_engine.training.int8_model import Int8Model
    from idc_engine.training.run_dir import load_threshold

    served = ServedModel(paths.saved_model)
    int8 = Int8Model(int8_paths, FLAGS.model_threads or None)
    int8_runtime = runtime.Runtime("int8", "benchmarks.slide_inference")
    config = SlideConfig(model_dir=paths.export_dir, output_dir=tempfile.mkdtemp(),
                         batch_size=FLAGS.batch_size, read_threads=FLAGS.read_threads)
    scale, threshold = model_scale(paths), load_threshold(paths)
    plan = run.plan_slide(slide, config, scale)
    grid, col, row = plan.grid, plan.col, plan.row
    strategy = tf.distribute.get_strategy()
    summaries = []

    def engine():
        summaries.append(run.run_slide(slide, config, served, strategy, threshold, scale))

    def engine_int8():
        run.run_slide(slide, config, int8, strategy, threshold, scale, runtime=int8_runtime)

    def read():
        for _ in tiles.read_tiles(slide, grid, col, row, config.read_threads, []):
            pass

    in_memory = np.concatenate([predict.resize_to_patch(tf.constant(images), 50).numpy()
                                for images, _ in tiles.read_tiles(slide, grid, col, row, 2, [])])

    def model(serve=served):
        for start in range(0, len(in_memory), FLAGS.batch_size):
            serve(in_memory[start:start + FLAGS.batch_size])

    timed = {"engine_end_to_end": engine, "read_alone": read, "model_alone": model,
             "engine_end_to_end_int8": engine_int8, "model_alone_int8": lambda: model(int8)}
    return timed, summaries, _plain_loop(slide, grid, col, row, served), len(col)


def _plain_loop(slide: str, grid, col, row, served):
    """(c): what a user writes first: one read_region per tile, PIL resize, predict per batch."""
    import openslide
    from PIL import Image

    def loop():
        handle = openslide.OpenSlide(slide)
        xs, ys = grid.level0_xy(col, row)
        batch = []
        for x, y in zip(xs.tolist(), ys.tolist()):
            tile = handle.read_region((x, y), grid.level, (grid.size, grid.size)).convert("RGB")
            batch.append(np.asarray(tile.resize((50, 50), Image.Resampling.BILINEAR)))
            if len(batch) == FLAGS.batch_size:
                served(np.stack(batch))
                batch = []
        if batch:
            served(np.stack(batch))
        handle.close()

    return loop


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak_rss_mb(slide: str, model: str, work: str) -> float:
    """Peak RSS of python -m idc_engine.slide on one slide, in a fresh process (its summary)."""
    out = os.path.join(work, "cli_" + os.path.basename(slide))
    subprocess.run([sys.executable, "-m", "idc_engine.slide", f"--model_dir={model}",
                    f"--output_dir={out}", f"--batch_size={FLAGS.batch_size}",
                    "--runtime=savedmodel", slide],
                   check=True, capture_output=True)
    name = os.path.basename(slide).split(".")[0]
    with open(os.path.join(out, name, "summary.json")) as f:
        return json.load(f)["peak_rss_mb"]


def main(argv) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    quick.apply(QUICK_SIZES)
    if FLAGS.model_threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.model_threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.model_threads)
    work = tempfile.mkdtemp(prefix="idc_bench_slide_")
    try:
        paths, model_source = untrained_model.benchmark_export(FLAGS.model, work)
        slide, small = os.path.join(work, "slide.tiff"), os.path.join(work, "small.tiff")
        start = time.perf_counter()
        pool = generated_slides.patch_pool(work)
        cells = generated_slides.write_ellipse_slide(slide, FLAGS.grid, FLAGS.um_per_pixel, pool)
        build_seconds = time.perf_counter() - start
        small_cells = generated_slides.write_ellipse_slide(small, FLAGS.grid // 2,
                                                           FLAGS.um_per_pixel, pool)
        int8_paths, int8_source = _int8_paths(paths, work)
        timed, summaries, plain, num_tiles = _engine_plan(slide, paths, int8_paths)
        for fn in timed.values():  # warm-up: tracing, the file in the page cache
            fn()
        seconds = {key: [] for key in timed}
        for _ in range(FLAGS.repeats):
            for key, fn in timed.items():
                seconds[key].append(_timed(fn))
        plain_seconds = _timed(plain)
        rates = {key: num_tiles / statistics.median(v) for key, v in seconds.items()}
        streaming = statistics.median(s["tiles_per_second"] for s in summaries[1:])
        report = BenchmarkReport("slide_inference", FLAGS.output_dir, config={
            "quick": FLAGS.quick, "model": model_source, "grid": FLAGS.grid,
            "um_per_pixel": FLAGS.um_per_pixel,
            "slide_cells_with_tissue": cells, "tissue_tiles": num_tiles,
            "small_slide_cells_with_tissue": small_cells, "slide_build_seconds": build_seconds,
            "batch_size": FLAGS.batch_size, "repeats": FLAGS.repeats,
            "read_threads": FLAGS.read_threads, "model_threads": FLAGS.model_threads or "all",
            "scale": summaries[-1]["scale"], "cores": len(os.sched_getaffinity(0)),
            "int8_model": int8_source})
        for key, rate in rates.items():
            report.add(f"{key}_tiles_per_s", rate, seconds=seconds[key])
        report.add("engine_streaming_tiles_per_s", streaming)
        report.add("plain_loop_tiles_per_s", num_tiles / plain_seconds)
        report.add("end_to_end_vs_slower_of_read_and_model",
                   rates["engine_end_to_end"] / min(rates["read_alone"], rates["model_alone"]))
        report.add("end_to_end_vs_plain_loop", rates["engine_end_to_end"] * plain_seconds / num_tiles)
        ceiling = 1.0 / (1.0 / rates["read_alone"] + 1.0 / rates["model_alone"])
        report.add("shared_cores_ceiling_tiles_per_s", ceiling)
        report.add("shared_cores_ceiling_vs_slower_of_read_and_model",
                   ceiling / min(rates["read_alone"], rates["model_alone"]))
        report.add("end_to_end_vs_shared_cores_ceiling", rates["engine_end_to_end"] / ceiling)
        report.add("model_alone_vs_plain_loop", rates["model_alone"] * plain_seconds / num_tiles)
        report.add("end_to_end_int8_vs_plain_loop",
                   rates["engine_end_to_end_int8"] * plain_seconds / num_tiles)
        report.add("end_to_end_int8_vs_savedmodel",
                   rates["engine_end_to_end_int8"] / rates["engine_end_to_end"])
        report.add("model_alone_int8_vs_savedmodel",
                   rates["model_alone_int8"] / rates["model_alone"])
        report.add("peak_rss_mb_cli_slide", _peak_rss_mb(slide, paths.export_dir, work))
        report.add("peak_rss_mb_cli_quarter_slide", _peak_rss_mb(small, paths.export_dir, work))
        report.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
