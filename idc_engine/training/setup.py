"""What a training run is built from before its first step, in order: the devices and strategy
(with the precision and XLA choices), the step counts the manifest implies, the model and
optimizer on the strategy, the training input, and the record of the resolved configuration.
"""

import dataclasses
import math
import os

import keras
import tensorflow as tf
from absl import logging

from idc_engine import atomic_files, models
from idc_engine.data import manifest as manifest_lib
from idc_engine.input import pipeline, stain_target
from idc_engine.input.augment import augment_on_device, parse_spec, write_augmentation_summary
from idc_engine.training import devices, objectives, summaries
from idc_engine.training.checkpoints import Counters, make_counters
from idc_engine.training.config import ConfigError, TrainConfig
from idc_engine.training.run_dir import RunDir


@dataclasses.dataclass(frozen=True)
class RunDevices:
    strategy: tf.distribute.Strategy
    description: str          # what the strategy runs on, one line
    replicas: int
    policy: str               # the Keras mixed-precision policy set for the run
    precision_reason: str
    compute_dtype: str        # the policy's compute dtype: what the model's input is cast to
    use_xla: bool
    xla_reason: str
    is_chief: bool            # this process writes the run's files


def set_up_devices(config: TrainConfig) -> RunDevices:
    """Devices, strategy, precision policy (set globally), seeds and op determinism."""
    devices.configure_cpu_devices(config.num_cpu_devices)
    strategy, description = devices.make_strategy(config.strategy, config.num_cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise ConfigError(f"--global_batch_size={config.global_batch_size} is not divisible by "
                          f"the {replicas} replicas of {description}")
    policy, precision_reason = devices.resolve_precision(config.precision)
    use_xla, xla_reason = devices.resolve_xla(config.xla, config.model)
    devices.set_precision_policy(policy)
    keras.utils.set_random_seed(config.seed)  # the same initial weights for the same seed
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.info("strategy: %s", description)
    logging.info("precision: %s (%s)", policy, precision_reason)
    logging.info("XLA: %s (%s)", "on" if use_xla else "off", xla_reason)
    return RunDevices(strategy, description, replicas, policy, precision_reason,
                      keras.mixed_precision.global_policy().compute_dtype, use_xla, xla_reason,
                      devices.is_chief(strategy))


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The run's step counts and the data figures the step needs, from manifest and flags."""
    steps_per_epoch: int
    total_steps: int
    validation_every: int
    checkpoint_every: int
    log_every: int
    freeze_until: int               # the step at which a frozen backbone thaws (0: no freezing)
    has_val: bool                   # the data has a val split to validate on
    mean: list[float]               # channel mean and std of the train split, 0..255 scale
    std: list[float]
    class_weights: list[float]      # [w_non_idc, w_idc]
    augment_steps: list             # input.augment.parse_spec of --augment
    stain: dict | None = None       # {"method", "target"} of --stain_normalization, or None


def plan_run(config: TrainConfig) -> RunPlan:
    """Reads the manifest; raises ConfigError for flags the data cannot satisfy."""
    manifest = manifest_lib.load_manifest(config.data_dir)
    train_info = manifest_lib.split_info(manifest, "train", config.data_dir)
    stain = _stain_normalization(config)
    mean, std = _standardisation(manifest, stain, config.data_dir)
    steps_per_epoch = train_info["num_examples"] // config.global_batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--global_batch_size={config.global_batch_size} exceeds the "
                          f"{train_info['num_examples']} training examples")
    validation_every = config.validation_every_steps or steps_per_epoch
    class_weights = objectives.class_weight_vector(
        config.class_weights, train_info["num_examples"] - train_info["num_positive"],
        train_info["num_positive"])
    augment_steps = parse_spec(config.augment)
    if config.freeze_backbone_epochs and config.model not in models.BACKBONE_MODELS:
        raise ConfigError(f"--freeze_backbone_epochs needs a model with a backbone "
                          f"({', '.join(sorted(models.BACKBONE_MODELS))}), not {config.model}")
    return RunPlan(
        steps_per_epoch=steps_per_epoch,
        total_steps=config.train_steps or math.ceil(config.epochs * steps_per_epoch),
        validation_every=validation_every,
        checkpoint_every=config.checkpoint_every_steps or validation_every,
        log_every=config.log_every_steps or min(config.steps_per_loop, validation_every),
        freeze_until=config.freeze_backbone_epochs * steps_per_epoch,
        has_val="val" in manifest["splits"], mean=mean, std=std, class_weights=class_weights,
        augment_steps=augment_steps, stain=stain)


