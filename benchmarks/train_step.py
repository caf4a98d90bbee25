"""Training-step throughput of the engine, per setting, beside Keras `fit` on the same graph.

    python -m benchmarks.train_step                          # generates a synthetic dataset first
    python -m benchmarks.train_step --data_dir=~/data/idc_tfrecords --repeats=5
    python -m benchmarks.train_step --settings=pathology,as_trained,cache
    python -m benchmarks.train_step --quick        # every figure at tiny sizes (benchmarks/quick.py)

In ONE run, images/s of the training step (warm-up excluded), each setting run once per round:
  engine_img_per_s            the reference: `python -m idc_engine.train` on one device, float32,
                              XLA off, --input_mode=device, --augment=none, fused BatchNorm (the
                              engine's default graph)
  engine_<setting>_img_per_s  the same with one thing changed (see `available_settings`):
                              `unfused` (Keras' own BatchNorm), `pathology` (the default on-device
                              augmentation), MirroredStrategy, XLA, mixed precision, the input
                              modes; `as_trained` is `idc_engine.train`'s own defaults (stream
                              input, pathology augmentation, auto precision/XLA, cosine schedule,
                              balanced class weights): what a default training run runs
  keras_fit_img_per_s         the same model, batch, data and precision trained by Keras
                              `model.fit` (benchmarks/keras_fit_baseline.py), Keras' BatchNorm;
                              keras_fit_fused_img_per_s: fit with the engine's fused BatchNorm

Ratios, each of two figures measured side by side in the same round (reported as the median of
the per-round ratios, with min and max; `_of_medians` is the ratio of the two medians):
  engine_vs_fit_same_graph    engine unfused / fit: the engine's loop against fit's, same graph
  engine_vs_fit_fused         engine / fit fused: the same with the fused graph on both sides
  fused_batchnorm_gain        engine / engine unfused: what the fusion alone is worth
  engine_<setting>_vs_reference
Each pair's graph (parameter count, BatchNorm layers, how many fused) is read back from both
runs (the engine's checkpoint and log, fit's model) and must agree: a ratio between different
graphs is not reported ("graph_mismatch" in its details).

What is timed is what training runs: each engine run is a real `python -m idc_engine.train`
whose timed loops hold the whole step (batch gather or tf.data input, uint8 -> float cast,
augmentation when set, normalization, forward, backward, update) and nothing else (validation,
checkpoints, export are pushed past the last timed loop). A run's rate is the median over its
timed loops (--timed_loops, each about --loop_seconds and at most --max_steps_per_loop steps;
the first loop, with tracing and compilation, is never timed), and the JSON keeps every loop's
rate. Every run is its own process (logical CPU devices, the strategy and the mixed-precision
policy are process-global), and rounds are interleaved (the order reversed every other round)
so that the load of a shared machine hits every setting alike. The synthetic dataset is larger
than the CPU's last-level cache (80 patients, ~13k training patches, ~100 MB resident).
Results: --output_dir/train_step.json (with the machine: CPU model, cores, memory, GPUs),
TensorBoard runs under --output_dir/tensorboard/train_step/ (benchmarks/charts.py), and a
printed table.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from benchmarks import quick

FLAGS = flags.FLAGS

# Where the engine and fit are measured unattended: no validation, checkpoint or export inside
# the timed loops (validation and a checkpoint still run once after the last step).
NEVER = 10**9
REFERENCE = "reference"
FIT, FIT_FUSED = "keras_fit", "keras_fit_fused"

# (name, numerator job, denominator job): ratios of two runs of the same round.
PAIRS = (("engine_vs_fit_same_graph", "unfused", FIT),
         ("engine_vs_fit_fused", REFERENCE, FIT_FUSED),
         ("fused_batchnorm_gain", REFERENCE, "unfused"))


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "A converted directory; unset: generate a synthetic tree "
                        "and convert it under --work_dir.")
    flags.DEFINE_string("model", "cancernet", "The model trained by every setting and by fit.")
    flags.DEFINE_integer("global_batch_size", 256, "Global batch of every setting and of fit.")
    flags.DEFINE_list("settings", ["default"], "Engine settings to time besides the reference: "
                      "'default' (on CPU: unfused, pathology, as_trained, mirrored_cpu, xla, "
                      "mixed_bfloat16; on GPUs the mixed precisions and XLA instead of the CPU "
                      "ones), or names of `available_settings`.")
    flags.DEFINE_integer("repeats", 3, "Rounds; each runs every setting and fit once. Medians, "
                         "minima and maxima over rounds are reported.")
    flags.DEFINE_integer("steps", 0, "Training steps per timed loop (the engine's "
                         "--steps_per_loop, fit's timing window); 0: sized per setting so a loop "
                         "lasts about --loop_seconds (from the previous round's rate).")
    flags.DEFINE_integer("max_steps_per_loop", 100, "Most steps per loop when sized by time "
                         "(flags/cancernet_gpu.flags trains with 100).")
    flags.DEFINE_integer("timed_loops", 3, "Timed loops per run, after one untimed warm-up loop.")
    flags.DEFINE_float("loop_seconds", 10.0, "Target duration of one timed loop (with --steps=0).")
    flags.DEFINE_bool("keras_fit", True, "Time Keras model.fit, unfused and fused.")
    flags.DEFINE_bool("pipeline", True, "Time the input pipeline alone (for the headroom).")
    flags.DEFINE_float("pipeline_seconds", 1.5, "Each timed repetition of an input pipeline "
                       "lasts at least about this long.")
    flags.DEFINE_integer("synthetic_patients", 80, "Patients of the generated tree.")
    flags.DEFINE_integer("synthetic_min_patches", 150, "Fewest patches per generated patient.")
    flags.DEFINE_integer("synthetic_max_patches", 250, "Most patches per generated patient.")
    flags.DEFINE_integer("run_timeout", 1800, "Seconds before a training run is killed (failed).")
    flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
    flags.DEFINE_string("work_dir", None, "Scratch space (generated data, model dirs, logs of "
                        "every run); default: a temporary directory, deleted at the end.")
    quick.define_flag()


# Every setting and fit still run, each once, for one timed loop of a few steps of 16.
QUICK_SIZES = {"synthetic_patients": 6, "synthetic_min_patches": 40, "synthetic_max_patches": 60,
               "global_batch_size": 16, "repeats": 1, "timed_loops": 1, "loop_seconds": 0.1,
               "max_steps_per_loop": 4, "pipeline_seconds": 0.01}


# --- settings ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration: the reference's flags with `flags` on top (fit: the baseline's)."""
    name: str
    flags: tuple[str, ...]
    what: str
    # a first guess of its rate relative to the reference, to size the first round's loops
    # (later rounds use the rate measured)
    relative_speed: float = 1.0
    kind: str = "engine"  # or "fit"


