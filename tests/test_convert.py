"""The converter on a generated Kaggle-like tree: counts, quirks, pixels, splits, safety."""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_flags import check_every_flag_is_documented
from conftest import read_records, shard_paths
from PIL import Image

from idc_engine import convert
from idc_engine.data import (
    conversion,
    kaggle_tree,
    patch_png,
    shard_writer,
    splits,
    staging,
    synthetic,
    verify,
)
from idc_engine.data import manifest as manifest_lib
from idc_engine.data.manifest import MANIFEST_NAME, MANIFEST_TEMPORARY_NAME, load_manifest
from idc_engine.input import shards


def _all_records(output_dir, manifest):
    return {path: read_records(path) for path in shard_paths(output_dir, manifest)}


def _top_level_patches(root):
    """(patient, x, y) -> relative path of every well-formed PNG outside the duplicate tree."""
    found = {}
    for dirpath, _, names in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.startswith("IDC_regular_ps50_idx5") or "__MACOSX" in rel_dir:
            continue
        for name in names:
            parsed = kaggle_tree.parse_patch_name(name)
            if parsed:
                found[(parsed.patient, parsed.x, parsed.y)] = os.path.join(rel_dir, name)
    return found


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "idc_engine.convert", *args],
                          capture_output=True, text=True, timeout=300, **kwargs)


def _shard_dir(manifest) -> str:
    """The one folder that holds a conversion's shards ("" for shards at the top level)."""
    folders = {os.path.dirname(f) for info in manifest["splits"].values() for f in info["files"]}
    assert len(folders) == 1, folders
    return folders.pop()


def _by_file_name(split_entries) -> dict:
    """A manifest's "splits" with each shard named by its file name alone, without the folder
    that differs between conversions."""
    entries = json.loads(json.dumps(split_entries))
    for info in entries.values():
        info["files"] = [os.path.basename(f) for f in info["files"]]
        for shard in info["shards"]:
            shard["file"] = os.path.basename(shard["file"])
    return entries


# --- counting and quirks -------------------------------------------------------------------

def test_every_patch_is_counted_once_despite_the_duplicate_tree(idc_tree, converted):
    root, summary = idc_tree
    out, manifest = converted
    assert summary["duplicate_root"] and os.path.isdir(os.path.join(root, summary["duplicate_root"]))
    lost = set(summary["truncated"]) | set(summary["mislabelled"])
    expected = {key for key, rel in _top_level_patches(root).items() if rel not in lost}
    keys = [(r["patient_id"], r["x"], r["y"])
            for records in _all_records(out, manifest).values() for r in records]
    assert len(keys) == len(set(keys)), "a patch was written twice"
    assert set(keys) == expected
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == len(expected)
    assert manifest["num_duplicates"] >= len(expected)  # the whole tree is there twice
    assert manifest["input"]["num_png_files"] >= 2 * len(expected)


def test_each_quirk_is_handled_and_reported(idc_tree, converted):
    root, summary = idc_tree
    out, manifest = converted
    skipped = collections.defaultdict(list)
    for s in manifest["skipped"]:
        skipped[s["path"].replace(os.sep, "/")].append(s["reason"])
    dup = summary["duplicate_root"]
    for rel in summary["truncated"]:  # lost in both copies: skipped, with the decoder's reason
        assert any("not a readable PNG" in r for r in skipped[rel]), rel
        assert any("not a readable PNG" in r for r in skipped[f"{dup}/{rel}"]), rel
    for rel in summary["mislabelled"]:
        assert any("disagrees" in r for r in skipped[rel]), rel
    for rel in summary["unparseable"]:
        assert any("does not parse" in r for r in skipped[rel]), rel
    assert summary["litter"] and manifest["ignored_files"]["litter"] >= 1
    assert not any(os.path.basename(p).startswith("._") or p.endswith(".DS_Store")
                   for p in skipped), "litter must be ignored, not reported as skipped"
    padded = {p["path"].replace(os.sep, "/"): (p["height"], p["width"]) for p in manifest["padded"]}
    assert padded == {u["path"]: (u["height"], u["width"]) for u in summary["undersized"]}
    assert manifest["num_padded"] == len(summary["undersized"]) > 0
    assert manifest["num_lost_patches"] == len(summary["truncated"]) > 0


