"""Evaluation: metric values against hand-computed cases, the threshold chosen without the test
labels, bootstrap intervals, and python -m idc_engine.evaluate end to end on real TFRecords with
a real (tiny) trained model. Slide maps: tests/test_slide_maps.py.

The model is the session's one default-flag run (conftest `trained_model_dir`, on `eval_data`:
the shared synthetic tree with 3 val and 4 test patients), copied as `trained`.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import quality_bounds
from cli_flags import check_every_flag_is_documented
from conftest import read_records, shard_paths
from sklearn import metrics as sk

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records
from idc_engine.data.manifest import ManifestError
from idc_engine.evaluation import patients, plots
from idc_engine.evaluation.config import EvaluateConfig, EvaluationError
from idc_engine.evaluation.run import evaluate
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.scoring import thresholds

FIGURES = ("confusion_matrix", "roc", "precision_recall", "calibration", "patients", "threshold",
           "training_curves")


# --- hand-computed metrics -----------------------------------------------------------------------

# 10 patches: 4 IDC, 6 non-IDC. At threshold 0.5: TP = 3 (0.9, 0.8, 0.6), FN = 1 (0.3),
# FP = 1 (0.7), TN = 5.
LABELS = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.4, 0.05, 0.15])


def test_metrics_by_class_match_a_hand_computed_case():
    m = metrics_lib.evaluation_metrics(LABELS, PROBS, threshold=0.5)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]          # [[TN, FP], [FN, TP]]
    assert m["idc_sensitivity"] == pytest.approx(3 / 4)       # TP / (TP + FN)
    assert m["idc_specificity"] == pytest.approx(5 / 6)       # TN / (TN + FP)
    assert m["idc_precision"] == m["idc_ppv"] == pytest.approx(3 / 4)
    assert m["non_idc_precision"] == m["idc_npv"] == pytest.approx(5 / 6)
    assert m["idc_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["non_idc_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["mcc"] == pytest.approx((3 * 5 - 1 * 1) / math.sqrt(4 * 4 * 6 * 6))
    assert m["idc_prevalence"] == 0.4 and m["predicted_idc_fraction"] == 0.4
    # ROC-AUC: of the 24 (IDC, non-IDC) pairs, IDC scores higher in all but (0.3 < 0.7),
    # (0.3 < 0.4) and (0.6 < 0.7): 21 / 24
    assert m["auc"] == pytest.approx(21 / 24)
    # average precision: IDC at ranks 1, 2, 4, 6 -> precisions 1, 1, 3/4, 4/6, each recall step 1/4
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["brier_score"] == pytest.approx(np.mean((PROBS - LABELS) ** 2))


def test_the_tutorials_sensitivity_is_the_idc_specificity():
    """The PyImageSearch tutorial prints cm[0,0] / (cm[0,0] + cm[0,1]) as "sensitivity": that is
    non-IDC recall, the IDC specificity."""
    m = metrics_lib.evaluation_metrics(LABELS, PROBS, threshold=0.5)
    cm = np.array(m["confusion_matrix"])
    tutorial_sensitivity = cm[0, 0] / (cm[0, 0] + cm[0, 1])
    tutorial_specificity = cm[1, 1] / (cm[1, 0] + cm[1, 1])
    assert tutorial_sensitivity == pytest.approx(m["idc_specificity"]) != m["idc_sensitivity"]
    assert tutorial_specificity == pytest.approx(m["idc_sensitivity"])
    report, text = metrics_lib.classification_report(LABELS, PROBS, 0.5)
    assert report["IDC"]["recall"] == pytest.approx(m["idc_sensitivity"])
    assert report["non-IDC"]["recall"] == pytest.approx(m["idc_specificity"])
    assert report["IDC"]["support"] == 4 and report["non-IDC"]["support"] == 6
    assert "non-IDC" in text and "IDC" in text


def test_calibration_bins_and_ece_match_a_hand_computed_case():
    c = metrics_lib.calibration_bins([0, 0, 1, 1], [0.05, 0.15, 0.15, 0.95], num_bins=10)
    assert c["count"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert c["mean_probability"][1] == pytest.approx(0.15)
    assert c["observed_idc_fraction"][:2] == [0.0, 0.5] and c["observed_idc_fraction"][9] == 1.0
    assert math.isnan(c["observed_idc_fraction"][5])
    # |0 - .05| * 1/4 + |.5 - .15| * 2/4 + |1 - .95| * 1/4
    assert c["expected_calibration_error"] == pytest.approx(0.0125 + 0.175 + 0.0125)
    assert c["maximum_calibration_error"] == pytest.approx(0.35)


# --- thresholds ----------------------------------------------------------------------------------

# Operating points (patch called IDC when p >= t), 3 IDC and 3 non-IDC:
#   t    0.9   0.8   0.7   0.6   0.3   0.2
#   TP    1     2     2     3     3     3
#   FP    0     0     1     1     2     3
#   F1   .5    .8   .667  .857   .75  .667
#   J   .333  .667  .333  .667  .333    0
T_LABELS = [1, 1, 0, 1, 0, 0]
T_PROBS = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]


# The operating point at each threshold a rule below chooses, from the table above:
# (IDC sensitivity, IDC specificity, IDC F1).
T_POINTS = {0.8: (2 / 3, 1.0, 4 / 5), 0.6: (1.0, 2 / 3, 6 / 7), 0.35: (1.0, 2 / 3, 6 / 7)}


@pytest.mark.parametrize("rule, expected, value", [
    ("max_f1", 0.6, 6 / 7),
    ("youden", 0.8, 2 / 3),            # tied with 0.6: the higher threshold wins
    ("recall:0.9", 0.6, 1.0),          # highest threshold with sensitivity >= 0.9
    ("recall:0.6", 0.8, 2 / 3),
    ("sensitivity:0.6", 0.8, 2 / 3),
    ("specificity:0.9", 0.8, 1.0),     # lowest threshold with specificity >= 0.9
    ("specificity:0.6", 0.6, 2 / 3),
    ("0.35", 0.35, None),
])
def test_choose_threshold_matches_hand_computed_operating_points(rule, expected, value):
    threshold, details = thresholds.choose_threshold(T_LABELS, T_PROBS, rule)
    assert threshold == pytest.approx(expected)
    assert details["value"] == (None if value is None else pytest.approx(value))
    sensitivity, specificity, f1 = T_POINTS[expected]
    assert details["idc_sensitivity"] == pytest.approx(sensitivity)
    assert details["idc_specificity"] == pytest.approx(specificity)
    assert details["idc_f1"] == pytest.approx(f1)


def test_a_chosen_threshold_reproduces_its_operating_point_with_saturated_probabilities():
    """float32 softmax saturates at exactly 1.0; metrics clip probabilities to 1 - 1e-7, so the
    threshold must come from clipped values or the chosen point would predict no IDC at all."""
    labels, probs = [1, 1, 1, 0, 0], np.array([1.0, 1.0, 1.0, 1.0, 0.2], np.float32)
    threshold, details = thresholds.choose_threshold(labels, probs, "specificity:0.5")
    assert threshold <= 1 - metrics_lib.PROBABILITY_CLIP
    assert metrics_lib.classification_metrics(labels, probs, threshold)["idc_recall"] == 1.0


@pytest.mark.parametrize("rule", ["max_f1", "youden", "recall:0.8", "specificity:0.7"])
def test_choose_threshold_agrees_with_an_exhaustive_search(rule):
    """Every distinct probability tried as the threshold and scored by scikit-learn, on 300
    patches with many tied probabilities: the rule's choice is the search's (ties to the higher
    threshold), and the operating point it reports is scikit-learn's there."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.round(0.01 + 0.3 * labels + 0.68 * rng.random(300), 2)  # in [0.01, 0.99]
    name, _, target = rule.partition(":")

    def point(t):
        called = (probs >= t).astype(int)
        return (sk.recall_score(labels, called), sk.recall_score(labels, called, pos_label=0),
                sk.f1_score(labels, called))

    candidates = sorted(set(probs.tolist()), reverse=True)
    points = {t: point(t) for t in candidates}
    if name in ("max_f1", "youden"):
        score = {t: (f1 if name == "max_f1" else sens + spec - 1)
                 for t, (sens, spec, f1) in points.items()}
        best = max(score.values())
        expected = max(t for t in candidates if score[t] >= best - 1e-12)
        expected_value = score[expected]
    elif name == "recall":
        expected = max(t for t in candidates if points[t][0] >= float(target))
        expected_value = points[expected][0]
    else:
        expected = min(t for t in candidates if points[t][1] >= float(target))
        expected_value = points[expected][1]

    threshold, details = thresholds.choose_threshold(labels, probs, rule)
    assert threshold == expected
    assert details["value"] == pytest.approx(expected_value, abs=1e-12)
    sensitivity, specificity, f1 = points[expected]
    assert details["idc_sensitivity"] == pytest.approx(sensitivity, abs=1e-12)
    assert details["idc_specificity"] == pytest.approx(specificity, abs=1e-12)
    assert details["idc_f1"] == pytest.approx(f1, abs=1e-12)


