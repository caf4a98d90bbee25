"""Input pipeline throughput: the engine's ways to feed a step against the bare read and a baseline,
and the device-resident mode's host memory and time to its first step.

    python -m benchmarks.input_pipeline --output_dir=runs/bench_input           # synthetic data
    python -m benchmarks.input_pipeline --data_dir=~/data/idc_tfrecords --png_dir=~/data/IDC \\
        --output_dir=runs/bench_input --batch_size=256
    python -m benchmarks.input_pipeline --quick      # every figure at tiny sizes (benchmarks/quick.py)

In ONE run on the same split (images/s, warm-up excluded, median of --repetitions):
  engine_img_per_s           make_dataset(training=True): shards -> chunked parse -> shuffle
  engine_cache_img_per_s     make_dataset(training=True, cache=True): decoded split in RAM
  device_resident_img_per_s  DeviceResidentSampler: batches gathered in device memory
  engine_png_img_per_s       make_dataset(training=True) on shards converted with
                             --image_encoding=png (PNG decoded in the pipeline)
  raw_read_img_per_s         bare tf.data.TFRecordDataset of the same files, batched, no parsing
                             (the faster of a sequential and a parallel read: the upper bound)
  baseline_img_per_s         keras.utils.image_dataset_from_directory on the PNGs of exactly the
                             patches the converter wrote to the split (the copy it read; files
                             it skipped as unreadable left out), same batch size: what a Keras
                             user writes today
What each yields differs, and the JSON says so (config "outputs"): every engine figure is uint8
[B, 50, 50, 3] batches and int32 labels, the float conversion, normalization and augmentation
being left to the device inside the training step (not in these figures); the baseline yields
float32 [B, 50, 50, 3] images on the 0..255 scale, not normalized, not augmented.

Every pipeline is drained inside one tf.function loop, as a training loop with steps_per_loop
would, so Python overhead per batch does not cap any rate. Without --data_dir and --png_dir a
synthetic tree is generated (idc_engine.synthetic) and converted (idc_engine.convert) under
--output_dir/data, and reused by later runs.

--resident_footprint (on by default) adds, each measured in a fresh process (peak RSS from the
kernel's ru_maxrss; memory in MB): TensorFlow alone (its floor), the resident sampler alone
(read the split, place it, draw one batch) and `python -m idc_engine.train --input_mode=device`
through its first step on the train split alone; `resident_*_vs_split` = (peak - TensorFlow's
floor) / the split's image bytes, and the seconds from process start to the first batch / step.

Results: --output_dir/input_pipeline.json (with the machine), TensorBoard runs under
--output_dir/tensorboard/input_pipeline/ (benchmarks/charts.py), and a printed table.
"""

import gc
import math
import os
import shutil
import sys
import time

from absl import app, flags, logging

from benchmarks import quick

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "A converted directory (manifest.json + shards). "
                        "Unset: convert --png_dir, or generate synthetic data.")
    flags.DEFINE_string("png_dir", None, "The original PNG tree, for the "
                        "image_dataset_from_directory baseline (and conversion if no --data_dir).")
    flags.DEFINE_string("output_dir", "runs/bench_input_pipeline", "Where results (and generated "
                        "data) go.")
    flags.DEFINE_string("split", "train", "Which split of the manifest to read.")
    flags.DEFINE_integer("batch_size", 256, "Batch size of every pipeline.")
    flags.DEFINE_integer("repetitions", 5, "Timed repetitions per pipeline; the median is reported.")
    flags.DEFINE_float("min_seconds", 1.5, "Each timed repetition lasts at least about this long.")
    flags.DEFINE_integer("shuffle_buffer", 16384, "make_dataset shuffle_buffer (records).")
    flags.DEFINE_integer("cycle_length", 8, "make_dataset cycle_length (shards read at once).")
    flags.DEFINE_integer("synthetic_patients", 200, "Patients of the generated tree (synthetic mode).")
    flags.DEFINE_integer("synthetic_min_patches", 250, "Fewest patches per generated patient.")
    flags.DEFINE_integer("synthetic_max_patches", 350, "Most patches per generated patient.")
    flags.DEFINE_integer("min_shards", 16, "Conversion --min_shards when this benchmark converts.")
    flags.DEFINE_bool("png_shards", True, "Also convert --png_dir with --image_encoding=png and "
                      "time the engine on those shards (engine_png_img_per_s).")
    flags.DEFINE_bool("resident_footprint", True, "Measure the device-resident mode's peak host "
                      "memory and time to its first step, in fresh processes.")
    flags.DEFINE_string("resident_package_root", None, "Measure the footprint of the idc_engine "
                        "of this checkout instead of this one's (e.g. an older commit's worktree).")
    flags.DEFINE_bool("throughput", True, "Time the pipelines; --nothroughput: only the "
                      "resident footprint.")
    flags.DEFINE_bool("baseline", True, "Time the image_dataset_from_directory baseline (needs "
                      "PNGs).")
    quick.define_flag()


