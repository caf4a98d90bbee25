"""Losses, class weights, learning-rate schedules and the best-value tracker."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from idc_engine.scoring import metrics
from idc_engine.training import objectives
from idc_engine.training.config import ConfigError, TrainConfig


def test_balanced_class_weights_are_the_tutorials_max_over_count():
    assert objectives.class_weight_vector("balanced", 198_738, 78_786) == pytest.approx([1.0, 2.5225],
                                                                                     rel=1e-4)
    assert objectives.class_weight_vector("none", 10, 5) == [1.0, 1.0]
    assert objectives.class_weight_vector("0:1,1:3.5", 10, 5) == [1.0, 3.5]
    with pytest.raises(ConfigError, match="lacks a class"):
        objectives.class_weight_vector("balanced", 10, 0)


def test_focal_loss_down_weights_easy_examples():
    labels = tf.constant([1, 1])
    probabilities = tf.constant([[0.05, 0.95], [0.6, 0.4]])  # easy, hard
    ce = objectives.per_example_loss("cross_entropy", labels, probabilities).numpy()
    focal = objectives.per_example_loss("focal", labels, probabilities, focal_gamma=2.0).numpy()
    np.testing.assert_allclose(ce, -np.log([0.95, 0.4]), rtol=1e-5)
    np.testing.assert_allclose(focal, ce * (1 - np.array([0.95, 0.4])) ** 2, rtol=1e-5)


def test_inverse_time_schedule_is_the_tutorials_decay():
    config = TrainConfig(learning_rate=1e-2, epochs=40, lr_schedule="inverse_time")
    schedule = objectives.make_schedule(config, total_steps=1000)
    for step in (0, 1, 100, 999):
        assert float(schedule(step)) == pytest.approx(1e-2 / (1 + (1e-2 / 40) * step), rel=1e-5)


def test_cosine_schedule_warms_up_then_decays_and_the_multiplier_scales_it():
    config = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", warmup_steps=10)
    schedule = objectives.make_schedule(config, total_steps=110)
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(5)) == pytest.approx(0.5e-3, rel=1e-4)
    assert float(schedule(10)) == pytest.approx(1e-3, rel=1e-4)
    assert float(schedule(60)) == pytest.approx(0.5e-3, rel=1e-3)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
    schedule.multiplier.assign(0.1)
    assert float(schedule(10)) == pytest.approx(1e-4, rel=1e-4)


@pytest.mark.parametrize("name, kind", [("adagrad", keras.optimizers.Adagrad),
                                        ("adam", keras.optimizers.Adam),
                                        ("adamw", keras.optimizers.AdamW),
                                        ("sgd", keras.optimizers.SGD)])
def test_optimizers(name, kind):
    config = TrainConfig(optimizer=name)
    assert isinstance(objectives.make_optimizer(config, objectives.make_schedule(config, 10)), kind)


def test_best_tracker_maximizes_or_minimizes_and_ignores_nan():
    tracker = objectives.BestTracker("val_auc")
    assert tracker.update(0.7) and not tracker.update(0.6) and not tracker.update(math.nan)
    assert tracker.best == 0.7 and tracker.since_best == 2
    assert tracker.update(0.8) and tracker.since_best == 0
    loss = objectives.BestTracker("val_loss")
    assert loss.update(0.5) and loss.update(0.4) and not loss.update(0.45)


def test_classification_metrics_by_hand_with_classes_named_right():
    # 4 non-IDC (3 right), 6 IDC (4 right): TN=3 FP=1 FN=2 TP=4
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    prob = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6, 0.55, 0.2, 0.4]
    m = metrics.classification_metrics(labels, prob, threshold=0.5)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["idc_precision"] == pytest.approx(4 / 5) and m["idc_recall"] == pytest.approx(4 / 6)
    assert m["idc_sensitivity"] == m["idc_recall"]
    assert m["idc_specificity"] == m["non_idc_recall"] == pytest.approx(3 / 4)
    assert m["non_idc_precision"] == pytest.approx(3 / 5)
    assert m["idc_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    # ROC-AUC = P(an IDC patch outranks a non-IDC one), a tie counting one half: 16.5 / 24
    pairs = [(p, q) for p, y in zip(prob, labels) if y for q, z in zip(prob, labels) if not z]
    assert m["auc"] == pytest.approx(sum((p > q) + 0.5 * (p == q) for p, q in pairs) / len(pairs))
    assert m["auc"] == pytest.approx(16.5 / 24)
