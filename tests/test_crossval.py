"""k-fold conversion (--split=kfold) and cross-validation (idc_engine/evaluation/crossval.py).

One tiny 3-fold run (plain CNN, a few steps per fold) on the session's synthetic tree; its
pooled figures are recomputed here from the per-fold predictions its evaluations saved.
"""

import csv
import glob
import json
import os

import numpy as np
import pytest
from sklearn import metrics as sk

from idc_engine.data import conversion, splits
from idc_engine.evaluation import crossval
from idc_engine.training.config import TrainConfig


def test_kfold_split_is_stratified_balanced_and_keeps_the_test_patients_out():
    rng = np.random.default_rng(3)
    ratio = {f"p{i}": float(r) for i, r in enumerate(rng.random(53))}
    held_out = ["p1", "p2", "p3"]
    assignment = splits.kfold_patient_split(ratio, 5, seed=1, test_patients=held_out).assignment
    assert {p for p, s in assignment.items() if s == "test"} == set(held_out)
    folds = {f"fold{k}": sorted(p for p, s in assignment.items() if s == f"fold{k}")
             for k in range(5)}
    assert sorted(len(f) for f in folds.values()) == [10, 10, 10, 10, 10]
    assert set(assignment) == set(ratio)
    # each fold spans the IDC ratios: its mean ratio is near the overall one
    overall = np.mean([ratio[p] for p in ratio if p not in held_out])
    for members in folds.values():
        assert abs(np.mean([ratio[p] for p in members]) - overall) < 0.06
    with pytest.raises(ValueError, match="--folds"):
        splits.kfold_patient_split(ratio, 1, seed=0)


@pytest.fixture(scope="module")
def kfold_data(idc_tree, tmp_path_factory):
    root, _ = idc_tree
    out = str(tmp_path_factory.mktemp("kfold") / "tfrecords")
    manifest = conversion.convert_tree(root, out, split="kfold", folds=3, num_workers=2,
                                       min_shards=1, progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def crossvalidated(kfold_data, tmp_path_factory):
    data_dir, _ = kfold_data
    model_dir = str(tmp_path_factory.mktemp("crossval") / "cv")
    config = TrainConfig(data_dir=data_dir, model_dir=model_dir, model="plain_cnn",
                         train_steps=2, global_batch_size=32, steps_per_loop=2,
                         validation_every_steps=2, augment="none", strategy="default")
    summary = crossval.cross_validate(config, bootstrap=50, seed=0, fold_figures=False)
    return config, summary


def test_the_manifest_lists_the_folds_like_splits(kfold_data):
    _, manifest = kfold_data
    assert list(manifest["splits"]) == ["fold0", "fold1", "fold2"]
    patients = [p for s in manifest["splits"].values() for p in s["patients"]]
    assert len(patients) == len(set(patients)) == 16
    assert manifest["split_settings"]["mode"] == "kfold" and manifest["train_channel_mean"]


def _fold_predictions(model_dir: str) -> dict:
    """{k: rows of fold k's evaluation predictions.csv}, read from the files."""
    out = {}
    for path in glob.glob(os.path.join(model_dir, "fold_*", "model", "evaluation", "test",
                                       "predictions.csv")):
        k = int(path.split("fold_")[1].split(os.sep)[0])
        with open(path) as f:
            out[k] = list(csv.DictReader(f))
    return out


def test_pooled_figures_agree_with_saved_fold_predictions_and_a_rerun_trains_nothing(
        crossvalidated, kfold_data):
    config, summary = crossvalidated
    _, manifest = kfold_data
    with open(os.path.join(config.model_dir, "crossval", "summary.json")) as f:
        saved = json.load(f)
    per_fold = _fold_predictions(config.model_dir)
    assert sorted(per_fold) == [0, 1, 2]
    for k, rows in per_fold.items():  # fold k's model is scored on fold k's patients only
        assert {r["patient_id"] for r in rows} == set(manifest["splits"][f"fold{k}"]["patients"])
    rows = [r for k in sorted(per_fold) for r in per_fold[k]]
    labels = np.array([int(r["label"]) for r in rows])
    prob = np.array([float(r["idc_probability"]) for r in rows])
    called = np.array([int(r["predicted"]) for r in rows])
    tp, tn = np.sum((called == 1) & (labels == 1)), np.sum((called == 0) & (labels == 0))
    pooled = saved["pooled"]
    assert saved["num_patches"] == len(rows) == sum(
        s["num_examples"] for s in manifest["splits"].values())
    assert pooled["auc"] == pytest.approx(sk.roc_auc_score(labels, prob), abs=1e-12)
    assert pooled["pr_auc"] == pytest.approx(sk.average_precision_score(labels, prob), abs=1e-12)
    assert pooled["brier_score"] == pytest.approx(np.mean((prob - labels) ** 2), abs=1e-9)
    sensitivity, specificity = tp / np.sum(labels == 1), tn / np.sum(labels == 0)
    assert pooled["idc_sensitivity"] == pytest.approx(sensitivity)
    assert pooled["balanced_accuracy"] == pytest.approx((sensitivity + specificity) / 2)
    fold_auc = [sk.roc_auc_score([int(r["label"]) for r in per_fold[k]],
                                 [float(r["idc_probability"]) for r in per_fold[k]])
                for k in sorted(per_fold)]
    assert [f["auc"] for f in saved["folds"]] == pytest.approx(fold_auc, abs=1e-12)
    assert saved["mean"]["auc"] == pytest.approx(np.mean(fold_auc))
    assert saved["std"]["auc"] == pytest.approx(np.std(fold_auc, ddof=1))
    ci = saved["pooled_intervals"]["auc"]
    assert ci["low"] <= pooled["auc"] <= ci["high"]
    for name in ("summary.txt", "out_of_fold.csv", "roc_per_fold.png"):
        assert os.path.getsize(os.path.join(config.model_dir, "crossval", name)) > 0
    assert glob.glob(os.path.join(config.model_dir, "crossval", "tensorboard", "*tfevents*"))
    assert "pooled" in summary["summary_text"]

    # finished: run again, nothing is trained (one test, so pytest -n runs the folds once)
    def must_not_train(_):
        raise AssertionError("a fold was trained again")

    again = crossval.cross_validate(config, bootstrap=50, seed=0, train=must_not_train,
                                    fold_figures=False)
    assert again["pooled"] == summary["pooled"]


def test_a_conversion_without_folds_is_refused(eval_data, tmp_path):
    data_dir, _ = eval_data
    config = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "cv"))
    with pytest.raises(crossval.EvaluationError, match="--split=kfold"):
        crossval.cross_validate(config)
