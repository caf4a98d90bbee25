"""Converts the Kaggle IDC download into patient-sharded TFRecords with a manifest.

    python -m idc_engine.convert --input_dir=~/data/IDC --output_dir=~/data/idc_tfrecords
    python -m idc_engine.convert --verify --output_dir=~/data/idc_tfrecords

Phases: scan the tree (names only, fast) -> assign patients to splits -> pack each split's
patients into shards -> decode and write the shards in parallel worker processes (staging
folder) -> commit: the staging folder becomes `shards-<id>/`, then `manifest.json` is replaced
atomically, then the previous conversion's files are removed (commit_conversion). At every
instant the output directory holds one complete conversion, the previous one or the new one; a
first run stopped at any point leaves no manifest, so nothing that looks complete. Record schema:
idc_engine/data/records.py; manifest layout: idc_engine/data/manifest.py.
"""

import collections
import concurrent.futures
import datetime
import math
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import time

from absl import app, flags

import idc_engine
from idc_engine import atomic_files, errors
from idc_engine.data import kaggle_tree, patch_png, records, shard_writer, splits
from idc_engine.data import manifest as manifest_lib

# A conversion writes its shards under STAGING_PREFIX + id, renamed SHARD_DIR_PREFIX + id when
# all are written; id: 8 hex digits, new for each conversion (new_conversion_id).
STAGING_PREFIX = ".convert-staging-"
SHARD_DIR_PREFIX = "shards-"
_SHARD_DIR = re.compile(re.escape(SHARD_DIR_PREFIX) + "[0-9a-f]{8}")
# shards directly in the output directory: what converters before shard folders wrote
_TOP_LEVEL_SHARD = re.compile(r"(train|val|test)-\d{5}-of-\d{5}\.tfrecord")
# What the workers' forkserver imports once. Besides the worker modules, the dependencies of
# this CLI module: multiprocessing makes every worker run the parent's __main__ again, which is
# quicker with absl already loaded. (Not this module itself: runpy warns when the module it is
# about to run as __main__ is already imported.)
WORKER_PRELOAD = ["idc_engine.data.shard_writer", "idc_engine.data.kaggle_tree", "idc_engine.data.splits",
                  "idc_engine.data.manifest", "absl.app", "absl.flags"]


class ConversionError(errors.EngineError, RuntimeError):
    """The conversion cannot go on; the message says which file or flag and what to do."""


def define_flags() -> None:
    flags.DEFINE_string("input_dir", None, "The Kaggle download: its root or its "
                        "IDC_regular_ps50_idx5/ folder. Each patch (patient, x, y) is counted once.")
    flags.DEFINE_string("output_dir", None, "Where the TFRecord shards and manifest.json go.")
    flags.DEFINE_enum("split", "patients", splits.SPLIT_MODES,
                      "patients: random patient split stratified by IDC ratio "
                      "(--val_fraction, --test_fraction, --seed). janowczyk2016: the published "
                      "84/29/49-patient split of Cruz-Roa 2014 / Janowczyk 2016; other patients "
                      "are reported and left out.")
    flags.DEFINE_string("split_file", None, "A JSON object {patient: train|val|test}; overrides "
                        "--split. Patients not in it are reported and left out.")
    flags.DEFINE_float("val_fraction", 0.1, "Fraction of patients for validation (--split=patients).")
    flags.DEFINE_float("test_fraction", 0.1, "Fraction of patients for test (--split=patients).")
    flags.DEFINE_integer("seed", 0, "Seed of the patient split and of the record order in shards.")
    flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 = from --shard_size_mb and "
                         "--min_shards. Never more than the split's patients (one patient, one shard).")
    flags.DEFINE_float("shard_size_mb", 64.0, "Target shard size when --num_shards=0.")
    flags.DEFINE_integer("min_shards", 8, "Least shards per split when --num_shards=0, so that "
                         "many input workers can each read distinct files.")
    flags.DEFINE_enum("image_encoding", "raw", records.IMAGE_ENCODINGS, "raw: uint8 HWC bytes (fastest "
                      "to read); png: the PNG bytes (about 2.5x smaller files, slower to read).")
    flags.DEFINE_integer("num_workers", 0, "Worker processes; 0 = one per available core.")
    flags.DEFINE_bool("overwrite", False, "Replace the conversion in a non-empty --output_dir "
                      "(files the converter does not write are kept).")
    flags.DEFINE_bool("verify", False, "Only re-read every shard of --output_dir and check it "
                      "against manifest.json.")
    flags.DEFINE_bool("progress", True, "Show a progress line with patches/s on stderr.")


