"""Batch inference throughput: the exported SavedModel beside the .keras model and LiteRT's
float32 and int8 models, same images, same threads.

    python -m benchmarks.inference                                  # untrained CancerNet, synthetic patches
    python -m benchmarks.inference --model=runs/cancernet --data_dir=~/data/idc_tfrecords
    python -m benchmarks.inference --quick     # every figure at tiny sizes (benchmarks/quick.py)

For each batch size (--batch_sizes) it reports images/s of
    saved_model      the serving signature: uint8 patches in, P(IDC) out (what predict runs)
    keras_function   model.keras + model_input preprocessing in one tf.function (model(x))
    keras_predict    model.keras `model.predict` on the preprocessed images (Keras' own loop)
    litert_float     model.keras converted to a float32 LiteRT model (XNNPACK), numpy
                     preprocessing around it: uint8 patches in, P(IDC) out
    int8             the export's int8 model as --runtime=int8 serves it (training/int8_model.py):
                     uint8 patches in, calibrated P(IDC) out, preprocessing and the float head
                     in numpy around the LiteRT network
    int8_network     the int8 LiteRT network alone, on preprocessed images (what the numpy
                     around it costs: int8 vs int8_network)
and once, end to end, `predict_files` (what python -m idc_engine.predict does: PNG decoding in
threads + the SavedModel) beside PNG decoding alone. Warm-up runs (tracing) are excluded; each
figure is the median of --repeats runs over the same --num_images images; the paths alternate
within each repetition so that all see the same machine load. The largest |difference| between
the SavedModel's and the Keras model's probabilities on the images is reported too.

Without --model no training happens: an untrained CancerNet is exported with
`idc_engine.training.export.export_model` (throughput does not depend on the weights' values). Without
--data_dir the images are PNG patches of the embedded synthetic dataset (idc_engine.synthetic).
An export without an int8 model (the untrained one: no val split to measure parity on) gets
one quantized here on the benchmark's images, by the export's recipe (training/int8_export.py).
LiteRT runs with as many threads as TensorFlow (--threads, default: the usable cores; TensorFlow
is set to the same). The largest |difference| between the int8 and the SavedModel's calibrated
probabilities is reported too (meaningful for a trained --model only).
"""

import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from benchmarks import litert, quick, untrained_model
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A model_dir or export dir; default: export an untrained "
                    "CancerNet into a temporary directory.")
flags.DEFINE_integer("image_size", 50, "Model input size of the untrained CancerNet (50 or 48).")
flags.DEFINE_string("data_dir", None, "A converted directory whose --split gives the images; "
                    "default: synthetic PNG patches.")
