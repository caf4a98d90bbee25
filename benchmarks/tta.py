"""Test-time augmentation's cost: the SavedModel with and without D4 TTA, same images.

    python -m benchmarks.tta                                   # untrained CancerNet export
    python -m benchmarks.tta --model=runs/demo/cancernet
    python -m benchmarks.tta --quick                           # every figure at tiny sizes

Paths, each over the same --num_images uint8 patches in batches of --batch_size:
    none         the served model (what predict runs without --tta)
    d4_one_call  idc_engine.inference.tta: the 8 views of a batch in one call of 8 x batch
    d4_8_calls   the naive way: 8 calls, one per view, then the mean
The paths alternate within each of --repeats repetitions (one warm-up excluded), so they see the
same machine load; rates are medians, ratios those of the medians measured side by side.
"""

import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from benchmarks import quick, untrained_model
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A model_dir or export dir; default: an untrained CancerNet.")
flags.DEFINE_integer("num_images", 2048, "Patches per timed run (random uint8).")
flags.DEFINE_integer("batch_size", 256, "Patches per call (x8 with d4_one_call).")
flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where tta.json and TensorBoard go.")
quick.define_flag()
QUICK_SIZES = {"num_images": 32, "batch_size": 16, "repeats": 1}


def paths_to_time(served, images) -> dict:
    """{name: run()} of the three paths of the module docstring."""
    from idc_engine.inference import tta

    augmented = tta.TestTimeAugmented(served)
    batches = [images[i:i + FLAGS.batch_size] for i in range(0, len(images), FLAGS.batch_size)]

    def eight_calls(batch):
        views = np.asarray(tta.dihedral_views(batch)).reshape(8, *batch.shape)
        return np.mean([served(v) for v in views], axis=0)

    return {"none": lambda: [served(b) for b in batches],
            "d4_one_call": lambda: [augmented(b) for b in batches],
            "d4_8_calls": lambda: [eight_calls(b) for b in batches]}


def main(argv) -> None:
    del argv
    from idc_engine.inference import serving

    absl_logging.set_verbosity(absl_logging.WARNING)
    quick.apply(QUICK_SIZES)
    work = tempfile.mkdtemp(prefix="idc_bench_tta_")
    try:
        paths, source = untrained_model.benchmark_export(FLAGS.model, work)
        served = serving.ServedModel(paths.saved_model)
        images = np.random.default_rng(0).integers(0, 256, (FLAGS.num_images, 50, 50, 3),
                                                   dtype=np.uint8)
        timed = paths_to_time(served, images)
        for run in timed.values():
            run()  # warm-up: tracing of each batch shape
        rates = {name: [] for name in timed}
        for _ in range(FLAGS.repeats):
            for name, run in timed.items():
                start = time.perf_counter()
                run()
                rates[name].append(len(images) / (time.perf_counter() - start))
        report = BenchmarkReport("tta", FLAGS.output_dir, config={
            "quick": FLAGS.quick, "model": source, "num_images": len(images), "batch_size": FLAGS.batch_size,
            "repeats": FLAGS.repeats, "cores": len(os.sched_getaffinity(0))})
        median = {name: statistics.median(values) for name, values in rates.items()}
        for name, values in rates.items():
            report.add(f"{name}_images_per_s", median[name], all=values)
        report.add("cost_none_over_d4_one_call", median["none"] / median["d4_one_call"])
        report.add("d4_one_call_over_8_calls", median["d4_one_call"] / median["d4_8_calls"])
        report.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
