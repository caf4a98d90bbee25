"""The training run's configuration: one dataclass, one field per `python -m idc_engine.train` flag.

The absl flags in idc_engine/train.py are named exactly like these fields; tests and notebooks
build a `TrainConfig` directly. `validate()` turns every bad combination into one clear message
naming the flag, before any TensorFlow work starts.
"""

import dataclasses
import os

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
XLA_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
INPUT_MODES = ("stream", "cache", "device")
LOSSES = ("cross_entropy", "focal")
OPTIMIZERS = ("adagrad", "adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "inverse_time", "cosine", "plateau")
METRICS = ("val_loss", "val_accuracy", "val_auc", "val_idc_f1", "val_balanced_accuracy",
           "val_idc_recall", "val_idc_precision")


class ConfigError(ValueError):
    """A flag value, or combination, that cannot work; the message names the flag."""


@dataclasses.dataclass
class TrainConfig:
    # data
    data_dir: str = ""
    model_dir: str = ""
    input_mode: str = "stream"
    shuffle_buffer: int = 16384
    image_size: int = 50
    augment: str = "pathology"
    # model
    model: str = "cancernet"
    weights_path: str = ""
    backbone_input_size: int = 0
    freeze_backbone_epochs: int = 0
    fine_tune_lr_factor: float = 0.1
    bn_momentum: float = 0.99
    bn_statistics_examples: int = 4096
    fused_batchnorm: bool = True
    # devices
    strategy: str = "auto"
    num_cpu_devices: int = 1
    xla: str = "auto"
    precision: str = "auto"
    # optimization
    global_batch_size: int = 256
    epochs: float = 10.0
    train_steps: int = 0
    steps_per_loop: int = 20
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    inverse_time_decay_rate: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    class_weights: str = "balanced"
    # validation, checkpoints, summaries
    validation_every_steps: int = 0
    best_metric: str = "val_auc"
    early_stopping_patience: int = 0
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    log_every_steps: int = 0
    profile_steps: str = ""
    export: bool = True
    # reproducibility and testing
    seed: int = 0
    deterministic: bool = False
    inject_nan_at_step: int = -1

    def validate(self) -> None:
        def need(condition, message):
            if not condition:
                raise ConfigError(message)

        for name, allowed in (("strategy", STRATEGIES), ("xla", XLA_MODES),
                              ("precision", PRECISIONS), ("input_mode", INPUT_MODES),
                              ("loss", LOSSES), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("best_metric", METRICS)):
            value = getattr(self, name)
            need(value in allowed, f"--{name}={value!r} is not one of {', '.join(allowed)}")
        need(self.data_dir, "--data_dir is required: a directory written by idc_engine.convert")
        need(os.path.isdir(self.data_dir), f"--data_dir {self.data_dir!r} does not exist; "
             "convert the dataset first: python -m idc_engine.convert")
        need(self.model_dir, "--model_dir is required: where checkpoints and TensorBoard go")
        need(self.global_batch_size >= 1, "--global_batch_size must be >= 1")
        need(self.steps_per_loop >= 1, "--steps_per_loop must be >= 1")
        need(self.epochs > 0 or self.train_steps > 0, "set --epochs > 0 or --train_steps > 0")
        need(self.num_cpu_devices >= 1, "--num_cpu_devices must be >= 1")
        need(self.learning_rate > 0, "--learning_rate must be > 0")
        need(16 <= self.image_size <= 50, "--image_size must be in 16..50 (patches are 50x50)")
        need(self.keep_checkpoints >= 1, "--keep_checkpoints must be >= 1")
        need(0.0 < self.bn_momentum < 1.0, "--bn_momentum must be in (0, 1)")
        need(self.bn_statistics_examples >= 0, "--bn_statistics_examples must be >= 0")
        need(not self.weights_path or os.path.isfile(self.weights_path),
             f"--weights_path {self.weights_path!r} is not a file")
        parse_class_weights(self.class_weights)
        parse_profile_steps(self.profile_steps)


def parse_class_weights(text: str):
    """"balanced" | "none" | "0:1.0,1:2.5" -> "balanced", None, or {0: 1.0, 1: 2.5}."""
    if text in ("balanced", "none"):
        return None if text == "none" else text
    try:
        weights = {int(k): float(v) for k, v in (item.split(":") for item in text.split(","))}
    except ValueError:
        weights = {}
    if set(weights) != {0, 1} or min(weights.values()) <= 0:
        raise ConfigError(f"--class_weights={text!r}: use balanced, none, or 0:W0,1:W1 with "
                          "positive weights")
    return weights


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """"A,B" -> (A, B): trace the profiler from step A to step B."""
    if not text:
        return None
    try:
        start, stop = (int(v) for v in text.split(","))
    except ValueError:
        start = stop = -1
    if not 0 <= start < stop:
        raise ConfigError(f"--profile_steps={text!r}: use A,B with 0 <= A < B")
    return start, stop