# --- planning ------------------------------------------------------------------------------

def assign_splits(listing, mode: str, split_file: str | None, val_fraction: float,
                  test_fraction: float, seed: int) -> tuple[splits.PatientSplit, dict]:
    """Patient -> split for the scanned patches, and the settings that produced it."""
    if split_file:
        settings = {"mode": "file", "split_file": os.path.abspath(split_file)}
        return splits.restrict_to_data(splits.split_from_file(split_file), listing.patients), settings
    if mode == "janowczyk2016":
        settings = {"mode": mode}
        return splits.restrict_to_data(splits.published_split(mode), listing.patients), settings
    settings = {"mode": mode, "val_fraction": val_fraction, "test_fraction": test_fraction,
                "seed": seed, "stratified_by": "patient IDC ratio"}
    ratio = {patient: positive / n for patient, (n, positive) in listing.patients.items()}
    return splits.stratified_patient_split(ratio, val_fraction, test_fraction, seed), settings


def plan_shards(listing, assignment: dict[str, str], staging: str, input_dir: str,
                num_shards: int, shard_size_mb: float, min_shards: int, image_encoding: str,
                seed: int) -> list[shard_writer.ShardTask]:
    # each patient's rows, a run of the sorted listing: sliced, never visited one by one
    runs, start = {}, 0
    for patient, (n, _) in listing.patients.items():  # sorted by patient, as the rows are
        runs[patient] = (start, start + n)
        start += n
    # raw records are ~7.6 KB; PNG ones about 40% of that
    bytes_per_example = 7600 if image_encoding == "raw" else 3000
    tasks = []
    for split in manifest_lib.SPLITS:
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
                split=split, index=index, path=os.path.join(staging, name), input_dir=input_dir,
                patches=patches,
                image_encoding=image_encoding, seed=seed, with_stats=(split == "train")))
    return tasks


# --- running -------------------------------------------------------------------------------