def test_undersized_patches_are_padded_white_and_keep_their_size(idc_tree, converted):
    root, summary = idc_tree
    out, manifest = converted
    records = {(r["patient_id"], r["x"], r["y"]): r
               for rs in _all_records(out, manifest).values() for r in rs}
    for u in summary["undersized"]:
        parsed = kaggle_tree.parse_patch_name(os.path.basename(u["path"]))
        record = records[(parsed.patient, parsed.x, parsed.y)]
        h, w = u["height"], u["width"]
        assert (record["height"], record["width"]) == (h, w)
        source = np.asarray(Image.open(os.path.join(root, u["path"])).convert("RGB"))
        np.testing.assert_array_equal(record["image"][:h, :w], source)
        assert (record["image"][h:] == patch_png.PAD_VALUE).all()
        assert (record["image"][:, w:] == patch_png.PAD_VALUE).all()


def test_pixel_exact_round_trip_of_every_record(idc_tree, converted):
    root, _ = idc_tree
    out, manifest = converted
    sources = _top_level_patches(root)
    count = 0
    for records in _all_records(out, manifest).values():
        for r in records:
            rel = sources[(r["patient_id"], r["x"], r["y"])]
            source = np.asarray(Image.open(os.path.join(root, rel)).convert("RGB"))
            h, w = source.shape[:2]
            np.testing.assert_array_equal(r["image"][:h, :w], source, err_msg=rel)
            assert r["label"] == int(rel.split(os.sep)[-2])
            count += 1
    assert count == sum(s["num_examples"] for s in manifest["splits"].values())


def test_png_encoding_holds_the_same_pixels(idc_tree, converted, tmp_path):
    root, _ = idc_tree
    out, manifest = converted
    png_out = str(tmp_path / "png")
    png_manifest = conversion.convert_tree(root, png_out, image_encoding="png", num_workers=1,
                                           min_shards=3, progress=False)
    assert png_manifest["image_encoding"] == "png"
    raw = _all_records(out, manifest)
    png = _all_records(png_out, png_manifest)
    assert [os.path.basename(p) for p in png] == [os.path.basename(p) for p in raw]
    for (_, raw_records), (_, png_records) in zip(raw.items(), png.items()):
        for a, b in zip(raw_records, png_records, strict=True):  # same seed: same order
            np.testing.assert_array_equal(a["image"], b["image"])
            assert (a["patient_id"], a["x"], a["y"], a["height"]) == (
                b["patient_id"], b["x"], b["y"], b["height"])
    assert sum(os.path.getsize(p) for p in png) < sum(os.path.getsize(p) for p in raw)


# --- shards and manifest -------------------------------------------------------------------

def test_patients_are_disjoint_across_splits_and_whole_in_one_shard(converted):
    out, manifest = converted
    split_of, shard_of = {}, {}
    for split, info in manifest["splits"].items():
        for path in shard_paths(out, manifest, split):
            for r in read_records(path):
                assert split_of.setdefault(r["patient_id"], split) == split
                assert shard_of.setdefault(r["patient_id"], path) == path
        assert sorted({p for p, s in split_of.items() if s == split}) == info["patients"]
    assert set(manifest["splits"]) == {"train", "val", "test"}