REFERENCE_FLAGS = ("--strategy=default", "--num_cpu_devices=1", "--precision=float32",
                   "--xla=off", "--input_mode=device", "--augment=none", "--fused_batchnorm")

# What every engine run has besides: no validation, checkpoint or export inside the timed loops,
# and like for like with fit: plain Adam at a constant rate, unweighted loss.
FIXED_FLAGS = (f"--validation_every_steps={NEVER}", f"--checkpoint_every_steps={NEVER}",
               "--export=false", "--optimizer=adam", "--learning_rate=0.001",
               "--lr_schedule=constant", "--class_weights=none")

# idc_engine.train's own defaults for what REFERENCE_FLAGS and FIXED_FLAGS set
AS_TRAINED_FLAGS = ("--strategy=auto", "--precision=auto", "--xla=auto", "--input_mode=stream",
                    "--augment=pathology", "--lr_schedule=cosine", "--class_weights=balanced")

FIT_SETTINGS = (
    Setting(FIT, (), "Keras model.fit, Keras' BatchNorm: same graph as `unfused`",
            relative_speed=0.65, kind="fit"),
    Setting(FIT_FUSED, ("--fused_batchnorm",), "Keras model.fit with the engine's fused "
            "BatchNorm: same graph as the reference", kind="fit"),
)


