"""The custom training loop: one code path for 1 CPU, 1 GPU, N GPUs and N hosts.

Keras 3's `model.fit` under MirroredStrategy fails with steps_per_execution > 1
(keras-team/keras#19246) and runs without XLA (its "auto" jit_compile is off whenever a
tf.distribute strategy is set: Trainer._resolve_auto_jit_compile), and it does not support
MultiWorkerMirroredStrategy (keras-team/keras#20585), so the engine owns its loop:
`strategy.run` of a per-replica step (optionally jit-compiled), inside one tf.function that runs
`steps_per_loop` steps per call. Read top to bottom, in phases: devices, data, model and
optimizer, checkpoint, the step, validation, the loop, export.
"""

import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from idc_engine import errors, models
from idc_engine.data import manifest as manifest_lib
from idc_engine.input import pipeline
from idc_engine.input.augment import augment_on_device, parse_spec, write_augmentation_summary
from idc_engine.models.preprocessing import model_input
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.scoring import thresholds
from idc_engine.training import batchnorm, devices, objectives, summaries
from idc_engine.training.config import ConfigError, TrainConfig, parse_profile_steps


class TrainingError(errors.RunStopped, RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def _write_dir(path: str, strategy, is_chief: bool) -> str:
    """Where this worker writes: the real path on the chief, a private temporary one elsewhere
    (every worker must take part in saving, but only the chief's copy is kept; TF's recipe)."""
    if is_chief:
        return path
    return os.path.join(path, f"workertemp_{strategy.cluster_resolver.task_id}")


def train(config: TrainConfig) -> dict:
    """Trains per `config`; returns a summary: steps, best metric, paths. Resumes by itself."""
    config.validate()

    # --- devices and strategy ------------------------------------------------------------------
    devices.configure_cpu_devices(config.num_cpu_devices)
    strategy, strategy_description = devices.make_strategy(config.strategy, config.num_cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise ConfigError(f"--global_batch_size={config.global_batch_size} is not divisible by "
                          f"the {replicas} replicas of {strategy_description}")
    policy, precision_reason = devices.resolve_precision(config.precision)
    use_xla, xla_reason = devices.resolve_xla(config.xla, config.model)
    devices.set_precision_policy(policy)
    keras.utils.set_random_seed(config.seed)  # the same initial weights for the same seed
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    is_chief = _is_chief(strategy)
    logging.info("strategy: %s", strategy_description)
    logging.info("precision: %s (%s)", policy, precision_reason)
    logging.info("XLA: %s (%s)", "on" if use_xla else "off", xla_reason)

    # --- data ----------------------------------------------------------------------------------
    manifest = manifest_lib.load_manifest(config.data_dir)
    train_info = manifest_lib.split_info(manifest, "train", config.data_dir)
    has_val = "val" in manifest["splits"]
    mean, std = pipeline.channel_mean_std(manifest)
    steps_per_epoch = train_info["num_examples"] // config.global_batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--global_batch_size={config.global_batch_size} exceeds the "
                          f"{train_info['num_examples']} training examples")
    total_steps = config.train_steps or math.ceil(config.epochs * steps_per_epoch)
    validation_every = config.validation_every_steps or steps_per_epoch
    checkpoint_every = config.checkpoint_every_steps or validation_every
    log_every = config.log_every_steps or min(config.steps_per_loop, validation_every)
    class_weights = objectives.class_weight_vector(
        config.class_weights, train_info["num_examples"] - train_info["num_positive"],
        train_info["num_positive"])
    augment_steps = parse_spec(config.augment)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype

    # --- model, optimizer, checkpoint ------------------------------------------------------------
    if config.freeze_backbone_epochs and config.model not in models.BACKBONE_MODELS:
        raise ConfigError(f"--freeze_backbone_epochs needs a model with a backbone "
                          f"({', '.join(sorted(models.BACKBONE_MODELS))}), not {config.model}")
    input_shape = (config.image_size, config.image_size, 3)
    with strategy.scope():
        model = models.build_model(config.model, input_shape,
                                   weights_path=config.weights_path or None,
                                   backbone_input_size=config.backbone_input_size or None)
        models.set_batchnorm_momentum(model, config.bn_momentum)
        if config.fused_batchnorm:
            logging.info("fused BatchNormalization in %d layers", models.fuse_batchnorm(model))
        freeze_until = config.freeze_backbone_epochs * steps_per_epoch
        schedule = objectives.make_schedule(config, total_steps,
                                            fine_tune_from=freeze_until or None)
        optimizer = objectives.make_optimizer(config, schedule)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Built here, in the scope, on every variable the run will ever train (also those of a
        # backbone frozen at first): otherwise "You must feed a value for placeholder" errors.
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        best_var = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="best_metric",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        since_best_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="since_best",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        sampler = (pipeline.make_device_resident_sampler(
            config.data_dir, "train", config.global_batch_size, seed=config.seed)
            if config.input_mode == "device" else None)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     lr_multiplier=schedule.multiplier, best_metric=best_var,
                                     since_best=since_best_var)
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
    best_dir = os.path.join(config.model_dir, "best")
    manager = tf.train.CheckpointManager(checkpoint, _write_dir(checkpoint_dir, strategy, is_chief),
                                         max_to_keep=config.keep_checkpoints)
    best_manager = tf.train.CheckpointManager(checkpoint, _write_dir(best_dir, strategy, is_chief),
                                              max_to_keep=1)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", latest, int(step_var.numpy()))
    start_step = int(step_var.numpy())
    tracker = objectives.BestTracker(config.best_metric)
    tracker.best, tracker.since_best = float(best_var.numpy()), int(since_best_var.numpy())

    def save(manager_to_use):
        best_var.assign(tracker.best)
        since_best_var.assign(tracker.since_best)
        path = manager_to_use.save(checkpoint_number=step_var)
        if not is_chief:
            shutil.rmtree(manager_to_use.directory, ignore_errors=True)
        return path

    # --- summaries and the resolved config -------------------------------------------------------
    resolved = dict(vars(config), resolved_strategy=strategy_description, replicas=replicas,
                    resolved_precision=policy, precision_reason=precision_reason,
                    resolved_xla=use_xla, xla_reason=xla_reason, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, class_weight_vector=class_weights,
                    tensorflow=tf.__version__, keras=keras.__version__)
    writers = summaries.Writers(config.model_dir, is_chief)
    if is_chief:
        os.makedirs(config.model_dir, exist_ok=True)
        with open(os.path.join(config.model_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=1, sort_keys=True)
        writers.hparams(resolved)
        if augment_steps:
            sample, _ = next(iter(pipeline.make_dataset(config.data_dir, "train", 16,
                                                        training=False)))
            with writers.train.as_default():
                write_augmentation_summary(
                    sample, augment_on_device(sample, config.seed, start_step, augment_steps),
                    step=start_step)

    # --- the step --------------------------------------------------------------------------------
    class_weight_tensor = tf.constant(class_weights, tf.float32)

    def replica_gradients(images, labels, step):
        """The compute of one replica's step (jit-compiled with --xla, see below).

        images uint8 [b, 50, 50, 3], labels int32 [b], step int64 -> (gradients, loss share,
        correct, count); the scalars are float32, to be summed over replicas. The gradient
        all-reduce and the update stay outside: a cross-replica merge cannot live inside a
        nested compiled function.
        """
        x = tf.cast(images, tf.float32)
        if augment_steps:
            x = augment_on_device(x, config.seed, step, augment_steps, value_range=(0.0, 255.0))
        x = model_input(x, config.image_size, mean, std, compute_dtype)
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(x, training=True), tf.float32)
            per_example = objectives.per_example_loss(config.loss, labels, probabilities,
                                                      config.focal_gamma)
            per_example *= tf.gather(class_weight_tensor, labels)
            # divide by the GLOBAL batch: the optimizer sums the replicas' gradients
            loss = tf.reduce_sum(per_example) / config.global_batch_size
            if model.losses:
                loss += tf.add_n(model.losses) / replicas
            if config.inject_nan_at_step >= 0:  # tests: a NaN that reaches loss and gradients
                loss *= tf.where(step == config.inject_nan_at_step, math.nan, 1.0)
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), labels), tf.float32))
        return gradients, loss, correct, tf.cast(tf.size(labels), tf.float32)

    # With --xla on one device the whole step is compiled, optimizer update included. Under a
    # strategy the update all-reduces through a cross-replica merge_call, which cannot live
    # inside a compiled function: there only the gradients' compute is compiled.
    whole_step_xla = use_xla and replicas == 1
    compiled_gradients = tf.function(replica_gradients,
                                     jit_compile=use_xla and not whole_step_xla)

    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_train_step(images, labels, step):
        gradients, loss, correct, count = compiled_gradients(images, labels, step)
        if loss_scaling and replicas > 1:
            gradients = finite_in_every_replica(gradients)
        optimizer.apply(gradients, model.trainable_variables)  # all-reduces, then updates
        return loss, correct, count

    if whole_step_xla:
        replica_train_step = tf.function(replica_train_step, jit_compile=True)

    # Keras 3 creates BatchNorm moving statistics with aggregation "none": every replica updates
    # its own copy from its own batches, so replicas and workers drift apart and a checkpoint
    # holds the chief's first replica only. Averaging them over all replicas after each loop
    # keeps every copy equal (for the moving mean, exactly what synced updates would give).
    moving_statistics = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    def average_moving_statistics():
        if replicas == 1 or not moving_statistics:
            return
        averaged = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in moving_statistics]))
        for variable, value in zip(moving_statistics, averaged):
            variable.assign(strategy.experimental_local_results(value)[0])

    def run_on_next_batch(replica_fn, step, iterator):
        """strategy.run of replica_fn(images uint8 [b, 50, 50, 3], labels int32 [b], step) on
        the batch of `step`: drawn on the device by the sampler, or the iterator's next one."""
        if sampler is not None:
            return strategy.run(lambda s: replica_fn(*sampler(s), s), args=(step,))
        images, labels = next(iterator)
        return strategy.run(replica_fn, args=(images, labels, step))

    def make_train_loop():
        """A tf.function running `num_steps` steps per call; rebuilt when variables change."""
        @tf.function
        def train_loop(iterator, num_steps):
            totals = [tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)]
            for _ in tf.range(num_steps):
                step = step_var.read_value()
                per_replica = run_on_next_batch(replica_train_step, step, iterator)
                step_var.assign_add(1)
                totals = [t + strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                          for t, v in zip(totals, per_replica)]
            average_moving_statistics()
            return totals
        return train_loop

    def make_batchnorm_recomputer():
        """Moving statistics from the next training batches (not augmented: what inference
        sees); rebuilt with the train loop, since unfreezing changes which layers train."""
        def run_replicas(replica_fn, k, iterator):
            def on_batch(images, labels, step):
                return replica_fn(model_input(images, config.image_size, mean, std,
                                              compute_dtype))
            return run_on_next_batch(on_batch, step_var.read_value() + tf.cast(k, tf.int64),
                                     iterator)
        num_batches = math.ceil(config.bn_statistics_examples / config.global_batch_size)
        return batchnorm.BatchNormRecomputer(model, strategy, run_replicas, num_batches)

    # --- validation ------------------------------------------------------------------------------
    @tf.function
    def validation_step(images, labels):
        def replica_fn(images, labels):
            def predict():
                x = model_input(images, config.image_size, mean, std, compute_dtype)
                return tf.cast(model(x, training=False), tf.float32)[:, 1]
            # A replica whose shards ran out gets empty batches while others finish; the CPU
            # depthwise kernels mis-shape an empty batch, so the model never sees one.
            probabilities = tf.cond(tf.shape(images)[0] > 0, predict,
                                    lambda: tf.zeros([0], tf.float32))
            return probabilities, labels
        probabilities, labels = strategy.run(replica_fn, args=(images, labels))
        return strategy.gather(probabilities, axis=0), strategy.gather(labels, axis=0)

    def validate() -> dict:
        dataset = strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(config.data_dir, "val", config.global_batch_size,
                                              training=False, input_context=ctx))
        probabilities, labels = [], []
        for images, batch_labels in dataset:
            p, y = validation_step(images, batch_labels)
            probabilities.append(p.numpy())
            labels.append(y.numpy())
        return validation_metrics(np.concatenate(labels), np.concatenate(probabilities))

    # --- the loop --------------------------------------------------------------------------------
    iterator = None
    if sampler is None:
        # a resumed run draws a fresh order instead of replaying the first batches of its epoch
        data_seed = config.seed + start_step
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(
                config.data_dir, "train", config.global_batch_size, training=True,
                input_context=ctx, cache=config.input_mode == "cache", seed=data_seed,
                deterministic=config.deterministic, shuffle_buffer=config.shuffle_buffer)))
    frozen = start_step < freeze_until and models.set_backbone_trainable(model, False)
    train_loop, recompute_batchnorm = make_train_loop(), make_batchnorm_recomputer()
    profile = parse_profile_steps(config.profile_steps)
    boundaries = [validation_every, checkpoint_every, log_every]
    history, last_metrics, stopped_early, rates = [], {}, False, []
    step = start_step
    loops = 0
    while step < total_steps:
        if frozen and step >= freeze_until:
            models.set_backbone_trainable(model, True)  # the schedule applies the LR factor
            frozen, train_loop = False, make_train_loop()  # new variables: a new trace
            recompute_batchnorm = make_batchnorm_recomputer()
            logging.info("step %d: backbone unfrozen, learning rate x %g", step,
                         config.fine_tune_lr_factor)
        stops = [total_steps, step + config.steps_per_loop]
        stops += [(step // every + 1) * every for every in boundaries]
        if frozen:
            stops.append(freeze_until)
        if profile:
            stops += [s for s in profile if s > step]
        num_steps = min(stops) - step
        if profile and step == profile[0] and is_chief:
            tf.profiler.experimental.start(os.path.join(config.model_dir, "profile"))
        started = time.perf_counter()
        loss_sum, correct, count = (float(t) for t in train_loop(iterator, tf.constant(num_steps)))
        seconds = time.perf_counter() - started
        step += num_steps
        loops += 1
        if profile and step == profile[1] and is_chief:
            tf.profiler.experimental.stop()
        train_loss = loss_sum / num_steps
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"non-finite training loss ({train_loss}) in steps {step - num_steps}..{step - 1}; "
                f"stopped without saving; the last good checkpoint is "
                f"{tf.train.latest_checkpoint(checkpoint_dir) or 'none (no checkpoint yet)'}")
        learning_rate = float(schedule(optimizer.iterations))
        # the first loop includes tracing and compilation: not a throughput figure
        images_per_s = count / seconds if loops > 1 else None
        if images_per_s:
            rates.append(images_per_s)
        writers.train_scalars(step, loss=train_loss, accuracy=correct / max(count, 1.0),
                              learning_rate=learning_rate, images_per_sec=images_per_s,
                              step_time_ms=1000 * seconds / num_steps if loops > 1 else None)
        if step % log_every == 0 or step == total_steps:
            logging.info("step %d/%d (epoch %.2f): loss %.4f, accuracy %.4f, lr %.3g%s", step,
                         total_steps, step / steps_per_epoch, train_loss, correct / max(count, 1),
                         learning_rate, f", {images_per_s:,.0f} img/s" if images_per_s else "")

        validating = has_val and (step % validation_every == 0 or step == total_steps)
        if validating or step % checkpoint_every == 0 or step == total_steps:
            recompute_batchnorm(iterator)
        if validating:
            last_metrics = {f"val_{k}": v for k, v in validate().items()}
            writers.validation(step, last_metrics)
            history.append({"step": step, **last_metrics})
            logging.info("step %d validation: %s", step, summaries.format_metrics(last_metrics))
            if tracker.update(last_metrics[config.best_metric]):
                save(best_manager)
                if is_chief:
                    with open(os.path.join(config.model_dir, "best.json"), "w") as f:
                        json.dump({"step": step, **last_metrics}, f, indent=1)
            elif (config.lr_schedule == "plateau"
                  and tracker.since_best % config.plateau_patience == 0):
                schedule.multiplier.assign(schedule.multiplier * config.plateau_factor)
                logging.info("step %d: %s has not improved for %d validations, learning rate x %g",
                             step, config.best_metric, tracker.since_best, config.plateau_factor)
            if config.early_stopping_patience and tracker.since_best >= config.early_stopping_patience:
                logging.info("early stopping at step %d: no better %s for %d validations", step,
                             config.best_metric, config.early_stopping_patience)
                stopped_early = True
        if step % checkpoint_every == 0 or step == total_steps or stopped_early:
            save(manager)
        if stopped_early:
            break
    writers.close()

    # --- export ----------------------------------------------------------------------------------
    summary = {"final_step": step, "stopped_early": stopped_early, "history": history,
               "best_metric": config.best_metric,
               "best_value": tracker.best if math.isfinite(tracker.best) else None,
               "last_validation": last_metrics, "weights_checksum": weights_checksum(model),
               # median over loops after the first (tracing, compilation); None if only one
               "images_per_sec": float(np.median(rates)) if rates else None,
               "strategy": strategy_description, "replicas": replicas, "precision": policy,
               "xla": use_xla}
    if config.export and is_chief:
        from idc_engine.training import export  # SavedModel tooling only where it is used
        best = tf.train.latest_checkpoint(best_dir)
        if best:
            checkpoint.restore(best).expect_partial()
        summary["export"] = export.export_model(
            model, lambda: models.build_model(config.model, input_shape,
                                              backbone_input_size=config.backbone_input_size or None),
            os.path.join(config.model_dir, "export"), config.image_size, mean, std,
            threshold=_best_threshold_record(config, best))
    return summary


def _best_threshold_record(config: TrainConfig, best_checkpoint: str | None) -> dict | None:
    """threshold.json's record for the exported best checkpoint: the max_f1 threshold its
    validation chose on the val split (None without a validation that chose one)."""
    best_file = os.path.join(config.model_dir, "best.json")
    if not best_checkpoint or not os.path.isfile(best_file):
        return None
    with open(best_file) as f:
        best = json.load(f)
    if "val_max_f1_threshold" not in best:
        return None
    return {"threshold": best["val_max_f1_threshold"], "rule": thresholds.DEFAULT_RULE, "chosen_on": "val",
            "chosen_by": "idc_engine.train, at the best validation", "model_step": best["step"],
            "idc_f1": best["val_idc_f1_at_max_f1"], "accuracy": best["val_accuracy_at_max_f1"],
            "balanced_accuracy": best["val_balanced_accuracy_at_max_f1"],
            "data_dir": os.path.abspath(config.data_dir)}


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


def weights_checksum(model) -> float:
    """A float that differs when any weight differs: workers compare it after training."""
    return float(sum(np.sum(np.asarray(w, np.float64) * (i + 1))
                     for i, w in enumerate(model.get_weights())))
