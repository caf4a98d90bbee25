"""The training step on the devices: one replica's step, and the tf.function that runs
`steps_per_loop` of them per call (`strategy.run` of the replica step, optionally jit-compiled).

With --xla on one device the whole step is compiled, optimizer update included. Under a strategy
the update all-reduces through a cross-replica merge_call, which cannot live inside a compiled
function: there only the gradients' compute is compiled.
"""

import math

import keras
import tensorflow as tf

from idc_engine import models
from idc_engine.input.augment import augment_on_device
from idc_engine.models.preprocessing import model_input, stain_normalized
from idc_engine.training import batchnorm, objectives
from idc_engine.training.config import TrainConfig
from idc_engine.training.setup import ModelState, RunDevices, RunPlan


class Trainer:
    """Runs training steps on the devices and recomputes BatchNorm statistics there.

    `sampler` (device input mode) draws each step's batch on the device; otherwise `iterator`
    (a distributed dataset's iterator) gives it. `frozen`: the backbone starts frozen.
    """

    def __init__(self, config: TrainConfig, devices: RunDevices, plan: RunPlan, state: ModelState,
                 sampler, iterator, frozen: bool):
        self._config = config
        self._strategy, self._replicas = devices.strategy, devices.replicas
        self._compute_dtype = devices.compute_dtype
        self._mean, self._std = plan.mean, plan.std
        self._augment_steps = plan.augment_steps
        self._stain = plan.stain
        self._class_weights = tf.constant(plan.class_weights, tf.float32)
        model = state.model
        self._model, self._optimizer, self._step_var = model, state.optimizer, state.counters.step
        self._sampler, self._iterator = sampler, iterator
        use_xla = devices.use_xla
        whole_step_xla = use_xla and self._replicas == 1
        self._compiled_gradients = tf.function(self._replica_gradients,
                                               jit_compile=use_xla and not whole_step_xla)
        self._replica_step = (tf.function(self._replica_train_step, jit_compile=True)
                              if whole_step_xla else self._replica_train_step)
        # Keras 3 creates BatchNorm moving statistics with aggregation "none": every replica
        # updates its own copy from its own batches, so replicas and workers drift apart and a
        # checkpoint holds the chief's first replica only. Averaging them over all replicas
        # after each loop keeps every copy equal (for the moving mean, exactly what synced
        # updates would give). Listed before a backbone is frozen: its weights are not averaged.
        self._moving_statistics = [v for v in model.non_trainable_variables
                                   if "float" in str(v.dtype)]
        self.frozen = frozen and models.set_backbone_trainable(model, False)
        self._retrace()

    def train(self, num_steps: int) -> tuple[float, float, float]:
        """Runs `num_steps` steps; returns (sum of the steps' losses, correct, examples)."""
        totals = self._train_loop(self._iterator, tf.constant(num_steps))
        loss_sum, correct, count = (float(t) for t in totals)
        return loss_sum, correct, count

    def recompute_batchnorm(self) -> None:
        """BatchNorm moving statistics from the next training batches (batchnorm.py)."""
        self._recompute_batchnorm(self._iterator)

    def thaw_backbone(self) -> None:
        """Unfreezes the backbone; its variables now train, so the loop is traced anew."""
        models.set_backbone_trainable(self._model, True)  # the schedule applies the LR factor
        self.frozen = False
        self._retrace()

    def _retrace(self) -> None:
        """New tf.functions for the variables that train now (also the BatchNorm layers)."""
        self._train_loop = self._make_train_loop()
        self._recompute_batchnorm = self._make_batchnorm_recomputer()

    def training_input(self, images, step):
        """uint8 [b, 50, 50, 3], step int64 -> what the model trains on: [b, S, S, 3] in the
        compute dtype. Stain normalisation comes first, as in the served model, and colour
        augmentation after it: the other way round, normalisation would undo the augmentation."""
        x = stain_normalized(images, self._stain)
        if self._augment_steps:
            x = augment_on_device(x, self._config.seed, step, self._augment_steps,
                                  value_range=(0.0, 255.0))
        return model_input(x, self._config.image_size, self._mean, self._std,
                           self._compute_dtype)

    def _replica_gradients(self, images, labels, step):
        """The compute of one replica's step (jit-compiled with --xla, see the module docstring).

        images uint8 [b, 50, 50, 3], labels int32 [b], step int64 -> (gradients, loss share,
        correct, count); the scalars are float32, to be summed over replicas. The gradient
        all-reduce and the update stay outside: a cross-replica merge cannot live inside a
        nested compiled function.
        """
        config, model = self._config, self._model
        x = self.training_input(images, step)
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(x, training=True), tf.float32)
            per_example = objectives.per_example_loss(config.loss, labels, probabilities,
                                                      config.focal_gamma)
            per_example *= tf.gather(self._class_weights, labels)
            # divide by the GLOBAL batch: the optimizer sums the replicas' gradients
            loss = tf.reduce_sum(per_example) / config.global_batch_size
            if model.losses:
                loss += tf.add_n(model.losses) / self._replicas
            if config.inject_nan_at_step >= 0:  # tests: a NaN that reaches loss and gradients
                loss *= tf.where(step == config.inject_nan_at_step, math.nan, 1.0)
            scaled_loss = self._optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), labels), tf.float32))
        return gradients, loss, correct, tf.cast(tf.size(labels), tf.float32)

    def _replica_train_step(self, images, labels, step):
        gradients, loss, correct, count = self._compiled_gradients(images, labels, step)
        loss_scaling = isinstance(self._optimizer, keras.optimizers.LossScaleOptimizer)
        if loss_scaling and self._replicas > 1:
            gradients = finite_in_every_replica(gradients)
        self._optimizer.apply(gradients, self._model.trainable_variables)  # all-reduce, update
        return loss, correct, count

    def _average_moving_statistics(self) -> None:
        if self._replicas == 1 or not self._moving_statistics:
            return
        averaged = self._strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self._moving_statistics]))
        for variable, value in zip(self._moving_statistics, averaged):
            variable.assign(self._strategy.experimental_local_results(value)[0])

    def _run_on_next_batch(self, replica_fn, step, iterator):
        """strategy.run of replica_fn(images uint8 [b, 50, 50, 3], labels int32 [b], step) on
        the batch of `step`: drawn on the device by the sampler, or the iterator's next one."""
        if self._sampler is not None:
            return self._strategy.run(lambda s: replica_fn(*self._sampler(s), s), args=(step,))
        images, labels = next(iterator)
        return self._strategy.run(replica_fn, args=(images, labels, step))

    def _make_train_loop(self):
        """A tf.function running `num_steps` steps per call."""
        strategy, step_var = self._strategy, self._step_var

        @tf.function
        def train_loop(iterator, num_steps):
            totals = [tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)]
            for _ in tf.range(num_steps):
                step = step_var.read_value()
                per_replica = self._run_on_next_batch(self._replica_step, step, iterator)
                step_var.assign_add(1)
                totals = [t + strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                          for t, v in zip(totals, per_replica)]
            self._average_moving_statistics()
            return totals
        return train_loop

    def _make_batchnorm_recomputer(self) -> batchnorm.BatchNormRecomputer:
        """Moving statistics from the next training batches, not augmented: what inference sees."""
        config = self._config

        def run_replicas(replica_fn, k, iterator):
            def on_batch(images, labels, step):
                return replica_fn(model_input(images, config.image_size, self._mean, self._std,
                                              self._compute_dtype, stain=self._stain))
            return self._run_on_next_batch(
                on_batch, self._step_var.read_value() + tf.cast(k, tf.int64), iterator)
        num_batches = math.ceil(config.bn_statistics_examples / config.global_batch_size)
        return batchnorm.BatchNormRecomputer(self._model, self._strategy, run_replicas,
                                             num_batches)


def finite_in_every_replica(gradients: list) -> list:
    """One replica's gradients, made non-finite (NaN) unless every replica's are finite.

    Keras 3's LossScaleOptimizer decides "finite: apply; else skip and halve the scale" from
    the FIRST replica's gradients, before they are all-reduced. When only another replica
    overflowed (common in the first mixed_float16 steps, at a 2^15 scale) the update applies
    its inf and every weight turns NaN (seen as a flaky 2-replica test). After this, all
    replicas skip together. Call in a replica context; None gradients stay None.
    """
    present = [g for g in gradients if g is not None]
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
    overflowed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    factor = tf.where(overflowed > 0, math.nan, 1.0)
    return [None if g is None else g * tf.cast(factor, g.dtype) for g in gradients]
