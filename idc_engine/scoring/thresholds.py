"""Choosing the decision threshold on IDC probability, from one split's labels only.

The threshold is chosen on the validation split and applied unchanged to the test split: a
threshold tuned on the test labels makes every test metric optimistic. `choose_threshold` sees
only the arrays it is given, so nothing of the test split can reach it.

Rules (the `--threshold` flag of python -m idc_engine.evaluate):

    max_f1             the threshold of maximum IDC F1
    youden             maximum Youden's J = IDC sensitivity + IDC specificity - 1
    recall:0.90        the highest threshold whose IDC recall (sensitivity) is >= 0.90, i.e. the
                       best specificity at that sensitivity (screening: miss at most 10% of IDC)
    specificity:0.95   the lowest threshold whose IDC specificity is >= 0.95
    0.37               a fixed number in [0, 1]; nothing is chosen

A patch is called IDC when its probability is >= the threshold. Candidate thresholds are the
distinct predicted probabilities (clipped like idc_engine.scoring.metrics.classification_metrics), so the
chosen value reproduces on the chosen split exactly the operating point it reports. Ties (several
thresholds with the best criterion) go to the highest threshold.
"""

import math

import numpy as np

from idc_engine.scoring import metrics as metrics_lib

RULE_NAMES = ("max_f1", "youden", "recall", "specificity")
RULE_HELP = "max_f1 | youden | recall:R | specificity:S | a number in [0, 1]"
DEFAULT_RULE = "max_f1"  # evaluate's --threshold, and the threshold training validates at


def parse_rule(rule: str) -> tuple[str, float | None]:
    """'max_f1' -> ('max_f1', None); 'recall:0.9' -> ('recall', 0.9); '0.4' -> ('fixed', 0.4).

    Raises ValueError naming the accepted forms.
    """
    text = str(rule).strip().lower()
    if text in ("max_f1", "youden"):
        return text, None
    name, _, value = text.partition(":")
    try:
        number = float(value if value else name)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"threshold rule {rule!r} is not one of {RULE_HELP}")
    if name in ("recall", "sensitivity", "specificity") and value:
        if not 0.0 < number <= 1.0:
            raise ValueError(f"threshold rule {rule!r}: the target must be in (0, 1]")
        return ("recall" if name == "sensitivity" else name), number
    if value or not 0.0 <= number <= 1.0:
        raise ValueError(f"threshold rule {rule!r} is not one of {RULE_HELP}")
    return "fixed", number


def operating_points(labels, idc_probability) -> dict:
    """Every distinct operating point, highest threshold first.

    Args:
      labels: int [N] in {0, 1}.
      idc_probability: float [N].

    Returns:
      float64 / int64 arrays [T], T = number of distinct (clipped) probabilities: threshold,
      tp, fp, fn, tn, idc_sensitivity, idc_specificity, idc_precision, idc_f1 (patch called
      IDC when probability >= threshold).
    """
    labels = np.asarray(labels).astype(np.int64)
    prob = metrics_lib.clip_probability(idc_probability)
    order = np.argsort(-prob, kind="stable")
    prob, labels = prob[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(prob)), len(prob) - 1]
    tp = np.cumsum(labels)[last_of_value]
    fp = (last_of_value + 1) - tp
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    fn, tn = positives - tp, negatives - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = tp / positives
        specificity = tn / negatives
        precision = tp / (tp + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"threshold": prob[last_of_value], "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "idc_sensitivity": sensitivity, "idc_specificity": specificity,
            "idc_precision": precision, "idc_f1": f1}


def _rule_choice(points: dict, name: str, target: float | None) -> tuple[int, str, np.ndarray]:
    """(index into `points`, criterion name, criterion per operating point) for a named rule.

    points: operating_points(...), highest threshold first, so np.argmax's first maximum is the
    highest threshold among ties. Raises ValueError for a specificity no threshold reaches.
    """
    if name == "max_f1":
        scores = points["idc_f1"]
        return int(np.argmax(scores)), "idc_f1", scores
    if name == "youden":
        scores = points["idc_sensitivity"] + points["idc_specificity"] - 1
        return int(np.argmax(scores)), "youden_j", scores
    if name == "recall":
        scores = points["idc_sensitivity"]  # sensitivity rises as the threshold falls
        return int(np.argmax(scores >= target - 1e-12)), "idc_sensitivity", scores
    scores = points["idc_specificity"]  # specificity falls as the threshold falls
    reached = np.flatnonzero(scores >= target - 1e-12)
    if not len(reached):
        raise ValueError(f"no threshold reaches IDC specificity {target}")
    return int(reached[-1]), "idc_specificity", scores


def choose_threshold(labels, idc_probability, rule: str) -> tuple[float, dict]:
    """Chooses the threshold by `rule` (see the module docstring) on these labels only.

    Args:
      labels: int [N] in {0, 1}, the labels of the split the threshold is chosen on.
      idc_probability: float [N], the model's IDC probabilities on the same patches.
      rule: max_f1 | youden | recall:R | specificity:S | a number.

    Returns:
      (threshold, details): details has "rule", "criterion" (what was optimized or
      constrained), "value" (its value at the threshold) and the operating point there:
      idc_sensitivity, idc_specificity, idc_precision, idc_f1, num_examples, num_idc.

    Raises:
      ValueError: an unknown rule, or labels without both classes (unless the rule is a number),
        or a recall/specificity target no threshold reaches.
    """
    name, target = parse_rule(rule)
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) != len(np.asarray(idc_probability)):
        raise ValueError(f"{len(labels)} labels but {len(np.asarray(idc_probability))} "
                         "probabilities")
    details = {"rule": str(rule)}
    if len(labels):
        details.update(num_examples=int(len(labels)), num_idc=int(labels.sum()))
    if name == "fixed":
        threshold, criterion, value = target, None, None
    else:
        if len(np.unique(labels)) != 2:
            raise ValueError(f"threshold rule {rule!r} needs both classes (non-IDC and IDC) in "
                             f"the labels it is chosen on; got {len(labels)} patches, "
                             f"{int(labels.sum())} IDC")
        points = operating_points(labels, idc_probability)
        index, criterion, scores = _rule_choice(points, name, target)
        threshold, value = float(points["threshold"][index]), float(scores[index])
        details["target"] = target
    details.update(criterion=criterion, value=value)
    if not len(labels):  # a fixed number, nothing to measure it on
        return float(threshold), details
    at = metrics_lib.classification_metrics(labels, idc_probability, threshold)
    for key in ("idc_sensitivity", "idc_specificity", "idc_precision", "idc_f1",
                "balanced_accuracy"):
        details[key] = at[key]
    return float(threshold), details
