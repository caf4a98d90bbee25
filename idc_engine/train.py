"""Trains a patch classifier on converted IDC TFRecords, on 1 CPU, 1 GPU, N GPUs or N hosts.

    python -m idc_engine.train --flagfile=flags/cpu_quick.flags --data_dir=... --model_dir=...
    python -m idc_engine.train --flagfile=flags/cancernet_mirrored.flags      # every local GPU
    TF_CONFIG=... python -m idc_engine.train --flagfile=flags/multi_worker.flags   # each host

A run resumes from the last checkpoint in --model_dir by itself. Everything it does goes to
TensorBoard (--model_dir/tensorboard), the resolved flags to --model_dir/config.json, the best
model to --model_dir/export. Every flag: --helpfull.
"""

import dataclasses
import json
import logging as std_logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from idc_engine.training import config as config_lib

FLAGS = flags.FLAGS
C = config_lib
_HELP = {
    "data_dir": "A directory written by python -m idc_engine.convert.",
    "model_dir": "Checkpoints, TensorBoard, config.json and the export go here; a run whose "
                 "model_dir has checkpoints resumes from the latest.",
    "input_mode": "stream: tf.data from the shards; cache: the train split decoded once into "
                  "host RAM; device: the train split resident in accelerator memory, batches "
                  "drawn there (no host input work per step).",
    "shuffle_buffer": "Records in the shuffle buffer (stream mode).",
    "image_size": "Model input size: 50 keeps the patches; 48 resizes like the tutorial.",
    "augment": "Augmentation on the device: a preset (pathology, tutorial, none) or ops such "
               "as 'd4|hed(0.05,0.05)|brightness(0.1)'; see idc_engine/augment.py.",
    "model": "cancernet | plain_cnn | mobilenet_v2 | resnet50.",
    "weights_path": "A local weights file for the backbone of mobilenet_v2/resnet50 (nothing "
                    "is downloaded).",
    "backbone_input_size": "Resize inputs to this size inside mobilenet_v2/resnet50 (0: as is).",
    "freeze_backbone_epochs": "Train only the head for this many epochs, then unfreeze the "
                              "backbone (with a pretrained --weights_path).",
    "fine_tune_lr_factor": "Learning-rate multiplier applied when the backbone is unfrozen.",
    "bn_momentum": "BatchNorm moving-average momentum between recomputations (Keras' 0.99).",
    "bn_statistics_examples": "Before each validation, checkpoint and export, every BatchNorm's "
                              "moving statistics are recomputed from this many training "
                              "examples under the current weights (dropout off, as inference "
                              "sees them); 0 keeps the moving averages alone.",
    "fused_batchnorm": "Train BatchNormalization through TensorFlow's fused kernel (same math, "
                       "about half of CancerNet's CPU step); --nofused_batchnorm for Keras' own.",
    "strategy": "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs "
                "or --num_cpu_devices > 1, else default (one device); default; mirrored; "
                "multi_worker (reads TF_CONFIG).",
    "num_cpu_devices": "Split the CPU into N logical devices (MirroredStrategy without GPUs).",
    "xla": "jit_compile the per-replica step: auto (off on CPU, measured slower there; on for "
           "every model on GPUs, not measured in this project), on, off.",
    "precision": "auto (float32 on CPU: mixed_bfloat16 was measured 1.19x faster on a CPU with "
                 "avx512_bf16 but its accuracy was not, so it is opt-in; on GPUs by compute "
                 "capability, "
                 "not measured in this project: mixed_bfloat16 on 8.0+, mixed_float16 on 7.x, "
                 "float32 below), float32, mixed_float16, mixed_bfloat16.",
    "global_batch_size": "Batch summed over all replicas; must divide by the replica count.",
    "epochs": "Epochs of the train split (ignored when --train_steps > 0).",
    "train_steps": "Total training steps; 0: from --epochs.",
    "steps_per_loop": "Training steps per tf.function call (fewer host round trips).",
    "optimizer": "adagrad | adam | adamw | sgd (with --momentum, Nesterov).",
    "learning_rate": "Peak learning rate.",
    "momentum": "SGD momentum.",
    "weight_decay": "AdamW decoupled weight decay.",
    "lr_schedule": "constant | inverse_time (the tutorial's lr/(1+d*step)) | cosine (with "
                   "--warmup_steps) | plateau (x --plateau_factor when --best_metric stalls).",
    "warmup_steps": "Linear warm-up steps of the cosine schedule.",
    "inverse_time_decay_rate": "d of inverse_time; 0: learning_rate / epochs, as the tutorial.",
    "plateau_factor": "Learning-rate factor at each plateau (plateau schedule).",
    "plateau_patience": "Validations without improvement before a plateau reduction.",
    "loss": "cross_entropy | focal.",
    "focal_gamma": "Focusing parameter of the focal loss.",
    "class_weights": "balanced (max count / class count, the tutorial's), none, or 0:W0,1:W1.",
    "validation_every_steps": "Validate every N steps; 0: once per epoch.",
    "best_metric": "Validation metric that picks the best checkpoint and drives plateau and "
                   "early stopping (val_loss is minimized, the others maximized).",
    "early_stopping_patience": "Stop after N validations without improvement; 0: never.",
    "checkpoint_every_steps": "Checkpoint every N steps; 0: at each validation. A crash loses "
                              "at most this many steps.",
    "keep_checkpoints": "Checkpoints kept (the best one is kept apart).",
    "log_every_steps": "Log and summarize every N steps; 0: every loop.",
    "profile_steps": "A,B: write a profiler trace of steps A..B to --model_dir/profile.",
    "export": "At the end, export the best model (.keras and a uint8 SavedModel).",
    "seed": "Seed of data order, augmentation and initialization.",
    "deterministic": "Deterministic ops and data order: identical losses run to run (slower).",
    "inject_nan_at_step": "Testing: make the loss NaN at this step to exercise the stop path.",
}


def define_flags() -> None:
    for field in dataclasses.fields(config_lib.TrainConfig):
        default, help_text = field.default, _HELP[field.name]
        if isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


def config_from_flags() -> config_lib.TrainConfig:
    return config_lib.TrainConfig(**{field.name: FLAGS[field.name].value
                                     for field in dataclasses.fields(config_lib.TrainConfig)})


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    try:
        config.validate()
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # TensorFlow's own INFO chatter (saver timings, SavedModel assets), logged through absl
    # like the engine's progress lines, would drown them: keep INFO from idc_engine only.
    absl_logging.get_absl_logger().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "idc_engine" in record.pathname)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    from idc_engine.manifest import ManifestError  # TensorFlow loads only past this point
    from idc_engine.training import loop
    try:
        summary = loop.train(config)
    except (config_lib.ConfigError, ManifestError, loop.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, loop.TrainingError) else 3
    from idc_engine.training import summaries
    print(summaries.format_run(summary, summary["strategy"]))
    # the same for programs (tests, benchmarks): the last JSON object on stdout
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))
    return 0


def run() -> None:
    """Console-script entry point (idc-train)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
