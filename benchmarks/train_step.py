"""Training-step throughput of the engine, per strategy/precision/XLA setting, beside Keras `fit`.

    python -m benchmarks.train_step                          # generates a synthetic dataset first
    python -m benchmarks.train_step --data_dir=~/data/idc_tfrecords --repeats=5
    python -m benchmarks.train_step --settings=reference,pathology,cache

In ONE run, images/s of the training step (warm-up excluded, median over --repeats runs):
  engine_img_per_s                 the reference: `python -m idc_engine.train` on one device,
                                   float32, XLA off, --input_mode=device, --augment=none
  engine_<setting>_img_per_s       the same with one thing changed (see SETTINGS): on-device
                                   pathology augmentation, the cache input mode, MirroredStrategy,
                                   XLA, mixed precision; `_vs_reference` is its ratio
  keras_fit_img_per_s              the same model, batch, data and precision trained by Keras
                                   `model.fit` (benchmarks/keras_fit_baseline.py)
  engine_vs_fit                    engine_img_per_s / keras_fit_img_per_s (like for like);
                                   engine_vs_fit_paired: median of the per-round ratios;
                                   engine_vs_fit_best: ratio of the fastest runs (the least
                                   disturbed by other processes on a shared machine)
  pipeline_{stream,cache,device}_img_per_s
                                   the engine's input alone (make_dataset streaming from the
                                   shards, make_dataset(cache=True), the device-resident sampler)
                                   at the same batch size; headroom_<mode> = pipeline rate /
                                   engine_img_per_s (how much faster input is than the step)

Every training run is its own process (logical CPU devices, the strategy, the mixed-precision
policy are process-global in TensorFlow), and the runs are interleaved round by round (the order
reversed every other round) so that the load of a shared machine hits every setting alike. Each
run's rate is the median over its timed loops (the engine's `images_per_sec`; the first loop,
with tracing and compilation, is never timed), sized to last about --loop_seconds each.
Results: --output_dir/train_step.json, TensorBoard scalars, and a printed table.
"""

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS

# Where the engine and fit are measured unattended: no validation, checkpoint or export inside
# the timed loops (validation and a checkpoint still run once after the last step).
NEVER = 10**9
REFERENCE = "reference"


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "A converted directory; unset: generate a synthetic tree "
                        "and convert it under --work_dir.")
    flags.DEFINE_string("model", "cancernet", "The model trained by every setting and by fit.")
    flags.DEFINE_integer("global_batch_size", 256, "Global batch of every setting and of fit.")
    flags.DEFINE_list("settings", ["default"], "Engine settings to time besides the reference: "
                      "'default' (every setting available on this machine's devices except the "
                      "input modes; on CPU: pathology, mirrored_cpu, xla, mixed_bfloat16), or "
                      "names from: " + ", ".join(
                          ["cache", "stream", "pathology", "mirrored_cpu", "mirrored_gpu", "xla",
                           "mixed_bfloat16", "mixed_float16"]) + ".")
    flags.DEFINE_integer("repeats", 3, "Rounds; each runs every setting and fit once. Medians "
                         "over rounds are reported.")
    flags.DEFINE_integer("steps", 0, "Training steps per timed loop (the engine's "
                         "--steps_per_loop, fit's timing window); 0: sized per setting so a loop "
                         "lasts about --loop_seconds (from the previous round's rate).")
    flags.DEFINE_integer("timed_loops", 3, "Timed loops per run, after one untimed warm-up loop.")
    flags.DEFINE_float("loop_seconds", 3.0, "Target duration of one timed loop (with --steps=0).")
    flags.DEFINE_bool("keras_fit", True, "Time the Keras model.fit reference.")
    flags.DEFINE_bool("pipeline", True, "Time the input pipeline alone (for the headroom).")
    flags.DEFINE_float("pipeline_seconds", 1.5, "Each timed repetition of an input pipeline "
                       "lasts at least about this long.")
    flags.DEFINE_integer("synthetic_patients", 30, "Patients of the generated tree.")
    flags.DEFINE_integer("synthetic_min_patches", 100, "Fewest patches per generated patient.")
    flags.DEFINE_integer("synthetic_max_patches", 200, "Most patches per generated patient.")
    flags.DEFINE_integer("run_timeout", 1800, "Seconds before a training run is killed (failed).")
    flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
    flags.DEFINE_string("work_dir", None, "Scratch space (generated data, model dirs, logs of "
                        "every run); default: a temporary directory, deleted at the end.")


# --- settings ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One engine configuration: the reference's flags with `flags` on top."""
    name: str
    flags: tuple[str, ...]
    what: str
    # a first guess of its rate relative to the reference, to size the first round's loops
    # (later rounds use the rate measured); from BRIEF.md section 5 on CPU
    relative_speed: float = 1.0


