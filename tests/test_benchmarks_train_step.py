"""benchmarks.train_step's plumbing: settings, parsing the runs' output, pairing ratios. The whole
command, fit and the graphs read back from every run: tests/test_benchmarks_quick.py. No timing
assertions: the machine is shared."""

import json
import os
import sys

import pytest
from absl import app

# benchmarks/ is a folder of the repository, not part of the installed package
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import keras_fit_baseline, train_step  # noqa: E402


def test_default_settings_follow_the_devices():
    cpu = [s.name for s in train_step.select_settings(["default"], num_gpus=0)]
    assert cpu == ["reference", "unfused", "pathology", "as_trained", "mirrored_cpu", "xla",
                   "mixed_bfloat16", "keras_fit", "keras_fit_fused"]
    two_gpus = [s.name for s in train_step.select_settings(["default", "cache"], num_gpus=2)]
    assert two_gpus[0] == "reference" and "mixed_float16" in two_gpus
    assert "xla_mixed_bfloat16" in two_gpus and "mirrored_gpu" in two_gpus
    assert two_gpus[-3:] == ["cache", "keras_fit", "keras_fit_fused"]
    assert "mirrored_gpu" not in [s.name for s in train_step.select_settings(["default"], 1)]


def test_fit_brings_the_engine_run_on_its_graph_and_runs_beside_it():
    # fit trains Keras' BatchNorm: the engine's unfused setting is its like-for-like partner
    names = [s.name for s in train_step.select_settings(["pathology"], num_gpus=0)]
    assert "unfused" in names and "keras_fit" in names and "keras_fit_fused" in names
    no_fit = [s.name for s in train_step.select_settings(["pathology"], 0, keras_fit=False)]
    assert no_fit == ["reference", "pathology"]
    order = train_step.round_order(train_step.select_settings(["xla"], num_gpus=0))
    for _, numerator, denominator in train_step.PAIRS:
        assert abs(order.index(numerator) - order.index(denominator)) == 1


def test_settings_change_one_thing_from_the_reference():
    settings = train_step.available_settings(num_gpus=1)
    assert settings["reference"].flags == ()
    for setting in settings.values():
        changed = {f.split("=")[0] for f in setting.flags} - {"--num_cpu_devices"}
        if setting.name.startswith("xla_mixed_"):
            assert changed == {"--xla", "--precision"}
        elif setting.name != "as_trained":
            assert len(changed) <= 1, setting


def test_as_trained_is_what_idc_engine_train_runs_by_default():
    from idc_engine.training.config import TrainConfig

    defaults = TrainConfig()
    for flag in train_step.AS_TRAINED_FLAGS:
        name, value = flag.removeprefix("--").split("=")
        assert str(getattr(defaults, name)) == value, flag
    # every flag the reference and the benchmark pin, as_trained gives back to the defaults,
    # except what only keeps the timed loops clean and those already at their default
    pinned = {f.removeprefix("--").split("=")[0]
              for f in train_step.REFERENCE_FLAGS + train_step.FIXED_FLAGS}
    restored = {f.removeprefix("--").split("=")[0] for f in train_step.AS_TRAINED_FLAGS}
    kept = {"validation_every_steps", "checkpoint_every_steps", "export", "num_cpu_devices",
            "fused_batchnorm", "optimizer", "learning_rate"}
    assert pinned - kept == restored
    assert defaults.fused_batchnorm and defaults.optimizer == "adam"
    assert defaults.learning_rate == 0.001 and defaults.num_cpu_devices == 1


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


def test_a_ratio_between_different_graphs_is_not_reported():
    def run(rate, fused):
        return {"images_per_sec": rate, "graph": {"parameters": 10, "batchnorm_layers": 2,
                                                  "fused_batchnorm_layers": fused}}

    runs = {"unfused": [run(100.0, 0), run(90.0, 0)], "keras_fit": [run(50.0, 0), run(60.0, 2)]}
    assert train_step.paired_ratio(runs, "unfused", "keras_fit") == [2.0, 1.5]
    assert "graph_mismatch" in train_step.same_graph(runs, "unfused", "keras_fit")
    runs["keras_fit"][1] = run(60.0, 0)
    assert train_step.same_graph(runs, "unfused", "keras_fit") is None


def test_engine_loop_rates_are_read_from_its_progress_lines():
    log = ("I1201 21:31:42.4 1 loop.py:330] step 2/6 (epoch 0.11): loss 0.7, accuracy 0.5, lr "
           "0.001\n"
           "I1201 21:31:44.4 1 loop.py:330] step 4/6 (epoch 0.22): loss 0.6, accuracy 0.6, lr "
           "0.001, 1,234 img/s\n"
           "I1201 21:31:46.4 1 loop.py:330] step 6/6 (epoch 0.33): loss 0.5, accuracy 0.7, lr "
           "0.001, 987 img/s\n")
    assert train_step.engine_loop_rates(log) == [1234.0, 987.0]
