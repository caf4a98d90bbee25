"""Calibration: the temperature fit (idc_engine/scoring/calibration.py) on data of known
temperature and prior shift, and the session's trained export, which training calibrated."""

import json
import math

import numpy as np
import pytest
import sklearn.metrics

from idc_engine.evaluation import calibration_report
from idc_engine.inference import serving
from idc_engine.scoring import calibration
from idc_engine.training import run_dir


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _known_case(temperature: float, shift: float, n: int = 40_000, seed: int = 0):
    """Labels drawn from sigmoid(z), and the probabilities a model with the given
    over-confidence and class-weight shift would report: sigmoid(z * temperature + shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 2.0, n)
    labels = (rng.random(n) < _sigmoid(z)).astype(np.int64)
    return labels, _sigmoid(z * temperature + shift)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature_once_the_prior_shift_is_removed(temperature):
    shift = math.log(2.5)  # the "balanced" weights of a 1:2.5 class ratio
    labels, reported = _known_case(temperature, shift)
    fitted = calibration.fit_temperature(labels, reported, calibration.prior_shift([1.0, 2.5]))
    assert fitted["temperature"] == pytest.approx(temperature, rel=0.05)
    assert fitted["nll_after"] < fitted["nll_before"] or temperature == 1.0
    calibrated = calibration.calibrate(reported, fitted["temperature"], fitted["prior_shift"])
    before = calibration_report._figures(labels, reported)
    after = calibration_report._figures(labels, calibrated)
    assert after["brier_score"] < before["brier_score"]
    assert after["expected_calibration_error"] < 0.02 < before["expected_calibration_error"]
    assert after["auc"] == before["auc"]  # a strictly increasing map keeps the ranking


def test_the_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit_temperature([1, 1, 1], [0.2, 0.7, 0.9])


@pytest.fixture(scope="module")
def outputs(trained_model_dir, eval_data):
    """(calibration.json, test-split predictions with both outputs) of the session's run."""
    data_dir, _ = eval_data
    paths = run_dir.find_export(trained_model_dir)
    with open(paths.calibration) as f:
        fitted = json.load(f)
    return fitted, serving.predict_split(serving.ServedModel(paths.saved_model), data_dir,
                                         "test", 512)


def _nll(labels, p) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def test_training_calibrates_its_export_on_val_with_the_class_weight_shift(
        outputs, eval_data, trained_model_dir):
    """What the fit guarantees, on the val split it was fitted on: the shift is the class
    weights' log ratio, and the fitted temperature's NLL is no worse than T = 1 after the same
    shift (the minimum over T includes T = 1). Removing the shift may cost NLL on a given split,
    so NLL after vs the raw output's is not a guarantee and is not checked."""
    fitted, _ = outputs
    data_dir, manifest = eval_data
    train = manifest["splits"]["train"]
    negative, positive = train["num_examples"] - train["num_positive"], train["num_positive"]
    # the default --class_weights=balanced: max(count) / count per class
    assert fitted["prior_shift"] == pytest.approx(math.log(negative / positive))
    assert fitted["num_examples"] == manifest["splits"]["val"]["num_examples"]
    served = serving.ServedModel(run_dir.find_export(trained_model_dir).saved_model)
    val = serving.predict_split(served, data_dir, "val", 512)
    # the fit's log-odds are of p clipped to [1e-7, 1 - 1e-7]: float32's softmax saturates at 0
    # and 1, where a wrong patch would otherwise weigh infinitely
    p = np.clip(val.idc_probability_uncalibrated.astype(np.float64), 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p)
    at_t1 = _nll(val.labels, _sigmoid(logit - fitted["prior_shift"]))
    at_fit = _nll(val.labels, _sigmoid((logit - fitted["prior_shift"]) / fitted["temperature"]))
    assert fitted["temperature"] > 0
    assert at_fit <= at_t1 + 1e-6
    # training fitted on its own val predictions, which the SavedModel's match to float32 rounding
    assert fitted["nll_after"] == pytest.approx(at_fit, rel=1e-3)
    assert fitted["nll_before"] == pytest.approx(_nll(val.labels, p), rel=1e-3)


def test_the_served_probability_is_the_calibrated_one_and_ranks_patches_alike(outputs):
    fitted, predictions = outputs
    before, after = predictions.idc_probability_uncalibrated, predictions.idc_probability
    p = before.astype(np.float64)
    expected = _sigmoid((np.log(p) - np.log1p(-p) - fitted["prior_shift"]) / fitted["temperature"])
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(after - before)) > 0.01  # the calibration does something
    labels = predictions.labels
    assert (sklearn.metrics.roc_auc_score(labels, after)
            == sklearn.metrics.roc_auc_score(labels, before))
