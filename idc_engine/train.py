"""Trains a patch classifier on converted IDC TFRecords, on 1 CPU, 1 GPU, N GPUs or N hosts.

    python -m idc_engine.train --flagfile=flags/cpu_quick.flags --data_dir=... --model_dir=...
    python -m idc_engine.train --flagfile=flags/cancernet_mirrored.flags      # every local GPU
    TF_CONFIG=... python -m idc_engine.train --flagfile=flags/multi_worker.flags   # each host

A run resumes from the last checkpoint in --model_dir by itself. Everything it does goes to
TensorBoard (--model_dir/tensorboard), the resolved flags to --model_dir/config.json, the best
model to --model_dir/export. Every flag: --helpfull.
"""

import json

from absl import app

from idc_engine import cli
from idc_engine.training import config as config_lib


def define_flags() -> None:
    cli.define_flags(config_lib.TrainConfig)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = cli.config_from_flags(config_lib.TrainConfig)
    config.validate()
    cli.keep_engine_logs_only()
    from idc_engine.training import loop, summaries  # TensorFlow loads only past this point

    summary = loop.train(config)
    print(summaries.format_run(summary, summary["strategy"]))
    # the same for programs (tests, benchmarks): the last JSON object on stdout
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))
    return 0


def run() -> None:
    """Console-script entry point (idc-train)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
