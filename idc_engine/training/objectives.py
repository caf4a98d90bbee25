"""What the run optimizes: per-example losses, class weights, optimizers, learning-rate schedules.

All learning rates pass through `ScaledSchedule`, whose multiplier (a variable, checkpointed)
is how reduce-on-plateau and the frozen-then-fine-tuned schedule change the rate mid-run
without retracing the step.
"""

import math

import keras
import tensorflow as tf

from idc_engine.training.config import ConfigError, TrainConfig, parse_class_weights


def class_weight_vector(setting: str, num_negative: int, num_positive: int) -> list[float]:
    """[w_non_idc, w_idc]. "balanced" is the tutorial's max(count) / count per class
    (~[1.0, 2.5] on the real data), so the majority class keeps weight 1."""
    weights = parse_class_weights(setting)
    if weights is None:
        return [1.0, 1.0]
    if weights == "balanced":
        counts = [num_negative, num_positive]
        if min(counts) == 0:
            raise ConfigError("--class_weights=balanced: the train split lacks a class")
        return [max(counts) / c for c in counts]
    return [weights[0], weights[1]]


def per_example_loss(kind: str, labels, probabilities, focal_gamma: float = 2.0):
    """labels int [B], probabilities float32 [B, 2] (softmax output) -> float32 [B]."""
    if kind == "focal":
        one_hot = tf.one_hot(labels, tf.shape(probabilities)[-1], dtype=probabilities.dtype)
        return keras.losses.categorical_focal_crossentropy(one_hot, probabilities, alpha=1.0,
                                                           gamma=focal_gamma)
    return keras.losses.sparse_categorical_crossentropy(labels, probabilities)


class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """base(step) * multiplier * (fine_tune_factor once step >= fine_tune_from).

    The multiplier is a non-trainable variable set from the host (reduce-on-plateau) and
    checkpointed; the fine-tuning factor is a function of the step, so a run resumed at any
    step gets the same rate as one that never stopped.
    """

    def __init__(self, base, fine_tune_from: int | None = None, fine_tune_factor: float = 1.0):
        self.base = base
        self.fine_tune_from, self.fine_tune_factor = fine_tune_from, fine_tune_factor
        self.multiplier = tf.Variable(1.0, trainable=False, dtype=tf.float32,
                                      name="lr_multiplier")

    def __call__(self, step):
        rate = tf.cast(self.base(step) if callable(self.base) else self.base, tf.float32)
        rate *= self.multiplier
        if self.fine_tune_from is not None:
            rate *= tf.where(tf.cast(step, tf.int64) >= self.fine_tune_from,
                             self.fine_tune_factor, 1.0)
        return rate

    def get_config(self):
        return {"base": self.base if not callable(self.base) else self.base.get_config(),
                "fine_tune_from": self.fine_tune_from, "fine_tune_factor": self.fine_tune_factor}


def make_schedule(config: TrainConfig, total_steps: int, fine_tune_from: int | None = None
                  ) -> ScaledSchedule:
    """The run's learning rate; `fine_tune_from`: the step at which a frozen backbone thaws."""
    lr = config.learning_rate
    if config.lr_schedule == "inverse_time":
        # the tutorial: Adagrad(decay=INIT_LR / NUM_EPOCHS), i.e. lr / (1 + decay * step)
        rate = config.inverse_time_decay_rate or lr / max(config.epochs, 1.0)
        base = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=rate)
    elif config.lr_schedule == "cosine":
        warmup = min(config.warmup_steps, max(total_steps - 1, 0))
        base = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, decay_steps=max(total_steps - warmup, 1),
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    else:  # constant, and plateau (whose reductions go through the multiplier)
        base = lr
    return ScaledSchedule(base, fine_tune_from, config.fine_tune_lr_factor)


def make_optimizer(config: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    if config.optimizer == "adagrad":
        return keras.optimizers.Adagrad(schedule)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True)


class BestTracker:
    """The best validation value so far and how many validations ago it was (host side).

    Drives the best checkpoint, reduce-on-plateau and early stopping.
    """

    def __init__(self, metric: str):
        self.maximize = metric != "val_loss"
        self.best = math.nan
        self.since_best = 0

    def update(self, value: float) -> bool:
        """Records a validation result; True if it is the best so far (NaN never is)."""
        better = math.isfinite(value) and (
            math.isnan(self.best) or (value > self.best if self.maximize else value < self.best))
        if better:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
        return better