@pytest.mark.parametrize("rule", ["max_f2", "recall", "recall:1.5", "1.2", "specificity:0", "",
                                  "nan"])
def test_bad_threshold_rules_are_refused(rule):
    with pytest.raises(ValueError, match="threshold rule"):
        thresholds.parse_rule(rule)


def test_a_threshold_rule_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        thresholds.choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "max_f1")


# --- patients and the bootstrap ------------------------------------------------------------------

def _cohort(seed=0, num_patients=12, size=2400):
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, num_patients, size)
    rate = rng.uniform(0.05, 0.6, num_patients)[patient]           # IDC extent varies by patient
    labels = (rng.random(size) < rate).astype(int)
    probs = np.clip(0.4 * labels + 0.6 * rng.random(size) + 0.1 * rng.normal(size=size), 0, 1)
    return np.array([f"p{i:02d}" for i in patient]), labels, probs


def test_per_patient_rows_and_patient_metrics_match_a_hand_computed_case():
    ids = ["b", "b", "b", "b", "a", "a"]
    labels = [1, 1, 0, 0, 0, 0]
    probs = [0.9, 0.2, 0.8, 0.1, 0.6, 0.3]
    rows = patients.per_patient(ids, labels, probs, threshold=0.5)
    a, b = rows  # sorted by id
    assert (a["patient_id"], a["num_patches"], a["true_idc_fraction"]) == ("a", 2, 0.0)
    assert a["predicted_idc_fraction"] == 0.5 and math.isnan(a["idc_sensitivity"])
    assert b["true_idc_fraction"] == 0.5 and b["predicted_idc_fraction"] == 0.5
    assert b["idc_sensitivity"] == 0.5 and b["idc_specificity"] == 0.5
    assert b["auc"] == 0.75  # IDC {0.9, 0.2} vs non-IDC {0.8, 0.1}: 3 of 4 pairs ordered
    agg = patients.patient_metrics(rows)
    assert agg["idc_fraction_mae"] == pytest.approx((0.5 + 0.0) / 2)
    assert agg["idc_fraction_bias"] == pytest.approx(0.25)
    assert agg["patient_mean_idc_sensitivity"] == 0.5      # patient "a" has no IDC: left out
    assert agg["mean_probability_mae"] == pytest.approx((0.45 + 0.0) / 2)


