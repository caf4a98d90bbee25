"""evaluate --tta=d4: the same evaluation without test-time augmentation, and what TTA costs.

With --tta=d4 the report's figures are those of the TTA model (its threshold chosen on the
TTA validation predictions). This adds, for the same split: the metrics of the plain model at
the threshold the same rule chooses on its own (plain) validation predictions, so each model is
judged at its own operating point, and the throughput of both passes over the evaluated split
(images/s, one process, measured side by side) with their ratio.
"""

import time

from idc_engine.inference import serving
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.scoring import thresholds


def timed_predict(served, data_dir: str, split: str,
                  batch_size: int) -> tuple[serving.Predictions, float]:
    """(predictions of every patch of `split`, patches per second of the whole pass)."""
    start = time.perf_counter()
    predictions = serving.predict_split(served, data_dir, split, batch_size)
    return predictions, len(predictions) / max(time.perf_counter() - start, 1e-9)


def without_tta(plain, data_dir: str, split: str, threshold_split: str | None, rule: str,
                batch_size: int) -> tuple[dict, float]:
    """({"threshold", "patch": scoring.metrics.evaluation_metrics}, plain images/s) of the
    model without TTA; its threshold is chosen by `rule` on `threshold_split` (None: a fixed
    --threshold, applied as it is)."""
    if threshold_split is None:
        threshold, _ = thresholds.choose_threshold([], [], rule)
    else:
        tuning = serving.predict_split(plain, data_dir, threshold_split, batch_size)
        threshold, _ = thresholds.choose_threshold(tuning.labels, tuning.idc_probability, rule)
    evaluated, rate = timed_predict(plain, data_dir, split, batch_size)
    return {"threshold": threshold, "patch": metrics_lib.evaluation_metrics(
        evaluated.labels, evaluated.idc_probability, threshold)}, rate


def compare(config, plain, served) -> dict:
    """metrics.json's "tta" entry for an EvaluateConfig with --tta on: `plain` is the served
    model, `served` the same under TTA. Both pass over --split here, one after the other, so
    their rates are measured alike (the evaluation's own passes include the threshold split)."""
    _, tta_rate = timed_predict(served, config.data_dir, config.split, config.batch_size)
    threshold_split = None if config.threshold_is_fixed else config.threshold_split
    plain_result, plain_rate = without_tta(plain, config.data_dir, config.split, threshold_split,
                                           config.threshold, config.batch_size)
    mode = config.tta
    return {"mode": mode, "images_per_second": {mode: tta_rate, "none": plain_rate},
            "cost": plain_rate / tta_rate if tta_rate else None,
            "cost_means": "images/s without TTA / images/s with it (one process, side by side)",
            "without_tta": plain_result}


COMPARED = (("ROC-AUC", "auc"), ("PR-AUC", "pr_auc"), ("balanced accuracy", "balanced_accuracy"),
            ("IDC F1", "idc_f1"), ("Brier score", "brier_score"),
            ("ECE", "expected_calibration_error"))


def format_lines(entry: dict, with_tta_patch: dict, with_tta_threshold: float) -> list[str]:
    """The summary's lines: TTA vs none, metric by metric, and the throughput cost."""
    mode, plain = entry["mode"], entry["without_tta"]
    lines = ["", f"test-time augmentation ({mode}, 8 views in one batch)   "
             f"with {mode:>6}   without",
             f"  threshold (same rule, each on its own val predictions)  "
             f"{with_tta_threshold:9.4f} {plain['threshold']:9.4f}"]
    for label, key in COMPARED:
        lines.append(f"  {label:<52}{with_tta_patch[key]:9.4f} {plain['patch'][key]:9.4f}")
    rates = entry["images_per_second"]
    lines.append(f"  images/s                                            {rates[mode]:9.0f} "
                 f"{rates['none']:9.0f}   ({entry['cost']:.1f}x slower with {mode})")
    return lines
