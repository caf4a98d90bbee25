"""A cohort against one large slide: python -m idc_engine.slide over many slides of mixed sizes,
beside the same engine on one slide of the same total tiles, in one run.

    python -m benchmarks.cohort --model=runs/demo/cancernet   # the export's runtime (auto)
    python -m benchmarks.cohort                               # untrained CancerNet, SavedModel
    python -m benchmarks.cohort --quick                       # every figure at tiny sizes

Generated pyramidal TIFFs (benchmarks/generated_slides.py; level 0 at --um_per_pixel, so a
tile is 64 level-0 pixels resized to 50): --num_slides slides whose tissue holds from
--min_tiles to --max_tiles tiles (sizes spaced evenly on a log scale, in shuffled order) and
--num_broken broken files among them (an empty .svs, text named .tiff, a TIFF cut in half),
and one large slide with their total tiles. Each command below is a fresh process; its time is
read from the slides' summary.json (started: planning began; finished: outputs written), so
TensorFlow's start and the model's load count in none of them:

    cohort              every slide, one process, --overlap_slides=on: the next slide planned
                        and the previous one written while the current one is served
    cohort_no_overlap   the same with --overlap_slides=off: each slide's phases in turn
    large_slide         the one large slide
    two_shards          --shard=0/2 and --shard=1/2 as two processes at the same time on the
                        same cores; their outputs must be those of `cohort` (tiles.csv bytes,
                        cohort.csv rows apart from seconds), or the benchmark fails

Figures: each run's tissue tiles per second (tiles / (last finished - first started)); the
cohort vs the large slide (target >= 0.8: the per-slide work, planning and outputs, competes
with inference for the same 2 cores here); the overlap's gain; and the per-slide fixed cost:
the wall seconds between one slide's outputs and the previous one's, minus the slide's tiles
at the large slide's rate, the median for each size class of slide.
"""

import csv
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from benchmarks import generated_slides, quick, untrained_model
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A model_dir or export dir; default: an untrained CancerNet "
                    "(served by the SavedModel: it has no int8 model).")
