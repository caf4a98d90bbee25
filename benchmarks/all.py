"""Every benchmark into one output folder, each a process of its own.

    python -m benchmarks.all                     # the full measurements, one at a time (hours)
    python -m benchmarks.all --quick             # every benchmark's --quick, two at a time
    python -m benchmarks.all --quick --benchmarks=convert,tta --output_dir=OUT
    tensorboard --logdir runs/benchmarks/tensorboard          # or OUT/tensorboard

Each benchmark runs as `python -m benchmarks.<name> --output_dir=OUT [--quick]` (its own flags,
TensorFlow's process-wide state) and writes OUT/<name>.json and OUT/tensorboard/<name>/
(benchmarks/tensorboard_runs.py); its output goes to OUT/logs/<name>.log, and to the screen
when one benchmark runs at a time. A benchmark that fails is reported with the end of its log
and the others still run; the exit code is 1 if any failed. A table of every benchmark's
outcome and seconds ends the output.

OUT defaults to runs/benchmarks, and to runs/benchmarks/quick with --quick (as each benchmark's
own --quick does), so quick figures never land among measurements. --quick runs two benchmarks
at a time (--jobs), the slowest first: its figures measure nothing, and most of its time is
process start-up (train_step and stain_shift start TensorFlow once per setting). Measurements
run one at a time: two benchmarks sharing the cores would measure each other.
"""

import concurrent.futures
import os
import subprocess
import sys
import time

from absl import flags

from idc_engine import cli, errors

# The README table's order, in which the results are listed.
BENCHMARKS = ("convert", "input_pipeline", "train_step", "inference", "tta", "stain",
              "stain_shift", "slide_inference", "cohort", "precision", "viewer")
# Slowest --quick first (measured on 2 cores), so that two at a time end together.
QUICK_ORDER = ("train_step", "stain_shift", "precision", "input_pipeline", "cohort", "stain",
               "slide_inference", "inference", "tta", "convert", "viewer")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_bool("quick", False, "Run every benchmark with --quick (its whole default "
                      "command at tiny sizes: a check that it runs, not a measurement).")
    flags.DEFINE_string("output_dir", "runs/benchmarks", "The one folder every benchmark writes "
                        "to; with --quick and no --output_dir: runs/benchmarks/quick.")
    flags.DEFINE_list("benchmarks", list(BENCHMARKS), "Which benchmarks to run.")
    flags.DEFINE_integer("jobs", 0, "Benchmarks run at the same time; 0: 2 with --quick, else 1 "
                         "(more than 1 only with --quick).")


def output_dir() -> str:
    """--output_dir, absolute (the benchmarks run from the repository's root)."""
    path = FLAGS.output_dir
    if FLAGS.quick and not FLAGS["output_dir"].present:
        path = os.path.join(path, "quick")
    return os.path.abspath(path)


def jobs() -> int:
    """How many benchmarks run at once, or EngineError for more than one outside --quick."""
    count = FLAGS.jobs or (2 if FLAGS.quick else 1)
    if count < 1 or (count > 1 and not FLAGS.quick):
        raise errors.EngineError(f"--jobs={FLAGS.jobs}: only --quick runs more than one "
                                 "benchmark at a time (measurements sharing the cores would "
                                 "measure each other)")
    return count


def run_benchmark(name: str, out: str, quick: bool, show: bool) -> tuple[int, float, str]:
    """(exit code, seconds, log path) of `python -m benchmarks.<name>`; its output goes to
    out/logs/<name>.log, and to our stdout as it comes when `show`."""
    command = [sys.executable, "-m", f"benchmarks.{name}", f"--output_dir={out}"]
    command += ["--quick"] * quick
    log_path = os.path.join(out, "logs", f"{name}.log")
    print(f"=== {' '.join(command[1:])}  (log: {log_path})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if show:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = process.wait()
    seconds = time.perf_counter() - start
    print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.1f} s",
          flush=True)
    return code, seconds, log_path


def log_tail(path: str, lines: int = 25) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def main(argv) -> int:
    if len(argv) > 1:
        raise errors.EngineError(f"unexpected arguments: {' '.join(argv[1:])}")
    unknown = [name for name in FLAGS.benchmarks if name not in BENCHMARKS]
    if unknown:
        raise errors.EngineError(f"--benchmarks: unknown {', '.join(unknown)}; known: "
                                 f"{', '.join(BENCHMARKS)}")
    parallel, out = jobs(), output_dir()
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    order = [name for name in (QUICK_ORDER if parallel > 1 else BENCHMARKS)
             if name in FLAGS.benchmarks]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(run_benchmark, name, out, FLAGS.quick, parallel == 1)
                   for name in order}
        outcomes = {name: futures[name].result() for name in BENCHMARKS if name in futures}
    failed = [name for name, (code, _, _) in outcomes.items() if code != 0]
    for name in failed:
        print(f"\n--- end of {outcomes[name][2]}\n{log_tail(outcomes[name][2])}")
    print(f"\nbenchmarks{' --quick' if FLAGS.quick else ''} into {out}, {parallel} at a time")
    for name, (code, seconds, _) in outcomes.items():
        print(f"  {name:<16} {'ok' if code == 0 else f'FAILED (exit {code})':<16} "
              f"{seconds:7.1f} s")
    print(f"  {'total':<16} {f'{len(failed)} failed':<16} {time.perf_counter() - start:7.1f} s")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(out, 'tensorboard')}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(define_flags, main)
