"""The training run's configuration: one dataclass, one field per `python -m idc_engine.train` flag.

The absl flags of idc_engine/train.py are these fields, help text included (idc_engine/cli.py);
tests and notebooks build a `TrainConfig` directly. `validate()` turns every bad combination
into one clear message naming the flag, before any TensorFlow work starts.
"""

import dataclasses
import os

from idc_engine import cli, errors

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
XLA_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
INPUT_MODES = ("stream", "cache", "device")
LOSSES = ("cross_entropy", "focal")
OPTIMIZERS = ("adagrad", "adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "inverse_time", "cosine", "plateau")
STAIN_NORMALIZATIONS = ("none", "reinhard", "macenko")  # idc_engine/input/stain.py
METRICS = ("val_loss", "val_accuracy", "val_auc", "val_idc_f1", "val_balanced_accuracy",
           "val_idc_recall", "val_idc_precision")


class ConfigError(errors.EngineError, ValueError):
    """A flag value, or combination, that cannot work; the message names the flag."""


@dataclasses.dataclass
class TrainConfig:
    # data
    data_dir: str = cli.option("", "A directory written by python -m idc_engine.convert.")
    model_dir: str = cli.option(
        "",
        "Checkpoints, TensorBoard, config.json and the export go here; a run whose model_dir "
        "has checkpoints resumes from the latest.")
    input_mode: str = cli.option(
        "stream",
        "stream: tf.data from the shards; cache: the train split decoded once into host RAM; "
        "device: the train split resident in accelerator memory, batches drawn there (no host "
        "input work per step).")
    shuffle_buffer: int = cli.option(16384, "Records in the shuffle buffer (stream mode).")
    image_size: int = cli.option(
        50,
        "Model input size: 50 keeps the patches; 48 resizes like the tutorial.")
    augment: str = cli.option(
        "pathology",
        "Augmentation on the device: a preset (pathology, tutorial, none) or ops such as "
        "'d4|hed(0.05,0.05)|brightness(0.1)'; see idc_engine/input/augment.py.")
    stain_normalization: str = cli.option(
        "none",
        "none | reinhard | macenko: stain normalisation of every patch to the target of "
        "--data_dir/stain_target.json (python -m idc_engine.stain fit), on the device in the "
        "step, and in the exported model, so evaluate, predict and explain apply it too.")
    # model
    model: str = cli.option("cancernet", "cancernet | plain_cnn | mobilenet_v2 | resnet50.")
    weights_path: str = cli.option(
        "",
        "A local weights file for the backbone of mobilenet_v2/resnet50 (nothing is "
        "downloaded).")
    backbone_input_size: int = cli.option(
        0,
        "Resize inputs to this size inside mobilenet_v2/resnet50 (0: as is).")
    freeze_backbone_epochs: int = cli.option(
        0,
        "Train only the head for this many epochs, then unfreeze the backbone (with a "
        "pretrained --weights_path).")
    fine_tune_lr_factor: float = cli.option(
        0.1,
        "Learning-rate multiplier applied when the backbone is unfrozen.")
    bn_momentum: float = cli.option(
        0.99,
        "BatchNorm moving-average momentum between recomputations (Keras' 0.99).")
    bn_statistics_examples: int = cli.option(
        4096,
        "Before each validation, checkpoint and export, every BatchNorm's moving statistics are"
        " recomputed from this many training examples under the current weights (dropout off, "
        "as inference sees them); 0 keeps the moving averages alone.")
    fused_batchnorm: bool = cli.option(
        True,
        "Train BatchNormalization through TensorFlow's fused kernel (same math, about half of "
        "CancerNet's CPU step); --nofused_batchnorm for Keras' own.")
    # devices
    strategy: str = cli.option(
        "auto",
        "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs or "
        "--num_cpu_devices > 1, else default (one device); default; mirrored; multi_worker "
        "(reads TF_CONFIG).")
    num_cpu_devices: int = cli.option(
        1,
        "Split the CPU into N logical devices (MirroredStrategy without GPUs).")
    xla: str = cli.option(
        "auto",
        "jit_compile the per-replica step: auto (off on CPU, measured slower there; on for "
        "every model on GPUs, not measured in this project), on, off.")
    precision: str = cli.option(
        "auto",
        "auto (on CPU: mixed_bfloat16 with bfloat16 instructions, avx512_bf16 or amx_bf16, "
        "measured 1.19x faster and non-inferior in ROC-AUC; float32 without them; on GPUs by "
        "compute capability, not measured in this project: mixed_bfloat16 on 8.0+, "
        "mixed_float16 on 7.x, float32 below), float32, mixed_float16, mixed_bfloat16.")
    # optimization
    global_batch_size: int = cli.option(
        256,
        "Batch summed over all replicas; must divide by the replica count.")
    epochs: float = cli.option(10.0, "Epochs of the train split (ignored when --train_steps > 0).")
    train_steps: int = cli.option(0, "Total training steps; 0: from --epochs.")
    steps_per_loop: int = cli.option(
        20,
        "Training steps per tf.function call (fewer host round trips).")
    optimizer: str = cli.option("adam", "adagrad | adam | adamw | sgd (with --momentum, Nesterov).")
    learning_rate: float = cli.option(1e-3, "Peak learning rate.")
    momentum: float = cli.option(0.9, "SGD momentum.")
    weight_decay: float = cli.option(1e-4, "AdamW decoupled weight decay.")
    lr_schedule: str = cli.option(
        "cosine",
        "constant | inverse_time (the tutorial's lr/(1+d*step)) | cosine (with --warmup_steps) "
        "| plateau (x --plateau_factor when --best_metric stalls).")
    warmup_steps: int = cli.option(0, "Linear warm-up steps of the cosine schedule.")
    inverse_time_decay_rate: float = cli.option(
        0.0,
        "d of inverse_time; 0: learning_rate / epochs, as the tutorial.")
    plateau_factor: float = cli.option(
        0.5,
        "Learning-rate factor at each plateau (plateau schedule).")
    plateau_patience: int = cli.option(
        2,
        "Validations without improvement before a plateau reduction.")
    loss: str = cli.option("cross_entropy", "cross_entropy | focal.")
    focal_gamma: float = cli.option(2.0, "Focusing parameter of the focal loss.")
    class_weights: str = cli.option(
        "balanced",
        "balanced (max count / class count, the tutorial's), none, or 0:W0,1:W1.")
    # validation, checkpoints, summaries
    validation_every_steps: int = cli.option(0, "Validate every N steps; 0: once per epoch.")
    best_metric: str = cli.option(
        "val_auc",
        "Validation metric that picks the best checkpoint and drives plateau and early stopping"
        " (val_loss is minimized, the others maximized).")
    early_stopping_patience: int = cli.option(
        0,
        "Stop after N validations without improvement; 0: never.")
    checkpoint_every_steps: int = cli.option(
        0,
        "Checkpoint every N steps; 0: at each validation. A crash loses at most this many "
        "steps.")
    keep_checkpoints: int = cli.option(3, "Checkpoints kept (the best one is kept apart).")
    log_every_steps: int = cli.option(0, "Log and summarize every N steps; 0: every loop.")
    profile_steps: str = cli.option(
        "",
        "A,B: write a profiler trace of steps A..B to --model_dir/profile.")
    export: bool = cli.option(
        True,
        "At the end, export the best model (.keras and a uint8 SavedModel).")
    export_int8: bool = cli.option(
        True, "Export also the int8 LiteRT model for CPUs, with its parity check on val "
        "(export/int8_parity.json); --noexport_int8: the SavedModel only, and --runtime=auto "
        "serves it.")
    # reproducibility and testing
    seed: int = cli.option(0, "Seed of data order, augmentation and initialization.")
    deterministic: bool = cli.option(
        False,
        "Deterministic ops and data order: identical losses run to run (slower).")
    inject_nan_at_step: int = cli.option(
        -1,
        "Testing: make the loss NaN at this step to exercise the stop path.")

    def validate(self) -> None:
        def need(condition, message):
            if not condition:
                raise ConfigError(message)

        for name, allowed in (("strategy", STRATEGIES), ("xla", XLA_MODES),
                              ("precision", PRECISIONS), ("input_mode", INPUT_MODES),
                              ("loss", LOSSES), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("best_metric", METRICS),
                              ("stain_normalization", STAIN_NORMALIZATIONS)):
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
