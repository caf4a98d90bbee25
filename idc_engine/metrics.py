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


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else math.nan


def classification_metrics(labels, idc_probability, threshold: float = 0.5) -> dict:
    """labels int [N] in {0, 1}; idc_probability float [N] -> dict of floats (nan if undefined)."""
    labels = np.asarray(labels).astype(np.int64)
    prob = np.clip(np.asarray(idc_probability, np.float64), 1e-7, 1 - 1e-7)
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
