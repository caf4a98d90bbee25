"""Binary classification metrics named by class: non-IDC (label 0) and IDC (label 1).

The tutorials print "sensitivity" = cm[0,0] / (cm[0,0] + cm[0,1]), which is the recall of the
NON-IDC class, and call IDC recall "specificity": the names are swapped. Here every per-class
figure carries its class in its name; IDC sensitivity is IDC recall, IDC specificity is
non-IDC recall.
"""

import math

import numpy as np
from sklearn import metrics as sk


def confusion(labels, predicted) -> np.ndarray:
    """int [2, 2]: rows = true class (non-IDC, IDC), columns = predicted class."""
    return sk.confusion_matrix(labels, predicted, labels=[0, 1])


PROBABILITY_CLIP = 1e-7  # probabilities are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]


def clip_probability(idc_probability) -> np.ndarray:
    """float [N] -> float64 [N] clipped as classification_metrics clips before thresholding (and
    taking logs), so a threshold chosen on clipped values classifies identically there."""
    return np.clip(np.asarray(idc_probability, np.float64), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else math.nan


def classification_metrics(labels, idc_probability, threshold: float = 0.5) -> dict:
    """labels int [N] in {0, 1}; idc_probability float [N] -> dict of floats (nan if undefined)."""
    labels = np.asarray(labels).astype(np.int64)
    prob = clip_probability(idc_probability)
    predicted = (prob >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion(labels, predicted)
    idc_precision, idc_recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    non_precision, non_recall = _ratio(tn, tn + fn), _ratio(tn, tn + fp)

    both_classes = len(np.unique(labels)) == 2
    return {
        "num_examples": int(len(labels)),
        "loss": float(-np.mean(np.where(labels == 1, np.log(prob), np.log(1 - prob)))),
        "accuracy": _ratio(tp + tn, len(labels)),
        "balanced_accuracy": (idc_recall + non_recall) / 2,
        "auc": float(sk.roc_auc_score(labels, prob)) if both_classes else math.nan,
        "idc_precision": idc_precision,
        "idc_recall": idc_recall,
        "idc_f1": _ratio(2 * tp, 2 * tp + fp + fn),  # = 2PR/(P+R), defined if IDC occurs
        "non_idc_precision": non_precision,
        "non_idc_recall": non_recall,
        "non_idc_f1": _ratio(2 * tn, 2 * tn + fn + fp),
        "idc_sensitivity": idc_recall,
        "idc_specificity": non_recall,
        "threshold": float(threshold),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


# --- evaluation extras: ranking, calibration, the full report ---------------------------------
# classification_metrics above is what training validates with; the functions below add what a
# paper reports about a finished model (idc_engine.evaluate).

CLASS_NAMES = ("non-IDC", "IDC")  # label 0, label 1


def average_precision(labels, idc_probability, sample_weight=None) -> float:
    """PR-AUC as average precision, sum_k (R_k - R_(k-1)) P_k over thresholds (scikit-learn's
    step-wise definition, no interpolation); nan without an IDC example."""
    labels = np.asarray(labels).astype(np.int64)
    if not (labels == 1).any():
        return math.nan
    return float(sk.average_precision_score(labels, np.asarray(idc_probability, np.float64),
                                            sample_weight=sample_weight))


def brier_score(labels, idc_probability) -> float:
    """Mean squared error of the IDC probability against the 0/1 label (0 is perfect)."""
    labels = np.asarray(labels, np.float64)
    if not len(labels):
        return math.nan
    return float(np.mean((np.asarray(idc_probability, np.float64) - labels) ** 2))


def calibration_bins(labels, idc_probability, num_bins: int = 10) -> dict:
    """The reliability curve: patches binned by predicted IDC probability, equal-width bins.

    Returns lists of length num_bins (nan for empty bins): bin_edges (num_bins + 1),
    count, mean_probability, observed_idc_fraction; and expected_calibration_error (ECE,
    sum over bins of count/N * |observed - mean predicted|) and maximum_calibration_error.
    """
    labels = np.asarray(labels, np.float64)
    prob = np.asarray(idc_probability, np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.digitize(prob, edges[1:-1], right=False), 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, prob, num_bins) / count
        observed = np.bincount(index, labels, num_bins) / count
    gaps = np.abs(observed - mean_prob)
    filled = count > 0
    return {
        "bin_edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_probability": mean_prob.tolist(),
        "observed_idc_fraction": observed.tolist(),
        "expected_calibration_error": (float(np.sum(count[filled] / count.sum() * gaps[filled]))
                                       if count.sum() else math.nan),
        "maximum_calibration_error": float(gaps[filled].max()) if filled.any() else math.nan,
    }


def classification_report(labels, idc_probability, threshold: float) -> tuple[dict, str]:
    """scikit-learn's classification report with the classes named: (dict, text)."""
    labels = np.asarray(labels).astype(np.int64)
    predicted = (clip_probability(idc_probability) >= threshold).astype(np.int64)
    options = dict(labels=[0, 1], target_names=list(CLASS_NAMES), zero_division=np.nan)
    return (sk.classification_report(labels, predicted, output_dict=True, **options),
            sk.classification_report(labels, predicted, digits=4, **options))


def matthews_correlation(confusion_matrix) -> float:
    """MCC from [[tn, fp], [fn, tp]]; nan when a row or column of the matrix is empty."""
    (tn, fp), (fn, tp) = np.asarray(confusion_matrix, np.float64)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else math.nan


def evaluation_metrics(labels, idc_probability, threshold: float, num_bins: int = 10) -> dict:
    """classification_metrics plus what an evaluation reports: PR-AUC, Brier score, calibration
    errors, MCC, IDC prevalence and predicted IDC fraction, positive/negative predictive values.

    labels int [N] in {0, 1}; idc_probability float [N]. "auc" is the ROC-AUC, "pr_auc" the
    average precision; idc_ppv = idc_precision, idc_npv = non_idc_precision (clinical names).
    """
    out = classification_metrics(labels, idc_probability, threshold)
    labels = np.asarray(labels).astype(np.int64)
    prob = np.asarray(idc_probability, np.float64)
    calibration = calibration_bins(labels, prob, num_bins)
    (tn, fp), (fn, tp) = out["confusion_matrix"]
    out.update(
        pr_auc=average_precision(labels, prob),
        brier_score=brier_score(labels, prob),
        expected_calibration_error=calibration["expected_calibration_error"],
        maximum_calibration_error=calibration["maximum_calibration_error"],
        mcc=matthews_correlation(out["confusion_matrix"]),
        idc_ppv=out["idc_precision"],
        idc_npv=out["non_idc_precision"],
        idc_prevalence=_ratio(tp + fn, len(labels)),
        predicted_idc_fraction=_ratio(tp + fp, len(labels)),
        num_idc=int(tp + fn),
    )
    return out
