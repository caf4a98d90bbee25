"""benchmarks.train_step's plumbing (settings, parsing the runs' output) and the Keras fit
baseline for a handful of steps. No timing assertions: the machine is shared."""

import json
import os
import subprocess
import sys

import pytest
from absl import app

# benchmarks/ is a folder of the repository, not part of the installed package
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import keras_fit_baseline, train_step  # noqa: E402


def test_default_settings_follow_the_devices():
    cpu = [s.name for s in train_step.select_settings(["default"], num_gpus=0)]
    assert cpu == ["reference", "pathology", "mirrored_cpu", "xla", "mixed_bfloat16"]
    two_gpus = [s.name for s in train_step.select_settings(["default", "cache"], num_gpus=2)]
    assert two_gpus[0] == "reference" and "mixed_float16" in two_gpus
    assert "mirrored_gpu" in two_gpus and two_gpus[-1] == "cache"
    assert "mirrored_gpu" not in [s.name for s in train_step.select_settings(["default"], 1)]


def test_settings_change_one_thing_from_the_reference():
    settings = train_step.available_settings(num_gpus=0)
    assert settings["reference"].flags == ()
    for setting in settings.values():
        assert len({f.split("=")[0] for f in setting.flags} - {"--num_cpu_devices"}) <= 1


def test_unknown_or_unavailable_setting_is_a_usage_error():
    with pytest.raises(app.UsageError, match="mixed_float16"):
        train_step.select_settings(["mixed_float16"], num_gpus=0)
    with pytest.raises(app.UsageError, match="nonsense"):
        train_step.select_settings(["nonsense"], num_gpus=0)


def test_last_json_object_skips_the_readable_report():
    summary = {"images_per_sec": 123.4, "last_validation": {"val_auc": 0.9}}
    stdout = ("run finished\n{not json}\n{\n \"partial\": \n" + "step 10: loss {0.3}\n"
              + json.dumps(summary, indent=1) + "\n")
    assert train_step.last_json_object(stdout) == summary
    with pytest.raises(ValueError):
        train_step.last_json_object("no json here")


def test_window_rates_drop_the_first_window():
    # windows of 2 steps of batch 10: the first (tracing) lasts 5 s, the next two 1 s and 2 s
    ends = [4.0, 5.0, 5.5, 6.0, 7.0, 8.0]
    assert keras_fit_baseline.window_rates(ends, 2, 10, start_time=0.0) == [20.0, 10.0]


def test_keras_fit_baseline_prints_a_rate(converted):
    data_dir, _ = converted
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.keras_fit_baseline", f"--data_dir={data_dir}",
         "--global_batch_size=32", "--window_steps=2", "--timed_windows=2"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = train_step.last_json_object(result.stdout)
    assert summary["images_per_sec"] > 0
    assert len(summary["window_rates"]) == 2 and summary["steps"] == 6
