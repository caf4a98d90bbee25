"""Patient-level results and confidence intervals by bootstrap over patients.

Patches of one patient are not independent (one slide, one stain, one annotator), so a patch
count overstates how much evidence a test split holds: 49 test patients are 49 samples of the
population, whatever their 50,000 patches. Hence:

Per patient (`per_patient`), on that patient's patches:
    true_idc_fraction       share of patches labelled IDC (the annotated IDC extent)
    predicted_idc_fraction  share of patches called IDC (probability >= threshold)
    mean_idc_probability    mean IDC probability (a threshold-free estimate of the extent)
    idc_sensitivity, idc_specificity, balanced_accuracy, accuracy, auc: nan where undefined
                            (e.g. sensitivity of a patient without IDC patches)

Across patients (`patient_metrics`), each patient counting once:
    idc_fraction_mae        mean |predicted - true IDC fraction|: how well the model measures
                            the IDC extent of a slide; idc_fraction_bias is the signed mean
    idc_fraction_pearson_r  correlation of predicted and true IDC fraction across patients
                            (needs >= 3 patients)
    mean_probability_mae    the same MAE for mean_idc_probability
    patient_mean_*          per-patient metrics averaged over the patients where defined
Every patient of the IDC dataset has an IDC diagnosis, so a per-patient diagnosis (IDC yes/no)
cannot be measured on it; the patient level here is the IDC extent and per-slide accuracy.

Confidence intervals (`bootstrap`): the patients of the split are resampled with replacement
(a cluster bootstrap: a patient drawn twice brings all its patches twice), every metric is
recomputed with the threshold held fixed, and the 2.5th and 97.5th percentiles of the replicates
give the 95% interval. Same seed, same intervals. Pooled patch metrics (ROC-AUC, sensitivity, ...)
and the patient metrics above all get intervals from the same replicates.
"""

import math

import numpy as np

from idc_engine.scoring import metrics as metrics_lib

# Patch-level metrics recomputed in every bootstrap replicate (pooled over the drawn patients).
PATCH_CI_METRICS = ("auc", "pr_auc", "balanced_accuracy", "accuracy", "idc_sensitivity",
                    "idc_specificity", "idc_precision", "non_idc_precision", "idc_f1",
                    "non_idc_f1", "mcc", "brier_score")
PATIENT_CI_METRICS = ("idc_fraction_mae", "idc_fraction_bias", "idc_fraction_pearson_r",
                      "mean_probability_mae", "patient_mean_balanced_accuracy",
                      "patient_mean_idc_sensitivity", "patient_mean_idc_specificity",
                      "patient_mean_auc")


def _as_str(values) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values])


# --- per patient -------------------------------------------------------------------------------

