"""What mixed_bfloat16 does to accuracy and speed on a CPU, paired with float32.

    python -m benchmarks.precision --output_dir=OUT [--work_dir=W]   # about an hour on 2 cores
    python -m benchmarks.precision --quick                            # the whole path, tiny

The protocol, fixed before the first run:
- Data: the demo's generated tree (40 patients, every quirk, seed 0), converted with
  --split=kfold --folds=5 (no held-out test set: every patient is scored out of fold once).
- Runs: python -m idc_engine.crossval with flags/cpu_quick.flags, for each seed of --seeds
  (0, 1, 2) and each precision (float32, mixed_bfloat16): the same folds, the same seed, the
  same flags but --precision. Each fold is trained, calibrated and thresholded on its val fold
  and scored on its held-out fold, through its SavedModel (--noexport_int8: the precision of
  training is measured, not the int8 model's parity).
- Measure: per seed, the pooled out-of-fold ROC-AUC of each precision and their paired
  difference d_s = AUC(mixed_bfloat16) - AUC(float32); the mean over seeds, d. Its 95% interval
  from a bootstrap over patients (2,000 resamples; one resample of patients applies to every
  seed and both precisions, so the pairing is kept).
- Rule (non-inferiority): mixed_bfloat16 passes when the interval's lower bound is above
  -MARGIN (-0.01 ROC-AUC). The step rates (training images/s, median of each fold's logged
  rate) come from the same runs and are reported beside it, paired by seed and fold.
- The decision it feeds: --precision=auto picks mixed_bfloat16 on CPUs with bfloat16
  instructions (avx512_bf16, amx_bf16) only if the rule passes (idc_engine/training/devices.py).

Results: OUT/precision.json (committed as docs/benchmarks/precision_cpu.json) and TensorBoard.
Killed, the same command resumes: each crossval resumes where it stopped.
"""

import csv
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from benchmarks import quick
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds; each is run at every precision.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "The first is the reference.")
flags.DEFINE_integer("num_patients", 40, "Patients of the generated tree (the demo's 40).")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_string("flagfile_for_training", "flags/cpu_quick.flags", "Training flags of every run.")
flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples of patients for the interval.")
flags.DEFINE_float("margin", 0.01, "Non-inferiority margin in ROC-AUC.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
flags.DEFINE_string("work_dir", None, "Where data and runs go (default: a temporary directory).")
quick.define_flag()

QUICK_SIZES = {"seeds": ["0"], "num_patients": 6, "folds": 3, "bootstrap": 50}
QUICK_TRAINING = ("--train_steps=6", "--steps_per_loop=2", "--bn_statistics_examples=256")


def _python(*args) -> None:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")


def make_data(work: str) -> str:
    """The generated tree converted into folds; returns data_dir (reused when complete)."""
    data_dir = os.path.join(work, "kfold")
    if not os.path.exists(os.path.join(data_dir, "manifest.json")):
        tree = os.path.join(work, "tree")
        _python("idc_engine.synthetic", f"--output_dir={tree}",
                f"--num_patients={FLAGS.num_patients}", "--seed=0", "--quirks")
        _python("idc_engine.convert", f"--input_dir={tree}", f"--output_dir={data_dir}",
                "--split=kfold", f"--folds={FLAGS.folds}", "--kfold_test=none", "--overwrite")
    return data_dir


def cross_validate(data_dir: str, run_dir: str, precision: str, seed: str) -> None:
    extra = QUICK_TRAINING if FLAGS.quick else ()
    _python("idc_engine.crossval", f"--data_dir={data_dir}", f"--model_dir={run_dir}",
            f"--flagfile={FLAGS.flagfile_for_training}", f"--precision={precision}",
            f"--seed={seed}", "--crossval_bootstrap=0", "--noexport_int8",
            "--nocrossval_fold_figures", *extra)


def out_of_fold(run_dir: str) -> dict:
    """{(fold, patient, x, y): (label int, P(IDC) float)} of a crossval run."""
    with open(os.path.join(run_dir, "crossval", "out_of_fold.csv")) as f:
        return {(r["fold"], r["patient_id"], r["x"], r["y"]):
                (int(r["label"]), float(r["idc_probability"])) for r in csv.DictReader(f)}


def training_rates(run_dir: str, folds: int) -> list[float]:
    """Per fold, the median of the images/s training logged (warm-up excluded by the trainer)."""
    import tensorflow as tf

    rates = []
    for k in range(folds):
        log_dir = os.path.join(run_dir, f"fold_{k}", "model", "tensorboard", "train")
        values = [float(tf.make_ndarray(v.tensor)) for name in sorted(os.listdir(log_dir))
                  for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name))
                  for v in event.summary.value if v.tag == "images_per_sec"]
        rates.append(float(np.median(values)))
    return rates