class _Progress:
    """One stderr line: patches done, patches/s, ETA. Redrawn on a terminal, logged otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.start = self.last_print = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def show(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or not (final or self.tty or now - self.last_print >= 10):
            return
        self.last_print = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        bar = "#" * int(width * done / max(self.total, 1))
        line = (f"[{bar:<{width}}] {done:,}/{self.total:,} patches  {rate:,.0f} patches/s"
                + ("" if final else f"  ETA {eta:,.0f}s"))
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def start_workers(num_workers: int):
    """A process pool, its workers started now so that their start overlaps the tree scan.

    Workers are forked from a fresh forkserver process that has imported only WORKER_PRELOAD
    (numpy, PIL, the worker modules, absl): never forked from this process, which may hold
    TensorFlow's threads (tests, notebooks; a fork of those can deadlock), and cheaper than
    spawning each worker (one interpreter start and import instead of one per worker, none on
    later conversions in the same process). spawn where there is no fork. None for
    num_workers == 1 (in-process).
    """
    if num_workers == 1:
        return None
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        # multiprocessing re-imports __main__ by its path in every worker: impossible for a
        # script read from stdin ("<stdin>"), which would only break the pool mid-run.
        print(f"warning: __main__ is {main_file!r}, not a file that worker processes can "
              "import; converting in this process only", file=sys.stderr)
        return None
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_PRELOAD)
    else:
        context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=shard_writer.init_worker, initargs=(counter,))
    pool.progress_counter = counter
    for _ in range(num_workers):
        pool.submit(int)  # a no-op task per worker makes the pool start them all now
    return pool


def run_tasks(tasks, pool, progress: _Progress) -> list[shard_writer.ShardResult]:
    """Writes the shards, largest first, in the pool's processes (in this one if pool is None).

    Each finished shard is fsynced by a thread of this process while the workers go on: a
    worker waiting for the disk (60 MB shards) would leave its core idle. Returns once every
    shard is on the disk.
    """
    tasks = sorted(tasks, key=lambda t: -len(t.patches))
    results, synced = [], []
    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="fsync") as syncer:
        def finished(result):
            results.append(result)
            synced.append(syncer.submit(atomic_files.fsync_path, result.path))

        if pool is None:
            for task in tasks:
                finished(shard_writer.write_shard(task))
                progress.show(sum(r.num_examples + len(r.skipped) for r in results))
        else:
            pending = {pool.submit(shard_writer.write_shard, task) for task in tasks}
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                for future in done:
                    finished(future.result())
                progress.show(pool.progress_counter.value)
        for future in synced:
            future.result()
    return results


# --- output --------------------------------------------------------------------------------

def is_converter_entry(name: str) -> bool:
    """Whether a top-level entry of an output directory has a name the converter writes."""
    return (name in (manifest_lib.MANIFEST_NAME, manifest_lib.MANIFEST_TEMPORARY_NAME)
            or name.startswith(STAGING_PREFIX) or bool(_SHARD_DIR.fullmatch(name))
            or bool(_TOP_LEVEL_SHARD.fullmatch(name)))


def leftovers(output_dir: str, manifest: dict) -> list[str]:
    """Sorted top-level entries of `output_dir` that the converter writes but `manifest` does not
    use: staging and shard folders or shards of earlier and interrupted conversions, a temporary
    manifest. Other files (the user's) are never among them."""
    used = {manifest_lib.MANIFEST_NAME}
    used |= {path.split("/")[0] for info in manifest.get("splits", {}).values()
             for path in info.get("files", [])}
    return sorted(e for e in os.listdir(output_dir) if is_converter_entry(e) and e not in used)


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConversionError(f"--output_dir {output_dir!r} exists and is not a directory")
    entries = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    if entries and not overwrite:
        what = ("a previous conversion" if manifest_lib.MANIFEST_NAME in entries
                else "an interrupted conversion" if all(map(is_converter_entry, entries))
                else f"{len(entries)} entries")
        raise ConversionError(f"--output_dir {output_dir!r} is not empty (it holds {what}); "
                              "pass --overwrite to replace it, or choose another directory")
    os.makedirs(output_dir, exist_ok=True)


def new_conversion_id(output_dir: str) -> str:
    """8 hex digits naming this conversion's folders, used by no entry of `output_dir`."""
    while True:
        conversion_id = secrets.token_hex(4)
        if not any(os.path.lexists(os.path.join(output_dir, prefix + conversion_id))
                   for prefix in (STAGING_PREFIX, SHARD_DIR_PREFIX)):
            return conversion_id


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def remove_staging_folders(output_dir: str) -> None:
    """Removes the staging folders of interrupted runs (never part of a complete conversion)."""
    for entry in os.listdir(output_dir):
        if entry.startswith(STAGING_PREFIX):
            _remove(os.path.join(output_dir, entry))


def remove_leftovers(output_dir: str, manifest: dict) -> None:
    """Removes what leftovers() lists: files of conversions that `manifest` does not list."""
    for name in leftovers(output_dir, manifest):
        _remove(os.path.join(output_dir, name))


def commit_conversion(output_dir: str, staging: str, shard_dir: str, manifest: dict) -> None:
    """Puts a conversion whose shards are all written in `staging` in place of the previous one.

    At every instant `output_dir` holds one complete conversion: the previous one until
    manifest.json is replaced, this one from then on. The shards move in under `shard_dir`, a
    name the previous conversion does not use, so nothing its manifest lists is touched; the
    manifest is replaced in one rename once the new shards are durably in place; the previous
    conversion's files (and any interrupted run's) are removed only after the new manifest is
    on the disk. A crash anywhere leaves at most leftovers, which readers never see (they follow
    the manifest) and the next conversion removes.
    """
    atomic_files.fsync_path(staging)  # the shards' names in it
    os.rename(staging, os.path.join(output_dir, shard_dir))
    atomic_files.fsync_path(output_dir)  # the folder's name is on the disk before the manifest listing it
    manifest_lib.write_manifest(output_dir, manifest)
    remove_leftovers(output_dir, manifest)


def channel_stats(results) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..255) of the unpadded pixels of the train split."""
    count = sum(r.pixel_count for r in results)
    if not count:
        return [], []
    sums = [sum(r.channel_sum[c] for r in results) for c in range(3)]
    sums_sq = [sum(r.channel_sum_sq[c] for r in results) for c in range(3)]
    mean = [s / count for s in sums]
    std = [math.sqrt(max(sq / count - m * m, 0.0)) for sq, m in zip(sums_sq, mean)]
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]


def build_manifest(listing, patient_split, settings, results, input_dir, image_encoding,
                   shard_dir: str) -> dict:
    """The manifest of a conversion whose shards go to `output_dir/shard_dir`."""
    split_entries = {}
    for split in manifest_lib.SPLITS:
        shards = sorted((r for r in results if r.split == split), key=lambda r: r.index)
        if not shards:
            continue
        files = [f"{shard_dir}/{os.path.basename(r.path)}" for r in shards]  # "/" on every OS
        split_entries[split] = {
            "files": files,
            "num_examples": sum(r.num_examples for r in shards),
            "num_positive": sum(r.num_positive for r in shards),
            "patients": sorted({p for r in shards for p in r.patients}),
            "shards": [{"file": file, "num_examples": r.num_examples,
                        "num_positive": r.num_positive, "num_bytes": r.num_bytes,
                        "patients": r.patients} for file, r in zip(files, shards)],
        }
    skipped = listing.skipped + [s for r in results for s in r.skipped]
    padded = sorted((p for r in results for p in r.padded), key=lambda p: p["path"])
    mean, std = channel_stats([r for r in results if r.split == "train"])
    return {
        "schema_version": manifest_lib.SCHEMA_VERSION,
        "image_shape": list(records.IMAGE_SHAPE),
        "image_encoding": image_encoding,
        "features": records.FEATURES,
        "pad_value": patch_png.PAD_VALUE,
        "splits": split_entries,
        "train_channel_mean": mean,
        "train_channel_std": std,
        "split_settings": settings,
        "excluded_patients": patient_split.excluded,
        "missing_patients": patient_split.missing,
        "num_skipped": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "num_padded": len(padded),
        "padded": padded,
        "num_lost_patches": sum(r.num_lost for r in results),
        "num_duplicates": listing.num_duplicates,
        "ignored_files": listing.ignored,
        "input": {"dir": os.path.abspath(input_dir), "num_png_files": listing.num_png_files,
                  "num_unique_patches": len(listing.rows), "fingerprint": listing.fingerprint},
        "created_by": f"idc_engine.convert {idc_engine.__version__}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


@kaggle_tree.without_cyclic_gc()  # else a full collection over the caller's heap per phase
def convert_tree(input_dir: str, output_dir: str, *, split: str = "patients",
                 split_file: str | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_shards: int = 0,
                 shard_size_mb: float = 64.0, min_shards: int = 8, image_encoding: str = "raw",
                 num_workers: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Converts `input_dir` into shards and a manifest in `output_dir`; returns the manifest."""
    if image_encoding not in records.IMAGE_ENCODINGS:
        raise ConversionError(f"--image_encoding must be one of {records.IMAGE_ENCODINGS}")
    if num_shards < 0 or min_shards < 1 or shard_size_mb <= 0:
        raise ConversionError("--num_shards must be >= 0, --min_shards >= 1, --shard_size_mb > 0")
    if not os.path.isdir(input_dir):
        raise ConversionError(f"--input_dir {input_dir!r} is not a directory")
    if os.path.abspath(output_dir) == os.path.abspath(input_dir):
        raise ConversionError("--output_dir must differ from --input_dir")
    prepare_output_dir(output_dir, overwrite)
    start = time.perf_counter()
    workers = max(1, num_workers or len(os.sched_getaffinity(0)))
    pool = start_workers(workers)  # they start while this process begins the scan
    workers = workers if pool is not None else 1
    try:
        listing = kaggle_tree.scan_tree(input_dir, pool)
        if not listing.rows:
            raise ConversionError(f"no patches named <patient>_idx5_x<X>_y<Y>_class<C>.png "
                                  f"found under --input_dir {input_dir!r}")
        try:
            patient_split, settings = assign_splits(listing, split, split_file, val_fraction,
                                                    test_fraction, seed)
        except ValueError as e:
            raise ConversionError(str(e)) from e
        if not patient_split.assignment:
            raise ConversionError("no patient of the data is in the chosen split lists "
                                  f"({settings['mode']}); check --split / --split_file")

        remove_staging_folders(output_dir)
        conversion_id = new_conversion_id(output_dir)
        staging = os.path.join(output_dir, STAGING_PREFIX + conversion_id)
        os.makedirs(staging)
        tasks = plan_shards(listing, patient_split.assignment, staging, input_dir, num_shards,
                            shard_size_mb, min_shards, image_encoding, seed)
        total = sum(len(t.patches) for t in tasks)
        bar = _Progress(total, progress)
        results = run_tasks(tasks, pool, bar)
        bar.show(total, final=True)
    except concurrent.futures.process.BrokenProcessPool as e:
        raise ConversionError(
            "a worker process died, so the conversion stopped (nothing complete was written). "
            "Worker processes import the __main__ script: a script that calls convert_tree must "
            "do so under `if __name__ == '__main__':`, else each worker starts a conversion of "
            "its own (the error above says so); otherwise look for a worker killed by the "
            "system, e.g. out of memory") from e
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    shard_dir = SHARD_DIR_PREFIX + conversion_id
    manifest = build_manifest(listing, patient_split, settings, results, input_dir,
                              image_encoding, shard_dir)
    commit_conversion(output_dir, staging, shard_dir, manifest)
    seconds = time.perf_counter() - start
    manifest["conversion"] = {"seconds": seconds, "num_workers": workers,
                              "patches_per_s": total / seconds}
    return manifest


