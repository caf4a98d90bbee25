"""Temperature scaling of P(IDC), with the class-weight prior shift taken out first (numpy/scipy).

Why the probabilities are off. Training with class weights [w0, w1] minimizes a weighted
cross-entropy, whose minimizer is not P(IDC | x) but the posterior under priors reweighted by
w1 / w0: its log-odds are the true log-odds plus log(w1 / w0). (The "balanced" weights,
max(count) / count, make that the log of n_non_IDC / n_IDC: about +0.9 on the real data, so a
patch the model calls 0.6 is really about 0.37.) That shift is known from the weights, so it is
subtracted exactly, not fitted:

    z = log p - log(1 - p)              the network's log-odds (p: its softmax P(IDC))
    calibrated = sigmoid((z - log(w1 / w0)) / T)

and then the one free parameter, the temperature T > 0, corrects the over- (T > 1) or
under-confidence (T < 1) that remains, fitted by minimizing the negative log-likelihood of the
validation split's labels (the split training already selects the model on; never the test
split). Both steps are strictly increasing in p, so the ranking of patches, hence ROC-AUC and
PR-AUC, does not change; only the probabilities' scale (Brier, ECE) and thresholds' positions do.
"""

import math

import numpy as np
from scipy import optimize, special

# log-odds are computed from probabilities clipped to [EPS, 1 - EPS] (float32 softmax output
# saturates at exactly 0 or 1)
EPS = 1e-7
# T is searched in [e^-4, e^4]: beyond, the model is a step function or a constant
LOG_T_BOUNDS = (-4.0, 4.0)


def prior_shift(class_weights) -> float:
    """[w_non_idc, w_idc] -> log(w_idc / w_non_idc), the log-odds the weighting added."""
    w0, w1 = (float(w) for w in class_weights)
    if w0 <= 0 or w1 <= 0:
        raise ValueError(f"class weights must be positive, got {class_weights}")
    return math.log(w1 / w0)


def log_odds(idc_probability) -> np.ndarray:
    """float [N] -> float64 [N], log p - log(1 - p) of p clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(idc_probability, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(idc_probability, temperature: float, shift: float) -> np.ndarray:
    """float [N] -> float64 [N]: sigmoid((log-odds - shift) / temperature), exactly as the
    SavedModel computes it (training/export.py): unclipped float64 log-odds, so a saturated
    p of 0 or 1 stays 0 or 1 and a tiny p keeps its order of magnitude."""
    p = np.asarray(idc_probability, np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    return special.expit((z - shift) / temperature)


def negative_log_likelihood(labels, idc_probability) -> float:
    """Mean binary cross-entropy of labels int [N] in {0, 1} under P(IDC) float [N]."""
    p = np.clip(np.asarray(idc_probability, np.float64), EPS, 1 - EPS)
    y = np.asarray(labels) == 1
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fit_temperature(labels, idc_probability, shift: float = 0.0) -> dict:
    """The temperature minimizing the validation NLL after the prior shift; labels int [N],
    idc_probability float [N] (uncalibrated). Returns {"temperature", "prior_shift",
    "nll_before", "nll_after", "num_examples"}. ValueError without both classes."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("calibration needs both classes in the validation split")
    z = log_odds(idc_probability) - shift
    y = labels == 1

    def nll(log_t):
        scaled = z / math.exp(log_t)
        # -log sigmoid(s) = logaddexp(0, -s): stable for large |s|
        return float(np.mean(np.where(y, np.logaddexp(0, -scaled), np.logaddexp(0, scaled))))

    best = optimize.minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                                    options={"xatol": 1e-6})
    temperature = math.exp(float(best.x))
    return {"temperature": temperature, "prior_shift": shift,
            "nll_before": negative_log_likelihood(labels, idc_probability),
            "nll_after": float(best.fun), "num_examples": int(len(labels)),
            "method": "temperature scaling after removing the class-weight prior shift, "
                      "NLL on the val split (idc_engine/scoring/calibration.py)"}
