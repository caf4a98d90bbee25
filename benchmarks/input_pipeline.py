"""Input pipeline throughput: the engine's ways to feed a step against the bare read and a baseline.

    python -m benchmarks.input_pipeline --output_dir=runs/bench_input           # synthetic data
    python -m benchmarks.input_pipeline --data_dir=~/data/idc_tfrecords --png_dir=~/data/IDC \\
        --output_dir=runs/bench_input --batch_size=256

In ONE run on the same split (images/s, warm-up excluded, median of --repetitions):
  engine_img_per_s           make_dataset(training=True): shards -> chunked parse -> shuffle
  engine_cache_img_per_s     make_dataset(training=True, cache=True): decoded split in RAM
  device_resident_img_per_s  DeviceResidentSampler: batches gathered in device memory
  raw_read_img_per_s         bare tf.data.TFRecordDataset of the same files, batched, no parsing
                             (the faster of a sequential and a parallel read: the upper bound)
  baseline_img_per_s         keras.utils.image_dataset_from_directory on the PNGs of the same
                             patients, same batch size (what a Keras user writes today)
Every pipeline is drained inside one tf.function loop, as a training loop with steps_per_loop
would, so Python overhead per batch does not cap any rate. Without --data_dir and --png_dir a
synthetic tree is generated (idc_engine.synthetic) and converted (idc_engine.convert) under
--output_dir/data, and reused by later runs. Results: --output_dir/input_pipeline.json,
TensorBoard scalars under --output_dir/tensorboard/, and a printed table.
"""

import gc
import math
import os
import shutil
import time

from absl import app, flags, logging

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
    flags.DEFINE_bool("png_shards", False, "Also convert with --image_encoding=png and time the "
                      "engine on those shards (engine_png_img_per_s).")
    flags.DEFINE_bool("baseline", True, "Time the image_dataset_from_directory baseline (needs "
                      "PNGs).")


# --- data --------------------------------------------------------------------------------------

def synthetic_png_tree(root: str) -> str:
    from idc_engine import synthetic

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
    from idc_engine import convert, manifest

    if not os.path.exists(manifest.manifest_path(output_dir)):
        logging.info("converting %s -> %s (%s)", png_dir, output_dir, image_encoding)
        convert.convert_tree(png_dir, output_dir, image_encoding=image_encoding,
                             min_shards=FLAGS.min_shards, overwrite=True, progress=False)
    return output_dir


def class_folder_tree(png_dir: str, patients: set, root: str) -> int:
    """`<root>/<0|1>/<file>.png` symlinks to the split's patches: the layout the tutorial builds
    for image_dataset_from_directory (it copies files; links read the same bytes)."""
    from idc_engine import kaggle_tree

    shutil.rmtree(root, ignore_errors=True)
    for label in ("0", "1"):
        os.makedirs(os.path.join(root, label))
    count = 0
    for patch in kaggle_tree.scan_tree(png_dir).patches:
        if patch.patient in patients:
            source = os.path.join(png_dir, patch.paths[0])
            os.symlink(os.path.abspath(source),
                       os.path.join(root, str(patch.label), os.path.basename(source)))
            count += 1
    return count


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


def main(argv) -> None:
    del argv
    import tensorflow as tf

    from benchmarks.report import BenchmarkReport
    from idc_engine import manifest as manifest_lib
    from idc_engine import pipeline

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
        "data_dir": os.path.abspath(data_dir), "png_dir": png_dir and os.path.abspath(png_dir),
        "split": FLAGS.split, "num_examples": split["num_examples"], "num_shards": len(paths),
        "image_encoding": manifest["image_encoding"], "batch_size": batch,
        "repetitions": FLAGS.repetitions, "min_seconds": FLAGS.min_seconds,
        "shuffle_buffer": FLAGS.shuffle_buffer, "cycle_length": FLAGS.cycle_length,
        "tensorflow": tf.__version__, "cpus": len(os.sched_getaffinity(0)),
        # The machine may be shared: the load says how much of it this run had.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]})
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
        measure("engine_png_img_per_s", host_pipeline(png_data), batch, report)

    report.add("engine_vs_raw_read", engine / raw)
    report.add("cache_vs_engine", cache / engine)
    report.add("device_resident_vs_engine", resident / engine)
    if FLAGS.baseline and png_dir:
        class_root = os.path.join(output_dir, "baseline_class_tree")
        count = class_folder_tree(png_dir, set(split["patients"]), class_root)
        report.config["baseline_num_files"] = count
        baseline = measure("baseline_img_per_s",
                           lambda: dataset_steps(baseline_dataset(class_root, batch)), batch, report)
        report.add("engine_vs_baseline", engine / baseline)
    else:
        logging.warning("no --png_dir: the image_dataset_from_directory baseline is skipped")
    report.config["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.write()


if __name__ == "__main__":
    define_flags()
    app.run(main)
