"""Evaluates an exported model on a split: clinically named metrics, patient level, figures.

    python -m idc_engine.evaluate --model_dir=runs/demo/cancernet --data_dir=runs/demo/tfrecords
    python -m idc_engine.evaluate ... --threshold=recall:0.90 --slides=all --bootstrap=2000

What it does, in order:
  1. loads the served model, `model_dir/export/saved_model` (uint8 patches -> IDC probability:
     exactly what users deploy);
  2. chooses the decision threshold on --threshold_split (val; test and train are refused) by --threshold
     (max_f1, youden, recall:R, specificity:S or a number) and writes it to
     `model_dir/export/threshold.json`, which python -m idc_engine.predict applies; the
     evaluated split's labels are never read before the threshold is fixed;
  3. on --split (test): patch-level metrics named by class, scikit-learn's classification report,
     calibration; per-patient IDC extent and accuracy; 95% confidence intervals by bootstrap over
     patients (idc_engine/evaluation/patients.py);
  4. writes --output_dir (default model_dir/evaluation/<split>): metrics.json, summary.txt,
     patients.csv, predictions.csv, PNG figures, slides/patient_<id>.png; the same metrics and
     figures to TensorBoard (model_dir/tensorboard/evaluation_<split>); prints a summary table.

Every flag: --helpfull.
"""

from absl import app

from idc_engine import cli
from idc_engine.evaluation.config import EvaluateConfig


def define_flags() -> None:
    cli.define_flags(EvaluateConfig)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = cli.config_from_flags(EvaluateConfig)
    config.validate()
    cli.keep_engine_logs_only()
    from idc_engine.evaluation.run import evaluate  # TensorFlow loads only past this point

    print(evaluate(config)["summary_text"])
    return 0


def run() -> None:
    """Console-script entry point (idc-evaluate)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
