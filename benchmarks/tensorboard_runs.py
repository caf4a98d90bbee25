"""A benchmark's figures as TensorBoard runs a person compares at a glance, one point per run.

    <output_dir>/tensorboard/<benchmark>/            layout, provenance text, step-<n>.json
    <output_dir>/tensorboard/<benchmark>/<setting>/  one run per setting: engine, keras_fit, ...

Each benchmark declares its charts once (`CHARTS` in its module):

    CHARTS = {  # chart tag -> {setting run: figure key of report.add}
        "throughput/images_per_s": {"engine": "engine_img_per_s",
                                    "keras_fit": "keras_fit_img_per_s"},
        "ratio/engine_vs_keras_fit": {"ratios": "engine_vs_fit_same_graph"},
    }

Every setting of a chart writes the same tag (`<benchmark>/<chart tag>`), so TensorBoard draws
them on one chart; the custom-scalars layout gives each benchmark a category holding a chart
per tag, in this order. `{name}` in a figure key matches a part of the key
(`engine_{setting}_img_per_s`) and fills the same `{name}` in the run (a line per setting) or
the tag (a chart per value): one declaration for a family of figures. Exact keys are looked up
first, then patterns in declaration order. A figure no chart declares goes to the run `other`
under `other/<key>`, so nothing reported is lost.

The step is the run's number in that folder: `step-<n>.json` files (each a copy of that run's
record) are claimed with an exclusive create, so every rerun adds a point after the last one on
disk, and two runs writing the same folder at once get different steps. The root run holds the
layout and, at each step, a text table of where the figures came from (commit, machine, flags,
config); each setting run holds HParams (benchmark, setting, machine) written with its first
point, which is the one the HParams dashboard shows.
"""

import glob
import json
import os
import re
import typing

OTHER_RUN = "other"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_STEP_FILE = re.compile(r"step-(\d+)\.json\Z")


def ratio_charts(*keys: str, run: str = "ratios") -> dict:
    """A chart `ratio/<key>` per ratio figure, each in the run `ratios`."""
    return {f"ratio/{key}": {run: key} for key in keys}


def _template_regex(template: str) -> str:
    """`engine_{setting}_img_per_s` -> `engine_(?P<setting>.+?)_img_per_s` (no anchors)."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ...
    return "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)"
                   for i, part in enumerate(parts))


def check_charts(charts: dict) -> dict:
    """`charts` itself, or ValueError naming a run or tag whose placeholder its figure lacks."""
    for tag, runs in charts.items():
        for run, figure in runs.items():
            missing = set(_PLACEHOLDER.findall(tag + run)) - set(_PLACEHOLDER.findall(figure))
            if missing:
                raise ValueError(f"chart {tag!r}, run {run!r}: {sorted(missing)} not in the "
                                 f"figure key {figure!r}")
    return charts


class Placed(typing.NamedTuple):
    """Where one figure goes: its setting run, its full tag `<benchmark>/<chart tag>`, and the
    index of the chart declaration that placed it (len(charts) for an undeclared figure)."""
    key: str
    run: str
    tag: str
    chart: int
    value: float


def place(charts: dict, key: str) -> tuple[str, str, int] | None:
    """(setting run, chart tag without the benchmark, index of its declaration) of figure
    `key`, or None if no chart declares it."""
    for index, (tag, runs) in enumerate(charts.items()):
        for run, figure in runs.items():
            if figure == key:
                return run, tag, index
    for index, (tag, runs) in enumerate(charts.items()):
        for run, figure in runs.items():
            found = re.fullmatch(_template_regex(figure), key)
            if found:
                return _fill(run, found), _fill(tag, found), index
    return None


def _fill(template: str, found: re.Match) -> str:
    """`template` with each `{name}` replaced by what `found` matched for it."""
    return _PLACEHOLDER.sub(lambda placeholder: found.group(placeholder.group(1)), template)


def placed_figures(benchmark: str, charts: dict, results: dict) -> list[Placed]:
    """Every figure of `results` placed; undeclared ones in OTHER_RUN under `other/<key>`."""
    placed = []
    for key, value in results.items():
        run, tag, chart = place(charts, key) or (OTHER_RUN, f"{OTHER_RUN}/{key}", len(charts))
        placed.append(Placed(key, run, f"{benchmark}/{tag}", chart, value))
    return placed


def by_run(placed: list[Placed]) -> dict[str, dict[str, float]]:
    """{setting run: {full tag: value}}."""
    runs: dict[str, dict[str, float]] = {}
    for figure in placed:
        runs.setdefault(figure.run, {})[figure.tag] = figure.value
    return runs


def layout(benchmark: str, placed: list[Placed]):
    """The custom-scalars Layout: the benchmark's category, a multiline chart per tag written
    (every run writing it is a line), in the order the charts are declared."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    declared: dict[str, int] = {}
    for figure in placed:
        declared.setdefault(figure.tag, figure.chart)
    tags = sorted(declared, key=declared.get)  # stable: first appearance within a declaration
    return layout_pb2.Layout(category=[layout_pb2.Category(title=benchmark, chart=[
        layout_pb2.Chart(title=tag.removeprefix(f"{benchmark}/"),
                         multiline=layout_pb2.MultilineChartContent(tag=[f"^{re.escape(tag)}$"]))
        for tag in tags])])