def per_patient(patient_ids, labels, idc_probability, threshold: float) -> list[dict]:
    """One row per patient (sorted by id) with the quantities of the module docstring.

    patient_ids str or bytes [N]; labels int [N]; idc_probability float [N].
    """
    ids = _as_str(patient_ids)
    labels = np.asarray(labels).astype(np.int64)
    prob = metrics_lib.clip_probability(idc_probability)
    rows = []
    for patient in sorted(np.unique(ids), key=_patient_sort_key):
        mask = ids == patient
        m = metrics_lib.classification_metrics(labels[mask], prob[mask], threshold)
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        n = int(mask.sum())
        rows.append({
            "patient_id": str(patient), "num_patches": n, "num_idc": int(tp + fn),
            "true_idc_fraction": (tp + fn) / n, "predicted_idc_fraction": (tp + fp) / n,
            "mean_idc_probability": float(prob[mask].mean()),
            "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "idc_sensitivity": m["idc_sensitivity"], "idc_specificity": m["idc_specificity"],
            "idc_f1": m["idc_f1"], "auc": m["auc"], "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        })
    return rows


def _patient_sort_key(patient: str):
    return (0, int(patient), "") if patient.isdigit() else (1, 0, patient)


def patient_metrics(rows: list[dict]) -> dict:
    """Aggregates `per_patient` rows, each patient once (see the module docstring)."""
    arrays = _patient_arrays(rows)
    return _patient_metrics(arrays, np.ones(len(rows)))


def _patient_arrays(rows: list[dict]) -> dict:
    keys = ("true_idc_fraction", "predicted_idc_fraction", "mean_idc_probability",
            "balanced_accuracy", "idc_sensitivity", "idc_specificity", "auc")
    return {k: np.array([r[k] for r in rows], np.float64) for k in keys}


def _weighted_mean(values, weights) -> float:
    defined = np.isfinite(values) & (weights > 0)
    return float(np.sum(values[defined] * weights[defined]) / weights[defined].sum()
                 if defined.any() else math.nan)


def _weighted_pearson(a, b, weights) -> float:
    """Pearson r of (a, b) with each pair repeated `weights` times; nan with fewer than 3
    distinct pairs (through 2 points r is always +-1: no information)."""
    total = weights.sum()
    if np.count_nonzero(weights) < 3:
        return math.nan
    da = a - np.sum(weights * a) / total
    db = b - np.sum(weights * b) / total
    variance = np.sum(weights * da * da) * np.sum(weights * db * db)
    if variance <= 1e-24:
        return math.nan
    return float(np.sum(weights * da * db) / math.sqrt(variance))


def _patient_metrics(arrays: dict, weights) -> dict:
    """weights float [P]: how many times each patient is drawn (ones for the estimate)."""
    weights = np.asarray(weights, np.float64)
    true, predicted = arrays["true_idc_fraction"], arrays["predicted_idc_fraction"]
    return {
        "num_patients": int(np.count_nonzero(weights)),
        "idc_fraction_mae": _weighted_mean(np.abs(predicted - true), weights),
        "idc_fraction_bias": _weighted_mean(predicted - true, weights),
        "idc_fraction_pearson_r": _weighted_pearson(predicted, true, weights),
        "mean_probability_mae": _weighted_mean(np.abs(arrays["mean_idc_probability"] - true),
                                               weights),
        "patient_mean_balanced_accuracy": _weighted_mean(arrays["balanced_accuracy"], weights),
        "patient_mean_idc_sensitivity": _weighted_mean(arrays["idc_sensitivity"], weights),
        "patient_mean_idc_specificity": _weighted_mean(arrays["idc_specificity"], weights),
        "patient_mean_auc": _weighted_mean(arrays["auc"], weights),
    }


# --- pooled patch metrics from patient weights -------------------------------------------------

class _PooledPatches:
    """Patch metrics of any multiset of patients, from patient weights, without re-sorting.

    Patches are sorted once by probability; a replicate weights each patch by how often its
    patient was drawn, and ROC-AUC / average precision come from weighted cumulative sums over
    the distinct probabilities (the same step-wise definitions as scikit-learn).
    """

    def __init__(self, patient_index, labels, prob, threshold: float, num_patients: int):
        order = np.argsort(-prob, kind="stable")
        self.patient = patient_index[order]
        self.positive = labels[order].astype(np.float64)
        sorted_prob = prob[order]
        self.last_of_value = np.r_[np.flatnonzero(np.diff(sorted_prob)), len(sorted_prob) - 1]
        called = (prob >= threshold).astype(np.int64)
        count = lambda mask: np.bincount(patient_index[mask], minlength=num_patients)
        self.tp = count((labels == 1) & (called == 1))
        self.fp = count((labels == 0) & (called == 1))
        self.fn = count((labels == 1) & (called == 0))
        self.tn = count((labels == 0) & (called == 0))
        self.squared_error = np.bincount(patient_index, (prob - labels) ** 2, num_patients)

    def metrics(self, weights) -> dict:
        tp, fp, fn, tn = (float(weights @ c) for c in (self.tp, self.fp, self.fn, self.tn))
        n = tp + fp + fn + tn
        ratio = lambda a, b: a / b if b else math.nan
        sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
        auc, ap = self._ranking(weights[self.patient])
        return {
            "auc": auc, "pr_auc": ap,
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "accuracy": ratio(tp + tn, n),
            "idc_sensitivity": sensitivity, "idc_specificity": specificity,
            "idc_precision": ratio(tp, tp + fp), "non_idc_precision": ratio(tn, tn + fn),
            "idc_f1": ratio(2 * tp, 2 * tp + fp + fn),
            "non_idc_f1": ratio(2 * tn, 2 * tn + fn + fp),
            "mcc": metrics_lib.matthews_correlation([[tn, fp], [fn, tp]]),
            "brier_score": ratio(float(weights @ self.squared_error), n),
        }

    def _ranking(self, patch_weights) -> tuple[float, float]:
        tps = np.cumsum(patch_weights * self.positive)[self.last_of_value]
        fps = np.cumsum(patch_weights * (1 - self.positive))[self.last_of_value]
        if tps[-1] <= 0:
            return math.nan, math.nan
        recall = tps / tps[-1]
        precision = tps / np.maximum(tps + fps, 1e-300)
        ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
        if fps[-1] <= 0:
            return math.nan, ap
        tpr, fpr = np.r_[0.0, recall], np.r_[0.0, fps / fps[-1]]
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)), ap  # trapezoids


