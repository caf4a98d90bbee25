"""BatchNorm moving statistics recomputed from the current weights, before they are used.

A BatchNormalization layer normalizes with its batch's statistics in training mode and with its
moving statistics in inference mode (validation, export, prediction). Keras keeps the moving
statistics as an exponential moving average with momentum 0.99 starting from mean 0 and
variance 1. In CancerNet every BatchNorm follows a ReLU whose outputs have per-channel variances
of about 0.002-0.02, so the initial 1.0 outweighs the true variance for ~1,000 steps
(0.99**500 = 0.0066): after 60 or 200 steps the moving variance is 40-100x too large, every
activation is squeezed towards its mean and the inference-mode model outputs nearly one
constant (the majority class at 0.5), although the training-mode model is good. A second,
smaller mismatch remains even with exact averages: training-mode statistics are taken with
dropout active, which inflates the variance the next BatchNorm sees compared with inference.

`recompute` therefore sets every moving mean and variance to the statistics of the inference-
mode activations (dropout off) of a sample of training batches under the current weights (the
"precise BatchNorm" of Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). The trainer runs
it before every validation, checkpoint and export, so what is validated, saved and exported is
the model whose outputs agree with training mode, whatever the momentum or the run's length.
"""

import contextlib

import keras
import tensorflow as tf


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of `model`, nested ones included, in call order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def batch_statistics_mode(model):
    """While open, a training-mode call of `model` sets each BatchNorm's moving statistics to
    that call's batch statistics (momentum 0) and runs with dropout off, so every layer sees the
    activations inference would give it. A tf.function first called inside keeps this behaviour."""
    dropouts = [layer for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.Dropout)]
    saved = ([(layer, "momentum", layer.momentum) for layer in batchnorm_layers(model)]
             + [(layer, "rate", layer.rate) for layer in dropouts])
    try:
        for layer, name, _ in saved:
            setattr(layer, name, 0.0)
        yield
    finally:
        for layer, name, value in saved:
            setattr(layer, name, value)


class BatchNormRecomputer:
    """Sets the moving statistics of `model`'s BatchNorms from `num_batches` training batches.

    run_replicas(replica_fn, k, *inputs): runs replica_fn(images) on every replica with the
    k-th batch (images [b, S, S, 3] as the model takes them, in the compute dtype) and returns
    the per-replica result, as `strategy.run` does; `inputs` are those of the call (e.g. the
    training iterator). Under a strategy the moments are averaged over all replicas and workers,
    so every copy of the statistics ends equal.
    """

    def __init__(self, model, strategy, run_replicas, num_batches: int):
        self._model = model
        self._strategy = strategy
        self._run_replicas = run_replicas
        self._num_batches = num_batches
        self._layers = [layer for layer in batchnorm_layers(model) if layer.trainable]
        self._function = tf.function(self._population_moments)

    def _replica_moments(self, images):
        """One batch in training mode -> [mean_c, variance_c + mean_c**2] per layer, float32."""
        self._model(images, training=True)
        moments = []
        for layer in self._layers:
            mean = tf.identity(layer.moving_mean.value)
            moments += [mean, tf.identity(layer.moving_variance.value) + tf.square(mean)]
        return moments

    def _population_moments(self, *inputs):
        totals = [tf.zeros_like(v) for layer in self._layers
                  for v in (layer.moving_mean, layer.moving_variance)]
        for k in tf.range(self._num_batches):
            per_replica = self._run_replicas(self._replica_moments, k, *inputs)
            totals = [t + self._strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                      for t, v in zip(totals, per_replica)]
        return [t / tf.cast(self._num_batches, tf.float32) for t in totals]

    def __call__(self, *inputs) -> None:
        """Recomputes; the variance is the population's (within- plus between-batch)."""
        if not self._layers or self._num_batches < 1:
            return
        with batch_statistics_mode(self._model):
            moments = self._function(*inputs)
        for index, layer in enumerate(self._layers):
            mean, second_moment = moments[2 * index], moments[2 * index + 1]
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(tf.maximum(second_moment - tf.square(mean), 0.0))