flags.DEFINE_string("split", "test", "Split of --data_dir.")
flags.DEFINE_list("batch_sizes", ["256", "1024"], "Batch sizes to measure.")
flags.DEFINE_integer("num_images", 4096, "Images per timed run.")
flags.DEFINE_integer("num_png_files", 2048, "PNG files of the end-to-end predict_files run.")
flags.DEFINE_integer("decode_threads", 2, "Decoding threads of predict_files.")
flags.DEFINE_integer("repeats", 5, "Timed runs per figure (median reported) after one warm-up.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
flags.DEFINE_integer("threads", None, "Threads of TensorFlow (intra-op) and of LiteRT; default: "
                     "the usable cores.")
quick.define_flag()
QUICK_SIZES = {"batch_sizes": ["16", "32"], "num_images": 64, "num_png_files": 32, "repeats": 1}

def synthetic_png_files(work: str, count: int) -> list:
    """Paths of >= count PNG patches of a small synthetic Kaggle tree (quirk-free)."""
    from idc_engine.data import kaggle_tree, synthetic

    root = os.path.join(work, "tree")
    patients = max(2, count // 150 + 1)
    synthetic.write_dataset(root, num_patients=patients, seed=0, min_patches=150, max_patches=250)
    listing = kaggle_tree.scan_tree(root)
    return [os.path.join(root, p.paths[0]) for p in listing.patches]


def load_images(paths: list, count: int) -> np.ndarray:
    """uint8 [count, 50, 50, 3]: the decoded files, repeated if there are fewer."""
    from idc_engine.inference import patch_files

    decoded = [d.image for d in map(patch_files.decode_file, paths) if d.image is not None]
    images = np.stack(decoded)
    return images[np.arange(count) % len(images)]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark_export(work: str):
    """(run_dir.ExportPaths, description): --model's export, or an untrained CancerNet's."""
    return untrained_model.benchmark_export(FLAGS.model, work, FLAGS.image_size)


def benchmark_images(work: str):
    """(images uint8 [num_images, 50, 50, 3], at most num_png_files PNG paths, description):
    from --data_dir's split (its first records written as PNG files), else synthetic PNGs."""
    from idc_engine.input import host_cache

    if FLAGS.data_dir:
        arrays = host_cache.load_split_arrays(FLAGS.data_dir, FLAGS.split)
        images = arrays.images[np.arange(FLAGS.num_images) % len(arrays)]
        png_dir = os.path.join(work, "png")
        os.makedirs(png_dir)
        from PIL import Image
        png_files = []
        for i in range(min(FLAGS.num_png_files, len(arrays))):
            png_files.append(os.path.join(png_dir, f"{i:06d}.png"))
            Image.fromarray(arrays.images[i]).save(png_files[-1])
        image_source = f"{FLAGS.data_dir} split {FLAGS.split}"
    else:
        png_files = synthetic_png_files(work, max(FLAGS.num_png_files, 256))
        images = load_images(png_files, FLAGS.num_images)
        image_source = "synthetic PNG patches (idc_engine.synthetic)"
    return images, png_files[:FLAGS.num_png_files], image_source


def timed_paths(paths, pre: dict, images, png_files, batch_sizes, work: str) -> tuple[dict, str]:
    """({figure name: (run(), images per run)} for every path measured (the module docstring),
    where the int8 model comes from).

    pre: the export's preprocessing.json; images uint8 [N, 50, 50, 3].
    """
    import keras
    import tensorflow as tf

    from idc_engine.inference import patch_files, prediction_rows, serving
    from idc_engine.models.preprocessing import model_input
    from idc_engine.training import run_dir

    served = serving.ServedModel(paths.saved_model)
    model = keras.saving.load_model(paths.keras)
    size, mean, std = int(pre["image_size"]), pre["channel_mean"], pre["channel_std"]

    @tf.function(input_signature=[tf.TensorSpec([None, 50, 50, 3], tf.uint8)])
    def keras_function(batch):
        return model(model_input(batch, size, mean, std), training=False)[:, 1]

    def batches(batch_size):
        return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]

    def run_saved_model(batch_size):
        return np.concatenate([served(b) for b in batches(batch_size)])

    def run_keras_function(batch_size):
        return np.concatenate([keras_function(tf.constant(b)).numpy() for b in batches(batch_size)])

    def run_keras_predict(batch_size):
        x = model_input(images, size, mean, std)
        return model.predict(x, batch_size=batch_size, verbose=0)[:, 1]

    threshold = run_dir.DEFAULT_THRESHOLD

    def run_predict_files():
        for _ in prediction_rows.predict_files(served, png_files, threshold, 256, FLAGS.decode_threads):
            pass

    def run_decode():
        for _ in patch_files.decode_files(png_files, FLAGS.decode_threads):
            pass

    if pre.get("stain_normalization", {}).get("method", "none") != "none":
        raise app.UsageError("the LiteRT float path takes exports without stain normalisation")
    int8_paths, int8_source = litert.int8_export_paths(paths, model, pre, images, work)
    lite = litert_paths(int8_paths, model, images)

    timed = {}
    for batch_size in batch_sizes:
        for name, run in (("saved_model", run_saved_model), ("keras_function", run_keras_function),
                          ("keras_predict", run_keras_predict), *lite.items()):
            timed[f"{name}_b{batch_size}"] = (lambda b=batch_size, run=run: run(b), len(images))
    timed["predict_files_png_b256"] = (run_predict_files, len(png_files))
    timed["png_decode_only"] = (run_decode, len(png_files))
    return timed, int8_source


def litert_paths(int8_paths, model, images) -> dict:
    """{name: run(batch_size) -> P(IDC) [N]} of the LiteRT paths (the module docstring)."""
    import tensorflow as tf

    from idc_engine.training import int8_model

    served = int8_model.Int8Model(int8_paths, FLAGS.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel
        float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    float_network = int8_model.Network(float_model, num_threads=FLAGS.threads)
    preprocessed = served.model_input(images)  # for the network alone, before the clock

    def over_batches(fn, inputs, batch_size):
        return np.concatenate([fn(inputs[i:i + batch_size])
                               for i in range(0, len(inputs), batch_size)])

    return {"litert_float": lambda b: over_batches(
                lambda x: float_network(served.model_input(x))[:, 1], images, b),
            "int8": lambda b: over_batches(served, images, b),
            "int8_network": lambda b: over_batches(served.uncalibrated, preprocessed, b)}


def warm_up(timed: dict, batch_sizes) -> tuple[float, float]:
    """Runs every path once (tracing, page cache); returns the largest |difference| between the
    SavedModel's probabilities and the Keras model's, and the int8 model's, on the same images."""
    difference, int8_difference = 0.0, 0.0
    for batch_size in batch_sizes:
        reference = timed[f"saved_model_b{batch_size}"][0]()
        for other in ("keras_function", "keras_predict"):
            probabilities = timed[f"{other}_b{batch_size}"][0]()
            difference = max(difference, float(np.max(np.abs(probabilities - reference))))
        int8 = timed[f"int8_b{batch_size}"][0]()
        int8_difference = max(int8_difference, float(np.max(np.abs(int8 - reference))))
        for other in ("litert_float", "int8_network"):
            timed[f"{other}_b{batch_size}"][0]()
    timed["predict_files_png_b256"][0]()
    return difference, int8_difference


def main(argv) -> None:
    del argv
    import tensorflow as tf

    from idc_engine.training import run_dir

    # TensorFlow's INFO lines (SavedModel writing, logged through absl) would bury the table
    absl_logging.set_verbosity(absl_logging.WARNING)
    quick.apply(QUICK_SIZES)
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    work = tempfile.mkdtemp(prefix="idc_bench_inference_")
    try:
        paths, model_source = benchmark_export(work)
        images, png_files, image_source = benchmark_images(work)
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
        pre = run_dir.load_preprocessing(paths)
        timed, int8_source = timed_paths(paths, pre, images, png_files, batch_sizes, work)
        difference, int8_difference = warm_up(timed, batch_sizes)
        rates = {key: [] for key in timed}
        for _ in range(FLAGS.repeats):  # the paths alternate: all see the same machine load
            for key, (fn, count) in timed.items():
                rates[key].append(count / _time(fn))

        report = BenchmarkReport("inference", FLAGS.output_dir, config={
            "quick": FLAGS.quick, "model": model_source, "images": image_source, "num_images": len(images),
            "num_png_files": len(png_files), "batch_sizes": batch_sizes,
            "decode_threads": FLAGS.decode_threads, "repeats": FLAGS.repeats,
            "image_size": int(pre["image_size"]), "cores": len(os.sched_getaffinity(0)),
            "threads": FLAGS.threads or len(os.sched_getaffinity(0)), "int8_model": int8_source,
            "devices": [d.name for d in tf.config.list_logical_devices()]})
        for key, values in rates.items():
            report.add(f"{key}_images_per_s", statistics.median(values), all=values)
        for batch_size in batch_sizes:
            report.add(f"saved_model_vs_keras_function_b{batch_size}",
                       statistics.median(rates[f"saved_model_b{batch_size}"])
                       / statistics.median(rates[f"keras_function_b{batch_size}"]))
            for other in ("litert_float", "int8", "int8_network"):
                report.add(f"{other}_vs_saved_model_b{batch_size}",
                           statistics.median(rates[f"{other}_b{batch_size}"])
                           / statistics.median(rates[f"saved_model_b{batch_size}"]))
        report.add("max_abs_diff_saved_model_vs_keras", difference)
        report.add("max_abs_diff_saved_model_vs_int8", int8_difference)
        report.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
