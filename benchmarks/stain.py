"""Stain normalisation throughput: the engine's batched ops beside torchstain, one process, one run.

    python -m benchmarks.stain --output_dir=runs/benchmarks
    python -m benchmarks.stain --quick          # every figure at tiny sizes (benchmarks/quick.py)

On the same 50x50 patches (synthetic, idc_engine.data.synthetic; or --data_dir's --split), for
Reinhard and Macenko, images/s of
    engine_<m>_graph      input/stain.normalize on batches of --batch_size, a tf.function on the
                          host CPU (no XLA)
    engine_<m>_xla        the same, jit-compiled (as inside an XLA-compiled step); XLA runs
                          these elementwise loops on one core
    engine_<m>_xla_2_streams  each batch split in two halves run side by side, one per core
    torchstain_numpy_<m>  torchstain's numpy normaliser, one image at a time (as its users run it)
    torchstain_tf_<m>     torchstain's TensorFlow normaliser, one image at a time (skipped, with
                          the reason in the JSON, when it does not run on this TensorFlow/Keras)
and the ratios engine_<m>_vs_fastest_reference (the engine's faster one-stream path / the fastest
torchstain path, both on one core) and engine_<m>_2_streams_vs_fastest_reference (the whole
machine against torchstain as its users run it, one image at a time).
Then the training step: CancerNet, batch --batch_size, forward, backward and Adam update in one
tf.function, with model_input as training runs it, without and with each method, timed in
alternation; step_<m>_vs_none is the ratio of their images/s.
Medians of --repeats timed runs after a warm-up.
"""

import statistics
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from benchmarks import quick
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "A converted directory; default: synthetic patches.")
flags.DEFINE_string("split", "test", "Split of --data_dir.")
flags.DEFINE_integer("batch_size", 256, "Batch of the engine's ops and of the training step.")
flags.DEFINE_integer("num_images", 2048, "Images per timed run of the engine's ops.")
flags.DEFINE_integer("reference_images", 128, "Images per timed run of torchstain (per image).")
flags.DEFINE_integer("step_batches", 8, "Training steps per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs per figure (median reported).")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
quick.define_flag()
QUICK_SIZES = {"batch_size": 32, "num_images": 64, "reference_images": 4, "step_batches": 1,
               "repeats": 1}

METHODS = ("reinhard", "macenko")


def patches(count: int) -> np.ndarray:
    """uint8 [count, 50, 50, 3]: --data_dir's split, or 6 synthetic patients' patches."""
    if FLAGS.data_dir:
        from idc_engine.input import host_cache
        images = host_cache.load_split_arrays(FLAGS.data_dir, FLAGS.split).images
    else:
        from idc_engine.data import synthetic
        images = np.concatenate([synthetic.render_patches(seed=11, index=i, count=400)
                                 for i in range(6)])
    return images[np.arange(count) % len(images)]


def _median_rate(run, items: int) -> tuple[float, list]:
    run()  # warm-up: tracing, compilation
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def reference_runs(images, target_image) -> dict:
    """{name: run()} of torchstain's normalisers, one image at a time; {name: reason} skipped."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
    runs, skipped = {}, {}
    subset = images[:FLAGS.reference_images]
    numpy_normalisers = {"reinhard": NumpyReinhardNormalizer(), "macenko": NumpyMacenkoNormalizer()}
    for method, normaliser in numpy_normalisers.items():
        normaliser.fit(target_image)
        runs[f"torchstain_numpy_{method}"] = (
            lambda n=normaliser, m=method: [n.normalize(im, **({"stains": False} if m == "macenko"
                                                             else {})) for im in subset])
    try:
        import tensorflow as tf
        from torchstain.tf.normalizers import TensorFlowMacenkoNormalizer, TensorFlowReinhardNormalizer
        tf_normalisers = {"reinhard": TensorFlowReinhardNormalizer(),
                          "macenko": TensorFlowMacenkoNormalizer()}
        chw = lambda im: tf.constant(np.transpose(im, (2, 0, 1)))  # torchstain's TF layout
        for method, normaliser in tf_normalisers.items():
            try:
                normaliser.fit(chw(target_image))
                kwargs = {"stains": False} if method == "macenko" else {}
                normaliser.normalize(chw(subset[0]), **kwargs)
                runs[f"torchstain_tf_{method}"] = (
                    lambda n=normaliser, k=kwargs: [n.normalize(chw(im), **k) for im in subset])
            except Exception as e:  # a reference that does not run here is reported, not fatal
                skipped[f"torchstain_tf_{method}"] = repr(e)[:300]
    except ImportError as e:
        skipped["torchstain_tf"] = repr(e)[:300]
    return runs, skipped


def engine_runs(images, target: dict) -> dict:
    """{name: run()} of the engine's batched ops, graph and XLA."""
    import tensorflow as tf

    from idc_engine.input import stain
    batches = [tf.constant(images[i:i + FLAGS.batch_size])
               for i in range(0, len(images), FLAGS.batch_size)]
    runs = {}
    for method in METHODS:
        for kind, jit in (("graph", False), ("xla", True)):
            fn = tf.function(lambda x, m=method: stain.normalize(x, m, target[m]), jit_compile=jit)
            runs[f"engine_{method}_{kind}"] = lambda fn=fn: [fn(b).numpy() for b in batches]

        @tf.function
        def two_streams(x, xla=fn):  # the two calls are independent: TensorFlow runs both at once
            return tf.concat([xla(half) for half in tf.split(x, 2)], axis=0)
        runs[f"engine_{method}_xla_2_streams"] = (
            lambda fn=two_streams: [fn(b).numpy() for b in batches])
    return runs


