"""Converter throughput beside its limit, PNG decoding, measured in the same run.

    python -m benchmarks.convert                       # generates a synthetic tree first
    python -m benchmarks.convert --input_dir=~/data/IDC --num_workers=8
    python -m benchmarks.convert --quick               # every figure at tiny sizes (benchmarks/quick.py)

Reports the converter's patches/s (the whole `convert_tree` into a new folder: scan, split,
decode, write, manifest) with N workers and with one, beside the single-process rate of the
converter's own PNG decoder on the same files (`patch_png.decode_patch`, nothing else: the
limit). The ratio against the ideal `num_workers x decode rate` says how much the converter loses
to everything that is not decoding; the one-worker ratio isolates per-worker overhead from machine
load. For context, the rate of the plain PIL loop (Image.open, load, np.asarray) a hand-written
converter would use is reported too. Repetitions alternate them so that all see the same load.

A first conversion often reads files that are not in memory (after a reboot, on a network disk).
`convert_cold_input_patches_per_s` converts after dropping the input from the page cache
(posix_fadvise DONTNEED; reported as `input_evictable`, false on tmpfs), with the plain PIL loop
on the same evicted files beside it.
"""

import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks import quick
from benchmarks.report import BenchmarkReport
from idc_engine.data import conversion, kaggle_tree, patch_png, shard_writer, synthetic, worker_pool

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "A Kaggle-layout tree; default: generate a synthetic one.")
flags.DEFINE_integer("num_patients", 120, "Patients of the generated tree.")
flags.DEFINE_integer("patches_per_patient", 250, "Mean patches per patient of the generated tree.")
flags.DEFINE_bool("quirks", False, "Generate the real download's quirks too, above all its "
                  "duplicate IDC_regular_ps50_idx5/ tree (twice the files to scan).")
