"""Validation during training: the model in inference mode over the whole val split, on every
replica, and the figures it yields (those evaluate reports, plus the threshold it would choose).
"""

import numpy as np
import tensorflow as tf

from idc_engine.input import pipeline
from idc_engine.models.preprocessing import model_input
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.scoring import thresholds
from idc_engine.training.config import TrainConfig


class Validator:
    """`validator()` -> {"val_<name>": value} of validation_metrics on the val split."""

    def __init__(self, config: TrainConfig, strategy, model, mean, std, compute_dtype: str,
                 stain: dict | None = None):
        self._config = config
        self._strategy = strategy
        self._model = model
        self._mean, self._std, self._compute_dtype = mean, std, compute_dtype
        self._stain = stain
        self._step = tf.function(self._validation_step)

    def __call__(self) -> dict:
        config = self._config
        dataset = self._strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(config.data_dir, "val", config.global_batch_size,
                                              training=False, input_context=ctx))
        probabilities, labels = [], []
        for images, batch_labels in dataset:
            p, y = self._step(images, batch_labels)
            probabilities.append(p.numpy())
            labels.append(y.numpy())
        metrics = validation_metrics(np.concatenate(labels), np.concatenate(probabilities))
        return {f"val_{k}": v for k, v in metrics.items()}

    def _validation_step(self, images, labels):
        """images uint8 [b, 50, 50, 3], labels int32 [b] per replica -> (idc_probability
        float32 [B], labels int32 [B]) gathered over all replicas."""
        def replica_fn(images, labels):
            def predict():
                x = model_input(images, self._config.image_size, self._mean, self._std,
                                self._compute_dtype, stain=self._stain)
                return tf.cast(self._model(x, training=False), tf.float32)[:, 1]
            # A replica whose shards ran out gets empty batches while others finish; the CPU
            # depthwise kernels mis-shape an empty batch, so the model never sees one.
            probabilities = tf.cond(tf.shape(images)[0] > 0, predict,
                                    lambda: tf.zeros([0], tf.float32))
            return probabilities, labels
        probabilities, labels = self._strategy.run(replica_fn, args=(images, labels))
        return (self._strategy.gather(probabilities, axis=0),
                self._strategy.gather(labels, axis=0))


def validation_metrics(labels, idc_probability) -> dict:
    """classification_metrics at 0.5, plus the threshold evaluate's default rule (max_f1)
    chooses on these patches ("max_f1_threshold") and accuracy, balanced accuracy and IDC F1
    there.

    labels int [N] in {0, 1}; idc_probability float [N].
    """
    metrics = metrics_lib.classification_metrics(labels, idc_probability)
    try:
        threshold, _ = thresholds.choose_threshold(labels, idc_probability, thresholds.DEFAULT_RULE)
    except ValueError:  # one class only: no threshold to choose
        return metrics
    at = metrics_lib.classification_metrics(labels, idc_probability, threshold)
    metrics.update(max_f1_threshold=threshold, accuracy_at_max_f1=at["accuracy"],
                   balanced_accuracy_at_max_f1=at["balanced_accuracy"],
                   idc_f1_at_max_f1=at["idc_f1"])
    return metrics
