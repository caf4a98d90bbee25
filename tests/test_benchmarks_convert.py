"""benchmarks.convert end to end on a tiny generated tree: every figure is reported, in JSON.
No timing assertions: the machine is shared."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_convert_benchmark_reports_every_rate_and_ratio(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.convert", "--num_patients=6", "--patches_per_patient=40",
         "--repeats=1", f"--work_dir={tmp_path / 'work'}", f"--output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "convert.json").read_text())
    results = report["results"]
    workers = report["config"]["num_workers"]
    rates = ["decode_single_process_patches_per_s", f"decode_{workers}_processes_patches_per_s",
             "plain_pil_decode_single_process_patches_per_s", "convert_patches_per_s",
             "convert_1_worker_patches_per_s", "convert_cold_input_patches_per_s",
             "plain_pil_decode_cold_input_patches_per_s"]
    for name in rates:
        assert results[name] > 0, name
    assert results["convert_vs_ideal_workers_x_decode"] == (
        results["convert_patches_per_s"] / (workers * results["decode_single_process_patches_per_s"]))
    # one repetition: its pair is the ratio of the (one-value) medians
    paired = report["details"]["convert_vs_ideal_median_of_paired_repeats"]["all"]
    assert paired == [results["convert_vs_ideal_median_of_paired_repeats"]] == [
        results["convert_vs_ideal_workers_x_decode"]]
    assert results["convert_vs_parallel_decode"] == (
        results["convert_patches_per_s"] / results[f"decode_{workers}_processes_patches_per_s"])
    assert results["convert_cold_vs_warm_input"] == (
        results["convert_cold_input_patches_per_s"] / results["convert_patches_per_s"])
    assert isinstance(report["config"]["input_evictable"], bool)
    assert report["config"]["num_patches"] > 100
    # the conversions went into a scratch folder that is removed after each run
    assert not os.path.exists(tmp_path / "work" / "tfrecords")
