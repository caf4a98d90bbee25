"""benchmarks.convert end to end on a tiny generated tree: every figure is reported, in JSON,
per patch the converter really writes. No timing assertions: the machine is shared."""

import json
import math
import os
import subprocess
import sys

from idc_engine.data import conversion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_convert_benchmark_reports_every_rate_and_ratio_per_converted_patch(tmp_path):
    out, work = tmp_path / "report", tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.convert", "--num_patients=6", "--patches_per_patient=40",
         "--repeats=1", f"--work_dir={work}", f"--output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "convert.json").read_text())
    results, config = report["results"], report["config"]
    workers = config["num_workers"]
    rates = ["decode_single_process_patches_per_s", f"decode_{workers}_processes_patches_per_s",
             "plain_pil_decode_single_process_patches_per_s", "convert_patches_per_s",
             "convert_1_worker_patches_per_s", "convert_cold_input_patches_per_s",
             "plain_pil_decode_cold_input_patches_per_s"]
    for name in rates:
        assert results[name] > 0, name
        assert len(report["details"][name]["all"]) == 1, name  # one timed value per repetition
    ratios = ["convert_1_worker_vs_decode", "convert_vs_ideal_workers_x_decode",
              "convert_vs_ideal_median_of_paired_repeats", "convert_vs_workers_x_plain_pil",
              "parallel_decode_vs_ideal", "convert_vs_parallel_decode", "convert_cold_vs_warm_input"]
    for name in ratios:  # the figures the README quotes
        assert math.isfinite(results[name]) and results[name] > 0, name
    assert isinstance(config["input_evictable"], bool)

    # Every rate divides by num_patches: it must be what the tree holds and what a conversion of
    # it writes. The generated tree (no quirks) is left in --work_dir; count it independently.
    tree = work / "tree"
    png_files = [name for _, _, names in os.walk(tree) for name in names if name.endswith(".png")]
    assert config["num_png_files"] == len(png_files) > 100
    assert config["num_patches"] == len(png_files)
    manifest = conversion.convert_tree(str(tree), str(tmp_path / "check"), num_workers=1,
                                       progress=False)
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == config["num_patches"]
    # the benchmark's own conversions went into a scratch folder that is removed after each run
    assert not os.path.exists(work / "tfrecords")
