"""The side-by-side reference of benchmarks.train_step: the same model trained by Keras `model.fit`.

    python -m benchmarks.keras_fit_baseline --data_dir=... --model=cancernet --global_batch_size=256

What a Keras user would write, fed as fast as Keras allows: the train split decoded once into host
RAM (the same uint8 records the engine trains on), batches of random indices gathered, cast and
normalized with the engine's own `model_input` in tf.data, prefetched; the model from
`idc_engine.models.build_model`, `compile(Adam, sparse_categorical_crossentropy, accuracy,
jit_compile=False)`, float32, no augmentation, default strategy. With --fused_batchnorm the
compiled model's BatchNormalization layers train through the engine's fused kernel
(`idc_engine.models.fuse_batchnorm`), so fit runs the same graph as the engine's default.

A callback timestamps the end of every batch; batches are grouped into windows of
--window_steps (the engine's steps_per_loop) and the first window (tracing, warm-up) is dropped,
exactly as the engine's `images_per_sec` drops its first loop. Prints one JSON object last on
stdout: images_per_sec = median window img/s, and the graph trained (`graph`: parameters,
BatchNormalization layers, how many of them fused) to check it against the engine's.
"""

import json
import os
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "A converted directory (python -m idc_engine.convert).")
    flags.DEFINE_string("model", "cancernet", "A model of idc_engine.models.MODELS.")
    flags.DEFINE_integer("global_batch_size", 256, "Batch size of every step.")
    flags.DEFINE_integer("window_steps", 4, "Steps per timed window (the engine's steps_per_loop).")
    flags.DEFINE_integer("timed_windows", 3, "Timed windows after the first (warm-up) one.")
    flags.DEFINE_integer("steps_per_execution", 1, "Keras compile steps_per_execution: 1 is what "
                         "fit supports under every strategy; --window_steps must divide by it.")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Seed of initialization and batch order.")
    flags.DEFINE_bool("fused_batchnorm", False, "Train BatchNormalization through the engine's "
                      "fused kernel, as the engine does by default.")


def window_rates(batch_end_times: list[float], window_steps: int, batch_size: int,
                 start_time: float) -> list[float]:
    """img/s of each window of `window_steps` consecutive batches, the first window excluded.

    batch_end_times: perf_counter() at the end of each step (one entry per step); start_time:
    just before fit started. The first window includes tracing, so it is not a rate.
    """
    edges = [start_time] + batch_end_times[window_steps - 1::window_steps]
    durations = [b - a for a, b in zip(edges[1:], edges[2:])]
    return [window_steps * batch_size / d for d in durations if d > 0]


def run_fit(data_dir: str, model_name: str, batch_size: int, window_steps: int,
            timed_windows: int, steps_per_execution: int = 1, learning_rate: float = 1e-3,
            seed: int = 0, fused_batchnorm: bool = False) -> dict:
    """Trains `model_name` with model.fit for (1 + timed_windows) * window_steps steps; returns
    {"images_per_sec": median window rate, "window_rates": [...], "graph": {...}, ...}."""
    import keras
    import tensorflow as tf

    from idc_engine import models
    from idc_engine.data import manifest as manifest_lib
    from idc_engine.input import host_cache, pipeline
    from idc_engine.models.preprocessing import model_input

    if window_steps % steps_per_execution:
        raise app.UsageError(f"--window_steps={window_steps} must be a multiple of "
                             f"--steps_per_execution={steps_per_execution}")
    keras.utils.set_random_seed(seed)
    manifest = manifest_lib.load_manifest(data_dir)
    mean, std = pipeline.channel_mean_std(manifest)
    arrays = host_cache.load_split_arrays(data_dir, "train")
    images, labels = tf.constant(arrays.images), tf.constant(arrays.labels)
    image_size = images.shape[1]

    def gather_and_normalize(indices):
        """int64 [B] -> (float32 [B, H, W, 3] normalized, int32 [B])."""
        return (model_input(tf.gather(images, indices), image_size, mean, std),
                tf.gather(labels, indices))

    dataset = (tf.data.Dataset.range(len(arrays))
               .shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True).repeat()
               .batch(batch_size, drop_remainder=True)
               .map(gather_and_normalize, num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))

    model = models.build_model(model_name, (image_size, image_size, 3))
    if fused_batchnorm:
        models.fuse_batchnorm(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False, steps_per_execution=steps_per_execution)

    end_times = []

    class BatchTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # one call per execution: every step of it ends now
            end_times.extend([time.perf_counter()] * steps_per_execution)

    steps = (1 + timed_windows) * window_steps
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0,
                        callbacks=[BatchTimer()])
    rates = window_rates(end_times, window_steps, batch_size, start)
    timed_images = (len(end_times) - window_steps) * batch_size
    return {"images_per_sec": statistics.median(rates) if rates else None,
            "window_rates": rates,
            "timed_overall_images_per_sec": (timed_images / (end_times[-1] - end_times[window_steps - 1])
                                             if timed_images > 0 else None),
            "first_window_seconds": end_times[window_steps - 1] - start,
            "steps": steps, "window_steps": window_steps,
            "steps_per_execution": steps_per_execution, "global_batch_size": batch_size,
            "model": model_name, "final_loss": float(history.history["loss"][-1]),
            "graph": model_graph(model),
            "keras": keras.__version__, "tensorflow": tf.__version__, "pid": os.getpid()}


def model_graph(model) -> dict:
    """What identifies the trained graph: parameter count (trainable + BatchNorm moving
    statistics), BatchNormalization layers, and how many of them train fused."""
    import keras

    from idc_engine.models.fused_batchnorm import FusedBatchNormalization

    layers = list(model._flatten_layers(include_self=False))
    return {"parameters": int(model.count_params()),
            "batchnorm_layers": sum(isinstance(layer, keras.layers.BatchNormalization)
                                    for layer in layers),
            "fused_batchnorm_layers": sum(isinstance(layer, FusedBatchNormalization)
                                          for layer in layers)}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required: a directory written by idc_engine.convert")
    summary = run_fit(FLAGS.data_dir, FLAGS.model, FLAGS.global_batch_size, FLAGS.window_steps,
                      FLAGS.timed_windows, FLAGS.steps_per_execution, FLAGS.learning_rate,
                      FLAGS.seed, FLAGS.fused_batchnorm)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