def claim_step(benchmark_dir: str) -> int:
    """The next run number of this folder (one past the highest step-<n>.json on disk),
    claimed by creating its file exclusively: a concurrent writer gets the one after."""
    os.makedirs(benchmark_dir, exist_ok=True)
    taken = [int(m.group(1)) for m in map(_STEP_FILE.match, os.listdir(benchmark_dir)) if m]
    step = max(taken, default=-1) + 1
    while True:
        try:
            os.close(os.open(step_file(benchmark_dir, step), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return step
        except FileExistsError:
            step += 1


def step_file(benchmark_dir: str, step: int) -> str:
    return os.path.join(benchmark_dir, f"step-{step:06d}.json")


def _has_events(run_dir: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(run_dir), "events.out.tfevents.*")))


def setting_hparams(benchmark: str, run: str, record: dict) -> dict:
    """What a setting run is and where its first point was measured (HParams values: str,
    int, float or bool)."""
    machine = record.get("machine", {})
    values = {"benchmark": benchmark, "setting": run, "cpu_model": machine.get("cpu_model"),
              "cpus": machine.get("cpus"), "cpus_usable": machine.get("cpus_usable"),
              "cpu_flags": " ".join(machine.get("cpu_flags") or []) or "none",
              "memory_gb": machine.get("memory_gb"),
              "gpus": ", ".join(machine.get("gpus") or []) or "none",
              "quick": bool(record.get("config", {}).get("quick", False))}
    return {key: value for key, value in values.items() if value is not None}


def provenance_markdown(record: dict, step: int, placed: list[Placed]) -> str:
    """The text shown at `step`: when, which commit, which machine, flags, config, and where
    each figure went (run, tag)."""
    git, machine = record.get("git", {}), record.get("machine", {})
    commit = git.get("commit") or "unknown (not a git checkout)"
    if git.get("dirty"):
        commit += " + uncommitted changes"
    cpu = (f"{machine.get('cpu_model')}, {machine.get('cpus')} cores "
           f"({machine.get('cpus_usable')} usable), {' '.join(machine.get('cpu_flags') or [])}, "
           f"{machine.get('memory_gb')} GB")
    flags = " ".join(f"--{name}={value}" for name, value in record.get("flags", {}).items())
    lines = [f"**{record['benchmark']}**, run {step}, {record['time']}", "",
             "| | |", "|---|---|", f"| commit | {commit} |", f"| CPU | {cpu} |",
             f"| GPUs | {', '.join(machine.get('gpus') or []) or 'none'} |",
             f"| platform | {machine.get('platform')}, Python {machine.get('python')} |",
             f"| flags (not default) | {flags or 'none'} |", "",
             "| run | tag | value |", "|---|---|---|"]
    lines += [f"| {figure.run} | {figure.tag} | {figure.value:.6g} |" for figure in placed]
    config = json.dumps(record.get("config", {}), indent=1)
    return "\n".join(lines + ["", "config:", "", *("    " + line for line in config.splitlines())])


def write(benchmark_dir: str, benchmark: str, charts: dict, results: dict, step: int,
          record: dict) -> dict[str, dict[str, float]]:
    """Every figure at `step` in its setting run, the layout and the provenance text in the
    root run; returns {run: {tag: value}} as written."""
    import tensorflow as tf
    from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
    from tensorboard.plugins.hparams import api as hparams_api

    placed = placed_figures(benchmark, charts, results)
    runs = by_run(placed)
    for run, scalars in runs.items():
        run_dir = os.path.join(benchmark_dir, run)
        first_point = not _has_events(run_dir)
        writer = tf.summary.create_file_writer(run_dir)
        with writer.as_default():
            if first_point:
                hparams_api.hparams(setting_hparams(benchmark, run, record),
                                    trial_id=f"{benchmark}/{run}")
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value, step=step)
        writer.close()
    writer = tf.summary.create_file_writer(benchmark_dir)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(
            custom_scalar_summary.pb(layout(benchmark, placed)).SerializeToString(), step=step)
        tf.summary.text(f"{benchmark}/provenance", provenance_markdown(record, step, placed),
                        step=step)
    writer.close()
    return runs