QUICK_SIZES = {"synthetic_patients": 6, "synthetic_min_patches": 40, "synthetic_max_patches": 60,
               "min_shards": 2, "batch_size": 16, "repetitions": 1, "min_seconds": 0.01,
               "shuffle_buffer": 256}


# What every figure's batches are, for the JSON.
OUTPUTS = {
    "engine": "uint8 [B, 50, 50, 3] images + int32 [B] labels; float conversion, normalization "
              "and augmentation are left to the device inside the training step, not timed here",
    "baseline": "float32 [B, 50, 50, 3] images on the 0..255 scale + int32 [B] labels from "
                "keras.utils.image_dataset_from_directory; not normalized, not augmented",
    "raw_read": "serialized records [B], nothing parsed",
}


# --- data --------------------------------------------------------------------------------------

def synthetic_png_tree(root: str) -> str:
    from idc_engine.data import synthetic

    png_dir = os.path.join(root, "png")
    done = os.path.join(root, "png.done")
    if not os.path.exists(done):
        shutil.rmtree(png_dir, ignore_errors=True)
        logging.info("generating a synthetic tree of %d patients in %s", FLAGS.synthetic_patients,
                     png_dir)
        synthetic.write_dataset(png_dir, num_patients=FLAGS.synthetic_patients, seed=0,
                                min_patches=FLAGS.synthetic_min_patches,
                                max_patches=FLAGS.synthetic_max_patches)
        open(done, "w").close()
    return png_dir


def converted(png_dir: str, output_dir: str, image_encoding: str = "raw") -> str:
    """Converts once; a later run reuses a directory whose manifest exists."""
    from idc_engine.data import conversion, manifest

    if not os.path.exists(manifest.manifest_path(output_dir)):
        logging.info("converting %s -> %s (%s)", png_dir, output_dir, image_encoding)
        conversion.convert_tree(png_dir, output_dir, image_encoding=image_encoding,
                                min_shards=FLAGS.min_shards, overwrite=True, progress=False)
    return output_dir


def written_patch_files(png_dir: str, manifest: dict, split: str) -> list[tuple[str, int]]:
    """(path, label) of every patch the converter wrote to `split`, from the copy it read.

    The converter reads a patch's copies in order and writes the first that decodes; every copy
    it could not use is in the manifest's `skipped` list (paths relative to the tree it
    converted), and a patch none of whose copies decoded was never written. So: the split's
    patients' patches, each from its first copy not skipped, those with none left out.
    """
    from idc_engine.data import kaggle_tree

    patients = set(manifest["splits"][split]["patients"])
    skipped = {entry["path"] for entry in manifest.get("skipped", [])}
    files = []
    for patch in kaggle_tree.scan_tree(png_dir).patches:
        readable = [path for path in patch.paths if path not in skipped]
        if patch.patient in patients and readable:
            files.append((os.path.join(png_dir, readable[0]), patch.label))
    return files


