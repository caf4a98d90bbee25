"""Patient k-fold cross-validation: trains, calibrates, thresholds and scores every fold.

    python -m idc_engine.convert --input_dir=... --output_dir=DATA --split=kfold --folds=5
    python -m idc_engine.crossval --data_dir=DATA --model_dir=runs/cv --flagfile=flags/cpu_quick.flags

Fold k is tested on fold k, validated (best model, calibration, threshold) on fold k+1 and
trained on the others (idc_engine/evaluation/crossval.py). Every training flag applies to every
fold (--flagfile as for python -m idc_engine.train); --model_dir holds fold_<k>/ and crossval/
(summary.json, summary.txt, out_of_fold.csv, roc_per_fold.png, tensorboard/). Killed, the same
command resumes at the fold and step it reached. Every flag: --helpfull.
"""

import dataclasses

from absl import app

from idc_engine import cli
from idc_engine.training import config as config_lib


@dataclasses.dataclass
class CrossvalConfig:
    crossval_bootstrap: int = cli.option(1000, "Bootstrap replicates over patients for the "
                                         "pooled out-of-fold 95% intervals (0: none).")
    crossval_seed: int = cli.option(0, "Seed of that bootstrap.")
    crossval_fold_figures: bool = cli.option(True, "Each fold's evaluation draws its figures and "
                                             "TensorBoard summaries (off: metrics.json and the "
                                             "predictions only; the summary's figures stay).")


def define_flags() -> None:
    cli.define_flags(config_lib.TrainConfig)
    cli.define_flags(CrossvalConfig)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    train_config = cli.config_from_flags(config_lib.TrainConfig)
    train_config.validate()
    config = cli.config_from_flags(CrossvalConfig)
    if config.crossval_bootstrap < 0:
        raise app.UsageError("--crossval_bootstrap must be >= 0")
    cli.keep_engine_logs_only()
    from idc_engine.evaluation import crossval  # TensorFlow loads only past this point

    summary = crossval.cross_validate(train_config, config.crossval_bootstrap,
                                      config.crossval_seed,
                                      fold_figures=config.crossval_fold_figures)
    print(summary["summary_text"])
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