def test_bootstrap_estimates_equal_the_pooled_metrics_and_contain_them():
    ids, labels, probs = _cohort()
    result = patients.bootstrap(ids, labels, probs, 0.5, num_samples=300, seed=1)
    pooled = metrics_lib.evaluation_metrics(labels, probs, 0.5)
    for name, interval in result["patch"].items():
        assert interval["estimate"] == pytest.approx(pooled[name], abs=1e-12), name
        assert interval["low"] <= interval["estimate"] <= interval["high"], name
        assert interval["num_valid"] == 300
    agg = patients.patient_metrics(patients.per_patient(ids, labels, probs, 0.5))
    for name, interval in result["patient"].items():
        assert interval["estimate"] == pytest.approx(agg[name], abs=1e-12), name
        assert interval["low"] <= interval["estimate"] <= interval["high"], name
    assert result["num_patients"] == 12 and result["seed"] == 1


def test_bootstrap_is_reproducible_with_a_seed_and_changes_with_another():
    ids, labels, probs = _cohort(seed=3)
    first = patients.bootstrap(ids, labels, probs, 0.5, num_samples=200, seed=7)
    assert patients.bootstrap(ids, labels, probs, 0.5, num_samples=200, seed=7) == first
    other = patients.bootstrap(ids, labels, probs, 0.5, num_samples=200, seed=8)
    assert other["patch"]["auc"]["estimate"] == first["patch"]["auc"]["estimate"]
    assert (other["patch"]["auc"]["low"], other["patch"]["auc"]["high"]) != (
        first["patch"]["auc"]["low"], first["patch"]["auc"]["high"])