def paired_auc_difference(runs: dict, seeds: list[str], precisions: list[str], bootstrap: int):
    """(per-seed AUC of each precision, d per seed, mean d, its bootstrap 2.5/97.5 percentiles).

    runs[(precision, seed)]: out_of_fold(...) of that run; every run scores the same patches."""
    from sklearn.metrics import roc_auc_score

    keys = sorted(runs[(precisions[0], seeds[0])])
    patients = np.array([k[1] for k in keys])
    labels = np.array([runs[(precisions[0], seeds[0])][k][0] for k in keys])
    prob = {run: np.array([runs[run][k][1] for k in keys]) for run in runs}
    for run in runs:
        assert [runs[run][k][0] for k in keys] == labels.tolist(), run  # the same patches

    def mean_difference(index):
        return float(np.mean([roc_auc_score(labels[index], prob[(precisions[1], s)][index])
                              - roc_auc_score(labels[index], prob[(precisions[0], s)][index])
                              for s in seeds]))

    auc = {f"{p}_seed{s}": roc_auc_score(labels, prob[(p, s)]) for p in precisions for s in seeds}
    per_seed = [auc[f"{precisions[1]}_seed{s}"] - auc[f"{precisions[0]}_seed{s}"] for s in seeds]
    rng = np.random.default_rng(0)
    unique = np.unique(patients)
    rows_of = {p: np.flatnonzero(patients == p) for p in unique}
    draws = []
    for _ in range(bootstrap):
        index = np.concatenate([rows_of[p] for p in rng.choice(unique, len(unique))])
        if 0 < labels[index].sum() < len(index):
            draws.append(mean_difference(index))
    low, high = np.percentile(draws, [2.5, 97.5])
    return auc, per_seed, float(np.mean(per_seed)), float(low), float(high)


def main(argv) -> None:
    del argv
    quick.apply(QUICK_SIZES)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="idc_bench_precision_")
    os.makedirs(work, exist_ok=True)
    data_dir = make_data(work)
    seeds, precisions = list(FLAGS.seeds), list(FLAGS.precisions)
    runs, rates = {}, {}
    for seed in seeds:
        for precision in precisions:
            run_dir = os.path.join(work, f"{precision}_seed{seed}")
            cross_validate(data_dir, run_dir, precision, seed)
            runs[(precision, seed)] = out_of_fold(run_dir)
            rates[(precision, seed)] = training_rates(run_dir, FLAGS.folds)
    auc, per_seed, mean, low, high = paired_auc_difference(runs, seeds, precisions,
                                                           FLAGS.bootstrap)
    speed = [b / a for s in seeds for a, b in zip(rates[(precisions[0], s)],
                                                   rates[(precisions[1], s)])]
    report = BenchmarkReport("precision", FLAGS.output_dir, config={
        "quick": FLAGS.quick, "seeds": seeds, "precisions": precisions, "folds": FLAGS.folds,
        "num_patients": FLAGS.num_patients, "training_flags": FLAGS.flagfile_for_training,
        "bootstrap": FLAGS.bootstrap, "margin": FLAGS.margin, "work_dir": work,
        "rule": f"{precisions[1]} is non-inferior when the 95% lower bound of the mean paired "
                f"difference in pooled out-of-fold ROC-AUC is above -{FLAGS.margin}"})
    for key, value in auc.items():
        report.add(f"pooled_auc_{key}", value)
    for seed, difference in zip(seeds, per_seed):
        report.add(f"auc_difference_seed{seed}", difference)
    report.add("auc_difference_mean", mean, ci95=[low, high])
    report.add("auc_difference_ci95_low", low)
    report.add("auc_difference_ci95_high", high)
    report.add("non_inferior", float(low > -FLAGS.margin))
    for precision in precisions:
        report.add(f"train_images_per_s_{precision}",
                   float(np.median([r for s in seeds for r in rates[(precision, s)]])),
                   per_seed_and_fold={s: rates[(precision, s)] for s in seeds})
    report.add(f"speed_{precisions[1]}_vs_{precisions[0]}", float(np.median(speed)),
               paired_by_seed_and_fold=speed)
    report.write()


if __name__ == "__main__":
    app.run(main)