def class_folder_tree(files: list[tuple[str, int]], root: str) -> int:
    """`<root>/<0|1>/<file>.png` symlinks to `files`: the layout the tutorial builds for
    image_dataset_from_directory (it copies files; links read the same bytes)."""
    shutil.rmtree(root, ignore_errors=True)
    for label in ("0", "1"):
        os.makedirs(os.path.join(root, label))
    for path, label in files:
        os.symlink(os.path.abspath(path), os.path.join(root, str(label), os.path.basename(path)))
    return len(files)


def baseline_files(png_dir: str, manifest: dict, split: str) -> list[tuple[str, int]]:
    """The baseline's input: exactly the patches the engine reads, or a UsageError saying why
    `png_dir` is not the tree the shards were converted from."""
    files = written_patch_files(png_dir, manifest, split)
    expected = manifest["splits"][split]["num_examples"]
    if len(files) != expected:
        raise app.UsageError(
            f"--png_dir {png_dir!r} holds {len(files):,} readable patches of split {split!r} "
            f"where the conversion wrote {expected:,}; pass the tree it was converted from "
            f"({manifest.get('input', {}).get('dir', 'see manifest.json: input.dir')})")
    return files


# --- the resident split's footprint: peak host memory, time to the first step -----------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEVER = 10**9


# Runs argv[2:] and writes its exit code and peak RSS to argv[1]. A process's ru_maxrss counts
# the pages it held before exec, i.e. its parent's (fork and vfork alike): measured from this
# small launcher (~10 MB), not from a parent holding TensorFlow and datasets.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


def run_measured(command: list[str], package_root: str = REPO, timeout: float = 1800) -> dict:
    """Runs a process in `package_root` (whose idc_engine it imports) to its end;
    {"peak_rss_mb" (its own ru_maxrss), "wall_seconds", "started" (time.time() at spawn),
    "stdout", "stderr", "returncode"}."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        usage_path = os.path.join(scratch, "usage.json")
        started, start = time.time(), time.perf_counter()
        result = subprocess.run([sys.executable, "-c", _LAUNCHER, usage_path, *command],
                                capture_output=True, text=True, cwd=package_root,
                                env={**os.environ, "PYTHONPATH": package_root},
                                timeout=timeout, start_new_session=True)
        wall = time.perf_counter() - start
        with open(usage_path) as f:
            usage = json.load(f)
    return {"peak_rss_mb": usage["maxrss_kb"] / 1024, "wall_seconds": wall, "started": started,
            "stdout": result.stdout, "stderr": result.stderr, "returncode": usage["exit"]}


# Run as `python -c`: reads a split into a DeviceResidentSampler and draws one batch; prints
# seconds (from before importing TensorFlow) to the sampler and to the first batch. Only
# idc_engine is imported, so the same measurement runs against any version of the package.
RESIDENT_CHILD = """
import json, sys, time
start = time.perf_counter()
import tensorflow as tf
from idc_engine.input import pipeline
data_dir, split, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sampler = pipeline.make_device_resident_sampler(data_dir, split, batch, seed=0)
ready = time.perf_counter()
sampler(tf.constant(0, tf.int64))[0].numpy()
print(json.dumps({"seconds_to_sampler": ready - start,
                  "seconds_to_first_batch": time.perf_counter() - start}))
