"""Cross-validation's summary: per-fold metrics, their mean and std, pooled out-of-fold figures.

Pooled: every held-out patch of every fold together (each patch is out-of-fold exactly once).
Threshold-free figures (ROC-AUC, PR-AUC, Brier, ECE) come from the pooled probabilities; those
at a threshold from each patch's own fold's decision (each fold chose its threshold on its own
val fold). 95% intervals: bootstrap over patients (evaluation/patients.py), the two kinds with
the same seed, hence the same resampled patients.
"""

import csv
import os

import numpy as np

from idc_engine import atomic_files
from idc_engine.evaluation import patients, plots, report
from idc_engine.scoring import metrics as metrics_lib

PROBABILITY_METRICS = ("auc", "pr_auc", "brier_score", "expected_calibration_error")
DECISION_METRICS = ("balanced_accuracy", "idc_sensitivity", "idc_specificity", "idc_precision",
                    "idc_f1", "accuracy")
OOF_COLUMNS = ("fold", "patient_id", "x", "y", "label", "idc_probability", "predicted")


def read_fold_predictions(k: int, metrics: dict) -> list[dict]:
    """The fold's evaluation predictions.csv rows, with the fold's index."""
    with open(os.path.join(metrics["output_dir"], "predictions.csv")) as f:
        return [{"fold": k, **row} for row in csv.DictReader(f)]


def pooled_metrics(labels, prob, predicted) -> dict:
    """labels int [N], prob float [N], predicted int [N] (each fold's decision) -> figures."""
    by_prob = metrics_lib.evaluation_metrics(labels, prob, 0.5)
    by_decision = metrics_lib.classification_metrics(labels, predicted.astype(np.float64), 0.5)
    return {**{k: by_prob[k] for k in PROBABILITY_METRICS},
            **{k: by_decision[k] for k in DECISION_METRICS}}


def pooled_intervals(ids, labels, prob, predicted, bootstrap: int, seed: int) -> dict:
    """{metric: {"estimate", "low", "high", ...}} over patients, or {} with bootstrap 0."""
    if bootstrap <= 0:
        return {}
    by_prob = patients.bootstrap(ids, labels, prob, 0.5, bootstrap, seed)["patch"]
    by_decision = patients.bootstrap(ids, labels, predicted.astype(np.float64), 0.5, bootstrap,
                                     seed)["patch"]
    return {**{k: by_prob[k] for k in PROBABILITY_METRICS if k in by_prob},
            **{k: by_decision[k] for k in DECISION_METRICS if k in by_decision}}


def _per_fold(results) -> list[dict]:
    return [{"fold": k, "test_fold": name, "threshold": m["threshold"]["threshold"],
             "num_patches": m["patch"]["num_examples"], "num_patients": len(m["patients"]),
             **{key: m["patch"][key] for key in PROBABILITY_METRICS + DECISION_METRICS}}
            for k, name, m in results]