def available_settings(num_gpus: int) -> dict[str, Setting]:
    """Every engine setting that can run on this machine's devices, by name."""
    on_cpu = num_gpus == 0
    settings = [
        Setting(REFERENCE, (), "one device, float32, XLA off, device-resident input, no "
                "augmentation, fused BatchNorm (the engine's default graph)"),
        Setting("unfused", ("--nofused_batchnorm",), "Keras' own BatchNorm: the graph Keras "
                "fit trains", relative_speed=0.65),
        Setting("pathology", ("--augment=pathology",), "+ the default on-device pathology "
                "augmentation"),
        Setting("as_trained", AS_TRAINED_FLAGS, "idc_engine.train's defaults: stream input, "
                "pathology augmentation, auto precision/XLA/strategy, cosine schedule, balanced "
                "class weights"),
        Setting("cache", ("--input_mode=cache",), "host-RAM tf.data input instead of "
                "device-resident"),
        Setting("stream", ("--input_mode=stream",), "tf.data from the shards instead of "
                "device-resident"),
        Setting("xla", ("--xla=on",), "the per-replica step jit-compiled",
                relative_speed=0.2 if on_cpu else 1.0),
        Setting("mixed_bfloat16", ("--precision=mixed_bfloat16",), "bfloat16 compute",
                relative_speed=0.3 if on_cpu else 1.5),
    ]
    if on_cpu:
        settings.append(Setting("mirrored_cpu", ("--strategy=mirrored", "--num_cpu_devices=2"),
                                "MirroredStrategy over 2 logical CPU devices"))
    else:
        settings += [
            Setting("mixed_float16", ("--precision=mixed_float16",), "float16 compute, loss "
                    "scaling", relative_speed=1.5),
            Setting("xla_mixed_float16", ("--xla=on", "--precision=mixed_float16"),
                    "XLA and float16 (auto's choice on compute capability 7.x)",
                    relative_speed=2.0),
            Setting("xla_mixed_bfloat16", ("--xla=on", "--precision=mixed_bfloat16"),
                    "XLA and bfloat16 (auto's choice on compute capability 8.0+)",
                    relative_speed=2.0),
        ]
        if num_gpus > 1:
            settings.append(Setting("mirrored_gpu", ("--strategy=mirrored",), f"MirroredStrategy "
                                    f"over {num_gpus} GPUs", relative_speed=num_gpus))
    return {s.name: s for s in settings}


def default_setting_names(num_gpus: int) -> list[str]:
    if num_gpus == 0:
        return ["unfused", "pathology", "as_trained", "mirrored_cpu", "xla", "mixed_bfloat16"]
    return ["unfused", "pathology", "as_trained", "xla", "mixed_float16", "mixed_bfloat16",
            "xla_mixed_float16", "xla_mixed_bfloat16"] + (
        ["mirrored_gpu"] if num_gpus > 1 else [])


def select_settings(requested: list[str], num_gpus: int, keras_fit: bool = True) -> list[Setting]:
    """The reference first, then the requested settings ('default' expands), each once; with
    keras_fit also `unfused` (fit's graph) and the two fit runs."""
    available = available_settings(num_gpus)
    names = [REFERENCE]
    for name in requested + (["unfused"] if keras_fit else []):
        for expanded in (default_setting_names(num_gpus) if name == "default" else [name]):
            if expanded not in available:
                raise app.UsageError(f"--settings: {expanded!r} is not available with "
                                     f"{num_gpus} GPUs; available: {', '.join(available)}")
            if expanded not in names:
                names.append(expanded)
    return [available[n] for n in names] + (list(FIT_SETTINGS) if keras_fit else [])


def round_order(settings: list[Setting]) -> list[str]:
    """Job order of a round: each pair of PAIRS run next to each other where possible."""
    names = [s.name for s in settings]
    first = [n for n in (FIT_FUSED, REFERENCE, "unfused", FIT) if n in names]
    return first + [n for n in names if n not in first]