# --- bootstrap ---------------------------------------------------------------------------------

def _percentile_interval(estimate: float, values: np.ndarray, confidence: float,
                         num_patients: int) -> dict:
    """{"estimate", "low", "high", "num_valid"} from one metric's replicates (values float [S],
    nan where undefined); low and high are nan with fewer than 2 patients."""
    tail = (1 - confidence) / 2 * 100
    valid = values[np.isfinite(values)]
    low = high = math.nan
    if num_patients >= 2 and len(valid):
        low, high = (float(v) for v in np.percentile(valid, [tail, 100 - tail]))
    return {"estimate": estimate, "low": low, "high": high, "num_valid": int(len(valid))}


def _replicates(replicate, draws: np.ndarray, num_patients: int) -> tuple[dict, dict]:
    """({patch metric: float [S]}, {patient metric: float [S]}) over the S rows of `draws`
    (int [S, P], the patients drawn); replicate(weights float [P]) -> (patch, patient) dicts."""
    num_samples = len(draws)
    patch_values = {k: np.full(num_samples, np.nan) for k in PATCH_CI_METRICS}
    patient_values = {k: np.full(num_samples, np.nan) for k in PATIENT_CI_METRICS}
    for i, draw in enumerate(draws):
        patch, patient = replicate(np.bincount(draw, minlength=num_patients).astype(np.float64))
        for k in PATCH_CI_METRICS:
            patch_values[k][i] = patch[k]
        for k in PATIENT_CI_METRICS:
            patient_values[k][i] = patient[k]
    return patch_values, patient_values


def bootstrap(patient_ids, labels, idc_probability, threshold: float, num_samples: int = 1000,
              seed: int = 0, confidence: float = 0.95) -> dict:
    """Percentile confidence intervals by resampling patients with replacement.

    Args:
      patient_ids: str or bytes [N]; labels: int [N]; idc_probability: float [N].
      threshold: held fixed in every replicate (it was chosen on another split).
      num_samples: bootstrap replicates.
      seed: the replicates are a function of the seed (numpy's default_rng).
      confidence: the interval's coverage.

    Returns:
      {"patch": {metric: {"estimate", "low", "high", "num_valid"}}, "patient": {...},
       "num_samples", "seed", "confidence", "num_patients", "method"}. "estimate" is the metric
      on the split as it is (every patient once); "num_valid" counts replicates where the metric
      is defined (e.g. ROC-AUC needs both classes among the drawn patients). With fewer than 2
      patients, low and high are nan.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ids = _as_str(patient_ids)
    labels = np.asarray(labels).astype(np.int64)
    prob = metrics_lib.clip_probability(idc_probability)
    rows = per_patient(ids, labels, prob, threshold)
    position = {row["patient_id"]: i for i, row in enumerate(rows)}
    patient_index = np.array([position[p] for p in ids], np.int64)
    num_patients = len(rows)
    pooled = _PooledPatches(patient_index, labels, prob, threshold, num_patients)
    arrays = _patient_arrays(rows)

    def replicate(weights):
        return pooled.metrics(weights), _patient_metrics(arrays, weights)

    patch_estimate, patient_estimate = replicate(np.ones(num_patients))
    draws = np.random.default_rng(seed).integers(0, num_patients,
                                                 size=(num_samples, num_patients))
    patch_values, patient_values = _replicates(replicate, draws, num_patients)

    interval = lambda estimate, values: _percentile_interval(estimate, values, confidence,
                                                              num_patients)
    return {
        "patch": {k: interval(patch_estimate[k], patch_values[k]) for k in PATCH_CI_METRICS},
        "patient": {k: interval(patient_estimate[k], patient_values[k])
                    for k in PATIENT_CI_METRICS},
        "num_samples": int(num_samples), "seed": int(seed), "confidence": float(confidence),
        "num_patients": num_patients,
        "method": "percentile bootstrap over patients (patients resampled with replacement, "
                  "all patches of a drawn patient kept; threshold fixed)",
    }
