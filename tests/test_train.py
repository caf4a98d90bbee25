"""The training engine, end to end on tiny converted data: strategies, resume, determinism,
NaN handling, bad flags, TensorBoard and export. Real TensorFlow; real worker processes.

Runs that need a fresh TensorFlow (logical CPU devices, op determinism, TF_CONFIG) are
subprocesses of `python -m idc_engine.train`; the others run in-process.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import quality_bounds
import sklearn.metrics
import tensorflow as tf

from idc_engine.inference import serving
from idc_engine.input import host_cache
from idc_engine.training import loop
from idc_engine.training.config import ConfigError, TrainConfig

# Mechanics (strategies, resume, determinism, precision) on a few steps; BatchNorm statistics from
# 256 examples instead of the default 4096 (tests/test_batchnorm.py checks the recomputation).
QUICK = ["--steps_per_loop=3", "--global_batch_size=32", "--augment=d4", "--log_every_steps=3",
         "--bn_statistics_examples=256"]


def _train_cli(data_dir, model_dir, *args, env=None, timeout=400):
    return subprocess.run(
        [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
         f"--model_dir={model_dir}", *QUICK, *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") + 1:])  # the JSON after the readable report


def _checkpoint_step(model_dir, sub="checkpoints") -> int:
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
    return int(latest.rsplit("-", 1)[1]) if latest else -1


def _scalars(event_dir: str) -> dict:
    """{tag: [(step, value)]} of the scalar summaries under an event directory."""
    out = {}
    for name in sorted(os.listdir(event_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(value.tag, []).append(
                        (event.step, float(tf.make_ndarray(value.tensor))))
    return out


@pytest.mark.parametrize("xla, model", [("off", "cancernet"), ("on", "plain_cnn")])
def test_mirrored_strategy_over_two_logical_cpus_trains(converted, tmp_path, xla, model):
    """With XLA, plain_cnn: the same distributed step, compiled in seconds (CancerNet's depthwise
    convolutions take XLA most of a minute on one CPU thread)."""
    data_dir, _ = converted
    result = _train_cli(data_dir, tmp_path / "run", "--strategy=mirrored", "--num_cpu_devices=2",
                        f"--xla={xla}", f"--model={model}", "--train_steps=6",
                        "--validation_every_steps=6", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["replicas"] == 2 and "MirroredStrategy over 2 devices" in config["resolved_strategy"]
    assert config["resolved_xla"] is (xla == "on")
    summary = _summary(result.stdout)
    assert summary["final_step"] == 6 and np.isfinite(summary["last_validation"]["val_loss"])
    assert _checkpoint_step(tmp_path / "run") == 6


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_strategy_with_two_local_workers_agrees_on_weights(converted, tmp_path):
    data_dir, _ = converted
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
             f"--model_dir={tmp_path / 'run'}", *QUICK, "--strategy=multi_worker",
             "--train_steps=6", "--validation_every_steps=3", "--export=false"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)}))
    outputs = [p.communicate(timeout=400) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    summaries = [_summary(out) for out, _ in outputs]
    assert summaries[0]["final_step"] == summaries[1]["final_step"] == 6
    assert summaries[0]["weights_checksum"] == summaries[1]["weights_checksum"]
    assert summaries[0]["last_validation"] == summaries[1]["last_validation"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["replicas"] == 2 and "MultiWorker" in config["resolved_strategy"]
    assert _checkpoint_step(tmp_path / "run") == 6  # the chief's
    assert not [d for d in os.listdir(tmp_path / "run" / "checkpoints") if "workertemp" in d]


def test_kill_9_then_restart_resumes_from_the_checkpoint(converted, tmp_path):
    data_dir, _ = converted
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", *QUICK, "--checkpoint_every_steps=3",
            "--validation_every_steps=1000", "--export=false"]
    process = subprocess.Popen(args + ["--train_steps=100000"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _checkpoint_step(model_dir) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _checkpoint_step(model_dir)
    assert killed_at >= 6, "no checkpoint was written before the kill"
    result = subprocess.run(args + [f"--train_steps={killed_at + 6}"], capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}" in result.stderr  # "resumed from ... at step N"
    assert _summary(result.stdout)["final_step"] == killed_at + 6
    assert _checkpoint_step(model_dir) == killed_at + 6
    steps = [s for s, _ in _scalars(str(model_dir / "tensorboard" / "train"))["loss"]]
    assert min(s for s in steps if s > killed_at) == killed_at + 3  # no step counted twice


def test_deterministic_runs_give_identical_losses(converted, tmp_path):
    data_dir, _ = converted
    runs = []
    for name in ("a", "b"):
        result = _train_cli(data_dir, tmp_path / name, "--deterministic", "--train_steps=9",
                            "--validation_every_steps=9", "--export=false", "--augment=pathology")
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append((_scalars(str(tmp_path / name / "tensorboard" / "train"))["loss"],
                     _summary(result.stdout)))
    (losses_a, summary_a), (losses_b, summary_b) = runs
    assert len(losses_a) == 3 and losses_a == losses_b
    assert summary_a["weights_checksum"] == summary_b["weights_checksum"]
    assert summary_a["last_validation"] == summary_b["last_validation"]


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(converted, tmp_path):
    data_dir, _ = converted
    result = _train_cli(data_dir, tmp_path / "run", "--train_steps=30", "--inject_nan_at_step=7",
                        "--checkpoint_every_steps=3", "--validation_every_steps=1000")
    assert result.returncode == 3
    assert "non-finite training loss" in result.stderr and "steps 6..8" in result.stderr
    assert _checkpoint_step(tmp_path / "run") == 6
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--strategy=tpu"], "--strategy='tpu' is not one of"),
    (["--num_cpu_devices=2", "--strategy=mirrored", "--global_batch_size=33"],
     "--global_batch_size=33 is not divisible by the 2 replicas"),
    (["--class_weights=0:1"], "--class_weights"),
    (["--optimizer=lamb"], "--optimizer='lamb'"),
])
def test_bad_flags_fail_at_start_with_a_clear_message(converted, tmp_path, args, message):
    data_dir, _ = converted
    result = _train_cli(data_dir, tmp_path / "run", "--train_steps=3", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_dir_is_named(tmp_path):
    result = _train_cli(tmp_path / "nowhere", tmp_path / "run", "--train_steps=3")
    assert result.returncode == 2 and "nowhere" in result.stderr and "does not exist" in result.stderr


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "idc_engine.train", "--helpfull"],
                            capture_output=True, text=True, timeout=120)
    import dataclasses
    for field in dataclasses.fields(TrainConfig):
        assert (f"--{field.name}:" in result.stdout or f"--[no]{field.name}:" in result.stdout), field.name


# --- in-process runs ---------------------------------------------------------------------------

def _config(data_dir, model_dir, **overrides) -> TrainConfig:
    values = dict(data_dir=data_dir, model_dir=str(model_dir), steps_per_loop=5,
                  global_batch_size=32, augment="d4", strategy="default")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_without_bn_statistics(eval_data, tmp_path_factory):
    """The negative control of the BatchNorm check: the shared run's flags with
    --bn_statistics_examples=0 (the moving averages alone), in a subprocess like the shared run."""
    from conftest import TRAINED_FLAGS

    data_dir, _ = eval_data
    model_dir = tmp_path_factory.mktemp("no_bn_statistics") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
         f"--model_dir={model_dir}", *TRAINED_FLAGS, "--bn_statistics_examples=0"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(model_dir)


def _inference_and_training_mode(model_dir: str, images: np.ndarray):
    """P(IDC) float32 [N] of the exported .keras model on uint8 images [N, 50, 50, 3], in
    inference mode (BatchNorm's moving statistics) and in training mode with every Dropout off
    (the statistics of this batch of N), on the same weights."""
    import keras

    from idc_engine.models.preprocessing import model_input

    export = os.path.join(model_dir, "export")
    pre = json.loads(open(os.path.join(export, "preprocessing.json")).read())
    model = keras.saving.load_model(os.path.join(export, "model.keras"))
    inputs = model_input(images, pre["image_size"], pre["channel_mean"], pre["channel_std"])
    inference = model(inputs, training=False).numpy()[:, 1]
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return inference, model(inputs, training=True).numpy()[:, 1]


def _agreement(model_dir: str, images: np.ndarray) -> tuple[float, float]:
    """(mean |P inference - P training mode|, std of P inference) over `images`."""
    inference, training = _inference_and_training_mode(model_dir, images)
    return float(np.mean(np.abs(inference - training))), float(np.std(inference))


# The BatchNorm check's bounds. tools/suite_spread.sh (20 settings: seeds 0-4, 1 and 2 threads,
# oneDNN default / AVX2 / off, -n auto / 0; BUILD.md): the mean |difference| 0.0027-0.0076, the
# spread 0.434-0.448. The bounds are 8.7x and 26x those ranges beyond the worst value; the
# negative control (--bn_statistics_examples=0) gives 0.56 and 1e-6.
MAX_DIFFERENCE, MIN_SPREAD = 0.05, 0.08


def test_the_exported_model_in_inference_mode_agrees_with_training_mode(
        eval_data, trained_model_dir, trained_without_bn_statistics):
    """BatchNorm normalizes with the batch's statistics in training and with its moving
    statistics at inference; the trainer recomputes the moving ones before export
    (training/batchnorm.py). On the whole train split, the exported model in inference mode must
    give what the same weights give in training mode without dropout, and not one constant.
    The same run with --bn_statistics_examples=0 must fail both (Keras' moving averages alone:
    variances tens of times too large after 60 steps, nearly one answer for every patch)."""
    data_dir, _ = eval_data
    images = host_cache.load_split_arrays(data_dir, "train").images
    difference, spread = _agreement(trained_model_dir, images)
    quality_bounds.at_most("bn: mean |P inference - P training mode|", difference, MAX_DIFFERENCE)
    quality_bounds.at_least("bn: std of P inference", spread, MIN_SPREAD)

    difference, spread = _agreement(trained_without_bn_statistics, images)
    assert difference > MAX_DIFFERENCE and spread < MIN_SPREAD, (difference, spread)


def _f1(labels: np.ndarray, called_idc: np.ndarray) -> float:
    tp = np.sum(called_idc & (labels == 1))
    return 2 * tp / (2 * tp + np.sum(called_idc & (labels == 0)) + np.sum(~called_idc & (labels == 1)))


def test_the_exported_threshold_is_the_max_f1_threshold_of_the_exported_model_on_val(
        eval_data, trained_model_dir):
    """Checked against the rule's definition: among every distinct probability of the exported
    model (uncalibrated) on the val split as a threshold, the exported one gives the highest IDC
    F1, and is the highest threshold that does; validation (best.json) saw that model."""
    data_dir, _ = eval_data
    export = os.path.join(trained_model_dir, "export")
    threshold = json.loads(open(os.path.join(export, "threshold.json")).read())
    best = json.loads(open(os.path.join(trained_model_dir, "best.json")).read())
    summary = json.loads(open(os.path.join(trained_model_dir, "summary.json")).read())
    assert threshold["rule"] == "max_f1" and threshold["chosen_on"] == "val"
    assert threshold["model_step"] == best["step"] == summary["final_step"]
    assert summary["best_value"] == best["val_auc"]
    val = serving.predict_split(serving.ServedModel(os.path.join(export, "saved_model")),
                                data_dir, "val", 256)
    labels, p = val.labels, val.idc_probability_uncalibrated
    candidates = np.unique(p)
    f1 = np.array([_f1(labels, p >= t) for t in candidates])
    # the rule's candidates are the val probabilities: the exported threshold is one of them
    chosen = candidates[np.argmin(np.abs(candidates - threshold["threshold_uncalibrated"]))]
    assert chosen == pytest.approx(threshold["threshold_uncalibrated"], abs=1e-5)
    assert _f1(labels, p >= chosen) == f1.max() == pytest.approx(best["val_idc_f1_at_max_f1"])
    assert (f1[candidates > chosen] < f1.max()).all()  # ties go to the highest threshold
    assert f1.min() < f1.max()  # a choice that matters: other thresholds do worse
    # the calibrated threshold makes the same decisions on the calibrated scale
    np.testing.assert_array_equal(val.idc_probability >= threshold["threshold"], p >= chosen)
    # validation measured the exported (inference-mode) model
    assert best["val_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels, p), abs=1e-6)


def test_xla_on_one_device_compiles_the_whole_step_and_trains(converted, tmp_path):
    """With one device the optimizer update is inside the compiled step; the run must still
    count its steps and change the weights (plain_cnn: the same path, a faster compile)."""
    data_dir, _ = converted
    kwargs = dict(model="plain_cnn", train_steps=2, steps_per_loop=2, global_batch_size=8,
                  augment="none", validation_every_steps=1000, export=False)
    untrained = loop.train(_config(data_dir, tmp_path / "none", learning_rate=1e-30, **kwargs))
    trained = loop.train(_config(data_dir, tmp_path / "xla", xla="on", **kwargs))
    config = json.loads((tmp_path / "xla" / "config.json").read_text())
    assert config["resolved_xla"] is True and config["replicas"] == 1
    assert trained["final_step"] == 2 and _checkpoint_step(tmp_path / "xla") == 2
    assert trained["weights_checksum"] != untrained["weights_checksum"]


def test_config_tensorboard_and_export(converted, tmp_path):
    data_dir, manifest = converted
    model_dir = tmp_path / "run"
    summary = loop.train(_config(data_dir, model_dir, train_steps=10, validation_every_steps=5,
                                 input_mode="device"))
    config = json.loads((model_dir / "config.json").read_text())
    from idc_engine.training import devices  # float32, or mixed_bfloat16 on bfloat16 CPUs
    assert (config["resolved_precision"], config["precision_reason"]) == \
        devices.resolve_precision("auto", gpu_capabilities=[])
    assert config["resolved_xla"] is False and config["input_mode"] == "device"
    train = _scalars(str(model_dir / "tensorboard" / "train"))
    assert {"loss", "accuracy", "learning_rate", "images_per_sec", "step_time_ms"} <= set(train)
    val = _scalars(str(model_dir / "tensorboard" / "validation"))
    assert {"loss", "auc", "idc_f1", "balanced_accuracy"} <= set(val)
    assert [s for s, _ in val["auc"]] == [5, 10]
    best = json.loads((model_dir / "best.json").read_text())
    assert best["val_auc"] == pytest.approx(max(v for _, v in val["auc"]), rel=1e-6)  # TB: float32

    # the SavedModel takes uint8 patches and agrees with the .keras model plus preprocessing;
    # the Keras softmax is the network's own output, which the SavedModel also returns beside the
    # calibrated one (tests/test_calibration.py checks the calibration)
    import keras

    from idc_engine.models.preprocessing import model_input
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 50, 50, 3), dtype=np.uint8)
    served = tf.saved_model.load(summary["export"]["saved_model"]).signatures["serving_default"]
    served = served(images=tf.constant(images))["idc_probability_uncalibrated"].numpy()
    pre = json.loads(open(summary["export"]["preprocessing"]).read())
    model = keras.saving.load_model(summary["export"]["keras"])
    direct = model(model_input(images, pre["image_size"], pre["channel_mean"],
                               pre["channel_std"]), training=False).numpy()[:, 1]
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-6)
    assert served.shape == (7,) and ((served >= 0) & (served <= 1)).all()


def test_config_validation_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--data_dir is required"):
        TrainConfig(model_dir=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="--image_size"):
        TrainConfig(data_dir=str(tmp_path), model_dir=str(tmp_path), image_size=64).validate()
    with pytest.raises(ConfigError, match="--profile_steps"):
        TrainConfig(data_dir=str(tmp_path), model_dir=str(tmp_path), profile_steps="5").validate()


def test_importing_the_engine_starts_no_tensorflow_runtime():
    """MultiWorkerMirroredStrategy and logical CPU devices must be set up before the first op;
    a module that runs an op at import (a module-level tf.constant) breaks both."""
    code = ("import tensorflow as tf\n"
            "import idc_engine.training.loop, idc_engine.training.export, idc_engine.train\n"
            "cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
            "print(len(tf.config.list_logical_devices('CPU')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "2"


@pytest.mark.parametrize("precision, batch, strategy", [
    ("mixed_bfloat16", 32, []),
    # the N-GPU recipe; its LossScaleOptimizer on one device is the same code, and
    # test_loss_scaling_skips_a_step_that_overflowed_in_any_replica checks the scaling itself
    ("mixed_float16", 8, ["--strategy=mirrored", "--num_cpu_devices=2"]),
])
def test_mixed_precision_trains(converted, tmp_path, precision, batch, strategy):
    """mixed_float16 goes through the LossScaleOptimizer (very slow on a CPU: a tiny batch)."""
    data_dir, _ = converted
    result = _train_cli(data_dir, tmp_path / "run", f"--precision={precision}",
                        f"--global_batch_size={batch}", "--train_steps=3",
                        "--validation_every_steps=3", "--export=false", *strategy)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(result.stdout)
    assert summary["precision"] == precision and np.isfinite(summary["last_validation"]["val_loss"])


def test_frozen_backbone_then_fine_tuning(eval_data, tmp_path):
    """On eval_data: an epoch of its 9 train patients is what the test costs."""
    import keras

    from idc_engine import models
    data_dir, manifest = eval_data
    batch = 128
    steps_per_epoch = manifest["splits"]["train"]["num_examples"] // batch
    options = dict(model="mobilenet_v2", global_batch_size=batch, freeze_backbone_epochs=1,
                   fine_tune_lr_factor=0.1, validation_every_steps=1000, export=False,
                   lr_schedule="constant", learning_rate=1e-3, augment="none", seed=3)
    run = tmp_path / "run"
    loop.train(_config(data_dir, run, train_steps=steps_per_epoch, **options))

    def backbone_and_head(step):
        model = models.build_model("mobilenet_v2", (50, 50, 3))
        tf.train.Checkpoint(model=model).restore(
            os.path.join(run, "checkpoints", f"ckpt-{step}")).expect_partial()
        return (model.get_layer("backbone").get_weights(), model.get_layer("logits").get_weights())

    keras.utils.set_random_seed(3)  # the initial weights of the run
    initial = models.build_model("mobilenet_v2", (50, 50, 3))
    frozen_backbone, frozen_head = backbone_and_head(steps_per_epoch)
    for a, b in zip(initial.get_layer("backbone").get_weights(), frozen_backbone):
        np.testing.assert_array_equal(a, b)  # weights and BN statistics untouched while frozen
    assert not np.array_equal(initial.get_layer("logits").get_weights()[0], frozen_head[0])

    loop.train(_config(data_dir, run, train_steps=steps_per_epoch + 2, **options))  # resumes
    thawed_backbone, _ = backbone_and_head(steps_per_epoch + 2)
    assert any(not np.array_equal(a, b) for a, b in zip(frozen_backbone, thawed_backbone))
    rates = [v for s, v in _scalars(str(run / "tensorboard" / "train"))["learning_rate"]
             if s > steps_per_epoch]
    assert rates and all(r == pytest.approx(1e-4) for r in rates)


def test_plateau_reduces_the_rate_and_early_stopping_ends_the_run(converted, tmp_path):
    data_dir, _ = converted
    run = tmp_path / "run"
    # A rate too small to change any weight, and BatchNorm statistics left to the moving
    # averages: at the initial weights the validation loss then only grows after step 2
    # (statistics recomputed from new batches at each validation would move it both ways).
    summary = loop.train(_config(data_dir, run, train_steps=40, steps_per_loop=2,
                                 validation_every_steps=2, learning_rate=1e-12,
                                 bn_statistics_examples=0,
                                 lr_schedule="plateau", plateau_patience=1, plateau_factor=0.5,
                                 early_stopping_patience=3, best_metric="val_loss", export=False))
    assert summary["stopped_early"] and summary["final_step"] == 8
    rates = dict(_scalars(str(run / "tensorboard" / "train"))["learning_rate"])
    # logged after each loop, before that step's validation: reductions at steps 4 and 6 show
    assert rates[4] / rates[2] == pytest.approx(1.0) and rates[6] / rates[2] == pytest.approx(0.5)
    assert rates[8] / rates[2] == pytest.approx(0.25)
    assert _checkpoint_step(run, "best") == 2


def test_profile_steps_write_a_trace(converted, tmp_path):
    data_dir, _ = converted
    run = tmp_path / "run"
    loop.train(_config(data_dir, run, train_steps=6, steps_per_loop=2, profile_steps="2,4",
                       validation_every_steps=1000, export=False))
    traces = [f for _, _, files in os.walk(run / "profile") for f in files if ".xplane.pb" in f]
    assert traces


def test_freezing_a_model_without_backbone_is_refused(converted, tmp_path):
    with pytest.raises(ConfigError, match="--freeze_backbone_epochs needs a model with a backbone"):
        loop.train(_config(converted[0], tmp_path / "run", train_steps=2, freeze_backbone_epochs=1))


def test_train_puts_back_the_callers_precision_policy(converted, tmp_path):
    """The Keras policy is process-global: a run (here one refused after it set its precision)
    must leave the caller's in place."""
    import keras
    keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ConfigError, match="--freeze_backbone_epochs"):
        loop.train(_config(converted[0], tmp_path / "run", train_steps=2, freeze_backbone_epochs=1,
                           precision="mixed_bfloat16"))
    assert keras.mixed_precision.global_policy().name == "float32"


def test_loss_scaling_skips_a_step_that_overflowed_in_any_replica():
    """Replica 1's gradients are inf, replica 0's finite: every replica must skip the update
    (weights unchanged, loss scale halved), not apply the all-reduced inf (Keras 3 alone does)."""
    script = (
        "import json, math, tensorflow as tf, keras\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from idc_engine.training import step\n"
        "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
        "with strategy.scope():\n"
        "    w = tf.Variable([1.0, 2.0])\n"
        "    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))\n"
        "    optimizer.build([w])\n"
        "def replica_step():\n"
        "    replica = tf.distribute.get_replica_context().replica_id_in_sync_group\n"
        "    gradient = tf.where(replica == 1, math.inf, 1.0) * tf.ones(2)\n"
        "    optimizer.apply(step.finite_in_every_replica([gradient]), [w])\n"
        "tf.function(lambda: strategy.run(replica_step))()\n"
        "print(json.dumps([w.numpy().tolist(), float(optimizer.dynamic_scale.numpy())]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    weights, scale = json.loads(result.stdout.strip().splitlines()[-1])
    assert weights == [1.0, 2.0] and scale == 2.0 ** 14
