"""The run's checkpoint: what it holds, where it goes (latest and best), resuming from it.

The tf.train.Checkpoint object graph is model, optimizer, step, lr_multiplier, best_metric and
since_best; a run resumes from a checkpoint only if these names match, so they stay as they are.
Under MultiWorkerMirroredStrategy every worker must take part in saving, but only the chief's
copy is kept: the others save to a private temporary directory and delete it (TF's recipe).
"""

import dataclasses
import math
import os
import shutil

import tensorflow as tf
from absl import logging

from idc_engine.training import objectives
from idc_engine.training.run_dir import RunDir


@dataclasses.dataclass(frozen=True)
class Counters:
    """The run's progress, checkpointed with the model (mirrored variables of one value)."""
    step: tf.Variable          # int64: training steps done
    best_metric: tf.Variable   # float64: the best validation value so far (NaN: none yet)
    since_best: tf.Variable    # int64: validations since that best


def make_counters() -> Counters:
    """Creates the counters; call inside the strategy's scope."""
    def counter(value, dtype, name):
        return tf.Variable(value, dtype=dtype, trainable=False, name=name,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return Counters(step=counter(0, tf.int64, "global_step"),
                    best_metric=counter(math.nan, tf.float64, "best_metric"),
                    since_best=counter(0, tf.int64, "since_best"))


def _write_dir(path: str, strategy, is_chief: bool) -> str:
    """Where this worker writes: the real path on the chief, a private temporary one elsewhere."""
    if is_chief:
        return path
    return os.path.join(path, f"workertemp_{strategy.cluster_resolver.task_id}")


class RunCheckpoints:
    """The latest checkpoints (run.checkpoints, `keep` of them) and the best one (run.best_checkpoint).

    `tracker` (objectives.BestTracker) is the host-side copy of best_metric and since_best: it
    is loaded from the checkpoint on resume and written into it on every save.
    """

    def __init__(self, run: RunDir, strategy, is_chief: bool, keep: int, best_metric: str, *,
                 model, optimizer, lr_multiplier, counters: Counters):
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=counters.step, lr_multiplier=lr_multiplier,
            best_metric=counters.best_metric, since_best=counters.since_best)
        self.tracker = objectives.BestTracker(best_metric)
        self._run = run
        self._counters = counters
        self._is_chief = is_chief
        self._latest = tf.train.CheckpointManager(
            self.checkpoint, _write_dir(run.checkpoints, strategy, is_chief), max_to_keep=keep)
        self._best = tf.train.CheckpointManager(
            self.checkpoint, _write_dir(run.best_checkpoint, strategy, is_chief), max_to_keep=1)

    def restore_latest(self) -> int:
        """Resumes from the latest checkpoint, if any; returns the step to start from."""
        latest = self.latest_path()
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("resumed from %s at step %d", latest, int(self._counters.step.numpy()))
        self.tracker.best = float(self._counters.best_metric.numpy())
        self.tracker.since_best = int(self._counters.since_best.numpy())
        return int(self._counters.step.numpy())

    def latest_path(self) -> str | None:
        return tf.train.latest_checkpoint(self._run.checkpoints)

    def save_latest(self) -> None:
        self._save(self._latest)

    def save_best(self) -> None:
        self._save(self._best)

    def restore_best(self) -> str | None:
        """Loads the best checkpoint's weights (for the export); returns its path, or None."""
        best = tf.train.latest_checkpoint(self._run.best_checkpoint)
        if best:
            self.checkpoint.restore(best).expect_partial()
        return best

    def _save(self, manager: tf.train.CheckpointManager) -> None:
        self._counters.best_metric.assign(self.tracker.best)
        self._counters.since_best.assign(self.tracker.since_best)
        manager.save(checkpoint_number=self._counters.step)
        if not self._is_chief:
            shutil.rmtree(manager.directory, ignore_errors=True)