def step_runs(images, target: dict) -> dict:
    """{name: run()} of CancerNet's training step with model_input without and with stain."""
    import keras
    import tensorflow as tf

    from idc_engine import models
    from idc_engine.models.preprocessing import model_input
    keras.utils.set_random_seed(0)
    batch = tf.constant(images[:FLAGS.batch_size])
    labels = tf.constant(np.arange(FLAGS.batch_size) % 2, tf.int32)
    mean, std = [190.0, 140.0, 190.0], [45.0, 45.0, 30.0]
    runs = {}
    for method in ("none",) + METHODS:
        model = models.build_model("cancernet", (50, 50, 3))
        optimizer = keras.optimizers.Adam(1e-3)
        stain_cfg = None if method == "none" else {"method": method, "target": target[method]}

        @tf.function
        def step(x, y, model=model, optimizer=optimizer, stain_cfg=stain_cfg):
            with tf.GradientTape() as tape:
                p = model(model_input(x, 50, mean, std, stain=stain_cfg), training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        runs[f"step_{method}"] = (
            lambda step=step: [step(batch, labels).numpy() for _ in range(FLAGS.step_batches)])
    return runs


def _interleaved(runs: dict, items: dict) -> dict:
    """{name: (median img/s, rates)}: every run warmed up, then the repetitions alternate over
    all names so that all see the same machine load."""
    for run in runs.values():
        run()
    rates = {name: [] for name in runs}
    for _ in range(FLAGS.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            rates[name].append(items[name] / (time.perf_counter() - start))
    return {name: (statistics.median(r), r) for name, r in rates.items()}


def main(argv) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    quick.apply(QUICK_SIZES)
    from idc_engine.input import stain, stain_target

    images = patches(FLAGS.num_images)
    target = stain_target.fit_target(images)
    fraction = stain.tissue_mask(stain.optical_density(images)).numpy().mean(axis=1)
    target_image = images[int(np.argmax(fraction))]
    references, skipped = reference_runs(images, target_image)
    runs = {**engine_runs(images, target), **references}
    items = {name: FLAGS.num_images if name.startswith("engine") else FLAGS.reference_images
             for name in runs}
    steps = step_runs(images, target)
    items.update({name: FLAGS.batch_size * FLAGS.step_batches for name in steps})
    report = BenchmarkReport("stain", FLAGS.output_dir, config={
        "quick": FLAGS.quick, "batch_size": FLAGS.batch_size, "num_images": FLAGS.num_images,
        "reference_images": FLAGS.reference_images, "repeats": FLAGS.repeats,
        "images": FLAGS.data_dir or "synthetic patches (6 patients)", "skipped": skipped})
    measured = {**_interleaved(runs, items), **_interleaved(steps, items)}
    for name, (rate, rates) in measured.items():
        report.add(f"{name}_img_per_s", rate, rates=[round(r, 1) for r in rates])
    for method in METHODS:
        engine = max(measured[f"engine_{method}_{k}"][0] for k in ("graph", "xla"))
        fastest = max(v[0] for k, v in measured.items()
                      if k.startswith("torchstain") and k.endswith(method))
        report.add(f"engine_{method}_vs_fastest_reference", engine / fastest)
        report.add(f"engine_{method}_2_streams_vs_fastest_reference",
                   measured[f"engine_{method}_xla_2_streams"][0] / fastest)
        report.add(f"step_{method}_vs_none", statistics.median(
            a / b for a, b in zip(measured[f"step_{method}"][1], measured["step_none"][1])))
    report.write()


if __name__ == "__main__":
    app.run(main)
