"""Every benchmark's --quick (benchmarks/quick.py) as a real subprocess: its whole default command
at tiny sizes, on data the current converter made, so a change of format or API that breaks a
default command fails here. Each must write its JSON and TensorBoard with every figure it
reports, finite and positive (zero allowed only for a difference), each figure in TensorBoard
in the run and chart benchmarks/charts.py declares for it. No timing comparisons: the machine
is shared."""

import glob
import json
import math
import os
import re
import subprocess
import sys

import benchmark_events
import numpy as np
import pytest

from idc_engine.data import conversion

# benchmarks/ is a folder of the repository, not part of the installed package
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import tensorboard_runs, train_step  # noqa: E402

CANCERNET_GRAPH = {"parameters": 1235133, "batchnorm_layers": 7}  # models/cancernet.py


def run_quick(name: str, tmp_path, *extra_flags: str) -> dict:
    """Runs `python -m benchmarks.<name> --quick`; returns its JSON report."""
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", f"--output_dir={out}",
         *extra_flags], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / f"{name}.json").read_text())
    assert report["benchmark"] == name and report["config"]["quick"] is True
    check_tensorboard(str(out / "tensorboard" / name), report)
    return report


def check_tensorboard(benchmark_dir: str, report: dict) -> None:
    """Read back: every figure once, at step 0, none undeclared (run `other`); each tag a
    chart of the layout; each setting run with its HParams."""
    runs = benchmark_events.setting_runs(benchmark_dir)
    assert tensorboard_runs.OTHER_RUN not in runs, runs[tensorboard_runs.OTHER_RUN]
    points = [point for scalars in runs.values() for series in scalars.values()
              for point in series]
    assert {step for step, _ in points} == {report["tensorboard"]["step"]} == {0}
    assert sorted(value for _, value in points) == sorted(
        float(np.float32(value)) for value in report["results"].values())
    (layout,) = benchmark_events.layouts(benchmark_dir)
    charts = [chart.multiline.tag[0] for chart in layout.category[0].chart]
    tags = {tag for scalars in runs.values() for tag in scalars}
    assert {tag: len([c for c in charts if re.match(c, tag)]) for tag in tags} == dict.fromkeys(
        tags, 1)
    assert all(any(re.match(chart, tag) for tag in tags) for chart in charts)
    for run in runs:
        assert benchmark_events.hparams(os.path.join(benchmark_dir, run)), run


def check_figures(results: dict, expected: list[str], differences: tuple[str, ...] = ()) -> None:
    """Every expected figure is there; every figure is finite and > 0 (>= 0 for differences)."""
    assert sorted(set(expected) - set(results)) == []
    for key, value in results.items():
        assert math.isfinite(value), key
        assert value > 0 or (key in differences and value == 0), (key, value)


def test_convert_quick_reports_every_rate_and_ratio_per_converted_patch(tmp_path):
    work = tmp_path / "work"
    report = run_quick("convert", tmp_path, f"--work_dir={work}")
    results, config = report["results"], report["config"]
    workers = config["num_workers"]
    rates = ["decode_single_process_patches_per_s", f"decode_{workers}_processes_patches_per_s",
             "plain_pil_decode_single_process_patches_per_s", "convert_patches_per_s",
             "convert_1_worker_patches_per_s", "convert_cold_input_patches_per_s",
             "plain_pil_decode_cold_input_patches_per_s"]
    ratios = ["convert_1_worker_vs_decode", "convert_vs_ideal_workers_x_decode",
              "convert_vs_ideal_median_of_paired_repeats", "convert_vs_workers_x_plain_pil",
              "parallel_decode_vs_ideal", "convert_vs_parallel_decode", "convert_cold_vs_warm_input"]
    check_figures(results, rates + ratios + ["num_workers"])
    for name in rates:
        assert len(report["details"][name]["all"]) == config["repeats"] == 1, name
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


