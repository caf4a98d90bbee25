"""The custom training loop: one code path for 1 CPU, 1 GPU, N GPUs and N hosts.

Keras 3's `model.fit` under MirroredStrategy fails with steps_per_execution > 1
(keras-team/keras#19246) and runs without XLA (its "auto" jit_compile is off whenever a
tf.distribute strategy is set: keras' Trainer._resolve_auto_jit_compile), and it does not support
MultiWorkerMirroredStrategy (keras-team/keras#20585), so the engine owns its loop:
`strategy.run` of a per-replica step (optionally jit-compiled), inside one tf.function that runs
`steps_per_loop` steps per call (step.py), driven by a controller (controller.py) that runs the
actions due between calls (actions.py). `train` builds them (setup.py, checkpoints.py), runs the
controller and exports the best model (export.py).
"""

import math

import keras
import numpy as np

from idc_engine.training import actions, controller, setup, summaries
from idc_engine.training.checkpoints import RunCheckpoints
from idc_engine.training.config import TrainConfig, parse_profile_steps
from idc_engine.training.run_dir import RunDir
from idc_engine.training.step import Trainer
from idc_engine.training.validation import Validator


def train(config: TrainConfig) -> dict:
    """Trains per `config`; returns a summary: steps, best metric, paths. Resumes by itself.

    The Keras mixed-precision policy the run sets is process-global: the caller's is put back.
    """
    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: TrainConfig) -> dict:
    config.validate()
    run = RunDir(config.model_dir)
    devices = setup.set_up_devices(config)
    plan = setup.plan_run(config)
    state = setup.build_model_state(config, devices, plan)
    sampler = setup.make_sampler(config, devices.strategy)
    checkpoints = RunCheckpoints(
        run, devices.strategy, devices.is_chief, config.keep_checkpoints, config.best_metric,
        model=state.model, optimizer=state.optimizer, lr_multiplier=state.schedule.multiplier,
        counters=state.counters)
    start_step = checkpoints.restore_latest()
    writers = summaries.Writers(run.tensorboard, devices.is_chief)
    if devices.is_chief:
        setup.record_run_start(config, run, setup.resolved_config(config, devices, plan), writers,
                               plan.augment_steps, start_step)
    iterator = None if sampler is not None else setup.train_iterator(config, devices.strategy, start_step)
    trainer = Trainer(config, devices, plan, state, sampler, iterator,
                      frozen=start_step < plan.freeze_until)
    run_actions = _make_actions(config, run, devices, plan, state, checkpoints, writers)
    final_step, stopped_early = controller.Controller(
        trainer, checkpoints, plan, config.steps_per_loop, config.fine_tune_lr_factor,
        run_actions).run(start_step)
    writers.close()
    summary = _summary(config, devices, state.model, checkpoints, run_actions, final_step,
                       stopped_early)
    if config.export and devices.is_chief:
        from idc_engine.training import export  # SavedModel tooling only where it is used
        best = checkpoints.restore_best()
        summary["export"] = export.export_model(
            state.model, lambda: setup.build_model(config), run.export.export_dir,
            config.image_size, plan.mean, plan.std, stain=plan.stain,
            threshold=export.best_threshold_record(run, best, config.data_dir),
            calibrate_on=config.data_dir, class_weights=plan.class_weights,
            int8=config.export_int8)
    return summary


def _make_actions(config: TrainConfig, run: RunDir, devices: setup.RunDevices,
                  plan: setup.RunPlan, state: setup.ModelState, checkpoints: RunCheckpoints,
                  writers: summaries.Writers) -> controller.Actions:
    validator = Validator(config, devices.strategy, state.model, plan.mean, plan.std,
                          devices.compute_dtype, stain=plan.stain)
    return controller.Actions(
        progress=actions.ProgressReport(writers, state.schedule, state.optimizer,
                                        plan.total_steps, plan.steps_per_epoch),
        validation=actions.BestValidation(validator, writers, checkpoints, run,
                                          devices.is_chief, config.best_metric),
        plateau=actions.Plateau(config, state.schedule, checkpoints.tracker),
        early_stopping=actions.EarlyStopping(config.early_stopping_patience, config.best_metric,
                                             checkpoints.tracker),
        profiler=actions.ProfilerWindow(parse_profile_steps(config.profile_steps), run.profile,
                                        devices.is_chief))


def _summary(config: TrainConfig, devices: setup.RunDevices, model, checkpoints: RunCheckpoints,
             run_actions: controller.Actions, final_step: int, stopped_early: bool) -> dict:
    """What train returns (and python -m idc_engine.train prints as JSON)."""
    best = checkpoints.tracker.best
    rates = run_actions.progress.rates
    return {"final_step": final_step, "stopped_early": stopped_early,
            "history": run_actions.validation.history, "best_metric": config.best_metric,
            "best_value": best if math.isfinite(best) else None,
            "last_validation": run_actions.validation.last_metrics,
            "weights_checksum": weights_checksum(model),
            # median over loops after the first (tracing, compilation); None if only one
            "images_per_sec": float(np.median(rates)) if rates else None,
            "strategy": devices.description, "replicas": devices.replicas,
            "precision": devices.policy, "xla": devices.use_xla}


def weights_checksum(model) -> float:
    """A float that differs when any weight differs: workers compare it after training."""
    return float(sum(np.sum(np.asarray(w, np.float64) * (i + 1))
                     for i, w in enumerate(model.get_weights())))