"""


def train_only_view(data_dir: str, root: str) -> str:
    """`root`: the train split of data_dir alone (shards linked, manifest without the other
    splits), so a training run on it has no validation to add to its memory or time."""
    import json

    from idc_engine.data import manifest as manifest_lib

    manifest = manifest_lib.load_manifest(data_dir)
    manifest["splits"] = {"train": manifest["splits"]["train"]}
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for name in manifest["splits"]["train"]["files"]:  # relative: "shards-<id>/train-...tfrecord"
        link = os.path.join(root, name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(data_dir, name)), link)
    with open(manifest_lib.manifest_path(root), "w") as f:
        json.dump(manifest, f)
    return root


_ABSL_TIME = r"^I(\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2}\.\d+) .*\] step 1/"


def first_step_time(log_text: str, started: float) -> float | None:
    """Seconds from `started` (time.time() at spawn) to the engine's log line of step 1."""
    import datetime
    import re

    found = re.search(_ABSL_TIME, log_text, re.MULTILINE)
    if not found:
        return None
    month, day, hour, minute = (int(v) for v in found.groups()[:4])
    now = datetime.datetime.fromtimestamp(started)
    logged = datetime.datetime(now.year, month, day, hour, minute) + datetime.timedelta(
        seconds=float(found.group(5)))
    return logged.timestamp() - started


def resident_footprint(data_dir: str, split: str, batch_size: int, work_dir: str,
                       package_root: str = REPO) -> dict:
    """Peak host memory and time to the first step of the device-resident mode, each in a fresh
    process: TensorFlow alone (its own floor), the sampler alone (read, place, one batch), and
    `python -m idc_engine.train --input_mode=device` through its first step (train split only:
    no validation). Memory in MB; `*_vs_split`: peak above TensorFlow's floor / the split's
    image bytes (1.0 = one copy of the split). `package_root`: the checkout whose idc_engine
    runs (another one measures that version the same way)."""
    import json

    from idc_engine.data import manifest as manifest_lib

    python = sys.executable
    num_examples = manifest_lib.split_info(manifest_lib.load_manifest(data_dir), split,
                                           data_dir)["num_examples"]
    split_mb = num_examples * 50 * 50 * 3 / 2**20
    floor = run_measured([python, "-c", "import tensorflow as tf; (tf.constant(1) + 1).numpy()"],
                         package_root)
    sampler = run_measured([python, "-c", RESIDENT_CHILD, data_dir, split, str(batch_size)],
                           package_root)
    if sampler["returncode"] != 0:
        raise RuntimeError(f"resident sampler run failed: {sampler['stderr'][-2000:]}")
    timings = json.loads(sampler["stdout"].strip().splitlines()[-1])
    view = train_only_view(data_dir, os.path.join(work_dir, "train_only"))
    train = run_measured([python, "-m", "idc_engine.train", f"--data_dir={view}",
                          f"--model_dir={os.path.join(work_dir, 'resident_run')}",
                          "--input_mode=device", "--train_steps=1", "--steps_per_loop=1",
                          f"--global_batch_size={batch_size}", "--export=false",
                          f"--checkpoint_every_steps={NEVER}", "--strategy=default"],
                         package_root)
    shutil.rmtree(os.path.join(work_dir, "resident_run"), ignore_errors=True)
    if train["returncode"] != 0:
        raise RuntimeError(f"resident training run failed: {train['stderr'][-2000:]}")
    return {
        "split_num_examples": num_examples, "split_image_mb": split_mb,
        "tensorflow_floor_peak_mb": floor["peak_rss_mb"],
        "sampler_peak_mb": sampler["peak_rss_mb"],
        "sampler_peak_vs_split": (sampler["peak_rss_mb"] - floor["peak_rss_mb"]) / split_mb,
        "sampler_seconds_to_sampler": timings["seconds_to_sampler"],
        "sampler_seconds_to_first_batch": timings["seconds_to_first_batch"],
        "train_peak_mb": train["peak_rss_mb"],
        "train_peak_vs_split": (train["peak_rss_mb"] - floor["peak_rss_mb"]) / split_mb,
        "train_seconds_to_first_step": first_step_time(train["stderr"], train["started"]),
        "train_wall_seconds": train["wall_seconds"]}


# --- timing ------------------------------------------------------------------------------------