def _stain_normalization(config: TrainConfig) -> dict | None:
    """--stain_normalization with its target from --data_dir (StainTargetError if unfitted)."""
    if config.stain_normalization == "none":
        return None
    return {"method": config.stain_normalization,
            "target": stain_target.load_target(config.data_dir, config.stain_normalization)}


def _standardisation(manifest: dict, stain: dict | None, data_dir: str):
    """The channel mean and std the model's input is standardised with: the train split's
    (manifest), or with stain normalisation those of the normalised train sample (stain fit)."""
    if stain is None:
        return pipeline.channel_mean_std(manifest)
    target = stain["target"]
    if "channel_mean" in target:
        return list(target["channel_mean"]), list(target["channel_std"])
    logging.warning("%s has no normalised channel statistics; standardising with the "
                    "un-normalised ones. Run `%s` again to add them.",
                    stain_target.target_path(data_dir), stain_target.FIT_COMMAND.format(data_dir))
    return pipeline.channel_mean_std(manifest)


@dataclasses.dataclass(frozen=True)
class ModelState:
    """What the step trains and the checkpoint holds."""
    model: keras.Model
    schedule: objectives.ScaledSchedule
    optimizer: keras.optimizers.Optimizer
    counters: Counters


def build_model(config: TrainConfig, **options) -> keras.Model:
    """The architecture of --model on (image_size, image_size, 3) inputs (options: build_model's)."""
    return models.build_model(config.model, (config.image_size, config.image_size, 3),
                              backbone_input_size=config.backbone_input_size or None, **options)


def build_model_state(config: TrainConfig, run_devices: RunDevices, plan: RunPlan) -> ModelState:
    """Model, schedule, optimizer and counters, created in the strategy's scope."""
    with run_devices.strategy.scope():
        model = build_model(config, weights_path=config.weights_path or None)
        models.set_batchnorm_momentum(model, config.bn_momentum)
        if config.fused_batchnorm:
            logging.info("fused BatchNormalization in %d layers", models.fuse_batchnorm(model))
        schedule = objectives.make_schedule(config, plan.total_steps,
                                            fine_tune_from=plan.freeze_until or None)
        optimizer = objectives.make_optimizer(config, schedule)
        if run_devices.policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Built here, in the scope, on every variable the run will ever train (also those of a
        # backbone frozen at first): otherwise "You must feed a value for placeholder" errors.
        optimizer.build(model.trainable_variables)
        return ModelState(model, schedule, optimizer, make_counters())


def make_sampler(config: TrainConfig, strategy):
    """The device-resident batch sampler of --input_mode=device, else None."""
    if config.input_mode != "device":
        return None
    with strategy.scope():
        return pipeline.make_device_resident_sampler(
            config.data_dir, "train", config.global_batch_size, seed=config.seed)


def train_iterator(config: TrainConfig, strategy, start_step: int):
    """The training batches' iterator (stream and cache input modes): images uint8
    [b, 50, 50, 3] and labels int32 [b] per replica. A resumed run draws a fresh order instead
    of replaying the first batches of its epoch."""
    return iter(strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.make_dataset(
            config.data_dir, "train", config.global_batch_size, training=True,
            input_context=ctx, cache=config.input_mode == "cache", seed=config.seed + start_step,
            deterministic=config.deterministic, shuffle_buffer=config.shuffle_buffer)))


def resolved_config(config: TrainConfig, run_devices: RunDevices, plan: RunPlan) -> dict:
    """config.json's contents: the flags and what "auto" and the data resolved them to."""
    return dict(vars(config), resolved_strategy=run_devices.description,
                replicas=run_devices.replicas, resolved_precision=run_devices.policy,
                precision_reason=run_devices.precision_reason, resolved_xla=run_devices.use_xla,
                xla_reason=run_devices.xla_reason, steps_per_epoch=plan.steps_per_epoch,
                total_steps=plan.total_steps, class_weight_vector=plan.class_weights,
                tensorflow=tf.__version__, keras=keras.__version__)


def record_run_start(config: TrainConfig, run: RunDir, resolved: dict,
                     writers: summaries.Writers, augment_steps: list, start_step: int) -> None:
    """On the chief: config.json, the HParams summary and, with augmentation, a sample of it."""
    os.makedirs(run.root, exist_ok=True)
    atomic_files.write_json_atomically(run.config_json, resolved, sort_keys=True,
                                       trailing_newline=False)
    writers.hparams(resolved)
    if augment_steps:
        sample, _ = next(iter(pipeline.make_dataset(config.data_dir, "train", 16,
                                                    training=False)))
        with writers.train.as_default():
            write_augmentation_summary(
                sample, augment_on_device(sample, config.seed, start_step, augment_steps),
                step=start_step)
