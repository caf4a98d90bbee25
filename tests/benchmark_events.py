"""A benchmark's TensorBoard folder read back with TensorFlow's own event reader, for the tests.

    <tensorboard>/<benchmark>/            root run: layout, provenance text, step-<n>.json
    <tensorboard>/<benchmark>/<setting>/  a run per setting
"""

import glob
import os

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata


def events(run_dir: str) -> list:
    """Every Event of the run's event files (not its sub-runs'), in file order."""
    paths = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    return [event for path in paths for event in tf.compat.v1.train.summary_iterator(path)]


def values(run_dir: str) -> dict[str, list]:
    """{tag: [(step, summary value), ...]} of the run."""
    out: dict[str, list] = {}
    for event in events(run_dir):
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value))
    return out


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the run's scalar summaries."""
    return {tag: [(step, float(tf.make_ndarray(v.tensor))) for step, v in points]
            for tag, points in values(run_dir).items()
            if points[0][1].metadata.plugin_data.plugin_name == "scalars"}


def setting_runs(benchmark_dir: str) -> dict[str, dict]:
    """{setting run: its scalars} of every sub-folder holding event files."""
    return {name: scalars(os.path.join(benchmark_dir, name))
            for name in sorted(os.listdir(benchmark_dir))
            if glob.glob(os.path.join(benchmark_dir, name, "events.out.tfevents.*"))}


def layouts(benchmark_dir: str) -> list:
    """The custom-scalars Layout protos of the root run, oldest first."""
    out = []
    for _, value in values(benchmark_dir).get("custom_scalars__config__", []):
        layout = layout_pb2.Layout()
        layout.ParseFromString(tf.make_ndarray(value.tensor).item())
        out.append(layout)
    return out


def texts(run_dir: str, tag: str) -> list[tuple[int, str]]:
    """[(step, text)] of a text summary."""
    return [(step, tf.make_ndarray(v.tensor).item().decode())
            for step, v in values(run_dir).get(tag, [])]


def hparams(run_dir: str) -> list[dict]:
    """Each HParams session start of the run, as {name: value}."""
    out = []
    for _, value in values(run_dir).get(hparams_metadata.SESSION_START_INFO_TAG, []):
        info = hparams_metadata.parse_session_start_info_plugin_data(
            value.metadata.plugin_data.content)
        out.append({name: getattr(v, v.WhichOneof("kind")) for name, v in info.hparams.items()})
    return out