# --- reporting -----------------------------------------------------------------------------

def format_report(manifest: dict, output_dir: str) -> str:
    lines = [f"Converted into {output_dir} ({manifest['image_encoding']} images):", "",
             f"  {'split':<6} {'patients':>8} {'patches':>9} {'IDC':>8} {'IDC %':>6} {'shards':>6}"]
    for split, info in manifest["splits"].items():
        n, pos = info["num_examples"], info["num_positive"]
        lines.append(f"  {split:<6} {len(info['patients']):>8} {n:>9,} {pos:>8,} "
                     f"{100 * pos / max(n, 1):>6.1f} {len(info['files']):>6}")
    settings = manifest["split_settings"]
    written = sum(info["num_examples"] for info in manifest["splits"].values())
    lost = manifest["num_lost_patches"]
    lines += ["", f"  split: {', '.join(f'{k}={v}' for k, v in settings.items())}",
              f"  PNG files seen: {manifest['input']['num_png_files']:,}; unique patches: "
              f"{manifest['input']['num_unique_patches']:,}; duplicate copies: "
              f"{manifest['num_duplicates']:,}",
              f"  patches written: {written:,}"
              + (f" (lost, every copy unreadable: {lost:,})" if lost else ""),
              f"  undersized patches padded to 50x50 (white, bottom/right): {manifest['num_padded']:,}",
              f"  ignored: {manifest['ignored_files']['litter']:,} litter files "
              f"(.DS_Store, Thumbs.db, ._*), {manifest['ignored_files']['other']:,} non-PNG files"]
    if manifest["excluded_patients"] or manifest["missing_patients"]:
        lines.append(f"  patients left out (not in the split lists): "
                     f"{len(manifest['excluded_patients'])}; listed but not in the data: "
                     f"{len(manifest['missing_patients'])}")
    reasons = collections.Counter(s["reason"].split(" (")[0].split(":")[0]
                                  for s in manifest["skipped"])
    lines.append(f"  skipped files: {manifest['num_skipped']:,}"
                 + "".join(f"\n    {count:>6,}  {reason}" for reason, count in reasons.items()))
    if manifest["train_channel_mean"]:
        lines.append(f"  train channel mean / std: {manifest['train_channel_mean']} / "
                     f"{manifest['train_channel_std']}")
    if "conversion" in manifest:
        c = manifest["conversion"]
        lines.append(f"  {c['seconds']:.1f} s with {c['num_workers']} workers: "
                     f"{c['patches_per_s']:,.0f} patches/s")
    return "\n".join(lines)


