"""Shared fixtures: one synthetic Kaggle-like tree with every quirk, and its conversion.

Session-scoped so the whole suite generates and converts once; tests that modify data copy it.

What is reproducible where. TensorFlow's op determinism (--deterministic) gives the same
result for the same program on the same CPU with the same thread counts only: the split of a
reduction over threads, and oneDNN's kernels (chosen by the CPU's instruction sets), change the
rounding, and 60 steps of training amplify it. So the suite fixes the thread counts (below), and
then the shared trained model is bit-reproducible on one machine whatever its core count, `-n`
or `taskset`; across CPUs it is a different, equally valid model. Tests of a trained model
therefore assert what the code guarantees (agreement between two paths on the same weights, a
rule against its definition); the few quality bounds left hold over the spread measured by
tools/suite_spread.sh (seeds, thread counts, oneDNN variants; tests/quality_bounds.py).
"""

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

# Before TensorFlow starts anywhere: in this process (tf.config.threading, pytest_configure) and
# in every subprocess the tests start (the environment, which TensorFlow reads at start-up).
# Two threads whatever the cores (the same count on one core as on many): a worker whose partner
# is idle still uses both cores of a 2-core CI machine. IDC_TEST_THREADS and IDC_TEST_SEED are
# for tools/suite_spread.sh; the suite's values are 2 and 0.
SUITE_THREADS = int(os.environ.get("IDC_TEST_THREADS", "2"))
SUITE_SEED = int(os.environ.get("IDC_TEST_SEED", "0"))
os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(SUITE_THREADS)

from idc_engine.data import conversion, synthetic  # noqa: E402


def pytest_configure(config):
    """Fixes TensorFlow's thread counts in the process that runs tests (with pytest-xdist, each
    worker; its controller runs none)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(SUITE_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(SUITE_THREADS)

# TensorFlow's C++ start-up lines, to drop from a subprocess's stderr before reading it.
TF_STARTUP_LINES = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")

# Small but not trivial: ~16 patients, a few thousand patches, every real-world quirk.
TREE_OPTIONS = dict(num_patients=16, seed=7, min_patches=60, max_patches=220, quirks=True)


@pytest.fixture(scope="session")
def idc_tree(tmp_path_factory):
    """(root, summary) of a generated tree in the real Kaggle layout, quirks included."""
    root = str(tmp_path_factory.mktemp("idc_tree") / "IDC")
    summary = synthetic.write_dataset(root, **TREE_OPTIONS)
    return root, summary


@pytest.fixture(scope="session")
def converted(idc_tree, tmp_path_factory):
    """(output_dir, manifest) of the tree converted with default settings, 2 workers."""
    root, _ = idc_tree
    out = str(tmp_path_factory.mktemp("converted") / "tfrecords")
    manifest = conversion.convert_tree(root, out, num_workers=2, min_shards=3, progress=False)
    return out, manifest


@pytest.fixture(scope="session")
def eval_data(idc_tree, tmp_path_factory):
    """(data_dir, manifest): the shared tree with 9 train, 3 val and 4 test patients, spread
    over the range of IDC extent, so patient-level results have something to aggregate."""
    root, summary = idc_tree
    ranked = sorted(summary["patients"], key=lambda p: (
        summary["patients"][p]["num_positive"] / summary["patients"][p]["num_patches"], p))
    split = {p: "train" for p in ranked}
    split.update({p: "test" for p in ranked[1::4]})
    split.update({p: "val" for p in ranked[3::4][:3]})
    base = tmp_path_factory.mktemp("eval_data")
    split_file = base / "split.json"
    split_file.write_text(json.dumps(split))
    out = str(base / "tfrecords")
    manifest = conversion.convert_tree(root, out, split_file=str(split_file), num_workers=2,
                                       min_shards=2, progress=False)
    return out, manifest


# Every flag at its default but these: the run's length; one validation, at the end (the best
# of several noisy validations would pick a different step on another machine); --precision
# pinned, so that a later change of the CPU default leaves the fixture as it is; --deterministic
# (reproducible on one machine, see the module docstring). Shared by the training, evaluation,
# prediction, explanation and slide tests; tests that write into a run work on a copy.
TRAINED_FLAGS = ("--train_steps=60", "--global_batch_size=64", "--validation_every_steps=60",
                 "--steps_per_loop=10", "--precision=float32", "--deterministic",
                 f"--seed={SUITE_SEED}")


@pytest.fixture(scope="session")
def trained_model_dir(eval_data, tmp_path_factory):
    """model_dir of one short default-flag CancerNet run on `eval_data`, exported, its summary in
    model_dir/summary.json; trained once for all the workers of `pytest -n` (their `eval_data`
    are byte-identical). A subprocess: --deterministic switches TensorFlow's op determinism on
    for the whole process."""
    data_dir, _ = eval_data

    def train(model_dir):
        result = subprocess.run(
            [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
             f"--model_dir={model_dir}", *TRAINED_FLAGS], capture_output=True, text=True,
            timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        (model_dir / "summary.json").write_text(result.stdout[result.stdout.index("\n{") + 1:])

    return str(_once_for_all_workers(tmp_path_factory, "trained_model", train) / "run")


def _once_for_all_workers(tmp_path_factory, name: str, build) -> pathlib.Path:
    """A folder that build(folder / "run") fills once per test run: under pytest-xdist the
    workers share it (the first builds it while the others wait on a lock). A failed build is
    recorded, and every later request fails at once with its message."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's base folder, above each worker's own
    folder, failed = root / name, root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():  # another worker's build failed: fail at once, do not retrain
            pytest.fail(f"the shared fixture {name} failed to build in another worker:\n"
                        f"{failed.read_text()}", pytrace=False)
        if not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder / "run")
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}"[-5000:])
                raise
            (folder / "complete").touch()
    return folder


def read_records(path: str) -> list[dict]:
    """Every record of a shard as a dict of python values (image as uint8 [50, 50, 3])."""
    import numpy as np
    import tensorflow as tf

    out = []
    for serialized in tf.data.TFRecordDataset(path):
        feature = tf.train.Example.FromString(serialized.numpy()).features.feature
        record = {name: (feature[name].bytes_list.value[0] if kind == "bytes"
                         else feature[name].int64_list.value[0])
                  for name, kind in (("image", "bytes"), ("patient_id", "bytes"), ("label", "int"),
                                     ("x", "int"), ("y", "int"), ("height", "int"),
                                     ("width", "int"))}
        record["patient_id"] = record["patient_id"].decode()
        if record["image"][:4] == b"\x89PNG":
            record["image"] = tf.io.decode_png(record["image"], channels=3).numpy()
        else:
            record["image"] = np.frombuffer(record["image"], np.uint8).reshape(50, 50, 3)
        out.append(record)
    return out


def shard_paths(output_dir: str, manifest: dict, split: str | None = None) -> list[str]:
    splits = [split] if split else list(manifest["splits"])
    return [os.path.join(output_dir, f) for s in splits for f in manifest["splits"][s]["files"]]