def test_records_are_shuffled_within_a_shard(converted):
    out, manifest = converted
    mixed = 0
    for path in shard_paths(out, manifest, "train"):
        records = read_records(path)
        keys = [(r["patient_id"], r["y"], r["x"]) for r in records]
        assert keys != sorted(keys)
        if len({r["patient_id"] for r in records}) > 1:
            first_half = {r["patient_id"] for r in records[: len(records) // 4]}
            mixed += len(first_half) > 1
    assert mixed > 0, "patients of a multi-patient shard should be interleaved"


def test_manifest_counts_and_train_channel_statistics(converted):
    out, manifest = converted
    assert load_manifest(out) == {k: v for k, v in manifest.items() if k != "conversion"}
    pixels = []
    for split, info in manifest["splits"].items():
        records = [r for p in shard_paths(out, manifest, split) for r in read_records(p)]
        assert info["num_examples"] == len(records)
        assert info["num_positive"] == sum(r["label"] for r in records)
        if split == "train":
            pixels = np.concatenate([r["image"][:r["height"], :r["width"]].reshape(-1, 3)
                                     for r in records]).astype(np.float64)
    np.testing.assert_allclose(manifest["train_channel_mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(manifest["train_channel_std"], pixels.std(0), atol=1e-3)
    for key in ("schema_version", "image_shape", "skipped", "num_padded", "split_settings",
                "input"):
        assert key in manifest
    assert manifest["input"]["fingerprint"].startswith("sha256:")


def test_output_is_deterministic_and_independent_of_worker_count(idc_tree, converted, tmp_path):
    """Also from input files not in memory, where the worker reads ahead."""
    root, _ = idc_tree
    out, manifest = converted
    shard_writer.drop_from_page_cache(
        os.path.join(folder, name) for folder, _, files in os.walk(root) for name in files)
    again = conversion.convert_tree(root, str(tmp_path / "again"), num_workers=1, min_shards=3,
                                    progress=False)
    for path, twin in zip(shard_paths(out, manifest), shard_paths(tmp_path / "again", again),
                          strict=True):
        assert os.path.basename(path) == os.path.basename(twin)
        with open(path, "rb") as a, open(twin, "rb") as b:
            assert a.read() == b.read(), os.path.basename(path)
    assert _by_file_name(again["splits"]) == _by_file_name(manifest["splits"])


# --- split modes ---------------------------------------------------------------------------

def test_janowczyk2016_split_follows_the_published_lists(tmp_path):
    published = splits.published_split("janowczyk2016")
    chosen = {s: [p for p, v in sorted(published.items()) if v == s][:2]
              for s in ("train", "val", "test")}
    outsiders = ["99990", "99991"]
    ids = [p for ps in chosen.values() for p in ps] + outsiders
    root = str(tmp_path / "tree")
    synthetic.write_dataset(root, patient_ids=ids, seed=1, min_patches=20, max_patches=40)
    manifest = conversion.convert_tree(root, str(tmp_path / "out"), split="janowczyk2016",
                                       num_workers=1, progress=False)
    for split, patients in chosen.items():
        assert manifest["splits"][split]["patients"] == sorted(patients)
    assert manifest["excluded_patients"] == outsiders
    assert len(manifest["missing_patients"]) == 162 - 6
    assert manifest["split_settings"]["mode"] == "janowczyk2016"


def test_split_file_assigns_patients_and_leaves_out_the_rest(idc_tree, tmp_path):
    root, summary = idc_tree
    patients = sorted(summary["patients"])
    mapping = {p: ("train", "val", "test")[i % 3] for i, p in enumerate(patients[1:])}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(mapping))
    manifest = conversion.convert_tree(root, str(tmp_path / "out"), split_file=str(split_file),
                                       num_workers=1, progress=False)
    for split, info in manifest["splits"].items():
        assert info["patients"] == sorted(p for p, s in mapping.items() if s == split)
    assert manifest["excluded_patients"] == [patients[0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_is_disjoint_and_seeded(idc_tree, tmp_path, seed):
    root, _ = idc_tree
    manifests = [conversion.convert_tree(root, str(tmp_path / f"out{i}"), seed=seed,
                                         val_fraction=0.2, test_fraction=0.2, num_workers=1,
                                         progress=False) for i in range(2)]
    sets = {s: set(i["patients"]) for s, i in manifests[0]["splits"].items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    assert _by_file_name(manifests[0]["splits"]) == _by_file_name(manifests[1]["splits"])


# --- safety: interruption, overwrite, verify, bad input ------------------------------------

def test_kill_9_mid_run_leaves_nothing_that_looks_complete(idc_tree, tmp_path):
    root, _ = idc_tree
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "idc_engine.convert", f"--input_dir={root}",
                                f"--output_dir={out}", "--num_workers=1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        entries = [e for e in os.listdir(out)] if out.is_dir() else []
        if entries and any(os.listdir(out / e) for e in entries
                           if e.startswith(staging.STAGING_PREFIX)):
            break
        time.sleep(0.001)
    assert process.poll() is None, "the conversion finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.glob("*.tfrecord")), "shards must stay in staging until complete"
    assert verify.verify_conversion(str(out))[0].endswith(
        "python -m idc_engine.convert writes the manifest last)")
    refused = _cli(f"--input_dir={root}", f"--output_dir={out}")
    assert refused.returncode == 2 and "interrupted conversion" in refused.stderr
    redone = _cli(f"--input_dir={root}", f"--output_dir={out}", "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert "patches/s" in redone.stdout and "train" in redone.stdout
    assert not [e for e in os.listdir(out) if e.startswith(staging.STAGING_PREFIX)]
    assert verify.verify_conversion(str(out)) == []


def test_a_failed_overwrite_keeps_the_previous_conversion(idc_tree, tmp_path, monkeypatch):
    root, _ = idc_tree
    out = str(tmp_path / "out")
    before = conversion.convert_tree(root, out, num_workers=1, progress=False)
    calls = []

    def failing_write_shard(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of the run
        return real_write_shard(task)

    real_write_shard = shard_writer.write_shard
    monkeypatch.setattr(shard_writer, "write_shard", failing_write_shard)
    with pytest.raises(KeyboardInterrupt):
        conversion.convert_tree(root, out, num_workers=1, seed=5, overwrite=True, progress=False)
    monkeypatch.undo()
    assert load_manifest(out)["splits"] == before["splits"]
    assert verify.verify_conversion(out) == []


def test_refuses_a_non_empty_output_dir_without_overwrite(idc_tree, tmp_path):
    root, _ = idc_tree
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(conversion.ConversionError, match="not empty.*--overwrite"):
        conversion.convert_tree(root, str(out), progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_removes_the_previous_shards(idc_tree, tmp_path):
    root, _ = idc_tree
    out = str(tmp_path / "out")
    before = conversion.convert_tree(root, out, num_shards=3, num_workers=1, progress=False)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    after = conversion.convert_tree(root, out, num_shards=1, num_workers=1, overwrite=True,
                                    progress=False)
    assert _shard_dir(after) != _shard_dir(before)
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, _shard_dir(after), "notes.txt"])
    assert sorted(os.listdir(os.path.join(out, _shard_dir(after)))) == sorted(
        os.path.basename(f) for info in after["splits"].values() for f in info["files"])
    assert [len(info["files"]) for info in after["splits"].values()] == [1, 1, 1]


def _move_shards_to_the_top_level(output_dir) -> None:
    """Rewrites a conversion in the layout of converters before shard folders: the shards
    directly in `output_dir`, listed by file name alone."""
    manifest = load_manifest(output_dir)
    folder = os.path.join(output_dir, _shard_dir(manifest))
    for name in os.listdir(folder):
        os.rename(os.path.join(folder, name), os.path.join(output_dir, name))
    os.rmdir(folder)
    manifest["splits"] = _by_file_name(manifest["splits"])
    manifest_lib.write_manifest(output_dir, manifest)


def test_a_conversion_with_its_shards_at_the_top_level_reads_and_is_replaced(converted,
                                                                            tiny_tree, tmp_path):
    out, manifest = converted
    old = tmp_path / "old"
    shutil.copytree(out, old)
    _move_shards_to_the_top_level(str(old))
    (old / "notes.txt").write_text("mine")
    assert verify.verify_conversion(str(old)) == []
    for split, info in manifest["splits"].items():
        assert shards.split_source(str(old), split).num_examples == info["num_examples"]
    top_level = sorted(f for f in os.listdir(old) if f.endswith(".tfrecord"))
    assert len(top_level) == sum(len(info["files"]) for info in manifest["splits"].values())

    new = conversion.convert_tree(tiny_tree, str(old), num_workers=1, overwrite=True,
                                  progress=False)
    assert sorted(os.listdir(old)) == sorted([MANIFEST_NAME, _shard_dir(new), "notes.txt"])
    assert verify.verify_conversion(str(old)) == []


def test_an_output_dir_holding_only_an_interrupted_commit_is_named_so(idc_tree, tmp_path):
    """A crash after the shard folder got its name, before manifest.json was written."""
    out = tmp_path / "out"
    (out / f"{staging.SHARD_DIR_PREFIX}0123abcd").mkdir(parents=True)
    (out / f"{staging.SHARD_DIR_PREFIX}0123abcd" / "train-00000-of-00001.tfrecord").write_bytes(b"")
    (out / MANIFEST_TEMPORARY_NAME).write_text("{")
    with pytest.raises(conversion.ConversionError, match="interrupted conversion.*--overwrite"):
        conversion.convert_tree(idc_tree[0], str(out), progress=False)


# A process that imports the converter once, then for each request line (JSON: N, a file for
# the manifest bytes about to be renamed over manifest.json, a file for stderr, the converter's
# flags) forks a child that runs the converter's command line and ends (os._exit, as a crash or
# kill -9 would) just before the N-th file operation of commit_conversion: a rename, removal,
# fsync or open for writing, each counted once (shutil.rmtree once, and once per file and
# folder it removes). Answers each request with the child's exit code: 75 if it crashed.
CRASH_HOOK = """
import builtins, json, os, shutil, sys

from idc_engine import convert
from idc_engine.data import staging

CRASHED = 75


def run_converter(crash_at, manifest_copy, argv):
    count, committing = 0, False
    real_open, real_replace, real_commit = builtins.open, os.replace, staging.commit_conversion

    def counted(operation):
        def run(*args, **kwargs):
            nonlocal count
            if committing:
                count += 1
                if count == crash_at:
                    os._exit(CRASHED)
            return operation(*args, **kwargs)
        return run

    def replace_keeping_the_manifest(source, target, **kwargs):
        if os.path.basename(target) == "manifest.json":
            with real_open(source, "rb") as f, real_open(manifest_copy, "wb") as copy:
                copy.write(f.read())
        real_replace(source, target, **kwargs)

    def commit(*args):
        nonlocal committing
        committing = True
        real_commit(*args)
        committing = False

    def open_(file, mode="r", *args, **kwargs):
        writes = set(mode) & set("wax+")
        return (counted(real_open) if writes else real_open)(file, mode, *args, **kwargs)

    for name in ("rename", "remove", "unlink", "rmdir", "fsync"):
        setattr(os, name, counted(getattr(os, name)))
    os.replace = counted(replace_keeping_the_manifest)
    shutil.rmtree = counted(shutil.rmtree)
    builtins.open = open_
    staging.commit_conversion = commit
    sys.argv = ["idc_engine.convert", *argv]
    try:
        convert.run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    for line in sys.stdin:
        crash_at, manifest_copy, stderr, *argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT), 2)
            os._exit(run_converter(crash_at, manifest_copy, argv))
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """A six-patient tree of ~180 patches: a conversion takes ~0.1 s."""
    root = str(tmp_path_factory.mktemp("tiny") / "IDC")
    synthetic.write_dataset(root, num_patients=6, seed=3, min_patches=20, max_patches=40)
    return root


@pytest.mark.parametrize("old_layout", ["shard folder", "shards at the top level"])
def test_a_crash_at_any_step_of_an_overwrite_leaves_one_complete_conversion(tiny_tree, tmp_path,
                                                                           old_layout):
    """For N = 1, 2, ...: the previous conversion, `--overwrite` by a process that dies before
    the N-th file operation of the commit, until one run gets through. After each crash the
    directory verifies, the training reader opens every split, and manifest.json is the previous
    one byte for byte, or the very bytes the dying run wrote (a conversion with the new options);
    then a conversion with --overwrite leaves exactly its own files."""
    old = str(tmp_path / "old")
    conversion.convert_tree(tiny_tree, old, seed=1, num_shards=1, num_workers=1, progress=False)
    if old_layout == "shards at the top level":
        _move_shards_to_the_top_level(old)
    old_bytes = (tmp_path / "old" / MANIFEST_NAME).read_bytes()
    new_options = dict(seed=2, num_shards=2)
    expected_new = conversion.convert_tree(tiny_tree, str(tmp_path / "reference"), num_workers=1,
                                           progress=False, **new_options)
    hook = tmp_path / "crash_hook.py"
    hook.write_text(CRASH_HOOK)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(convert.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    outcomes = []
    with subprocess.Popen([sys.executable, str(hook)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as crashing:
        for n in range(1, 100):
            out, copy, stderr = (tmp_path / f"crash{n}", tmp_path / f"written{n}.json",
                                 tmp_path / f"stderr{n}")
            shutil.copytree(old, out)
            crashing.stdin.write(json.dumps([
                n, str(copy), str(stderr), f"--input_dir={tiny_tree}", f"--output_dir={out}",
                "--overwrite", "--num_workers=1", "--noprogress",
                *(f"--{k}={v}" for k, v in new_options.items())]) + "\n")
            crashing.stdin.flush()
            returncode = int(crashing.stdout.readline())
            assert returncode in (0, 75), stderr.read_text()
            assert verify.verify_conversion(str(out)) == [], f"crash before operation {n}"
            manifest = load_manifest(str(out))
            for split, info in manifest["splits"].items():
                assert shards.split_source(str(out), split).num_examples == info["num_examples"]
            written = (out / MANIFEST_NAME).read_bytes()
            if written == old_bytes:
                outcomes.append("old")
            else:
                assert written == copy.read_bytes(), f"crash before operation {n}"
                assert _by_file_name(manifest["splits"]) == _by_file_name(expected_new["splits"])
                outcomes.append("new")
            if returncode == 0:
                assert sorted(os.listdir(out)) == [MANIFEST_NAME, _shard_dir(manifest)]
                break
            redone = conversion.convert_tree(tiny_tree, str(out), num_workers=1, overwrite=True,
                                             progress=False)
            assert sorted(os.listdir(out)) == [MANIFEST_NAME, _shard_dir(redone)]
    assert returncode == 0, "no run got through the commit"
    first_new = outcomes.index("new")  # the rename of manifest.json: old before, new after
    assert first_new >= 3 and set(outcomes[:first_new]) == {"old"}
    assert set(outcomes[first_new:]) == {"new"} and len(outcomes) - first_new >= 3


def test_verify_passes_on_a_good_conversion_and_names_a_truncated_shard(converted, tmp_path):
    """Entries of other conversions (a crash's leftovers) are not part of it: listed, not fatal."""
    out, manifest = converted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copytree(copy / _shard_dir(manifest), copy / f"{staging.SHARD_DIR_PREFIX}0123abcd")
    (copy / "train-00000-of-00001.tfrecord").write_bytes(b"not a shard")
    (copy / "notes.txt").write_text("mine")
    good = _cli("--verify", f"--output_dir={copy}")
    assert good.returncode == 0, good.stderr
    assert (f"note: 2 entries of earlier or interrupted conversions, not part of this one "
            f"(manifest.json does not list them; the next conversion with --overwrite removes "
            f"them): {staging.SHARD_DIR_PREFIX}0123abcd, train-00000-of-00001.tfrecord"
            ) in good.stdout
    victim = copy / manifest["splits"]["train"]["files"][1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])
    problems = verify.verify_conversion(str(copy))
    assert any(victim.name in p and "truncated" in p for p in problems), problems
    bad = _cli("--verify", f"--output_dir={copy}")
    assert bad.returncode == 1 and victim.name in bad.stderr


def test_verify_catches_a_missing_shard_and_a_patient_in_two_splits(converted, tmp_path):
    out, manifest = converted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / manifest["splits"]["test"]["files"][0])
    edited = load_manifest(str(copy))
    edited["splits"]["val"]["patients"].append(edited["splits"]["train"]["patients"][0])
    (copy / MANIFEST_NAME).write_text(json.dumps(edited))
    problems = verify.verify_conversion(str(copy))
    assert any("missing" in p and manifest["splits"]["test"]["files"][0] in p for p in problems)
    assert any("in both train and val" in p for p in problems)


@pytest.mark.parametrize("make_input, options, message", [
    (lambda d: str(d / "absent"), {}, "--input_dir .*absent.* is not a directory"),
    (lambda d: str(d), {}, "no patches"),
    (None, {"split_file": "/nonexistent/split.json"}, "split.json"),
    (None, {"image_encoding": "jpeg"}, "--image_encoding"),
])
def test_bad_input_gives_a_clear_error(idc_tree, tmp_path, make_input, options, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    input_dir = make_input(empty) if make_input else idc_tree[0]
    with pytest.raises(conversion.ConversionError, match=message):
        conversion.convert_tree(input_dir, str(tmp_path / "out"), progress=False, **options)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_cli_help_documents_every_flag():
    result = _cli("--helpfull")  # absl exits 1 after printing help
    assert "Converts the Kaggle IDC download" in result.stdout
    checked = check_every_flag_is_documented("idc_engine.convert", result.stdout)
    assert {"input_dir", "output_dir", "split", "overwrite", "verify"} <= set(checked)


def test_decode_patch_reads_a_jpeg_named_png_and_rejects_garbage(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    Image.fromarray(pixels).save(tmp_path / "j.png", format="JPEG", quality=95)
    (tmp_path / "g.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    for keep_png in (False, True):
        raw, h, w, source = patch_png.decode_patch(str(tmp_path / "p.png"), keep_png)
        assert raw == pixels.tobytes() and (h, w) == (50, 50)
        assert source == ((tmp_path / "p.png").read_bytes() if keep_png else None)
        raw, _, _, source = patch_png.decode_patch(str(tmp_path / "j.png"), keep_png)
        expected = np.asarray(Image.open(tmp_path / "j.png").convert("RGB"))
        assert raw == expected.tobytes() and source is None  # a JPEG is never passed through
        with pytest.raises(ValueError, match="not a readable PNG"):
            patch_png.decode_patch(str(tmp_path / "g.png"), keep_png)
        with pytest.raises(OSError):
            patch_png.decode_patch(str(tmp_path / "missing.png"), keep_png)


def test_channel_moments_are_exact_over_many_chunks_and_padded_patches():
    rng = np.random.default_rng(1)
    moments = shard_writer._ChannelMoments()
    real = []
    for size in (64, 64, 1, 0, 37, 256):  # chunks as write_shard adds them; every 7th undersized
        chunk = []
        for i in range(size):
            h, w = (50, 50) if i % 7 else (int(rng.integers(1, 50)), int(rng.integers(1, 51)))
            image = np.full((50, 50, 3), patch_png.PAD_VALUE, np.uint8)
            image[:h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            chunk.append((image.tobytes(), h, w))
            real.append(image[:h, :w].reshape(-1, 3).astype(np.float64))
        moments.add(chunk)
    real = np.concatenate(real)
    assert moments.count == len(real)
    np.testing.assert_array_equal(moments.sum, real.sum(0))
    np.testing.assert_array_equal(moments.sum_sq, (real * real).sum(0))


def test_channel_moments_do_not_overflow_at_the_largest_chunk():
    """The worst case of add()'s small-integer sums: 256 white patches at once; more refused."""
    moments = shard_writer._ChannelMoments()
    white = bytes([255]) * (50 * 50 * 3)
    moments.add([(white, 50, 50)] * 256)
    np.testing.assert_array_equal(moments.sum, [256 * 2500 * 255] * 3)
    np.testing.assert_array_equal(moments.sum_sq, [256 * 2500 * 255 ** 2] * 3)
    with pytest.raises(ValueError, match="at most 256"):
        moments.add([(white, 50, 50)] * 257)


def test_a_script_read_from_stdin_converts_in_process_with_a_warning(tmp_path):
    """Worker processes re-import __main__ by path: '<stdin>' has none, so no pool is started."""
    synthetic.write_dataset(str(tmp_path / "tree"), num_patients=3, seed=0, min_patches=20,
                            max_patches=30)
    script = ("from idc_engine.data import conversion\n"
              f"m = conversion.convert_tree({str(tmp_path / 'tree')!r}, {str(tmp_path / 'out')!r}, "
              "num_workers=2, progress=False)\n"
              "print(m['conversion']['num_workers'], sum(s['num_examples'] for s in "
              "m['splits'].values()))\n")
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "converting in this process only" in result.stderr
    workers, examples = map(int, result.stdout.split())
    assert workers == 1 and examples > 0
    assert verify.verify_conversion(str(tmp_path / "out")) == []


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path):
    """Workers import __main__: an unguarded convert_tree call in a script starts a conversion in
    each worker, which multiprocessing refuses; the caller must learn why, not get a bare
    BrokenProcessPool, and the output must not look complete."""
    synthetic.write_dataset(str(tmp_path / "tree"), num_patients=3, seed=0, min_patches=20,
                            max_patches=30)
    script = tmp_path / "unguarded.py"
    script.write_text("from idc_engine.data import conversion\n"
                      f"conversion.convert_tree({str(tmp_path / 'tree')!r}, "
                      f"{str(tmp_path / 'out')!r}, num_workers=2, progress=False)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "ConversionError" in result.stderr and "if __name__ == '__main__':" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_read_ahead_starts_for_files_not_in_memory_and_always_stops(idc_tree, monkeypatch):
    root, _ = idc_tree
    listing = kaggle_tree.scan_tree(root)
    order = listing.rows[:300]  # a shard task's rows: (patient, y, x, label, paths)
    order.insert(5, ("9036", 1, 1, 0, ["missing/9036_idx5_x1_y1_class0.png"]))
    prefix = os.path.join(root, "")
    assert shard_writer.in_page_cache(prefix + order[0][4][0]) in (True, False)
    with open(prefix + order[0][4][0], "rb") as f:
        f.read()
    assert shard_writer.in_page_cache(prefix + order[0][4][0])  # just read: in memory

    started = []
    real = shard_writer._ReadAhead

    def recording(paths, start):
        started.append(real(paths, start))
        return started[-1]

    monkeypatch.setattr(shard_writer, "_ReadAhead", recording)
    monkeypatch.setattr(shard_writer, "in_page_cache", lambda path: False)  # as if cold
    chunks = list(shard_writer._chunks_reading_ahead(order, prefix))
    assert [patch for chunk in chunks for patch in chunk] == order and len(chunks) > 1
    assert len(started) == 1 and not started[0].thread.is_alive()
    for _ in zip(range(1), shard_writer._chunks_reading_ahead(order, prefix)):
        pass  # the consumer stops early (an error in write_shard): the thread stops too
    assert len(started) == 2 and not started[1].thread.is_alive()


def test_read_ahead_keeps_a_window_ahead_of_the_decoder(monkeypatch):
    advised = []
    monkeypatch.setattr(shard_writer, "_advise", lambda path, advice: advised.append(path))
    monkeypatch.setattr(shard_writer._ReadAhead, "WINDOW", 10)

    def settles_at(n):  # the thread advises up to n files, then waits for the decoder
        deadline = time.monotonic() + 10
        while len(advised) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        return len(advised) == n

    paths = [f"f{i}" for i in range(100)]
    read_ahead = shard_writer._ReadAhead(paths, 1)
    try:
        assert settles_at(11)  # files 1..11: up to the decoder's position (1) + WINDOW
        read_ahead.advance(64)
        assert settles_at(74) and advised == paths[1:75]
    finally:
        read_ahead.stop()
    assert not read_ahead.thread.is_alive() and len(advised) == 74


# --- one conversion at a time into a folder ------------------------------------------------

def test_a_second_conversion_into_a_folder_being_written_is_refused(idc_tree, tmp_path):
    """A real conversion is stopped (SIGSTOP) once its staging folder fills, so it holds the
    folder's lock for as long as the test needs; a second converter into that folder, with
    --overwrite or without, is refused naming it and touches nothing. The first then completes
    and verifies; after it, a conversion with --overwrite goes through (the lock was released)."""
    root, _ = idc_tree
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "idc_engine.convert", f"--input_dir={root}",
                              f"--output_dir={out}", "--num_workers=1", "--noprogress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None:
            staging_dirs = [e for e in os.listdir(out) if e.startswith(staging.STAGING_PREFIX)] \
                if out.is_dir() else []
            if any(os.listdir(out / e) for e in staging_dirs):
                break
            time.sleep(0.001)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first conversion finished before it could be paused"
        before = {e: sorted(os.listdir(out / e)) for e in os.listdir(out) if (out / e).is_dir()}
        for extra in ([], ["--overwrite"]):
            second = _cli(f"--input_dir={root}", f"--output_dir={out}", *extra)
            assert second.returncode == 2, second.stderr
            assert (f"error: --output_dir {str(out)!r}: another conversion is running into this "
                    "folder") in second.stderr
            assert "Traceback" not in second.stderr
            assert {e: sorted(os.listdir(out / e)) for e in os.listdir(out)
                    if (out / e).is_dir()} == before  # its staging untouched
    finally:
        first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    manifest = load_manifest(str(out))
    assert sorted(os.listdir(out)) == [MANIFEST_NAME, _shard_dir(manifest)]  # lock file gone
    assert verify.verify_conversion(str(out)) == []

    again = _cli(f"--input_dir={root}", f"--output_dir={out}", "--overwrite", "--num_workers=1")
    assert again.returncode == 0, again.stderr
    assert verify.verify_conversion(str(out)) == []
    assert _shard_dir(load_manifest(str(out))) != _shard_dir(manifest)