def test_input_pipeline_default_flags_run_on_a_fresh_conversion(idc_tree, converted, tmp_path):
    """Default flags but --quick's sizes, on the shared quirky tree and its conversion (shards
    under shards-<id>/): the timed pipelines, the PNG shards, the baseline and the resident
    footprint's three fresh processes, the training run on the train split alone included."""
    root, _ = idc_tree
    data_dir, manifest = converted
    report = run_quick("input_pipeline", tmp_path, f"--data_dir={data_dir}", f"--png_dir={root}")
    pipelines = ["engine_img_per_s", "engine_cache_img_per_s", "device_resident_img_per_s",
                 "raw_read_sequential_img_per_s", "raw_read_parallel_img_per_s",
                 "raw_read_img_per_s", "engine_png_img_per_s", "baseline_img_per_s"]
    ratios = ["png_vs_raw_shards", "engine_vs_raw_read", "cache_vs_engine",
              "device_resident_vs_engine", "engine_vs_baseline"]
    footprint = [f"resident_{key}" for key in (
        "split_num_examples", "split_image_mb", "tensorflow_floor_peak_mb", "sampler_peak_mb",
        "sampler_peak_vs_split", "sampler_seconds_to_sampler", "sampler_seconds_to_first_batch",
        "train_peak_mb", "train_peak_vs_split", "train_seconds_to_first_step",
        "train_wall_seconds")]
    check_figures(report["results"], pipelines + ratios + footprint)
    train_examples = manifest["splits"]["train"]["num_examples"]
    assert report["config"]["num_examples"] == train_examples
    assert report["results"]["resident_split_num_examples"] == train_examples
    assert report["config"]["baseline_num_files"] == train_examples


def test_train_step_quick_runs_the_engine_and_fit_on_one_graph(tmp_path):
    """The reference, one engine setting and both fit baselines train (each its own process) and
    report a rate, every pair a ratio; each run's graph is read back: CancerNet's, fused where
    the setting fuses BatchNorm. The other default settings are the reference with other
    idc_engine.train flags (tested in tests/test_train.py), through this same code: `--quick`
    alone runs them all, here one (each is a TensorFlow start and a training)."""
    report = run_quick("train_step", tmp_path, "--settings=unfused")
    results, details = report["results"], report["details"]
    rates = ["engine_img_per_s", "keras_fit_img_per_s", "keras_fit_fused_img_per_s",
             "engine_unfused_img_per_s"]
    ratios = [key for key, _, _ in train_step.PAIRS]
    modes = ("stream", "cache", "device")
    pipelines = [f"pipeline_{mode}_img_per_s" for mode in modes] + [f"headroom_{mode}"
                                                                      for mode in modes]
    check_figures(results, rates + ratios + [f"{key}_of_medians" for key in ratios] + pipelines)
    for key in rates:
        fused = 0 if key in ("engine_unfused_img_per_s", "keras_fit_img_per_s") else 7
        assert details[key]["graph"] == {**CANCERNET_GRAPH, "fused_batchnorm_layers": fused}, key


def test_inference_quick_times_every_path_on_an_untrained_export(tmp_path):
    report = run_quick("inference", tmp_path)
    sizes = report["config"]["batch_sizes"]
    assert len(sizes) == 2
    paths = [f"{path}_b{size}_images_per_s" for size in sizes
             for path in ("saved_model", "keras_function", "keras_predict", "litert_float",
                          "int8", "int8_network")]
    check_figures(report["results"], paths + [
        "predict_files_png_b256_images_per_s", "png_decode_only_images_per_s",
        "max_abs_diff_saved_model_vs_keras", "max_abs_diff_saved_model_vs_int8"] + [
        f"{path}_b{size}" for size in sizes for path in (
            "saved_model_vs_keras_function", "int8_vs_saved_model", "litert_float_vs_saved_model")],
        differences=("max_abs_diff_saved_model_vs_keras", "max_abs_diff_saved_model_vs_int8"))
    assert report["config"]["model"].startswith("untrained CancerNet")


def test_tta_quick_times_every_path_on_an_untrained_export(tmp_path):
    report = run_quick("tta", tmp_path)
    check_figures(report["results"], [
        "none_images_per_s", "d4_one_call_images_per_s", "d4_8_calls_images_per_s",
        "cost_none_over_d4_one_call", "d4_one_call_over_8_calls"])
    assert report["config"]["model"].startswith("untrained CancerNet")