def _checksum(images, labels):
    # Uses every batch, so no op can be pruned as unused (a control dependency is not enough:
    # grappler drops stateless ops whose outputs nobody reads); costs one pixel per image.
    import tensorflow as tf

    return (tf.reduce_sum(tf.cast(images[:, 0, 0, 0], tf.int64))
            + tf.reduce_sum(tf.cast(labels, tf.int64)))


def dataset_steps(dataset):
    """run(n): pulls n batches inside one tf.function (the work a training loop would trigger)."""
    import tensorflow as tf

    iterator = iter(dataset.repeat())

    @tf.function
    def run(n):
        total = tf.constant(0, tf.int64)
        for _ in tf.range(n):
            element = next(iterator)
            if isinstance(element, tuple):  # (images, labels[, metadata])
                total += _checksum(*element[:2])
            else:  # the bare read: serialized records
                total += tf.size(element, out_type=tf.int64)
        return total

    return run


def sampler_steps(sampler):
    """run(n): n steps of a DeviceResidentSampler, numbered on from the previous call."""
    import tensorflow as tf

    position = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def run(n):
        total = tf.constant(0, tf.int64)
        for _ in tf.range(n):
            total += _checksum(*sampler(position.assign_add(1)))
        return total

    return run


def measure(name: str, make_run, batch_size: int, report) -> float:
    """Warm-up, then steps sized to --min_seconds, then the median of --repetitions.

    `make_run()` builds the pipeline here, so it is dropped when this returns: no background
    threads of one pipeline (prefetching, autotuning) run while the next is timed.
    """
    import tensorflow as tf

    from benchmarks.report import median_rate

    gc.collect()  # the previous pipeline's iterator and threads
    run = make_run()
    run(tf.constant(3))  # trace, fill buffers, start threads
    probe_steps = 20
    start = time.perf_counter()
    run(tf.constant(probe_steps)).numpy()
    probe_rate = probe_steps / (time.perf_counter() - start)
    steps = max(probe_steps, math.ceil(FLAGS.min_seconds * probe_rate))
    rate, rates = median_rate(lambda: run(tf.constant(steps)).numpy(), steps * batch_size,
                              FLAGS.repetitions, warmup=1)
    report.add(name, rate, rates=[round(r) for r in rates], steps=steps)
    logging.info("%-30s %12.0f img/s  (%d steps, runs %s)", name, rate, steps,
                 [round(r) for r in rates])
    return rate


# --- the pipelines -----------------------------------------------------------------------------

