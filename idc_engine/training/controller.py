"""The outer training loop: calls of the train loop, each up to the next step where something is
due, then the actions due at that step (actions.py). The step itself runs in step.py.
"""

import dataclasses
import time

from absl import logging

from idc_engine.training import actions
from idc_engine.training.checkpoints import RunCheckpoints
from idc_engine.training.setup import RunPlan
from idc_engine.training.step import Trainer


@dataclasses.dataclass(frozen=True)
class Actions:
    progress: actions.ProgressReport
    validation: actions.BestValidation
    plateau: actions.Plateau
    early_stopping: actions.EarlyStopping
    profiler: actions.ProfilerWindow


class Controller:
    """Trains from a start step to plan.total_steps, or until early stopping.

    A loop (one call of the train loop, at most steps_per_loop steps) ends at every step where
    a log line, validation, checkpoint, thaw of the backbone or profiler edge is due. After it:
    the loss check, the progress report, then, when due, the BatchNorm recomputation, the
    validation (with plateau and early stopping) and the checkpoint, in that order.
    """

    def __init__(self, trainer: Trainer, checkpoints: RunCheckpoints, plan: RunPlan,
                 steps_per_loop: int, fine_tune_lr_factor: float, run_actions: Actions):
        self._trainer, self._checkpoints, self._plan = trainer, checkpoints, plan
        self._steps_per_loop = steps_per_loop
        self._fine_tune_lr_factor = fine_tune_lr_factor
        self._actions = run_actions
        self._loops = 0

    def run(self, step: int) -> tuple[int, bool]:
        """Trains from `step`; returns (the final step, whether early stopping ended the run)."""
        stopped_early = False
        while step < self._plan.total_steps and not stopped_early:
            self._thaw_if_due(step)
            result = self._run_loop(step, self._next_stop(step))
            step = result.step
            actions.check_finite_loss(result, self._checkpoints)
            self._actions.progress(result, log=self._due(step, self._plan.log_every))
            stopped_early = self._after_loop(step)
        return step, stopped_early

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self._plan.total_steps

    def _next_stop(self, step: int) -> int:
        plan = self._plan
        stops = [plan.total_steps, step + self._steps_per_loop]
        stops += [(step // every + 1) * every
                  for every in (plan.validation_every, plan.checkpoint_every, plan.log_every)]
        if self._trainer.frozen:
            stops.append(plan.freeze_until)
        return min(stops + self._actions.profiler.boundaries_after(step))

    def _thaw_if_due(self, step: int) -> None:
        if self._trainer.frozen and step >= self._plan.freeze_until:
            self._trainer.thaw_backbone()
            logging.info("step %d: backbone unfrozen, learning rate x %g", step,
                         self._fine_tune_lr_factor)

    def _run_loop(self, step: int, stop: int) -> actions.LoopResult:
        self._actions.profiler.start_if_due(step)
        started = time.perf_counter()
        loss_sum, correct, count = self._trainer.train(stop - step)
        seconds = time.perf_counter() - started
        self._loops += 1
        self._actions.profiler.stop_if_due(stop)
        return actions.LoopResult(step, stop, loss_sum, correct, count, seconds,
                                  timed=self._loops > 1)

    def _after_loop(self, step: int) -> bool:
        """BatchNorm recomputation, validation, checkpoint as due; returns True to stop."""
        validating = self._plan.has_val and self._due(step, self._plan.validation_every)
        checkpointing = self._due(step, self._plan.checkpoint_every)
        if validating or checkpointing:
            self._trainer.recompute_batchnorm()
        stop = validating and self._validate(step)
        if checkpointing or stop:
            self._checkpoints.save_latest()
        return stop

    def _validate(self, step: int) -> bool:
        """A validation; a new best is saved, else the plateau rule may lower the rate.
        Returns whether early stopping ends the run here."""
        if not self._actions.validation(step):
            self._actions.plateau(step)
        return self._actions.early_stopping(step)
