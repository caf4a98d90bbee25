"""The "auto" choices of precision and XLA, given the device facts as parameters (no GPU needed):
on CPU what was measured here, on GPUs the project's aim, each GPU reason saying it was not
measured and naming the command that measures it."""

import pytest

from idc_engine.training import devices


@pytest.mark.parametrize("capabilities, policy", [
    ([(6, 1)], "float32"),             # Pascal: no tensor cores
    ([(7, 0)], "mixed_float16"),       # Volta
    ([(7, 5)], "mixed_float16"),       # Turing
    ([(8, 0)], "mixed_bfloat16"),      # Ampere
    ([(9, 0)], "mixed_bfloat16"),      # Hopper
    ([(8, 6), (7, 5)], "mixed_float16"),  # the lowest GPU decides
    ([(8, 0), None], "float32"),       # a GPU of unknown capability: nothing is assumed
])
def test_auto_precision_on_gpus_follows_compute_capability_and_says_not_measured(capabilities,
                                                                                 policy):
    chosen, reason = devices.resolve_precision("auto", gpu_capabilities=capabilities)
    assert chosen == policy
    assert "not measured" in reason and devices.MEASURE_ON_GPU in reason


@pytest.mark.parametrize("cpu_bfloat16, policy", [
    (["avx512_bf16"], "mixed_bfloat16"), (["amx_bf16"], "mixed_bfloat16"), ([], "float32")])
def test_auto_precision_on_cpu_follows_its_bfloat16_instructions_as_measured(cpu_bfloat16,
                                                                            policy):
    chosen, reason = devices.resolve_precision("auto", gpu_capabilities=[],
                                               cpu_bfloat16=cpu_bfloat16)
    assert chosen == policy
    assert "not measured" not in reason and "CPU" in reason
    assert "docs/benchmarks/precision_cpu.json" in reason  # the accuracy evidence, either way
    assert all(flag in reason for flag in cpu_bfloat16)


def test_the_cpu_evidence_is_the_committed_measurement():
    """The figures the reason quotes are those of the committed result, and it passed its rule."""
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks",
                        "precision_cpu.json")
    with open(path) as f:
        results = json.load(f)["results"]
    assert results["non_inferior"] == 1.0
    quoted = (f"{results['auc_difference_mean']:+.4f} [95% {results['auc_difference_ci95_low']:+.4f}, "
              f"{results['auc_difference_ci95_high']:+.4f}]")
    assert quoted in devices.CPU_BFLOAT16_EVIDENCE


def test_this_cpu_s_bfloat16_instructions_are_read_from_cpuinfo():
    flags = devices.cpu_bfloat16_flags()
    assert set(flags) <= set(devices.BFLOAT16_CPU_FLAGS)
    assert devices.resolve_precision("auto", gpu_capabilities=[]) == devices.resolve_precision(
        "auto", gpu_capabilities=[], cpu_bfloat16=flags)


@pytest.mark.parametrize("model", ["cancernet", "mobilenet_v2", "plain_cnn", "resnet50"])
def test_auto_xla_is_on_for_every_model_on_gpus_and_says_not_measured(model):
    use_xla, reason = devices.resolve_xla("auto", model, num_gpus=1)
    assert use_xla is True
    assert "not measured" in reason and devices.MEASURE_ON_GPU in reason and model in reason


def test_auto_xla_is_off_on_cpu_as_measured():
    use_xla, reason = devices.resolve_xla("auto", "cancernet", num_gpus=0)
    assert use_xla is False
    assert "measured" in reason and "not measured" not in reason and "CPU" in reason


@pytest.mark.parametrize("gpus", [0, 2])
def test_explicit_flags_win_over_the_devices(gpus):
    assert devices.resolve_xla("off", "plain_cnn", num_gpus=gpus) == (False, "set by --xla")
    assert devices.resolve_xla("on", "cancernet", num_gpus=gpus) == (True, "set by --xla")
    capabilities = [(8, 0)] * gpus
    assert devices.resolve_precision("float32", capabilities) == ("float32", "set by --precision")
    assert devices.resolve_precision("mixed_bfloat16", capabilities)[0] == "mixed_bfloat16"


def test_without_device_facts_this_machine_is_asked():
    # This machine's facts, whatever they are, give the same answer as passing them.
    gpus = devices.gpu_compute_capabilities()
    assert devices.resolve_precision("auto") == devices.resolve_precision("auto", gpus)
    assert devices.resolve_xla("auto", "cancernet") == devices.resolve_xla(
        "auto", "cancernet", num_gpus=len(gpus))


def test_the_measuring_command_names_real_benchmark_settings():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import train_step

    named = devices.MEASURE_ON_GPU.split("--settings=")[1].split()[0].split(",")
    available = train_step.available_settings(num_gpus=1)
    assert named and all(name in available for name in named), (named, list(available))