def gpu_facts() -> list[dict]:
    """Name and compute capability of each GPU TensorFlow sees, asked of a child process so this
    one stays free of TensorFlow until the training runs are over (an idle TF runtime here would
    hold memory they need)."""
    out = subprocess.run(
        [sys.executable, "-c", "import json, tensorflow as tf; print(json.dumps(["
         "tf.config.experimental.get_device_details(g) "
         "for g in tf.config.list_physical_devices('GPU')]))"],
        capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
            f"--log_every_steps={steps_per_loop}", *FIXED_FLAGS, *REFERENCE_FLAGS,
            *setting.flags]


def fit_command(setting: Setting, data_dir: str, steps_per_loop: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.keras_fit_baseline", f"--data_dir={data_dir}",
            f"--model={FLAGS.model}", f"--global_batch_size={FLAGS.global_batch_size}",
            f"--window_steps={steps_per_loop}", f"--timed_windows={FLAGS.timed_loops}",
            *setting.flags]


def run_child(command: list[str], log_path: str) -> dict:
    """Runs one training process; returns its JSON summary plus wall_seconds and the loop rates
    its log printed, or {"error": ...}."""
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
    summary["log_text"] = result.stderr
    return summary


_LOOP_RATE = re.compile(r"step \d+/\d+ \(epoch [^)]*\):.*, ([\d,]+) img/s\s*$", re.MULTILINE)
_FUSED = re.compile(r"fused BatchNormalization in (\d+) layers")


def engine_loop_rates(log_text: str) -> list[float]:
    """img/s of each timed loop, from the engine's progress lines (one per loop here)."""
    return [float(m.replace(",", "")) for m in _LOOP_RATE.findall(log_text)]


def engine_graph(model_dir: str, log_text: str) -> dict:
    """The graph an engine run trained, read back from its last checkpoint and its log:
    parameters (trainable variables + BatchNorm moving statistics), BatchNorm layers (one
    moving mean each), and how many layers the engine fused (0 when it logged none)."""
    import tensorflow as tf

    from idc_engine.training.run_dir import RunDir

    path = tf.train.latest_checkpoint(RunDir(model_dir).checkpoints)
    if path is None:
        return {}
    parameters, batchnorms = 0, 0
    for name, shape in tf.train.list_variables(path):
        if name.startswith("optimizer/_trainable_variables/") or (
                name.startswith("model/") and "/moving_" in name):
            parameters += math.prod(shape)
        batchnorms += name.startswith("model/") and "/moving_mean/" in name
    fused = _FUSED.search(log_text)
    return {"parameters": parameters, "batchnorm_layers": batchnorms,
            "fused_batchnorm_layers": int(fused.group(1)) if fused else 0}


def steps_for(rate: float | None, guess: float) -> int:
    """Steps per loop so that one loop lasts about --loop_seconds at `rate` img/s (or the guess)."""
    if FLAGS.steps:
        return FLAGS.steps
    return max(1, min(FLAGS.max_steps_per_loop,
                      round(FLAGS.loop_seconds * (rate or guess) / FLAGS.global_batch_size)))


# --- the input pipeline alone ------------------------------------------------------------------