def test_a_replicate_weights_each_drawn_patient_like_copies_of_its_patches():
    """The fast replicate (one sort, patient weights) equals scikit-learn on the duplicated
    patches of the drawn patients."""
    ids, labels, probs = _cohort(seed=5, num_patients=6, size=900)
    probs = np.round(probs, 2)  # ties, as in real outputs
    names = sorted(set(ids))
    index = np.array([names.index(i) for i in ids])
    draw = np.array([0, 0, 2, 3, 3, 3], np.float64)  # patients 1, 4 and 5 not drawn
    pooled = patients._PooledPatches(index, labels, metrics_lib.clip_probability(probs), 0.5, 6)
    got = pooled.metrics(draw)
    repeat = draw[index].astype(int)
    dup_labels, dup_probs = np.repeat(labels, repeat), np.repeat(probs, repeat)
    want = metrics_lib.evaluation_metrics(dup_labels, dup_probs, 0.5)
    assert got["auc"] == pytest.approx(sk.roc_auc_score(dup_labels, dup_probs), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(sk.average_precision_score(dup_labels, dup_probs),
                                          abs=1e-12)
    for name in ("idc_sensitivity", "idc_specificity", "idc_f1", "mcc", "brier_score"):
        assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_bootstrap_over_one_patient_gives_no_interval():
    result = patients.bootstrap(["a"] * 4, [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], 0.5, 50, 0)
    assert math.isnan(result["patch"]["auc"]["low"]) and result["patch"]["auc"]["estimate"] == 1


# --- a converted split with enough patients, and one trained model -------------------------------

@pytest.fixture(scope="session")
def trained(trained_model_dir, tmp_path_factory):
    """A copy of the shared default-flag run (conftest), which evaluation writes into."""
    copy = tmp_path_factory.mktemp("evaluate_run") / "run"
    shutil.copytree(trained_model_dir, copy)
    return str(copy)


def _copy_run(model_dir, tmp_path) -> str:
    """A private copy of the trained run, for tests that write another threshold.json."""
    copy = str(tmp_path / "run")
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("evaluation", "checkpoints",
                                                                   "best"))
    return copy


@pytest.fixture(scope="session")
def evaluation(trained, eval_data):
    data_dir, _ = eval_data
    return evaluate(EvaluateConfig(model_dir=trained, data_dir=data_dir, bootstrap=300,
                                   slides="2", batch_size=128, runtime="savedmodel"))


