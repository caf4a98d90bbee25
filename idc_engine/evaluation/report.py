"""What an evaluation writes: the summary table, metrics.json, the CSVs and TensorBoard.

    summary.txt       the table printed at the end (`format_summary`)
    metrics.json      everything measured, JSON-safe (nan and inf as null)
    patients.csv      one row per patient (idc_engine/evaluation/patients.py)
    predictions.csv   one row per patch: patient_id, x, y, label, idc_probability, predicted
    tensorboard       model_dir/tensorboard/evaluation_<split>: scalars, figures, the summary

`result` below is the dict idc_engine/evaluation/run.py:evaluate builds (what metrics.json holds).
JSON and CSV files are replaced atomically (idc_engine/atomic_files.py).
"""

import csv
import json
import math
import os

import numpy as np

from idc_engine import atomic_files
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.training.run_dir import RunDir

_PATCH_ROWS = (
    ("auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("idc_sensitivity", "IDC sensitivity (IDC recall)"),
    ("idc_specificity", "IDC specificity (non-IDC recall)"),
    ("idc_precision", "IDC precision (PPV)"),
    ("non_idc_precision", "non-IDC precision (NPV)"),
    ("idc_f1", "IDC F1"),
    ("non_idc_f1", "non-IDC F1"),
    ("mcc", "Matthews correlation"),
    ("brier_score", "Brier score (0 is best)"),
    ("expected_calibration_error", "expected calibration error"),
)
_PATIENT_ROWS = (
    ("idc_fraction_mae", "IDC fraction: mean abs. error"),
    ("idc_fraction_bias", "IDC fraction: mean (predicted - true)"),
    ("idc_fraction_pearson_r", "IDC fraction: Pearson r"),
    ("mean_probability_mae", "mean IDC probability: MAE to true fraction"),
    ("patient_mean_balanced_accuracy", "balanced accuracy, mean over patients"),
    ("patient_mean_idc_sensitivity", "IDC sensitivity, mean over patients"),
    ("patient_mean_idc_specificity", "IDC specificity, mean over patients"),
    ("patient_mean_auc", "ROC-AUC, mean over patients"),
)
_MAX_PATIENT_LINES = 20  # more patients: the table points to patients.csv
_CRITERIA = {"idc_f1": "IDC F1", "youden_j": "Youden's J", "idc_sensitivity": "IDC sensitivity",
             "idc_specificity": "IDC specificity"}


# --- JSON and CSV ------------------------------------------------------------------------------

def plain(value):
    """JSON-safe: numpy scalars and arrays to python, nan and inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(path: str, rows: list[dict], digits: int = 6) -> None:
    """One row per dict, the first dict's keys as the header; digits: significant digits of
    floats (9 round-trips a float32 exactly)."""
    with atomic_files.replace_atomically(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.{digits}g}" if isinstance(v, float) else v)
                             for k, v in plain(row).items()})


def prediction_rows(predictions, threshold: float) -> list[dict]:
    """predictions.csv's rows: one per patch of `predictions` (serving.Predictions), in file
    order, "predicted" 1 where the clipped probability is >= threshold."""
    called = metrics_lib.clip_probability(predictions.idc_probability) >= threshold
    return [{"patient_id": p, "x": int(x), "y": int(y), "label": int(t),
             "idc_probability": float(q), "predicted": int(c)}
            for p, x, y, t, q, c in zip(predictions.patient_id, predictions.x, predictions.y,
                                        predictions.labels, predictions.idc_probability, called)]


def write_files(output_dir: str, result: dict, predictions, threshold: float) -> None:
    """metrics.json, summary.txt, patients.csv and predictions.csv into output_dir."""
    atomic_files.write_json_atomically(os.path.join(output_dir, "metrics.json"), plain(result))
    with atomic_files.replace_atomically(os.path.join(output_dir, "summary.txt")) as f:
        f.write(result["summary_text"] + "\n")
    write_csv(os.path.join(output_dir, "patients.csv"), result["patients"])
    write_csv(os.path.join(output_dir, "predictions.csv"),
              prediction_rows(predictions, threshold), digits=9)


# --- the summary table -------------------------------------------------------------------------

def format_number(value, digits: int = 4) -> str:
    """A metric for a table: `digits` decimals, "n/a" for None or nan."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(ci: dict | None) -> str:
    if not ci or ci.get("low") is None or not math.isfinite(ci["low"]):
        return ""
    return f"[{ci['low']:.4f}, {ci['high']:.4f}]"


def _header_lines(result: dict) -> list[str]:
    """What was evaluated on what, and where the threshold comes from."""
    t, patch, step = result["threshold"], result["patch"], result.get("model_step")
    lines = [f"evaluation of {result['model_dir']}{f' (step {step})' if step is not None else ''}"
             f" on the {result['split']} split: {patch['num_examples']:,} patches "
             f"({patch['num_idc']:,} IDC, {patch['idc_prevalence']:.1%}), "
             f"{result['patient']['num_patients']} patients"]
    if "runtime" in result:
        lines.append(f"served by the {result['runtime']} runtime ({result['runtime_reason']})")
    if t["chosen_on"] == "fixed":
        lines.append(f"threshold {t['threshold']:.4g} on IDC probability: fixed by --threshold")
    else:
        criterion = _CRITERIA.get(t["criterion"], t["criterion"])
        lines.append(f"threshold {t['threshold']:.4g} on IDC probability: {t['rule']} on the "
                     f"{t['chosen_on']} split ({criterion} {t['value']:.4f} there)")
    if t["chosen_on"] == result["split"]:
        lines.append("  note: chosen on the evaluated split itself, so these metrics are "
                     "optimistic")
    return lines


def _metric_lines(rows, values: dict, intervals: dict) -> list[str]:
    """One line per (key, name) of rows: the name, the value, its interval if any."""
    return [f"  {name:<42}{format_number(values[key]):>8}   {_interval(intervals.get(key))}"
            for key, name in rows]


def _patch_lines(result: dict, ci: dict) -> list[str]:
    """Patch metrics with their intervals, the confusion matrix, scikit-learn's report."""
    patch = result["patch"]
    ci_header = ""
    if ci:
        ci_header = (f"95% CI, bootstrap over {ci['num_patients']} patients "
                     f"({ci['num_samples']}x, seed {ci['seed']})")
    lines = ["", f"{'patch level':<44}{'value':>8}   {ci_header}"]
    lines += _metric_lines(_PATCH_ROWS, patch, ci.get("patch", {}))
    (tn, fp), (fn, tp) = patch["confusion_matrix"]
    share = lambda a, b: f"{a:,} ({a / b:.1%})" if b else f"{a:,}"
    return lines + [
        "", f"{'confusion matrix':<20}{'predicted non-IDC':>20}{'predicted IDC':>18}",
        f"  {'true non-IDC':<18}{share(tn, tn + fp):>20}{share(fp, tn + fp):>18}",
        f"  {'true IDC':<18}{share(fn, fn + tp):>20}{share(tp, fn + tp):>18}",
        "", "classification report (scikit-learn; IDC recall = sensitivity, non-IDC "
        "recall = specificity)", result["classification_report_text"].rstrip("\n")]


def _patient_table(rows: list[dict]) -> list[str]:
    """One line per patient, or a pointer to patients.csv when there are many."""
    if len(rows) > _MAX_PATIENT_LINES:
        return ["  one row per patient: patients.csv"]
    lines = [f"  {'patient':<10}{'patches':>8}{'true IDC':>10}{'pred. IDC':>11}"
             f"{'mean p':>8}{'sens.':>8}{'spec.':>8}{'AUC':>8}"]
    for r in rows:
        lines.append(f"  {r['patient_id']:<10}{r['num_patches']:>8,}"
                     f"{r['true_idc_fraction']:>10.1%}{r['predicted_idc_fraction']:>11.1%}"
                     f"{r['mean_idc_probability']:>8.3f}"
                     f"{format_number(r['idc_sensitivity'], 3):>8}"
                     f"{format_number(r['idc_specificity'], 3):>8}"
                     f"{format_number(r['auc'], 3):>8}")
    return lines


def _patient_lines(result: dict, ci: dict) -> list[str]:
    """The patient table and the metrics across patients, with their intervals."""
    n_patients = result["patient"]["num_patients"]
    lines = ["", f"patient level ({n_patients} patients, each counted once)"]
    lines += _patient_table(result["patients"])
    lines += _metric_lines(_PATIENT_ROWS, result["patient"], ci.get("patient", {}))
    if ci and 0 < n_patients < 10:
        lines.append(f"  note: intervals from {n_patients} patients are rough; report them "
                     "with the patient count")
    return lines


def _footer_lines(result: dict) -> list[str]:
    """Where the files, the threshold and TensorBoard are."""
    tensorboard = RunDir(result["model_dir"]).tensorboard
    return ["", f"wrote {result['output_dir']}: metrics.json, summary.txt, patients.csv, "
            f"predictions.csv, {len(result['figures'])} figures, "
            f"{len(result['slide_maps'])} slide maps",
            f"threshold for predict: {result['threshold_file']}",
            f"TensorBoard: tensorboard --logdir={tensorboard}"]


def format_summary(result: dict) -> str:
    """The readable report printed at the end (also written to summary.txt)."""
    ci = result.get("confidence_intervals") or {}
    lines = (_header_lines(result) + _patch_lines(result, ci) + _patient_lines(result, ci)
             + _footer_lines(result))
    return "\n".join(line.rstrip() for line in lines)


# --- TensorBoard -------------------------------------------------------------------------------

_TB_SKIP = ("confusion_matrix", "num_examples", "num_idc")


def _remove_event_files(log_dir: str) -> None:
    """The latest evaluation of a split replaces the previous one's events."""
    if os.path.isdir(log_dir):
        for name in os.listdir(log_dir):
            if "tfevents" in name:
                os.remove(os.path.join(log_dir, name))


def write_tensorboard(log_dir: str, step: int, result: dict, images: dict) -> None:
    """Scalars (patch metrics named like the validation ones, so the curves overlay;
    patient/... for patient metrics), the figures as images and the summary as text.

    images: {tag: PNG path}.
    """
    import tensorflow as tf

    _remove_event_files(log_dir)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for name, value in result["patch"].items():
            if name not in _TB_SKIP and isinstance(value, float) and math.isfinite(value):
                tf.summary.scalar(name, value, step=step)
        for name, value in result["patient"].items():
            if isinstance(value, float) and math.isfinite(value):
                tf.summary.scalar(f"patient/{name}", value, step=step)
        for name, path in images.items():
            with open(path, "rb") as f:
                image = tf.image.decode_png(f.read(), channels=3)
            tf.summary.image(name, image[None], step=step)
        tf.summary.text("summary", "```\n" + result["summary_text"] + "\n```", step=step)
        tf.summary.text("threshold", json.dumps(plain(result["threshold"]), indent=1),
                        step=step)
    writer.flush()
    writer.close()
