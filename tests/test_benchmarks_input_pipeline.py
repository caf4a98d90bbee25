"""benchmarks.input_pipeline's parts on real data: the baseline's files on a quirky converted tree,
the resident split's peak host memory measured in a fresh process, the log-time parsing. No
throughput assertions: the machine is shared."""

import os
import sys

import numpy as np
import pytest
import quality_bounds
import tensorflow as tf
from absl import app

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records

# benchmarks/ is a folder of the repository, not part of the installed package
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import input_pipeline  # noqa: E402


def _unreadable_in_splits(manifest) -> list[str]:
    """Skipped unreadable files of patients that are in a split (what broke the baseline)."""
    patients = {p for info in manifest["splits"].values() for p in info["patients"]}
    return [s["path"] for s in manifest["skipped"] if s["reason"].startswith("not a readable PNG")
            and s["path"].split("/")[-3] in patients]


def test_baseline_files_are_exactly_the_patches_the_converter_wrote(idc_tree, converted):
    root, _ = idc_tree
    _, manifest = converted
    unreadable = _unreadable_in_splits(manifest)
    assert unreadable, "the quirky tree must put an unreadable PNG in a split, or this tests nothing"
    for split, info in manifest["splits"].items():
        files = input_pipeline.baseline_files(root, manifest, split)
        assert len(files) == info["num_examples"], split
        assert sum(label for _, label in files) == info["num_positive"], split
        assert not {os.path.relpath(path, root) for path, _ in files} & set(unreadable)
        for path, _ in files:  # every one decodes, as the baseline will need
            with open(path, "rb") as f:
                tf.io.decode_png(f.read(), channels=3)


def test_baseline_dataset_drains_a_split_with_an_unreadable_png(idc_tree, converted, tmp_path):
    root, _ = idc_tree
    _, manifest = converted
    split = next(s for s, info in manifest["splits"].items()
                 if any(path.split("/")[-3] in info["patients"]
                        for path in _unreadable_in_splits(manifest)))
    count = input_pipeline.class_folder_tree(
        input_pipeline.baseline_files(root, manifest, split), str(tmp_path / "classes"))
    seen = 0
    for images, labels in input_pipeline.baseline_dataset(str(tmp_path / "classes"), 64):
        assert images.dtype == tf.float32 and images.shape[1:] == (50, 50, 3)
        seen += int(labels.shape[0])
    assert seen == count == manifest["splits"][split]["num_examples"]


def test_baseline_refuses_a_png_tree_that_is_not_the_converted_one(idc_tree, converted):
    root, _ = idc_tree
    _, manifest = converted
    other = {**manifest, "splits": {"train": {**manifest["splits"]["train"],
                                              "num_examples": 1}}}
    with pytest.raises(app.UsageError, match="pass the tree it was converted from"):
        input_pipeline.baseline_files(root, other, "train")


def test_run_measured_reports_the_child_s_own_peak_memory():
    small = input_pipeline.run_measured([sys.executable, "-c", "pass"])
    large = input_pipeline.run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20)"])
    assert small["returncode"] == large["returncode"] == 0
    assert small["peak_rss_mb"] < 100
    assert 300 <= large["peak_rss_mb"] < 300 + small["peak_rss_mb"] + 10


def test_first_step_time_reads_the_engine_s_log_line():
    started = 1_795_000_000.0  # a fixed instant; the log carries local month, day and time
    import datetime

    at = datetime.datetime.fromtimestamp(started + 12.5)
    line = (f"I{at:%m%d %H:%M:%S}.{at.microsecond:06d} 1234 loop.py:330] step 1/1 (epoch "
            "0.00): loss 0.6931, accuracy 0.5000, lr 0.001")
    log = "I0101 00:00:00.000000 1 loop.py:1] strategy: x\n" + line + "\n"
    assert input_pipeline.first_step_time(log, started) == pytest.approx(12.5, abs=1e-3)
    assert input_pipeline.first_step_time("no step here", started) is None


def _write_train_split(root: str, num_records: int) -> int:
    """A converted train split of random patches (2 shards); returns the image bytes."""
    os.makedirs(root)
    rng = np.random.default_rng(0)
    shards = []
    for index, count in enumerate((num_records // 2, num_records - num_records // 2)):
        name = f"train-{index:05d}-of-00002.tfrecord"
        with open(os.path.join(root, name), "wb") as f:
            for k in range(count):
                image = rng.integers(0, 256, records.IMAGE_SHAPE, dtype=np.uint8).tobytes()
                f.write(records.frame_record(records.encode_example(
                    image, k % 2, f"{index}", 50 * k + 1, 1, 50, 50)))
        shards.append({"file": name, "num_examples": count, "num_positive": count // 2,
                       "patients": [f"{index}"],
                       "num_bytes": os.path.getsize(os.path.join(root, name))})
    manifest_lib.write_manifest(root, {
        "schema_version": manifest_lib.SCHEMA_VERSION, "image_shape": [50, 50, 3],
        "image_encoding": "raw",
        "splits": {"train": {"files": [s["file"] for s in shards], "num_examples": num_records,
                             "num_positive": sum(s["num_positive"] for s in shards),
                             "patients": ["0", "1"], "shards": shards}},
        "train_channel_mean": [128.0] * 3, "train_channel_std": [64.0] * 3})
    return num_records * 7500


def test_resident_sampler_holds_the_split_about_once_in_host_memory(tmp_path):
    """Reading a 172 MB split, placing it and drawing a batch holds one copy of the split above
    TensorFlow's own floor, plus at most 170 MB of transients (the XLA compile of the index
    function, chunks in flight: 72-87 MB over the 20 settings of tools/suite_spread.sh, the
    bound 5.6x that range above the worst). Each further copy of the split would be 172 MB more
    (reading into parts, packing and a variable's copy-on-read gather made four)."""
    split_bytes = _write_train_split(str(tmp_path / "data"), 24_000)
    python = sys.executable
    floor = input_pipeline.run_measured(
        [python, "-c", "import tensorflow as tf; (tf.constant(1) + 1).numpy()"])
    sampler = input_pipeline.run_measured(
        [python, "-c", input_pipeline.RESIDENT_CHILD, str(tmp_path / "data"), "train", "64"])
    assert sampler["returncode"] == 0, sampler["stderr"][-2000:]
    above_floor = (sampler["peak_rss_mb"] - floor["peak_rss_mb"]) * 2**20
    assert split_bytes <= above_floor
    quality_bounds.at_most("resident: MB above the split and TensorFlow's floor",
                           (above_floor - split_bytes) / 2**20, 170)