REFERENCE_FLAGS = ("--strategy=default", "--num_cpu_devices=1", "--precision=float32",
                   "--xla=off", "--input_mode=device", "--augment=none")


def available_settings(num_gpus: int) -> dict[str, Setting]:
    """Every setting that can run on this machine's devices, by name."""
    on_cpu = num_gpus == 0
    settings = [
        Setting(REFERENCE, (), "one device, float32, XLA off, device-resident input, no "
                "augmentation: like for like with Keras fit"),
        Setting("pathology", ("--augment=pathology",), "+ on-device pathology augmentation"),
        Setting("cache", ("--input_mode=cache",), "host-RAM tf.data input instead of "
                "device-resident"),
        Setting("stream", ("--input_mode=stream",), "tf.data from the shards instead of "
                "device-resident"),
        Setting("xla", ("--xla=on",), "the per-replica step jit-compiled",
                relative_speed=0.15 if on_cpu else 1.0),
    ]
    if on_cpu:
        settings += [
            Setting("mirrored_cpu", ("--strategy=mirrored", "--num_cpu_devices=2"),
                    "MirroredStrategy over 2 logical CPU devices"),
            Setting("mixed_bfloat16", ("--precision=mixed_bfloat16",), "bfloat16 compute",
                    relative_speed=0.25),
        ]
    else:
        settings += [
            Setting("mixed_float16", ("--precision=mixed_float16",), "float16 compute, loss "
                    "scaling", relative_speed=1.5),
            Setting("mixed_bfloat16", ("--precision=mixed_bfloat16",), "bfloat16 compute"),
        ]
        if num_gpus > 1:
            settings.append(Setting("mirrored_gpu", ("--strategy=mirrored",), f"MirroredStrategy over "
                    f"{num_gpus} GPUs", relative_speed=num_gpus))
    return {s.name: s for s in settings}


def default_setting_names(num_gpus: int) -> list[str]:
    if num_gpus == 0:
        return ["pathology", "mirrored_cpu", "xla", "mixed_bfloat16"]
    return ["pathology", "xla", "mixed_float16", "mixed_bfloat16"] + (
        ["mirrored_gpu"] if num_gpus > 1 else [])


def select_settings(requested: list[str], num_gpus: int) -> list[Setting]:
    """The reference first, then the requested settings ('default' expands), each once."""
    available = available_settings(num_gpus)
    names = [REFERENCE]
    for name in requested:
        for expanded in (default_setting_names(num_gpus) if name == "default" else [name]):
            if expanded not in available:
                raise app.UsageError(f"--settings: {expanded!r} is not available with "
                                     f"{num_gpus} GPUs; available: {', '.join(available)}")
            if expanded not in names:
                names.append(expanded)
    return [available[n] for n in names]


def count_gpus() -> int:
    """GPUs TensorFlow sees, asked of a child process so this one stays free of TensorFlow until
    the training runs are over (an idle TF runtime here would hold memory they need)."""
    out = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; "
         "print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.split()[-1])


# --- one run -----------------------------------------------------------------------------------

def last_json_object(text: str) -> dict:
    """The last top-level JSON object printed on stdout (a line "{" ... its closing "}")."""
    lines = text.splitlines()
    for start in reversed([i for i, line in enumerate(lines) if line == "{"]):
        try:
            return json.loads("\n".join(lines[start:]))
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON object in the output: ...{text[-500:]!r}")


def engine_command(setting: Setting, data_dir: str, model_dir: str, steps_per_loop: int) -> list[str]:
    return [sys.executable, "-m", "idc_engine.train", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", f"--model={FLAGS.model}",
            f"--global_batch_size={FLAGS.global_batch_size}",
            f"--steps_per_loop={steps_per_loop}",
            f"--train_steps={steps_per_loop * (1 + FLAGS.timed_loops)}",
            f"--validation_every_steps={NEVER}", f"--checkpoint_every_steps={NEVER}",
            f"--log_every_steps={steps_per_loop}", "--export=false",
            # like for like with fit: plain Adam at a constant rate, unweighted loss
            "--optimizer=adam", "--learning_rate=0.001", "--lr_schedule=constant",
            "--class_weights=none", *REFERENCE_FLAGS, *setting.flags]


def fit_command(data_dir: str, steps_per_loop: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.keras_fit_baseline", f"--data_dir={data_dir}",
            f"--model={FLAGS.model}", f"--global_batch_size={FLAGS.global_batch_size}",
            f"--window_steps={steps_per_loop}", f"--timed_windows={FLAGS.timed_loops}"]


