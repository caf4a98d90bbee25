"""The training controller's schedule with stand-ins for the device work, and the checkpoint's
object graph (the names a run resumes by). Fast: no training step runs."""

import math

import keras
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from idc_engine.training import actions, controller, objectives
from idc_engine.training.checkpoints import RunCheckpoints, make_counters
from idc_engine.training.run_dir import RunDir
from idc_engine.training.setup import RunPlan


class _Trainer:
    def __init__(self, events, loss=1.0):
        self.events, self.loss, self.frozen = events, loss, False

    def train(self, num_steps):
        self.events.append(("train", num_steps))
        return self.loss * num_steps, num_steps * 4.0, num_steps * 8.0

    def recompute_batchnorm(self):
        self.events.append(("batchnorm",))


class _Checkpoints:
    def __init__(self, events, tracker):
        self.events, self.tracker = events, tracker

    def save_latest(self):
        self.events.append(("save",))

    def latest_path(self):
        return None


def _plan(total, validation_every, checkpoint_every, log_every, has_val=True):
    return RunPlan(steps_per_epoch=10, total_steps=total, validation_every=validation_every,
                   checkpoint_every=checkpoint_every, log_every=log_every, freeze_until=0,
                   has_val=has_val, mean=[0.0] * 3, std=[1.0] * 3, class_weights=[1.0, 1.0],
                   augment_steps=[])


def _controller(plan, events, improvements=(), patience=0, loss=1.0):
    tracker = objectives.BestTracker("val_auc")
    values = iter(improvements)

    def validation(step):
        events.append(("validate", step))
        return tracker.update(next(values))

    run_actions = controller.Actions(
        progress=lambda result, log: events.append(("progress", result.step, log)),
        validation=validation, plateau=lambda step: events.append(("plateau", step)),
        early_stopping=actions.EarlyStopping(patience, "val_auc", tracker),
        profiler=actions.ProfilerWindow(None, "", True))
    return controller.Controller(_Trainer(events, loss), _Checkpoints(events, tracker), plan,
                                 steps_per_loop=4, fine_tune_lr_factor=0.1,
                                 run_actions=run_actions)


def test_loops_end_where_something_is_due_and_actions_run_in_order():
    events = []
    final, stopped = _controller(_plan(10, 6, 6, 4), events, [0.5, 0.6]).run(0)
    assert (final, stopped) == (10, False)
    assert [e for e in events if e[0] == "train"] == [("train", 4), ("train", 2), ("train", 2),
                                                      ("train", 2)]
    after_6 = events[events.index(("progress", 6, False)):events.index(("train", 2), 3)]
    assert after_6 == [("progress", 6, False), ("batchnorm",), ("validate", 6), ("save",)]
    assert events[-4:] == [("progress", 10, True), ("batchnorm",), ("validate", 10), ("save",)]


def test_no_better_validation_lowers_the_rate_then_early_stopping_saves_and_stops():
    events = []
    final, stopped = _controller(_plan(100, 2, 10, 2), events, [0.5, 0.4, 0.3],
                                 patience=2).run(0)
    assert (final, stopped) == (6, True)
    assert [e for e in events if e[0] == "plateau"] == [("plateau", 4), ("plateau", 6)]
    assert events[-1] == ("save",)  # at the stop, although no checkpoint was due at step 6


def test_without_a_val_split_only_checkpoints_run():
    events = []
    final, _ = _controller(_plan(4, 2, 2, 2, has_val=False), events).run(0)
    assert final == 4 and not [e for e in events if e[0] == "validate"]
    assert events.count(("save",)) == 2 and events.count(("batchnorm",)) == 2


def test_a_non_finite_loss_stops_before_anything_is_saved():
    events = []
    with pytest.raises(actions.TrainingError, match=r"steps 0..3.*none \(no checkpoint yet\)"):
        _controller(_plan(10, 4, 4, 4), events, loss=math.nan).run(0)
    assert ("save",) not in events and ("batchnorm",) not in events


def test_the_checkpoint_object_graph_keeps_its_names(tmp_path):
    """A run resumes only from a checkpoint whose object names match: they must not change."""
    strategy = tf.distribute.get_strategy()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    checkpoints = RunCheckpoints(RunDir(str(tmp_path)), strategy, True, 2, "val_auc",
                                 model=model, optimizer=optimizer,
                                 lr_multiplier=tf.Variable(1.0), counters=make_counters())
    checkpoints.tracker.update(0.75)
    checkpoints.save_latest()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(str(tmp_path / "checkpoints")).get_tensor(
        "_CHECKPOINTABLE_OBJECT_GRAPH"))
    assert sorted(child.local_name for child in graph.nodes[0].children) == [
        "best_metric", "lr_multiplier", "model", "optimizer", "save_counter", "since_best", "step"]

    resumed = RunCheckpoints(RunDir(str(tmp_path)), strategy, True, 2, "val_auc",
                             model=model, optimizer=optimizer,
                             lr_multiplier=tf.Variable(1.0), counters=make_counters())
    assert resumed.restore_latest() == 0 and resumed.tracker.best == 0.75