def raw_read_datasets(paths, batch_size) -> dict:
    """Builders of the bare read: records batched as strings, nothing parsed."""
    import tensorflow as tf

    def sequential():
        return tf.data.TFRecordDataset(paths, buffer_size=1 << 20).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)

    def parallel():
        return tf.data.Dataset.from_tensor_slices(paths).interleave(
            lambda p: tf.data.TFRecordDataset(p, buffer_size=1 << 20),
            cycle_length=min(len(paths), FLAGS.cycle_length), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return {"sequential": sequential, "parallel": parallel}


def baseline_dataset(class_root: str, batch_size: int):
    import keras

    return keras.utils.image_dataset_from_directory(
        class_root, labels="inferred", label_mode="int", image_size=(50, 50),
        batch_size=batch_size, shuffle=True, seed=0, verbose=False)


def time_pipelines(report, data_dir: str, png_dir: str | None, manifest: dict, paths: list,
                   data_root: str) -> None:
    """Every pipeline's img/s and their ratios into `report` (see the module docstring)."""
    from idc_engine.input import pipeline

    batch = FLAGS.batch_size
    options = dict(shuffle_buffer=FLAGS.shuffle_buffer, cycle_length=FLAGS.cycle_length, seed=0)

    def host_pipeline(data=data_dir, **extra):
        return lambda: dataset_steps(pipeline.make_dataset(data, FLAGS.split, batch, training=True,
                                                           **options, **extra))

    engine = measure("engine_img_per_s", host_pipeline(), batch, report)
    cache = measure("engine_cache_img_per_s", host_pipeline(cache=True), batch, report)
    resident = measure("device_resident_img_per_s", lambda: sampler_steps(
        pipeline.make_device_resident_sampler(data_dir, FLAGS.split, batch, seed=0)), batch, report)
    raw_rates = {kind: measure(f"raw_read_{kind}_img_per_s",
                               lambda make=make: dataset_steps(make()), batch, report)
                 for kind, make in raw_read_datasets(paths, batch).items()}
    raw = max(raw_rates.values())
    report.add("raw_read_img_per_s", raw)

    if FLAGS.png_shards and png_dir:
        png_data = converted(png_dir, os.path.join(data_root, "tfrecords_png"), "png")
        png = measure("engine_png_img_per_s", host_pipeline(png_data), batch, report)
        report.add("png_vs_raw_shards", png / engine)

    report.add("engine_vs_raw_read", engine / raw)
    report.add("cache_vs_engine", cache / engine)
    report.add("device_resident_vs_engine", resident / engine)
    if FLAGS.baseline and png_dir:
        class_root = os.path.join(FLAGS.output_dir, "baseline_class_tree")
        count = class_folder_tree(baseline_files(png_dir, manifest, FLAGS.split), class_root)
        report.config["baseline_num_files"] = count
        baseline = measure("baseline_img_per_s",
                           lambda: dataset_steps(baseline_dataset(class_root, batch)), batch, report)
        report.add("engine_vs_baseline", engine / baseline)
    else:
        logging.warning("no --png_dir: the image_dataset_from_directory baseline is skipped")


def main(argv) -> None:
    del argv
    import tensorflow as tf

    from benchmarks.report import BenchmarkReport
    from idc_engine.data import manifest as manifest_lib

    quick.apply(QUICK_SIZES)
    output_dir = FLAGS.output_dir
    data_root = os.path.join(output_dir, "data")
    png_dir, data_dir = FLAGS.png_dir, FLAGS.data_dir
    if not data_dir:
        png_dir = png_dir or synthetic_png_tree(data_root)
        data_dir = converted(png_dir, os.path.join(data_root, "tfrecords"))
    manifest = manifest_lib.load_manifest(data_dir)
    split = manifest_lib.split_info(manifest, FLAGS.split, data_dir)
    paths = manifest_lib.split_files(data_dir, FLAGS.split, manifest)
    batch = FLAGS.batch_size
    report = BenchmarkReport("input_pipeline", output_dir, config={
        "outputs": OUTPUTS, "quick": FLAGS.quick,
        "data_dir": os.path.abspath(data_dir), "png_dir": png_dir and os.path.abspath(png_dir),
        "split": FLAGS.split, "num_examples": split["num_examples"], "num_shards": len(paths),
        "image_encoding": manifest["image_encoding"], "batch_size": batch,
        "repetitions": FLAGS.repetitions, "min_seconds": FLAGS.min_seconds,
        "shuffle_buffer": FLAGS.shuffle_buffer, "cycle_length": FLAGS.cycle_length,
        "tensorflow": tf.__version__, "cpus": len(os.sched_getaffinity(0)),
        # The machine may be shared: the load says how much of it this run had.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]})
    if FLAGS.throughput:
        time_pipelines(report, data_dir, png_dir, manifest, paths, data_root)
    if FLAGS.resident_footprint:
        footprint = resident_footprint(data_dir, FLAGS.split, batch,
                                       os.path.join(output_dir, "resident_footprint"),
                                       FLAGS.resident_package_root or REPO)
        report.config["resident_package_root"] = FLAGS.resident_package_root or REPO
        for key, value in footprint.items():
            if value is not None:
                report.add(f"resident_{key}", value)
    report.config["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.write()


if __name__ == "__main__":
    define_flags()
    app.run(main)
