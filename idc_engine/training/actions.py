"""What runs on the host between two calls of the train loop, one small object per concern.

The controller (controller.py) decides when each runs: the loss check and the progress report
after every loop, a validation (then plateau and early stopping) every --validation_every_steps,
the profiler around the steps of --profile_steps.
"""

import dataclasses
import math

import tensorflow as tf
from absl import logging

from idc_engine import atomic_files, errors
from idc_engine.training import objectives, summaries
from idc_engine.training.checkpoints import RunCheckpoints
from idc_engine.training.config import TrainConfig
from idc_engine.training.run_dir import RunDir
from idc_engine.training.validation import Validator


class TrainingError(errors.RunStopped, RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """One call of the train loop: steps first_step..step - 1, and sums over them."""
    first_step: int
    step: int            # the steps done after the call
    loss_sum: float
    correct: float
    count: float         # examples
    seconds: float
    timed: bool          # False for the first call (tracing, compilation): not a throughput

    @property
    def num_steps(self) -> int:
        return self.step - self.first_step

    @property
    def loss(self) -> float:
        return self.loss_sum / self.num_steps


def check_finite_loss(result: LoopResult, checkpoints: RunCheckpoints) -> None:
    """Raises TrainingError, before anything is saved, if the loop's loss is NaN or inf."""
    if not math.isfinite(result.loss):
        raise TrainingError(
            f"non-finite training loss ({result.loss}) in steps {result.first_step}.."
            f"{result.step - 1}; stopped without saving; the last good checkpoint is "
            f"{checkpoints.latest_path() or 'none (no checkpoint yet)'}")


class ProgressReport:
    """TensorBoard's train scalars after every loop, a log line when asked; keeps images/s."""

    def __init__(self, writers: summaries.Writers, schedule, optimizer, total_steps: int,
                 steps_per_epoch: int):
        self._writers = writers
        self._schedule, self._optimizer = schedule, optimizer
        self._total_steps, self._steps_per_epoch = total_steps, steps_per_epoch
        self.rates = []      # images/s of every timed loop

    def __call__(self, result: LoopResult, log: bool) -> None:
        learning_rate = float(self._schedule(self._optimizer.iterations))
        images_per_s = result.count / result.seconds if result.timed else None
        if images_per_s:
            self.rates.append(images_per_s)
        accuracy = result.correct / max(result.count, 1.0)
        self._writers.train_scalars(
            result.step, loss=result.loss, accuracy=accuracy, learning_rate=learning_rate,
            images_per_sec=images_per_s,
            step_time_ms=1000 * result.seconds / result.num_steps if result.timed else None)
        if log:
            logging.info("step %d/%d (epoch %.2f): loss %.4f, accuracy %.4f, lr %.3g%s",
                         result.step, self._total_steps, result.step / self._steps_per_epoch,
                         result.loss, accuracy, learning_rate,
                         f", {images_per_s:,.0f} img/s" if images_per_s else "")


class BestValidation:
    """Validates, reports (TensorBoard, log, `history`), and keeps a new best: the best
    checkpoint and best.json ({"step", "val_<name>": value})."""

    def __init__(self, validator: Validator, writers: summaries.Writers,
                 checkpoints: RunCheckpoints, run: RunDir, is_chief: bool, best_metric: str):
        self._validator, self._writers = validator, writers
        self._checkpoints, self._run, self._is_chief = checkpoints, run, is_chief
        self._best_metric = best_metric
        self.history = []        # {"step", "val_<name>": value} of every validation
        self.last_metrics = {}   # the last validation's {"val_<name>": value}

    def __call__(self, step: int) -> bool:
        """Returns whether this validation is the best so far (then it is saved)."""
        self.last_metrics = metrics = self._validator()
        self._writers.validation(step, metrics)
        self.history.append({"step": step, **metrics})
        logging.info("step %d validation: %s", step, summaries.format_metrics(metrics))
        if not self._checkpoints.tracker.update(metrics[self._best_metric]):
            return False
        self._checkpoints.save_best()
        if self._is_chief:
            atomic_files.write_json_atomically(self._run.best_json, {"step": step, **metrics},
                                               trailing_newline=False)
        return True


class Plateau:
    """--lr_schedule=plateau: the learning rate x --plateau_factor after every
    --plateau_patience validations without a new best."""

    def __init__(self, config: TrainConfig, schedule: objectives.ScaledSchedule,
                 tracker: objectives.BestTracker):
        self._config, self._schedule, self._tracker = config, schedule, tracker

    def __call__(self, step: int) -> None:
        config, since_best = self._config, self._tracker.since_best
        if config.lr_schedule != "plateau" or since_best % config.plateau_patience:
            return
        self._schedule.multiplier.assign(self._schedule.multiplier * config.plateau_factor)
        logging.info("step %d: %s has not improved for %d validations, learning rate x %g",
                     step, config.best_metric, since_best, config.plateau_factor)


class EarlyStopping:
    """True (stop) after --early_stopping_patience validations without a new best."""

    def __init__(self, patience: int, best_metric: str, tracker: objectives.BestTracker):
        self._patience, self._best_metric, self._tracker = patience, best_metric, tracker

    def __call__(self, step: int) -> bool:
        if not self._patience or self._tracker.since_best < self._patience:
            return False
        logging.info("early stopping at step %d: no better %s for %d validations", step,
                     self._best_metric, self._patience)
        return True


class ProfilerWindow:
    """A profiler trace of steps A..B (--profile_steps=A,B) into `logdir`, on the chief."""

    def __init__(self, steps: tuple[int, int] | None, logdir: str, is_chief: bool):
        self._steps, self._logdir, self._is_chief = steps, logdir, is_chief

    def boundaries_after(self, step: int) -> list[int]:
        """The window's steps after `step`: a loop must end there."""
        return [s for s in self._steps if s > step] if self._steps else []

    def start_if_due(self, step: int) -> None:
        if self._steps and step == self._steps[0] and self._is_chief:
            tf.profiler.experimental.start(self._logdir)

    def stop_if_due(self, step: int) -> None:
        if self._steps and step == self._steps[1] and self._is_chief:
            tf.profiler.experimental.stop()
