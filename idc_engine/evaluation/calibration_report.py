"""The calibration's effect on the evaluated split: Brier score, ECE and reliability, before/after.

A calibrated export (idc_engine/training/export.py) serves the calibrated P(IDC) as
idc_probability, which everything else in the report uses (the threshold is chosen on it), and
the network's own as idc_probability_uncalibrated; this sets the two side by side. ROC-AUC is
listed for both: the calibration is strictly increasing, so it must not move.
"""

import json
import os

from idc_engine.evaluation import plots
from idc_engine.scoring import metrics as metrics_lib

COMPARED = (("Brier score (0 is best)", "brier_score"),
            ("expected calibration error (ECE)", "expected_calibration_error"),
            ("ROC-AUC (a ranking: unchanged)", "auc"))


def _figures(labels, prob) -> dict:
    patch = metrics_lib.evaluation_metrics(labels, prob, 0.5)
    return {key: patch[key] for _, key in COMPARED}


def compare(predictions, calibration_json: str, split: str,
            output_dir: str | None) -> tuple[dict, str | None]:
    """(metrics.json's "calibration_effect" entry, the PNG of the reliability diagram before
    calibration, None without output_dir). predictions: serving.Predictions with
    idc_probability_uncalibrated set."""
    labels = predictions.labels
    before = predictions.idc_probability_uncalibrated
    bins_before = metrics_lib.calibration_bins(labels, before)
    figure = output_dir and plots.plot_calibration(
        bins_before, metrics_lib.brier_score(labels, before),
        os.path.join(output_dir, "calibration_uncalibrated.png"),
        f"calibration before the export's calibration ({split} split, patches)")
    try:
        with open(calibration_json) as f:
            fitted = json.load(f)
    except (OSError, ValueError):
        fitted = None
    return {"fitted": fitted, "before": _figures(labels, before),
            "after": _figures(labels, predictions.idc_probability),
            "reliability_before": bins_before}, figure


def format_lines(entry: dict) -> list[str]:
    """The summary's lines: each figure before and after, and the fitted parameters."""
    fitted = entry.get("fitted") or {}
    head = "calibration (served idc_probability vs the network's own)"
    if fitted:
        head += (f": temperature {fitted['temperature']:.3f} after a prior shift of "
                 f"{fitted['prior_shift']:+.3f} log-odds")
    lines = ["", head, f"  {'':<42}{'before':>9} {'after':>9}"]
    for label, key in COMPARED:
        lines.append(f"  {label:<42}{entry['before'][key]:9.4f} {entry['after'][key]:9.4f}")
    return lines
