"""Converts the Kaggle IDC download into patient-sharded TFRecords with a manifest (`convert_tree`).

Phases: scan the tree (names only, fast) -> assign patients to splits -> pack each split's
patients into shards -> decode and write the shards in parallel worker processes (a staging
folder; idc_engine/data/worker_pool.py) -> commit (idc_engine/data/staging.py: the output
directory holds one complete conversion at every instant). Record schema:
idc_engine/data/records.py; manifest layout: idc_engine/data/manifest.py.
"""

import concurrent.futures
import os
import time

from idc_engine import errors
from idc_engine.data import kaggle_tree, records, shard_writer, splits, staging, worker_pool
from idc_engine.data import manifest as manifest_lib
from idc_engine.data.conversion_manifest import build_manifest

_WORKER_DIED = (
    "a worker process died, so the conversion stopped (nothing complete was written). "
    "Worker processes import the __main__ script: a script that calls convert_tree must "
    "do so under `if __name__ == '__main__':`, else each worker starts a conversion of "
    "its own (the error above says so); otherwise look for a worker killed by the "
    "system, e.g. out of memory")


class ConversionError(errors.EngineError, RuntimeError):
    """The conversion cannot go on; the message says which file or flag and what to do."""


# --- checks before anything is written -----------------------------------------------------

def check_arguments(input_dir: str, output_dir: str, image_encoding: str, num_shards: int,
                    min_shards: int, shard_size_mb: float) -> None:
    """Raises ConversionError naming the flag whose value cannot work."""
    if image_encoding not in records.IMAGE_ENCODINGS:
        raise ConversionError(f"--image_encoding must be one of {records.IMAGE_ENCODINGS}")
    if num_shards < 0 or min_shards < 1 or shard_size_mb <= 0:
        raise ConversionError("--num_shards must be >= 0, --min_shards >= 1, --shard_size_mb > 0")
    if not os.path.isdir(input_dir):
        raise ConversionError(f"--input_dir {input_dir!r} is not a directory")
    if os.path.abspath(output_dir) == os.path.abspath(input_dir):
        raise ConversionError("--output_dir must differ from --input_dir")


def create_output_dir(output_dir: str) -> None:
    """Creates `output_dir` if it does not exist (its lock file goes in it)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConversionError(f"--output_dir {output_dir!r} exists and is not a directory")
    os.makedirs(output_dir, exist_ok=True)


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Checks that `output_dir` is empty but for its lock file, or that --overwrite says to
    replace what it holds."""
    entries = [e for e in os.listdir(output_dir) if e != staging.LOCK_NAME]
    if entries and not overwrite:
        what = ("a previous conversion" if manifest_lib.MANIFEST_NAME in entries
                else "an interrupted conversion" if all(map(staging.is_converter_entry, entries))
                else f"{len(entries)} entries")
        raise ConversionError(f"--output_dir {output_dir!r} is not empty (it holds {what}); "
                              "pass --overwrite to replace it, or choose another directory")


# --- planning ------------------------------------------------------------------------------

def assign_splits(listing, mode: str, split_file: str | None, val_fraction: float,
                  test_fraction: float, seed: int, folds: int = 5,
                  kfold_test: str = "none") -> tuple[splits.PatientSplit, dict]:
    """Patient -> split for the scanned patches, and the settings that produced it."""
    if split_file:
        settings = {"mode": "file", "split_file": os.path.abspath(split_file)}
        return splits.restrict_to_data(splits.split_from_file(split_file), listing.patients), settings
    if mode == "janowczyk2016":
        settings = {"mode": mode}
        return splits.restrict_to_data(splits.published_split(mode), listing.patients), settings
    ratio = {patient: positive / n for patient, (n, positive) in listing.patients.items()}
    if mode == "kfold":
        return kfold_splits(ratio, folds, kfold_test, test_fraction, seed)
    settings = {"mode": mode, "val_fraction": val_fraction, "test_fraction": test_fraction,
                "seed": seed, "stratified_by": "patient IDC ratio"}
    return splits.stratified_patient_split(ratio, val_fraction, test_fraction, seed), settings


def kfold_splits(ratio: dict[str, float], folds: int, kfold_test: str, test_fraction: float,
                 seed: int) -> tuple[splits.PatientSplit, dict]:
    """--split=kfold: the held-out test patients (--kfold_test: none; stratified, a
    --test_fraction drawn as --split=patients draws it; janowczyk2016, the published test
    patients present in the data), then the folds over the others."""
    if kfold_test not in splits.KFOLD_TEST_MODES:
        raise ValueError(f"--kfold_test={kfold_test!r}: use one of "
                         f"{', '.join(splits.KFOLD_TEST_MODES)}")
    test = []
    if kfold_test == "stratified":
        drawn = splits.stratified_patient_split(ratio, 0.0, test_fraction, seed).assignment
        test = [p for p, s in drawn.items() if s == "test"]
    elif kfold_test == "janowczyk2016":
        test = [p for p, s in splits.published_split("janowczyk2016").items()
                if s == "test" and p in ratio]
    settings = {"mode": "kfold", "folds": folds, "kfold_test": kfold_test, "seed": seed,
                "stratified_by": "patient IDC ratio",
                **({"test_fraction": test_fraction} if kfold_test == "stratified" else {})}
    return splits.kfold_patient_split(ratio, folds, seed, test), settings