def pipeline_rates(data_dir: str, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """img/s of the engine's input alone at the global batch: {mode: (median, all)}.

    Drained inside one tf.function per call (benchmarks.input_pipeline's way), so Python per
    batch does not cap the rate; warm-up excluded; each repetition lasts --pipeline_seconds.
    """
    import gc

    from benchmarks.input_pipeline import dataset_steps, sampler_steps
    from idc_engine.input import pipeline

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
    from idc_engine.data import conversion, manifest, synthetic

    tree, data_dir = os.path.join(work, "tree"), os.path.join(work, "tfrecords")
    if not os.path.exists(manifest.manifest_path(data_dir)):
        start = time.perf_counter()
        shutil.rmtree(tree, ignore_errors=True)
        summary = synthetic.write_dataset(tree, num_patients=FLAGS.synthetic_patients, seed=0,
                                          min_patches=FLAGS.synthetic_min_patches,
                                          max_patches=FLAGS.synthetic_max_patches)
        conversion.convert_tree(tree, data_dir, overwrite=True, progress=False)
        logging.info("generated and converted %d patches in %.1f s into %s",
                     summary["num_patches"], time.perf_counter() - start, data_dir)
    return data_dir


# --- the rounds --------------------------------------------------------------------------------

def run_rounds(settings: list[Setting], data_dir: str, work: str, guess: float) -> dict:
    """Every setting once per round, --repeats rounds; {name: [summary of each round]}."""
    by_name = {s.name: s for s in settings}
    jobs = round_order(settings)
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    last_rate: dict[str, float] = {}
    for round_index in range(FLAGS.repeats):
        for name in (jobs if round_index % 2 == 0 else jobs[::-1]):
            setting = by_name[name]
            steps = steps_for(last_rate.get(name), guess * setting.relative_speed)
            run_dir = os.path.join(work, "runs", f"{name}_{round_index}")
            shutil.rmtree(run_dir, ignore_errors=True)  # a model_dir with checkpoints resumes
            os.makedirs(run_dir)
            model_dir = os.path.join(run_dir, "model")
            command = (fit_command(setting, data_dir, steps) if setting.kind == "fit" else
                       engine_command(setting, data_dir, model_dir, steps))
            summary = run_child(command, os.path.join(run_dir, "log.txt"))
            summary.update(steps_per_loop=steps, model_dir=model_dir, kind=setting.kind)
            runs[name].append(summary)
            rate = summary.get("images_per_sec")
            if rate:
                last_rate[name] = rate
                logging.info("round %d %-18s %8.1f img/s  (%d steps/loop, %.0f s)", round_index,
                             name, rate, steps, summary["wall_seconds"])
            else:
                logging.warning("round %d %s failed: %s", round_index, name,
                                summary.get("error", "no images_per_sec"))
    return runs


def add_graphs(runs: dict) -> None:
    """Each successful run gets its "graph" (fit reports its own; the engine's is read back)."""
    for summaries in runs.values():
        for summary in summaries:
            if summary.get("kind") == "engine" and summary.get("images_per_sec"):
                summary["graph"] = engine_graph(summary["model_dir"], summary.get("log_text", ""))


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "all": [round(v, 3) for v in values]}


def rates_of(runs: dict, name: str) -> list[float]:
    return [r["images_per_sec"] for r in runs.get(name, []) if r.get("images_per_sec")]


def details(runs: dict, name: str) -> dict:
    """Per-setting details for the JSON: rates with spread, loops, graph, what auto resolved."""
    done = runs[name]
    out = {"rates": spread(rates_of(runs, name)) if rates_of(runs, name) else None,
           "loop_rates": [r.get("window_rates") or engine_loop_rates(r.get("log_text", ""))
                          for r in done],
           "steps_per_loop": [r["steps_per_loop"] for r in done],
           "wall_seconds": [round(r.get("wall_seconds", 0.0), 1) for r in done]}
    graphs = [r["graph"] for r in done if r.get("graph")]
    if graphs:
        out["graph"] = graphs[0] if all(g == graphs[0] for g in graphs) else graphs
    for key in ("replicas", "precision", "xla", "strategy"):
        values = {str(r[key]) for r in done if key in r}
        if values:
            out[key] = ",".join(sorted(values))
    errors = [r["error"] for r in done if "error" in r]
    if errors:
        out["errors"] = errors
    return out


def paired_ratio(runs: dict, numerator: str, denominator: str) -> list[float]:
    """numerator / denominator img/s of each round where both ran."""
    return [a["images_per_sec"] / b["images_per_sec"]
            for a, b in zip(runs.get(numerator, []), runs.get(denominator, []))
            if a.get("images_per_sec") and b.get("images_per_sec")]


def same_graph(runs: dict, numerator: str, denominator: str) -> str | None:
    """None when every run of both jobs trained one graph; else what differs."""
    graphs = {json.dumps(r.get("graph"), sort_keys=True)
              for name in (numerator, denominator) for r in runs.get(name, [])
              if r.get("images_per_sec")}
    return None if len(graphs) == 1 else f"graph_mismatch: {sorted(graphs)}"


# --- main --------------------------------------------------------------------------------------