def test_stain_quick_times_the_ops_the_references_and_the_training_step(tmp_path):
    report = run_quick("stain", tmp_path)
    results, skipped = report["results"], report["config"]["skipped"]
    expected = ["step_none_img_per_s"]
    for method in ("reinhard", "macenko"):
        expected += [f"engine_{method}_{kind}_img_per_s" for kind in ("graph", "xla", "xla_2_streams")]
        expected += [f"torchstain_numpy_{method}_img_per_s", f"step_{method}_img_per_s",
                     f"engine_{method}_vs_fastest_reference",
                     f"engine_{method}_2_streams_vs_fastest_reference", f"step_{method}_vs_none"]
        # torchstain's TensorFlow normaliser: timed, or skipped with its reason in the JSON
        assert (f"torchstain_tf_{method}_img_per_s" in results
                or f"torchstain_tf_{method}" in skipped or "torchstain_tf" in skipped)
    check_figures(results, expected)


def test_slide_inference_quick_reports_every_phase_and_the_peak_memory(tmp_path):
    report = run_quick("slide_inference", tmp_path)
    check_figures(report["results"], [
        "engine_end_to_end_tiles_per_s", "read_alone_tiles_per_s", "model_alone_tiles_per_s",
        "engine_streaming_tiles_per_s", "plain_loop_tiles_per_s",
        "end_to_end_vs_slower_of_read_and_model", "end_to_end_vs_plain_loop",
        "shared_cores_ceiling_tiles_per_s", "shared_cores_ceiling_vs_slower_of_read_and_model",
        "end_to_end_vs_shared_cores_ceiling", "model_alone_vs_plain_loop",
        "peak_rss_mb_cli_slide", "peak_rss_mb_cli_quarter_slide",
        "engine_end_to_end_int8_tiles_per_s", "model_alone_int8_tiles_per_s",
        "end_to_end_int8_vs_plain_loop", "end_to_end_int8_vs_savedmodel",
        "model_alone_int8_vs_savedmodel"])
    assert report["config"]["tissue_tiles"] > 0


def test_cohort_quick_runs_the_cohort_the_large_slide_and_two_shards(tmp_path):
    """Every run of the default command (the cohort with and without overlap, the large
    slide, two shards whose outputs it checks against one process's) at tiny sizes."""
    report = run_quick("cohort", tmp_path)
    results, config, details = report["results"], report["config"], report["details"]
    fixed = {key: value for key, value in results.items() if "_fixed_seconds_" in key}
    runs = ("cohort", "cohort_no_overlap", "large_slide", "two_shards")
    check_figures({k: v for k, v in results.items() if k not in fixed}, [
        f"{run}_tiles_per_s" for run in runs] + [
        "cohort_vs_large_slide", "cohort_no_overlap_vs_large_slide", "overlap_vs_no_overlap",
        "two_shards_vs_one_process"])
    # beyond the tiles at the large slide's rate: negative when a slide runs faster than it
    assert sorted(fixed) == ["cohort_fixed_seconds_tiles_0_to_1000",
                             "cohort_no_overlap_fixed_seconds_tiles_0_to_1000"]
    assert all(math.isfinite(value) for value in fixed.values())
    assert config["slides_ok"] == config["num_slides"] and config["num_broken"] == 3
    assert config["two_shards_outputs"].startswith(
        f"the same as one process: {config['num_slides']} slides")
    # the large slide holds the cohort's tiles (tissue found by the engine on both: within 5%)
    per_slide = details["per_slide"]["cohort"]
    assert details["cohort_tiles_per_s"]["tiles"] == sum(row["tiles"] for row in per_slide)
    assert details["large_slide_tiles_per_s"]["tiles"] == pytest.approx(
        details["cohort_tiles_per_s"]["tiles"], rel=0.05)