flags.DEFINE_string("runtime", "auto", "idc_engine.slide's --runtime.")
flags.DEFINE_integer("num_slides", 40, "Readable slides in the cohort.")
flags.DEFINE_integer("min_tiles", 500, "Tissue tiles of the smallest slide (about).")
flags.DEFINE_integer("max_tiles", 20000, "Tissue tiles of the largest slide (about).")
flags.DEFINE_integer("num_broken", 3, "Broken files in the cohort (at most 3 kinds).")
flags.DEFINE_float("um_per_pixel", 3.125, "Level-0 scale of the generated slides.")
flags.DEFINE_integer("batch_size", 256, "idc_engine.slide's --batch_size.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
quick.define_flag()
QUICK_SIZES = {"num_slides": 4, "min_tiles": 40, "max_tiles": 300, "batch_size": 64}
# size classes of the fixed cost, by tissue tiles: [low, high)
SIZE_CLASSES = ((0, 1000), (1000, 3000), (3000, 10000), (10000, 10**9))


def _write_cohort(folder: str, pool: np.ndarray) -> tuple[list[str], list[str], int]:
    """(readable slides, broken files, the slides' tissue cells in all) written into
    `folder`."""
    os.makedirs(folder)
    sizes = np.geomspace(FLAGS.min_tiles, FLAGS.max_tiles, FLAGS.num_slides).round().astype(int)
    slides, cells = [], 0
    for i, tiles in enumerate(sizes):
        path = os.path.join(folder, f"slide_{i:02d}_{tiles}.tiff")
        cells += generated_slides.write_ellipse_slide(
            path, generated_slides.grid_for_cells(int(tiles)), FLAGS.um_per_pixel, pool, 97 * i)
        slides.append(path)
    broken = _write_broken(folder, slides[0])[:FLAGS.num_broken]
    return slides, broken, cells


def _write_broken(folder: str, good: str) -> list[str]:
    """An empty .svs, text named .tiff and the first half of a good TIFF."""
    empty, text, cut = (os.path.join(folder, name) for name in (
        "broken_empty.svs", "broken_text.tiff", "broken_cut.tiff"))
    open(empty, "wb").close()
    with open(text, "w") as f:
        f.write("not a slide\n")
    with open(good, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    return [empty, text, cut]


def _slide_command(model: str, out: str, listing: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "idc_engine.slide", f"--model_dir={model}",
            f"--output_dir={out}", f"--batch_size={FLAGS.batch_size}",
            f"--runtime={FLAGS.runtime}", *extra, f"@{listing}"]


def _run(commands: list[list[str]], log: str) -> None:
    """Runs the commands at the same time; exit code 2 (some slides failed) is expected."""
    with open(log, "a") as f:
        processes = [subprocess.Popen(c, stdout=f, stderr=subprocess.STDOUT) for c in commands]
        codes = [p.wait() for p in processes]
    if any(code not in (0, 2) for code in codes):
        raise RuntimeError(f"idc_engine.slide exited with {codes}; see {log}")


def _summaries(out: str) -> list[dict]:
    """The slides' summary.json under `out`, in the order their outputs were written."""
    found = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                found.append(json.load(f))
    return sorted(found, key=lambda s: s["finished"])


def _time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _rate(summaries: list[dict]) -> tuple[float, float, int]:
    """(tiles/s, span seconds, tiles) from first started to last finished."""
    span = _time(summaries[-1]["finished"]) - min(_time(s["started"]) for s in summaries)
    tiles = sum(s["tiles_read"] for s in summaries)
    return tiles / span, span, tiles


def _fixed_costs(summaries: list[dict], large_rate: float) -> list[dict]:
    """Per slide, in the order written: its tiles, the wall seconds since the previous slide's
    outputs (its own planning start for the first) and those beyond its tiles at the large
    slide's rate."""
    rows, previous = [], None
    for summary in summaries:
        end = _time(summary["finished"])
        wall = end - (previous if previous is not None else _time(summary["started"]))
        rows.append({"slide": os.path.basename(summary["slide"]), "tiles": summary["tiles_read"],
                     "wall_seconds": round(wall, 3),
                     "fixed_seconds": round(wall - summary["tiles_read"] / large_rate, 3)})
        previous = end
    return rows


def _class_name(low: int, high: int) -> str:
    return f"tiles_{low}_up" if high >= 10**9 else f"tiles_{low}_to_{high}"


def _median_fixed_by_class(rows: list[dict]) -> dict:
    """{size class: median fixed seconds of its slides}, classes with slides only."""
    medians = {}
    for low, high in SIZE_CLASSES:
        fixed = [r["fixed_seconds"] for r in rows if low <= r["tiles"] < high]
        if fixed:
            medians[_class_name(low, high)] = statistics.median(fixed)
    return medians


def _check_same_outputs(one: str, two: str) -> int:
    """Raises unless `two` holds the slides of `one` with the same tiles.csv bytes and the
    same cohort.csv rows apart from seconds; returns the number of slides compared."""
    def slides(out):
        return sorted(n for n in os.listdir(out) if os.path.isfile(os.path.join(out, n, "tiles.csv")))

    def rows(out):
        with open(os.path.join(out, "cohort.csv")) as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    if slides(one) != slides(two):
        raise RuntimeError(f"two shards wrote slides {slides(two)}, one process {slides(one)}")
    for name in slides(one):
        with open(os.path.join(one, name, "tiles.csv"), "rb") as a, \
                open(os.path.join(two, name, "tiles.csv"), "rb") as b:
            if a.read() != b.read():
                raise RuntimeError(f"{name}: tiles.csv differs between two shards and one process")
    if rows(one) != rows(two):
        raise RuntimeError("cohort.csv differs between two shards and one process")
    return len(slides(one))


def _write_inputs(work: str) -> dict:
    """The cohort's list (shuffled, broken files among the slides) and the large slide's."""
    pool = generated_slides.patch_pool(work)
    slides, broken, cells = _write_cohort(os.path.join(work, "cohort"), pool)
    order = slides + broken
    random.Random(0).shuffle(order)
    large = os.path.join(work, "large", "large.tiff")
    os.makedirs(os.path.dirname(large))
    generated_slides.write_ellipse_slide(large, generated_slides.grid_for_cells(cells),
                                         FLAGS.um_per_pixel, pool)
    lists = {"cohort": os.path.join(work, "cohort.txt"), "large": os.path.join(work, "large.txt")}
    for key, paths in (("cohort", order), ("large", [large])):
        with open(lists[key], "w") as f:
            f.write("".join(p + "\n" for p in paths))
    return {**lists, "num_broken": len(broken), "large_cells": cells}


def _measure(model: str, work: str, lists: dict) -> dict:
    """{run: its output folder}, each run a fresh idc_engine.slide process (two for shards)."""
    log = os.path.join(work, "slide.log")
    outs = {run: os.path.join(work, "out", run) for run in (
        "cohort", "cohort_no_overlap", "large_slide", "two_shards")}
    _run([_slide_command(model, outs["cohort"], lists["cohort"], "--overlap_slides=on")], log)
    _run([_slide_command(model, outs["cohort_no_overlap"], lists["cohort"],
                         "--overlap_slides=off")], log)
    _run([_slide_command(model, outs["large_slide"], lists["large"])], log)
    _run([_slide_command(model, outs["two_shards"], lists["cohort"], f"--shard={i}/2")
          for i in range(2)], log)
    return outs


def main(argv) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    quick.apply(QUICK_SIZES)
    work = tempfile.mkdtemp(prefix="idc_bench_cohort_")
    try:
        paths, model_source = untrained_model.benchmark_export(FLAGS.model, work)
        lists = _write_inputs(work)
        outs = _measure(paths.export_dir, work, lists)
        summaries = {run: _summaries(out) for run, out in outs.items()}
        rates = {run: _rate(s) for run, s in summaries.items()}
        large_rate = rates["large_slide"][0]
        fixed = {run: _fixed_costs(summaries[run], large_rate)
                 for run in ("cohort", "cohort_no_overlap")}
        compared = _check_same_outputs(outs["cohort"], outs["two_shards"])
        (runtime,) = {s["runtime"] for runs in summaries.values() for s in runs}
        report = BenchmarkReport("cohort", FLAGS.output_dir, config={
            "quick": FLAGS.quick, "model": model_source, "runtime": runtime,
            "num_slides": FLAGS.num_slides, "num_broken": lists["num_broken"],
            "min_tiles": FLAGS.min_tiles, "max_tiles": FLAGS.max_tiles,
            "um_per_pixel": FLAGS.um_per_pixel, "batch_size": FLAGS.batch_size,
            "slides_ok": len(summaries["cohort"]), "large_slide_tissue_cells": lists["large_cells"],
            "two_shards_outputs": f"the same as one process: {compared} slides' tiles.csv "
                                  "bytes, cohort.csv rows apart from seconds",
            "cores": len(os.sched_getaffinity(0))})
        for run, (rate, span, tiles) in rates.items():
            report.add(f"{run}_tiles_per_s", rate, seconds=span, tiles=tiles)
        report.add("cohort_vs_large_slide", rates["cohort"][0] / large_rate)
        report.add("cohort_no_overlap_vs_large_slide", rates["cohort_no_overlap"][0] / large_rate)
        report.add("overlap_vs_no_overlap", rates["cohort"][0] / rates["cohort_no_overlap"][0])
        report.add("two_shards_vs_one_process", rates["two_shards"][0] / rates["cohort"][0])
        for run in fixed:
            for size_class, seconds in _median_fixed_by_class(fixed[run]).items():
                report.add(f"{run}_fixed_seconds_{size_class}", seconds)
        report.details["per_slide"] = fixed
        report.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