def run_child(command: list[str], log_path: str) -> dict:
    """Runs one training process; returns its JSON summary plus wall_seconds, or {"error": ...}."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=FLAGS.run_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {FLAGS.run_timeout} s"}
    wall = time.perf_counter() - start
    with open(log_path, "w") as f:
        f.write(" ".join(command) + "\n\n" + result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-400:]}",
                "log": log_path}
    try:
        summary = last_json_object(result.stdout)
    except ValueError as e:
        return {"error": str(e), "log": log_path}
    summary["wall_seconds"] = wall
    return summary


def steps_for(rate: float | None, guess: float) -> int:
    """Steps per loop so that one loop lasts about --loop_seconds at `rate` img/s (or the guess)."""
    if FLAGS.steps:
        return FLAGS.steps
    return max(1, min(100, round(FLAGS.loop_seconds * (rate or guess) / FLAGS.global_batch_size)))


# --- the input pipeline alone ------------------------------------------------------------------

def pipeline_rates(data_dir: str, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """img/s of the engine's input alone at the global batch: {mode: (median, all)}.

    Drained inside one tf.function per call (benchmarks.input_pipeline's way), so Python per
    batch does not cap the rate; warm-up excluded; each repetition lasts --pipeline_seconds.
    """
    import gc

    from benchmarks.input_pipeline import dataset_steps, sampler_steps
    from idc_engine import pipeline

    batch = FLAGS.global_batch_size
    builders = {
        "stream": lambda: dataset_steps(pipeline.make_dataset(data_dir, "train", batch,
                                                              training=True, seed=0)),
        "cache": lambda: dataset_steps(pipeline.make_dataset(data_dir, "train", batch,
                                                             training=True, cache=True, seed=0)),
        "device": lambda: sampler_steps(pipeline.make_device_resident_sampler(
            data_dir, "train", batch, seed=0)),
    }
    out = {}
    for mode, build in builders.items():
        gc.collect()  # the previous pipeline's threads stop before this one is timed
        out[mode] = _timed_drain(build(), batch, repeats)
        logging.info("pipeline %-6s %10.0f img/s", mode, out[mode][0])
    return out


def _timed_drain(run, batch: int, repeats: int) -> tuple[float, list[float]]:
    """run(n) drains n batches; warm-up, then repetitions of about --pipeline_seconds each."""
    import tensorflow as tf

    from benchmarks.report import median_rate

    run(tf.constant(3)).numpy()  # trace, fill buffers, start threads
    start = time.perf_counter()
    run(tf.constant(20)).numpy()
    steps = max(20, math.ceil(FLAGS.pipeline_seconds * 20 / (time.perf_counter() - start)))
    return median_rate(lambda: run(tf.constant(steps)).numpy(), steps * batch, repeats, warmup=1)


# --- data --------------------------------------------------------------------------------------

def synthetic_data(work: str) -> str:
    from idc_engine import convert, manifest, synthetic

    tree, data_dir = os.path.join(work, "tree"), os.path.join(work, "tfrecords")
    if not os.path.exists(manifest.manifest_path(data_dir)):
        start = time.perf_counter()
        summary = synthetic.write_dataset(tree, num_patients=FLAGS.synthetic_patients, seed=0,
                                          min_patches=FLAGS.synthetic_min_patches,
                                          max_patches=FLAGS.synthetic_max_patches)
        convert.convert_tree(tree, data_dir, overwrite=True, progress=False)
        logging.info("generated and converted %d patches in %.1f s into %s",
                     summary["num_patches"], time.perf_counter() - start, data_dir)
    return data_dir


# --- main --------------------------------------------------------------------------------------

def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    num_gpus = count_gpus()
    settings = select_settings(FLAGS.settings, num_gpus)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="idc_bench_train_step_")
    os.makedirs(work, exist_ok=True)
    data_dir = FLAGS.data_dir or synthetic_data(work)
    guess = 200.0 if num_gpus == 0 else 5000.0 * num_gpus  # img/s of the reference, first round

    # --- the training runs, interleaved ------------------------------------------------------
    jobs = [s.name for s in settings] + (["keras_fit"] if FLAGS.keras_fit else [])
    jobs.insert(1, jobs.pop())  # fit right after the reference: the ratio compares neighbours
    by_name = {s.name: s for s in settings}
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    last_rate: dict[str, float] = {}
    for round_index in range(FLAGS.repeats):
        order = jobs if round_index % 2 == 0 else jobs[::-1]
        for name in order:
            # fit is timed in windows as long as the reference's loops of the same round
            sized_as = REFERENCE if name == "keras_fit" else name
            if name == "keras_fit" and runs[REFERENCE] and len(runs[REFERENCE]) > round_index:
                steps = runs[REFERENCE][round_index]["steps_per_loop"]
            else:
                steps = steps_for(last_rate.get(sized_as),
                                  guess * (by_name[sized_as].relative_speed))
            run_dir = os.path.join(work, "runs", f"{name}_{round_index}")
            shutil.rmtree(run_dir, ignore_errors=True)  # a model_dir with checkpoints resumes
            os.makedirs(run_dir)
            command = (fit_command(data_dir, steps) if name == "keras_fit" else
                       engine_command(by_name[name], data_dir, os.path.join(run_dir, "model"),
                                      steps))
            summary = run_child(command, os.path.join(run_dir, "log.txt"))
            summary["steps_per_loop"] = steps
            runs[name].append(summary)
            rate = summary.get("images_per_sec")
            if rate:
                last_rate[name] = rate
                logging.info("round %d %-15s %8.1f img/s  (%d steps/loop, %.0f s)", round_index,
                             name, rate, steps, summary["wall_seconds"])
            else:
                logging.warning("round %d %s failed: %s", round_index, name,
                                summary.get("error", "no images_per_sec"))
    training_seconds = time.perf_counter() - started

    # --- the input pipeline alone ----------------------------------------------------------
    pipelines = pipeline_rates(data_dir, FLAGS.repeats) if FLAGS.pipeline else {}

    # --- report ------------------------------------------------------------------------------
    from benchmarks.report import BenchmarkReport
    from idc_engine import manifest as manifest_lib

    manifest = manifest_lib.load_manifest(data_dir)
    report = BenchmarkReport("train_step", FLAGS.output_dir, config={
        "model": FLAGS.model, "global_batch_size": FLAGS.global_batch_size,
        "data_dir": os.path.abspath(data_dir),
        "train_examples": manifest["splits"]["train"]["num_examples"],
        "repeats": FLAGS.repeats, "timed_loops": FLAGS.timed_loops,
        "loop_seconds": FLAGS.loop_seconds, "steps": FLAGS.steps,
        "settings": {s.name: {"flags": list(REFERENCE_FLAGS + s.flags), "what": s.what}
                     for s in settings},
        "engine_command_example": " ".join(engine_command(settings[0], data_dir, "MODEL_DIR", 4)),
        "fit_command_example": " ".join(fit_command(data_dir, 4)),
        "cpus": len(os.sched_getaffinity(0)), "gpus": num_gpus,
        "load_average_at_start": load_at_start})

    def rates_of(name: str) -> list[float]:
        return [r["images_per_sec"] for r in runs[name] if r.get("images_per_sec")]

    def details(name: str) -> dict:
        out = {"rates": [round(r, 1) for r in rates_of(name)],
               "steps_per_loop": [r["steps_per_loop"] for r in runs[name]],
               "wall_seconds": [round(r.get("wall_seconds", 0.0), 1) for r in runs[name]]}
        for key in ("replicas", "precision", "xla", "strategy"):
            values = {str(r[key]) for r in runs[name] if key in r}
            if values:
                out[key] = ",".join(sorted(values))
        errors = [r["error"] for r in runs[name] if "error" in r]
        if errors:
            out["errors"] = errors
        return out

    reference = median_or_none(rates_of(REFERENCE))
    if reference:
        report.add("engine_img_per_s", reference, **details(REFERENCE))
    fit = median_or_none(rates_of("keras_fit")) if FLAGS.keras_fit else None
    if fit:
        report.add("keras_fit_img_per_s", fit, **details("keras_fit"))
    if reference and fit:
        paired = [e["images_per_sec"] / f["images_per_sec"]
                  for e, f in zip(runs[REFERENCE], runs["keras_fit"])
                  if e.get("images_per_sec") and f.get("images_per_sec")]
        report.add("engine_vs_fit", reference / fit)
        if paired:
            report.add("engine_vs_fit_paired", statistics.median(paired),
                       per_round=[round(p, 3) for p in paired])
        # On a shared machine the fastest run is the one least disturbed by other processes
        report.add("engine_vs_fit_best", max(rates_of(REFERENCE)) / max(rates_of("keras_fit")))
    for setting in settings[1:]:
        rate = median_or_none(rates_of(setting.name))
        if rate:
            report.add(f"engine_{setting.name}_img_per_s", rate, **details(setting.name))
            if reference:
                report.add(f"engine_{setting.name}_vs_reference", rate / reference)
        else:
            report.details[f"engine_{setting.name}_img_per_s"] = details(setting.name)
    for mode, (rate, all_rates) in pipelines.items():
        report.add(f"pipeline_{mode}_img_per_s", rate, rates=[round(r) for r in all_rates])
    for mode in ("stream", "cache"):
        if mode in pipelines and reference:
            report.add(f"headroom_{mode}", pipelines[mode][0] / reference)
    report.config["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.config["training_runs_seconds"] = round(training_seconds, 1)
    report.config["total_seconds"] = round(time.perf_counter() - started, 1)
    report.write()
    if FLAGS.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