def test_viewer_quick_reports_every_latency_of_the_served_tiles(tmp_path):
    report = run_quick("viewer", tmp_path)
    check_figures(report["results"], [
        f"{setting}_{stat}_ms" for setting in (
            "single_connection", "six_connections", "six_connections_viewports", "cached",
            "first_view_uncached", "first_view_cached", "deepzoom_alone")
        for stat in ("p50", "p95")] + [
        "single_connection_p95_vs_target", "six_connections_p95_vs_target",
        "six_connections_viewports_p95_vs_target", "cached_p95_vs_target",
        "single_connection_tiles_per_s", "six_connections_tiles_per_s",
        "six_connections_viewports_tiles_per_s"])
    assert report["config"]["first_view_tiles"] > 0 and report["config"]["viewports"] == 1
    assert report["details"]["single_connection_p50_ms"]["tiles"] == 12


def test_stain_shift_quick_fits_the_target_trains_and_evaluates(tmp_path):
    """One setting (macenko: the stain target's fit, a training and an evaluation); the others
    run the same code with other --stain_normalization/--augment flags (tests/test_stain.py)."""
    report = run_quick("stain_shift", tmp_path, f"--work_dir={tmp_path / 'work'}",
                       "--settings=macenko")
    check_figures(report["results"], [f"macenko_{split}_roc_auc" for split in ("test", "val")])
    assert all(value <= 1 for value in report["results"].values())


def test_all_runs_every_benchmark_asked_and_names_the_one_that_failed(tmp_path):
    """benchmarks.all --quick on two benchmarks into one folder, one of which cannot write its
    JSON (a folder stands where it goes): the other still runs and writes everything, the table
    names the failure, the exit code is 1."""
    out = tmp_path / "out"
    (out / "tta.json").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.all", "--quick", f"--output_dir={out}",
         "--benchmarks=tta,convert"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"^  tta +FAILED \(exit 1\) ", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^  convert +ok ", result.stdout, re.MULTILINE), result.stdout
    assert "IsADirectoryError" in (out / "logs" / "tta.log").read_text()
    report = json.loads((out / "convert.json").read_text())
    check_figures(report["results"], ["convert_patches_per_s", "convert_vs_parallel_decode"])
    check_tensorboard(str(out / "tensorboard" / "convert"), report)


def test_all_refuses_an_unknown_benchmark_and_parallel_measurements(tmp_path):
    for flags, message in ((["--benchmarks=convert,nope"], "--benchmarks: unknown nope"),
                           (["--jobs=2"], "--jobs=2: only --quick")):
        result = subprocess.run([sys.executable, "-m", "benchmarks.all", *flags,
                                 f"--output_dir={tmp_path}"], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2 and f"error: {message}" in result.stderr, result.stderr
        assert not os.path.exists(tmp_path / "convert.json")
def test_precision_quick_pairs_the_precisions_on_the_same_folds(tmp_path):
    """Both precisions cross-validated on the same folds and seed, their pooled out-of-fold
    ROC-AUCs, the paired difference with its interval, the rule's verdict and the step rates."""
    report = run_quick("precision", tmp_path, f"--work_dir={tmp_path / 'work'}")
    results = report["results"]
    # the folds are scored through their SavedModels: no int8 model was exported
    exports = glob.glob(str(tmp_path / "work" / "*_seed0" / "fold_*" / "model" / "export"))
    assert len(exports) == 6 and all(
        "saved_model" in os.listdir(e) and "model_int8.tflite" not in os.listdir(e)
        for e in exports)
    for precision in ("float32", "mixed_bfloat16"):
        assert 0 < results[f"pooled_auc_{precision}_seed0"] <= 1
        assert results[f"train_images_per_s_{precision}"] > 0
    difference = results["auc_difference_seed0"]
    assert difference == results["auc_difference_mean"] == pytest.approx(
        results["pooled_auc_mixed_bfloat16_seed0"] - results["pooled_auc_float32_seed0"])
    assert results["auc_difference_ci95_low"] <= results["auc_difference_ci95_high"]
    assert results["non_inferior"] == float(
        results["auc_difference_ci95_low"] > -report["config"]["margin"])
    assert results["speed_mixed_bfloat16_vs_float32"] > 0