def main(argv) -> int:
    del argv
    f = flags.FLAGS
    if not f.output_dir:
        raise app.UsageError("--output_dir is required")
    if f.verify:
        from idc_engine.data import verify  # TensorFlow is needed only here
        problems = verify.verify_conversion(f.output_dir)
        if problems:
            print(f"{f.output_dir}: {len(problems)} problems", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        print(f"{f.output_dir}: every shard matches manifest.json")
        extra = leftovers(f.output_dir, manifest_lib.load_manifest(f.output_dir))
        if extra:
            print(f"note: {len(extra)} entries of earlier or interrupted conversions, not part of "
                  f"this one (manifest.json does not list them; the next conversion with "
                  f"--overwrite removes them): {', '.join(extra)}")
        return 0
    if not f.input_dir:
        raise app.UsageError("--input_dir is required (or --verify)")
    try:
        manifest = convert_tree(
            os.path.expanduser(f.input_dir), os.path.expanduser(f.output_dir), split=f.split,
            split_file=f.split_file, val_fraction=f.val_fraction, test_fraction=f.test_fraction,
            seed=f.seed, num_shards=f.num_shards, shard_size_mb=f.shard_size_mb,
            min_shards=f.min_shards, image_encoding=f.image_encoding, num_workers=f.num_workers,
            overwrite=f.overwrite, progress=f.progress)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(manifest, f.output_dir))
    return 0


def run() -> None:
    """Console-script entry point (idc-convert)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