def _predictions(output_dir):
    import csv
    with open(os.path.join(output_dir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    return (np.array([int(r["label"]) for r in rows]),
            np.array([float(r["idc_probability"]) for r in rows]), rows)


def test_evaluation_writes_metrics_figures_threshold_and_slide_maps(evaluation, trained, eval_data):
    _, manifest = eval_data
    out = os.path.join(trained, "evaluation", "test")
    assert evaluation["output_dir"] == out
    saved = json.loads(open(os.path.join(out, "metrics.json")).read())
    test = manifest["splits"]["test"]
    assert saved["patch"]["num_examples"] == test["num_examples"]
    assert saved["patch"]["num_idc"] == test["num_positive"]
    assert saved["patient"]["num_patients"] == len(test["patients"]) == 4
    assert {r["patient_id"] for r in saved["patients"]} == set(test["patients"])
    # the shared 60-step model learned something: 0.926-0.955 over the 20 settings of
    # tools/suite_spread.sh (BUILD.md); the bound keeps 6.1x that range below the worst value
    quality_bounds.at_least("evaluate: test ROC-AUC", saved["patch"]["auc"], 0.75)
    assert set(saved["classification_report"]) >= {"non-IDC", "IDC", "macro avg"}
    assert len(saved["calibration"]["count"]) == 10

    threshold = json.loads(open(os.path.join(trained, "export", "threshold.json")).read())
    assert threshold["chosen_on"] == "val" and threshold["rule"] == "max_f1"
    assert threshold["threshold"] == saved["threshold"]["threshold"] == saved["patch"]["threshold"]
    assert threshold["criterion"] == "idc_f1" and 0 < threshold["value"] <= 1

    for name in FIGURES:
        path = os.path.join(out, f"{name}.png")
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000
    slides = sorted(os.listdir(os.path.join(out, "slides")))
    assert len(slides) == 2 and all(s.startswith("patient_") for s in slides)
    for name in ("summary.txt", "patients.csv", "predictions.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0


def _served_probabilities(model_dir, records) -> np.ndarray:
    """P(IDC) of each record's image from the exported SavedModel, called here directly."""
    import tensorflow as tf

    serve = tf.saved_model.load(os.path.join(model_dir, "export", "saved_model"))
    fn = serve.signatures["serving_default"]
    images = np.stack([r["image"] for r in records])
    return np.concatenate([fn(images=tf.constant(images[i:i + 128]))["idc_probability"].numpy()
                           for i in range(0, len(images), 128)])


def _average_precision(labels, scores) -> float:
    """Step-wise average precision: sum over distinct thresholds, highest first, of
    (recall gained) x (precision there)."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        tp = np.sum(labels[called])
        total += (tp / labels.sum() - previous_recall) * tp / called.sum()
        previous_recall = tp / labels.sum()
    return total


def test_evaluation_rows_and_metrics_match_the_shards_and_textbook_formulas(evaluation, trained,
                                                                           eval_data):
    """predictions.csv holds every test patch once, with the label in its shard and the
    probability the exported model gives its image; the reported metrics equal textbook formulas
    on those rows (not idc_engine.scoring.metrics again)."""
    data_dir, manifest = eval_data
    labels, probs, rows = _predictions(evaluation["output_dir"])
    records = [r for path in shard_paths(data_dir, manifest, "test") for r in read_records(path)]
    truth = {(r["patient_id"], r["x"], r["y"]): r for r in records}
    keys = [(r["patient_id"], int(r["x"]), int(r["y"])) for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == set(truth)
    assert labels.tolist() == [truth[k]["label"] for k in keys]
    served = dict(zip(((r["patient_id"], r["x"], r["y"]) for r in records),
                      _served_probabilities(trained, records)))
    np.testing.assert_allclose(probs, [served[k] for k in keys], rtol=0, atol=1e-5)

    threshold = evaluation["threshold"]["threshold"]
    clipped = np.clip(probs, metrics_lib.PROBABILITY_CLIP, 1 - metrics_lib.PROBABILITY_CLIP)
    called = np.array([int(r["predicted"]) for r in rows])
    np.testing.assert_array_equal(called, clipped >= threshold)
    tp, fp = int(np.sum(called & labels)), int(np.sum(called & (1 - labels)))
    fn, tn = int(np.sum((1 - called) & labels)), int(np.sum((1 - called) & (1 - labels)))
    patch = evaluation["patch"]
    assert patch["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert patch["idc_sensitivity"] == pytest.approx(tp / (tp + fn))
    assert patch["idc_specificity"] == pytest.approx(tn / (tn + fp))
    assert patch["idc_ppv"] == pytest.approx(tp / (tp + fp))
    assert patch["idc_npv"] == pytest.approx(tn / (tn + fn))
    assert patch["idc_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert patch["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert patch["mcc"] == pytest.approx(
        (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    # ROC-AUC = P(an IDC patch scores above a non-IDC one), ties counting half (Mann-Whitney)
    pos, neg = clipped[labels == 1][:, None], clipped[labels == 0][None, :]
    auc = (np.sum(pos > neg) + 0.5 * np.sum(pos == neg)) / (pos.size * neg.size)
    assert patch["auc"] == pytest.approx(auc, abs=1e-9)
    assert patch["pr_auc"] == pytest.approx(_average_precision(labels, probs), abs=1e-9)
    assert patch["brier_score"] == pytest.approx(np.mean((probs - labels) ** 2), abs=1e-7)

    per = {r["patient_id"]: r for r in evaluation["patients"]}
    ids = np.array([k[0] for k in keys])
    assert set(per) == set(ids)
    for patient, row in per.items():
        mine = ids == patient
        assert row["num_patches"] == mine.sum()
        assert row["true_idc_fraction"] == pytest.approx(labels[mine].mean())
        assert row["predicted_idc_fraction"] == pytest.approx(called[mine].mean())
    assert evaluation["patient"]["idc_fraction_mae"] == pytest.approx(np.mean(
        [abs(labels[ids == p].mean() - called[ids == p].mean()) for p in per]))


def test_evaluation_intervals_contain_the_point_estimates(evaluation):
    intervals = evaluation["confidence_intervals"]
    assert intervals["num_patients"] == 4 and intervals["num_samples"] == 300
    for level in ("patch", "patient"):
        for name, ci in intervals[level].items():
            assert ci["low"] <= ci["estimate"] <= ci["high"], (level, name, ci)
    assert intervals["patch"]["auc"]["estimate"] == pytest.approx(evaluation["patch"]["auc"])


def test_evaluation_writes_tensorboard(evaluation, trained):
    from tensorboard.compat.proto import event_pb2

    log_dir = os.path.join(trained, "tensorboard", "evaluation_test")
    scalars = plots.read_scalars(log_dir)
    assert {"auc", "pr_auc", "idc_sensitivity", "idc_specificity", "brier_score",
            "patient/idc_fraction_mae"} <= set(scalars)
    step = json.loads(open(os.path.join(trained, "best.json")).read())["step"]
    assert list(scalars["auc"][0]) == [step]
    import tensorflow as tf
    files = [os.path.join(log_dir, f) for f in os.listdir(log_dir)]
    tags = {v.tag for r in tf.data.TFRecordDataset(files)
            for v in event_pb2.Event.FromString(r.numpy()).summary.value}
    assert {"plots/roc", "plots/calibration", "plots/training_curves", "summary"} <= tags
    assert sum(t.startswith("slides/") for t in tags) == 2


def _flip_test_labels(data_dir, manifest, target) -> str:
    """A copy of the conversion whose test shards carry every label flipped (IDC <-> non-IDC)."""
    shutil.copytree(data_dir, target)
    manifest = json.loads(json.dumps(manifest))
    test = manifest["splits"]["test"]
    for shard in test["shards"]:
        path = os.path.join(target, shard["file"])
        flipped = [records.frame_record(records.encode_example(
            r["image"].tobytes(), 1 - r["label"], r["patient_id"], r["x"], r["y"], r["height"],
            r["width"])) for r in read_records(path)]
        with open(path, "wb") as f:
            f.write(b"".join(flipped))
        shard["num_bytes"] = os.path.getsize(path)
        shard["num_positive"] = shard["num_examples"] - shard["num_positive"]
    test["num_positive"] = test["num_examples"] - test["num_positive"]
    manifest_lib.write_manifest(target, manifest)
    return target


def test_changing_the_test_labels_does_not_change_the_threshold(trained, eval_data, evaluation,
                                                               tmp_path):
    data_dir, manifest = eval_data
    flipped = _flip_test_labels(data_dir, manifest, str(tmp_path / "flipped"))
    assert [r["label"] for p in shard_paths(flipped, manifest, "test") for r in read_records(p)] \
        != [r["label"] for p in shard_paths(data_dir, manifest, "test") for r in read_records(p)]
    run = _copy_run(trained, tmp_path)
    result = evaluate(EvaluateConfig(model_dir=run, data_dir=flipped, bootstrap=0, slides="0",
                                     runtime="savedmodel"))
    written = json.loads(open(os.path.join(run, "export", "threshold.json")).read())
    assert written["threshold"] == result["threshold"]["threshold"] == \
        evaluation["threshold"]["threshold"]
    assert written["value"] == evaluation["threshold"]["value"]
    # ... while the test metrics do see the flipped labels
    assert result["patch"]["auc"] == pytest.approx(1 - evaluation["patch"]["auc"], abs=1e-6)
    assert result["patch"]["idc_sensitivity"] == pytest.approx(
        1 - evaluation["patch"]["idc_specificity"])


def test_other_threshold_rules_are_applied_unchanged_to_the_test_split(trained, eval_data,
                                                                      tmp_path):
    data_dir, _ = eval_data
    run = _copy_run(trained, tmp_path)
    result = evaluate(EvaluateConfig(model_dir=run, data_dir=data_dir, threshold="recall:0.9",
                                     bootstrap=0, slides="0"))
    written = json.loads(open(os.path.join(run, "export", "threshold.json")).read())
    assert written["rule"] == "recall:0.9" and written["idc_sensitivity"] >= 0.9
    assert result["patch"]["threshold"] == written["threshold"]
    fixed = evaluate(EvaluateConfig(model_dir=run, data_dir=data_dir, threshold="0.25",
                                    bootstrap=0, slides="0"))
    assert fixed["threshold"]["chosen_on"] == "fixed" and fixed["patch"]["threshold"] == 0.25
    assert "threshold" not in fixed["figures"]


@pytest.mark.parametrize("overrides, error, message", [
    ({"split": "tset"}, ManifestError, "split 'tset' is not in"),
    ({"threshold_split": "holdout"}, ManifestError, "split 'holdout' is not in"),
    ({"threshold": "best"}, EvaluationError, "--threshold"),
    ({"threshold_split": "test"}, EvaluationError, "--threshold_split=test is refused"),
    ({"threshold_split": "train"}, EvaluationError, "--threshold_split=train is refused"),
    ({"slides": "99999,88888"}, EvaluationError, "patients 99999, 88888 are not in this split"),
    ({"bootstrap": -1}, EvaluationError, "--bootstrap"),
])
def test_bad_inputs_fail_with_a_clear_message(trained, eval_data, tmp_path, overrides, error,
                                              message):
    data_dir, _ = eval_data
    config = EvaluateConfig(**{"model_dir": _copy_run(trained, tmp_path), "data_dir": data_dir,
                               "bootstrap": 0, "output_dir": str(tmp_path / "out"), **overrides})
    with pytest.raises(error, match=message):
        evaluate(config)


@pytest.mark.parametrize("split", ["test", "val", "train"])
@pytest.mark.parametrize("threshold", ["max_f1", "0.5"])
def test_the_threshold_is_never_chosen_on_the_test_split(tmp_path, split, threshold):
    """Whatever split is evaluated and whether or not a rule is tuned, before any path is read."""
    config = EvaluateConfig(model_dir=str(tmp_path / "nowhere"), data_dir=str(tmp_path),
                            split=split, threshold=threshold, threshold_split="test")
    with pytest.raises(EvaluationError, match="--threshold_split=test is refused: the test "
                                              "split must stay unseen.*choose it on val"):
        config.validate()


@pytest.mark.parametrize("split", ["test", "val"])
@pytest.mark.parametrize("threshold", ["max_f1", "0.5"])
def test_the_threshold_is_never_chosen_on_the_training_split(tmp_path, split, threshold):
    """Nor on the patients the model was fitted to; val (the default) passes this check (the
    run directory is what stops it here: the negative control)."""
    config = EvaluateConfig(model_dir=str(tmp_path / "nowhere"), data_dir=str(tmp_path),
                            split=split, threshold=threshold, threshold_split="train")
    with pytest.raises(EvaluationError, match="--threshold_split=train is refused: the model was "
                                              "fitted to the training patients.*choose it on val"):
        config.validate()
    config.threshold_split = "val"
    with pytest.raises(EvaluationError, match="--model_dir .*nowhere' does not exist"):
        config.validate()


def test_a_run_without_export_is_named(tmp_path, eval_data):
    (tmp_path / "run").mkdir()
    with pytest.raises(EvaluationError, match=r"run/export/saved_model' holds no SavedModel"):
        evaluate(EvaluateConfig(model_dir=str(tmp_path / "run"), data_dir=eval_data[0]))


# --- the command line ----------------------------------------------------------------------------

def _evaluate_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "idc_engine.evaluate", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_prints_the_summary_table_and_writes_its_files(trained, eval_data, tmp_path):
    data_dir, _ = eval_data
    run = _copy_run(trained, tmp_path)
    out = tmp_path / "out"
    result = _evaluate_cli(f"--model_dir={run}", f"--data_dir={data_dir}", "--bootstrap=100",
                           "--slides=1", f"--output_dir={out}", "--seed=3")
    assert result.returncode == 0, result.stderr[-3000:]
    for text in ("IDC sensitivity (IDC recall)", "IDC specificity (non-IDC recall)",
                 "ROC-AUC", "PR-AUC", "Brier score", "95% CI, bootstrap over 4 patients",
                 "max_f1 on the val split", "patient level (4 patients", "predicted IDC"):
        assert text in result.stdout, text
    assert "Traceback" not in result.stderr
    assert (out / "summary.txt").read_text().strip() == result.stdout.strip()
    assert len(os.listdir(out / "slides")) == 1
    assert json.loads((out / "metrics.json").read_text())["confidence_intervals"]["seed"] == 3
    assert os.path.isfile(os.path.join(run, "export", "threshold.json"))
    assert os.listdir(os.path.join(run, "tensorboard", "evaluation_test"))


def test_cli_errors_exit_2_with_the_path(tmp_path, eval_data):
    result = _evaluate_cli(f"--model_dir={tmp_path}", f"--data_dir={eval_data[0]}")
    assert result.returncode == 2
    assert f"{tmp_path}/export/saved_model" in result.stderr and "Traceback" not in result.stderr
    result = _evaluate_cli(f"--model_dir={tmp_path / 'nowhere'}", f"--data_dir={eval_data[0]}")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_cli_refuses_a_threshold_chosen_on_the_test_split(tmp_path):
    result = _evaluate_cli(f"--model_dir={tmp_path}", f"--data_dir={tmp_path}", "--split=val",
                           "--threshold_split=test", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--threshold_split=test is refused: the test split must stay unseen" in result.stderr
    assert not os.listdir(tmp_path)  # no threshold.json, nothing written


def test_help_documents_every_flag():
    import dataclasses
    result = _evaluate_cli("--helpfull", timeout=120)
    checked = check_every_flag_is_documented("idc_engine.evaluate", result.stdout)
    assert set(checked) == {field.name for field in dataclasses.fields(EvaluateConfig)}