def scan_and_split(input_dir: str, pool, mode: str, split_file: str | None, val_fraction: float,
                   test_fraction: float, seed: int, folds: int = 5, kfold_test: str = "none"):
    """(listing, PatientSplit, settings) of `input_dir`; ConversionError if nothing is left."""
    listing = kaggle_tree.scan_tree(input_dir, pool)
    if not listing.rows:
        raise ConversionError(f"no patches named <patient>_idx5_x<X>_y<Y>_class<C>.png "
                              f"found under --input_dir {input_dir!r}")
    try:
        patient_split, settings = assign_splits(listing, mode, split_file, val_fraction,
                                                test_fraction, seed, folds, kfold_test)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    if not patient_split.assignment:
        raise ConversionError("no patient of the data is in the chosen split lists "
                              f"({settings['mode']}); check --split / --split_file")
    return listing, patient_split, settings


def plan_shards(listing, assignment: dict[str, str], staging_dir: str, input_dir: str,
                num_shards: int, shard_size_mb: float, min_shards: int, image_encoding: str,
                seed: int) -> list[shard_writer.ShardTask]:
    """One task per shard of each split, each a group of whole patients, written to `staging_dir`."""
    # each patient's rows, a run of the sorted listing: sliced, never visited one by one
    runs, start = {}, 0
    for patient, (n, _) in listing.patients.items():  # sorted by patient, as the rows are
        runs[patient] = (start, start + n)
        start += n
    # raw records are ~7.6 KB; PNG ones about 40% of that
    bytes_per_example = 7600 if image_encoding == "raw" else 3000
    tasks = []
    for split in manifest_lib.ordered_splits(assignment.values()):
        sizes = {p: n for p, (n, _) in listing.patients.items() if assignment.get(p) == split}
        if not sizes:
            continue
        n = num_shards or splits.auto_num_shards(
            sum(sizes.values()), bytes_per_example, shard_size_mb, min_shards)
        groups = splits.pack_patients_into_shards(sizes, n)
        for index, group in enumerate(groups):
            name = f"{split}-{index:05d}-of-{len(groups):05d}.tfrecord"
            patches = []
            for patient in group:
                patches += listing.rows[slice(*runs[patient])]
            tasks.append(shard_writer.ShardTask(
                split=split, index=index, path=os.path.join(staging_dir, name), input_dir=input_dir,
                patches=patches,
                image_encoding=image_encoding, seed=seed, with_stats=manifest_lib.is_training_data(split)))
    return tasks


# --- the conversion ------------------------------------------------------------------------

def new_staging_dir(output_dir: str) -> tuple[str, str]:
    """(conversion id, its fresh staging folder), after removing interrupted runs' folders."""
    staging.remove_staging_folders(output_dir)
    conversion_id = staging.new_conversion_id(output_dir)
    staging_dir = os.path.join(output_dir, staging.STAGING_PREFIX + conversion_id)
    os.makedirs(staging_dir)
    return conversion_id, staging_dir


@kaggle_tree.without_cyclic_gc()  # else a full collection over the caller's heap per phase
def convert_tree(input_dir: str, output_dir: str, *, split: str = "patients",
                 split_file: str | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_shards: int = 0,
                 shard_size_mb: float = 64.0, min_shards: int = 8, image_encoding: str = "raw",
                 num_workers: int = 0, overwrite: bool = False, progress: bool = True,
                 folds: int = 5, kfold_test: str = "none") -> dict:
    """Converts `input_dir` into shards and a manifest in `output_dir`; returns the manifest.

    The keywords are python -m idc_engine.convert's flags. Raises ConversionError naming the
    flag or file at fault, staging.ConversionRunning if another conversion is writing into
    `output_dir`; nothing that looks complete is written then.
    """
    check_arguments(input_dir, output_dir, image_encoding, num_shards, min_shards, shard_size_mb)
    create_output_dir(output_dir)
    with staging.conversion_lock(output_dir):  # held until the commit is done
        check_output_dir(output_dir, overwrite)
        start = time.perf_counter()
        workers = max(1, num_workers or len(os.sched_getaffinity(0)))
        pool = worker_pool.start_workers(workers)  # they start while this process begins the scan
        workers = workers if pool is not None else 1
        try:
            listing, patient_split, settings = scan_and_split(
                input_dir, pool, split, split_file, val_fraction, test_fraction, seed, folds,
                kfold_test)
            conversion_id, staging_dir = new_staging_dir(output_dir)
            tasks = plan_shards(listing, patient_split.assignment, staging_dir, input_dir, num_shards,
                                shard_size_mb, min_shards, image_encoding, seed)
            total = sum(len(t.patches) for t in tasks)
            bar = worker_pool.Progress(total, progress)
            results = worker_pool.run_tasks(tasks, pool, bar)
            bar.show(total, final=True)
        except concurrent.futures.process.BrokenProcessPool as e:
            raise ConversionError(_WORKER_DIED) from e
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

        shard_dir = staging.SHARD_DIR_PREFIX + conversion_id
        manifest = build_manifest(listing, patient_split, settings, results, input_dir,
                                  image_encoding, shard_dir)
        staging.commit_conversion(output_dir, staging_dir, shard_dir, manifest)
        seconds = time.perf_counter() - start
        manifest["conversion"] = {"seconds": seconds, "num_workers": workers,
                                  "patches_per_s": total / seconds}
        return manifest