def summarize(results, output_dir: str, bootstrap: int, seed: int) -> dict:
    """results: [(k, fold name, the fold's evaluation metrics.json)] -> the summary, written
    to output_dir (summary.json, summary.txt, out_of_fold.csv, roc_per_fold.png, tensorboard)."""
    os.makedirs(output_dir, exist_ok=True)
    rows = [r for k, _, m in results for r in read_fold_predictions(k, m)]
    report.write_csv(os.path.join(output_dir, "out_of_fold.csv"),
                     [{c: r[c] for c in OOF_COLUMNS} for r in rows], digits=9)
    ids = np.array([r["patient_id"] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    prob = np.array([float(r["idc_probability"]) for r in rows])
    predicted = np.array([int(r["predicted"]) for r in rows])
    folds = _per_fold(results)
    keys = PROBABILITY_METRICS + DECISION_METRICS
    values = {key: np.array([f[key] for f in folds], np.float64) for key in keys}
    summary = {"folds": folds, "num_folds": len(folds),
               "mean": {key: float(np.mean(values[key])) for key in keys},
               "std": {key: float(np.std(values[key], ddof=1)) for key in keys},
               "pooled": pooled_metrics(labels, prob, predicted),
               "pooled_intervals": pooled_intervals(ids, labels, prob, predicted, bootstrap, seed),
               "num_patches": int(len(rows)), "num_patients": int(len(set(ids))),
               "bootstrap": {"replicates": bootstrap, "seed": seed, "over": "patients"}}
    summary["figure"] = plot_rocs(rows, os.path.join(output_dir, "roc_per_fold.png"))
    summary["summary_text"] = format_table(summary)
    atomic_files.write_json_atomically(os.path.join(output_dir, "summary.json"),
                                       report.plain(summary))
    with atomic_files.replace_atomically(os.path.join(output_dir, "summary.txt")) as f:
        f.write(summary["summary_text"] + "\n")
    write_tensorboard(os.path.join(output_dir, "tensorboard"), summary)
    return summary


def format_table(summary: dict) -> str:
    """The printed table: one row per fold, then mean +- std and pooled [95% CI]."""
    shown = ("auc", "pr_auc", "balanced_accuracy", "idc_sensitivity", "idc_specificity",
             "idc_f1", "brier_score", "expected_calibration_error")
    head = ["ROC-AUC", "PR-AUC", "bal.acc", "sens.", "spec.", "F1", "Brier", "ECE"]
    lines = [f"{summary['num_folds']}-fold patient cross-validation: {summary['num_patches']:,} "
             f"out-of-fold patches, {summary['num_patients']} patients",
             f"  {'fold':<10}{'thr.':>7}" + "".join(f"{h:>9}" for h in head)]
    for f in summary["folds"]:
        lines.append(f"  {f['test_fold']:<10}{f['threshold']:7.3f}"
                     + "".join(f"{f[k]:9.4f}" for k in shown))
    lines.append(f"  {'mean':<17}" + "".join(f"{summary['mean'][k]:9.4f}" for k in shown))
    lines.append(f"  {'std':<17}" + "".join(f"{summary['std'][k]:9.4f}" for k in shown))
    lines.append(f"  {'pooled':<17}" + "".join(f"{summary['pooled'][k]:9.4f}" for k in shown))
    ci = summary["pooled_intervals"]
    if ci:
        lines.append("  pooled 95% CI, bootstrap over patients "
                     f"({summary['bootstrap']['replicates']}x, seed {summary['bootstrap']['seed']}):")
        for k, h in zip(shown, head):
            if k in ci and ci[k].get("low") is not None:
                lines.append(f"    {h:<8} [{ci[k]['low']:.4f}, {ci[k]['high']:.4f}]")
    return "\n".join(lines)


def plot_rocs(rows: list[dict], path: str) -> str:
    """One ROC curve per fold (held-out patches) and the pooled one."""
    import matplotlib.pyplot as plt
    from sklearn import metrics as sk

    with plt.rc_context(plots.STYLE):
        figure, axes = plt.subplots(figsize=(4.2, 4.2))
        axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        for k in sorted({r["fold"] for r in rows}):
            y = [int(r["label"]) for r in rows if r["fold"] == k]
            p = [float(r["idc_probability"]) for r in rows if r["fold"] == k]
            fpr, tpr, _ = sk.roc_curve(y, p)
            axes.plot(fpr, tpr, lw=1.0, label=f"fold {k}: AUC {sk.roc_auc_score(y, p):.3f}")
        y = [int(r["label"]) for r in rows]
        p = [float(r["idc_probability"]) for r in rows]
        fpr, tpr, _ = sk.roc_curve(y, p)
        axes.plot(fpr, tpr, lw=2.0, color=plots.MODEL_COLOUR,
                  label=f"pooled: AUC {sk.roc_auc_score(y, p):.3f}")
        axes.set_xlabel("1 - IDC specificity")
        axes.set_ylabel("IDC sensitivity")
        axes.set_title("ROC per held-out fold")
        axes.legend(loc="lower right")
        return plots.save_figure(figure, path)


def write_tensorboard(log_dir: str, summary: dict) -> None:
    """crossval/<metric> per fold (step = fold), and mean/std/pooled at step 0."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for f in summary["folds"]:
            for key in PROBABILITY_METRICS + DECISION_METRICS:
                tf.summary.scalar(f"crossval/fold/{key}", f[key], step=f["fold"])
        for part in ("mean", "std", "pooled"):
            for key, value in summary[part].items():
                tf.summary.scalar(f"crossval/{part}/{key}", value, step=0)
        tf.summary.text("crossval/summary", "```\n" + summary["summary_text"] + "\n```", step=0)
    writer.close()