def add_ratio(report, key: str, runs: dict, numerator: str, denominator: str,
              check_graph: bool) -> None:
    """The median per-round ratio (with spread) and the ratio of medians, if both ran and (with
    check_graph) trained the same graph."""
    ratios = paired_ratio(runs, numerator, denominator)
    if not ratios:
        return
    mismatch = same_graph(runs, numerator, denominator) if check_graph else None
    if mismatch:
        report.details[key] = {"not_reported": mismatch}
        logging.error("%s not reported: %s", key, mismatch)
        return
    report.add(key, statistics.median(ratios), numerator=numerator, denominator=denominator,
               per_round=spread(ratios))
    report.add(f"{key}_of_medians", statistics.median(rates_of(runs, numerator))
               / statistics.median(rates_of(runs, denominator)))


def write_report(settings: list[Setting], runs: dict, pipelines: dict, data_dir: str,
                 config: dict):
    from benchmarks.report import BenchmarkReport
    from idc_engine.data import manifest as manifest_lib

    manifest = manifest_lib.load_manifest(data_dir)
    report = BenchmarkReport("train_step", FLAGS.output_dir, config={
        **config, "quick": FLAGS.quick, "model": FLAGS.model,
        "global_batch_size": FLAGS.global_batch_size,
        "data_dir": os.path.abspath(data_dir),
        "train_examples": manifest["splits"]["train"]["num_examples"],
        "repeats": FLAGS.repeats, "timed_loops": FLAGS.timed_loops,
        "loop_seconds": FLAGS.loop_seconds, "steps": FLAGS.steps,
        "max_steps_per_loop": FLAGS.max_steps_per_loop,
        "settings": {s.name: {"kind": s.kind, "what": s.what,
                              "flags": list((REFERENCE_FLAGS if s.kind == "engine" else ())
                                            + s.flags)} for s in settings},
        "engine_command_example": " ".join(engine_command(settings[0], data_dir, "MODEL_DIR", 4)),
        "fit_command_example": " ".join(fit_command(FIT_SETTINGS[0], data_dir, 4))})
    names = {s.name: s for s in settings}
    for name in round_order(settings):
        rates = rates_of(runs, name)
        key = ("engine_img_per_s" if name == REFERENCE else f"{name}_img_per_s"
               if names[name].kind == "fit" else f"engine_{name}_img_per_s")
        if rates:
            report.add(key, statistics.median(rates), **details(runs, name))
        else:
            report.details[key] = details(runs, name)
    for key, numerator, denominator in PAIRS:
        add_ratio(report, key, runs, numerator, denominator, check_graph=key != PAIRS[2][0])
    for setting in settings[1:]:
        if setting.kind == "engine" and setting.name != "unfused":
            add_ratio(report, f"engine_{setting.name}_vs_reference", runs, setting.name,
                      REFERENCE, check_graph=False)
    reference = median_or_none(rates_of(runs, REFERENCE))
    for mode, (rate, all_rates) in pipelines.items():
        report.add(f"pipeline_{mode}_img_per_s", rate, rates=[round(r) for r in all_rates])
        if reference:
            report.add(f"headroom_{mode}", rate / reference)
    return report


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quick.apply(QUICK_SIZES)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    gpus = gpu_facts()
    num_gpus = len(gpus)
    settings = select_settings(FLAGS.settings, num_gpus, FLAGS.keras_fit)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="idc_bench_train_step_")
    os.makedirs(work, exist_ok=True)
    data_dir = FLAGS.data_dir or synthetic_data(work)
    guess = 400.0 if num_gpus == 0 else 5000.0 * num_gpus  # img/s of the reference, first round

    runs = run_rounds(settings, data_dir, work, guess)
    training_seconds = time.perf_counter() - started
    add_graphs(runs)
    pipelines = pipeline_rates(data_dir, FLAGS.repeats) if FLAGS.pipeline else {}
    report = write_report(settings, runs, pipelines, data_dir, config={
        "gpus": gpus, "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "training_runs_seconds": round(training_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1)})
    report.write()
    if FLAGS.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