flags.DEFINE_integer("num_workers", 0, "Converter workers; 0 = one per available core.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported) after one warm-up.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
flags.DEFINE_string("work_dir", None, "Scratch space for trees and shards; default: a temp dir.")
quick.define_flag()
QUICK_SIZES = {"num_patients": 6, "patches_per_patient": 40, "repeats": 1}


def decode_all(paths: list[str]) -> None:
    """The limit: one process running the converter's own decoder on every file, nothing else."""
    for path in paths:
        try:
            patch_png.decode_patch(path, keep_png=False)
        except (OSError, ValueError):  # the truncated files of --quirks
            pass


def parallel_decode_rate(paths: list[str], workers: int) -> float:
    """The machine's real ceiling for N workers: N processes doing nothing but decoding a share
    of the files each (started and warmed before the clock starts). On a VM's vCPUs this is
    below N x the single-process rate, and no converter can beat it."""
    pool = worker_pool.start_workers(workers)  # the converter's own kind of worker processes
    if pool is None:
        start = time.perf_counter()
        decode_all(paths)
        return len(paths) / (time.perf_counter() - start)
    try:
        list(pool.map(decode_all, [paths[:workers * 10][i::workers] for i in range(workers)]))
        start = time.perf_counter()
        list(pool.map(decode_all, [paths[i::workers] for i in range(workers)]))
        return len(paths) / (time.perf_counter() - start)
    finally:
        pool.shutdown()


def pil_decode_all(paths: list[str]) -> None:
    """For context: the plain PIL loop a hand-written converter would use."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                np.asarray(image)
        except OSError:  # the truncated files of --quirks
            pass


def evict_from_memory(paths: list[str]) -> bool:
    """Drops the files from the page cache; whether that worked (not on tmpfs)."""
    shard_writer.drop_from_page_cache(paths)
    return not shard_writer.in_page_cache(paths[0])


def main(argv) -> None:
    del argv
    quick.apply(QUICK_SIZES)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="idc_bench_convert_")
    input_dir = FLAGS.input_dir
    if input_dir is None:
        input_dir = os.path.join(work, "tree_quirks" if FLAGS.quirks else "tree")
        if not os.path.isdir(input_dir):
            start = time.perf_counter()
            p = FLAGS.patches_per_patient
            summary = synthetic.write_dataset(input_dir, num_patients=FLAGS.num_patients, seed=0,
                                              min_patches=p // 2, max_patches=p * 3 // 2,
                                              quirks=FLAGS.quirks)
            print(f"generated {summary['num_patches']:,} patches in "
                  f"{time.perf_counter() - start:.1f} s into {input_dir}")
    listing = kaggle_tree.scan_tree(input_dir)
    paths = [os.path.join(input_dir, p.paths[0]) for p in listing.patches]
    workers = FLAGS.num_workers or len(os.sched_getaffinity(0))
    out = os.path.join(work, "tfrecords")

    def run_convert(num_workers=workers):
        conversion.convert_tree(input_dir, out, num_workers=num_workers, progress=False)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        rate = len(paths) / (time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)  # each conversion goes into a new folder
        return rate

    shutil.rmtree(out, ignore_errors=True)
    decode_all(paths)  # warm-up: page cache, imports
    timed(run_convert)
    names = ("decode", "parallel", "pil", "convert", "single", "cold_convert", "cold_pil")
    rates = {name: [] for name in names}
    evictable = True
    for _ in range(FLAGS.repeats):
        rates["decode"].append(timed(lambda: decode_all(paths)))
        rates["parallel"].append(parallel_decode_rate(paths, workers))
        rates["pil"].append(timed(lambda: pil_decode_all(paths)))
        rates["convert"].append(timed(run_convert))
        rates["single"].append(timed(lambda: run_convert(1)))
        evictable &= evict_from_memory(paths)
        rates["cold_convert"].append(timed(run_convert))
        evict_from_memory(paths)
        rates["cold_pil"].append(timed(lambda: pil_decode_all(paths)))
    (decode_rate, parallel_rate, pil_rate, convert_rate, single_rate, cold_rate,
     cold_pil_rate) = (statistics.median(rates[k]) for k in names)

    report = BenchmarkReport("convert", FLAGS.output_dir, config={
        "input_dir": input_dir, "num_patches": len(paths), "num_png_files": listing.num_png_files,
        "num_workers": workers,
        "repeats": FLAGS.repeats, "cores": len(os.sched_getaffinity(0)),
        "input_evictable": evictable, "quick": FLAGS.quick})
    report.add("decode_single_process_patches_per_s", decode_rate, all=rates["decode"])
    report.add(f"decode_{workers}_processes_patches_per_s", parallel_rate, all=rates["parallel"])
    report.add("plain_pil_decode_single_process_patches_per_s", pil_rate, all=rates["pil"])
    report.add("convert_patches_per_s", convert_rate, all=rates["convert"])
    report.add("convert_1_worker_patches_per_s", single_rate, all=rates["single"])
    report.add("convert_cold_input_patches_per_s", cold_rate, all=rates["cold_convert"])
    report.add("plain_pil_decode_cold_input_patches_per_s", cold_pil_rate, all=rates["cold_pil"])
    report.add("num_workers", workers)
    # per-worker efficiency: what a worker loses to encoding and writing, whatever the load
    report.add("convert_1_worker_vs_decode", single_rate / decode_rate)
    report.add("convert_vs_ideal_workers_x_decode", convert_rate / (workers * decode_rate))
    # the same ratio per repetition (a conversion and the decode run just before it, under the
    # same load), median: insensitive to the load drifting between repetitions
    paired = [c / (workers * d) for c, d in zip(rates["convert"], rates["decode"])]
    report.add("convert_vs_ideal_median_of_paired_repeats", statistics.median(paired), all=paired)
    report.add("convert_vs_workers_x_plain_pil", convert_rate / (workers * pil_rate))
    # what the machine allows: N processes doing nothing but decoding
    report.add("parallel_decode_vs_ideal", parallel_rate / (workers * decode_rate))
    report.add("convert_vs_parallel_decode", convert_rate / parallel_rate)
    report.add("convert_cold_vs_warm_input", cold_rate / convert_rate)
    report.write()
    if FLAGS.work_dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
