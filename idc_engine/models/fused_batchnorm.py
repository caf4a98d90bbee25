"""BatchNormalization trained through TensorFlow's fused kernel: same variables, same math.

Keras 3's BatchNormalization on TensorFlow computes training-mode statistics, normalization and
their gradients with ~15 small ops per layer; in CancerNet those take most of a CPU step (the
convolutions themselves only about a quarter). One `FusedBatchNormV3` computes the same thing
(outputs, gradients and moving statistics agree to ~1e-6, tests/test_models.py) and roughly
halves the step (benchmarks/train_step.py). Inference and every case the fused op does not
cover fall back to Keras, and models are saved and exported as plain Keras models.
"""

import keras
import tensorflow as tf


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training-mode forward is one fused op."""

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        if (not (training and self.trainable) or mask is not None or self.renorm
                or self.synchronized or rank not in (2, 4) or self.axis not in (-1, rank - 1)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras does
        channels = x.shape[-1]
        x4 = x if rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
        gamma = self.gamma if self.scale else tf.ones([channels])
        beta = self.beta if self.center else tf.zeros([channels])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x4, tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32), epsilon=self.epsilon,
            is_training=True)
        # the fused op returns the unbiased batch variance; Keras' moving average uses the biased
        n = tf.cast(tf.size(x4) // channels, tf.float32)
        variance *= (n - 1.0) / tf.maximum(n, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(tf.reshape(y, tf.shape(inputs)), self.compute_dtype)


def fuse_batchnorm(model) -> int:
    """Switches every plain BatchNormalization of `model` (nested ones too) to the fused
    training path; returns how many. Variables, checkpoints and saved models are unchanged."""
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = FusedBatchNormalization
            count += 1
    return count
