"""The model directory a training run writes and every later stage reads: its one layout.

    <model_dir>/checkpoints/              the latest checkpoints (resume from here)
    <model_dir>/best/                     the best validation's checkpoint
    <model_dir>/best.json                 that validation's metrics and step
    <model_dir>/config.json               the run's resolved flags
    <model_dir>/tensorboard/              every summary
    <model_dir>/profile/                  the profiler trace of --profile_steps
    <model_dir>/export/model.keras        the Keras model (input: normalized float images)
    <model_dir>/export/saved_model/       serving_default: uint8 [N, 50, 50, 3] -> idc_probability
                                          (calibrated) and idc_probability_uncalibrated
    <model_dir>/export/calibration.json   its temperature and prior shift, fitted on val
    <model_dir>/export/model_int8.tflite  the network quantized to int8 for CPUs (LiteRT), with
    <model_dir>/export/model_int8_head.npz  its float32 last layer, and
    <model_dir>/export/int8_parity.json   its parity with the SavedModel on val: offered or not
    <model_dir>/export/preprocessing.json image_size, channel mean/std: what model.keras expects
    <model_dir>/export/threshold.json     the decision threshold predict applies: chosen on the
                                          val split by training's best validation, then by
                                          python -m idc_engine.evaluate
    <model_dir>/evaluation/<split>/       python -m idc_engine.evaluate's report of a split
    <model_dir>/tensorboard/evaluation_<split>/  and its TensorBoard summaries
"""

import dataclasses
import json
import os

from idc_engine import atomic_files, errors

EXPORT = "export"
THRESHOLD_FILE = "threshold.json"
DEFAULT_THRESHOLD = 0.5


class ExportError(errors.EngineError, ValueError):
    """An export that is missing or cannot be used; the message names the path."""


class ModelNotFoundError(ExportError):
    """--model does not lead to an export; the message says what was looked for."""


class RunDir:
    """Paths under one training run's --model_dir (the layout above)."""

    def __init__(self, root: str):
        self.root = root
        self.checkpoints = os.path.join(root, "checkpoints")
        self.best_checkpoint = os.path.join(root, "best")
        self.best_json = os.path.join(root, "best.json")
        self.config_json = os.path.join(root, "config.json")
        self.tensorboard = os.path.join(root, "tensorboard")
        self.profile = os.path.join(root, "profile")
        self.export = ExportPaths.of(os.path.join(root, EXPORT))

    def evaluation(self, split: str) -> str:
        return os.path.join(self.root, "evaluation", split)

    def evaluation_tensorboard(self, split: str) -> str:
        return os.path.join(self.tensorboard, f"evaluation_{split}")


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    """The artefacts of one export (idc_engine/training/export.py writes them); some may be absent."""
    export_dir: str
    saved_model: str
    keras: str
    preprocessing: str
    threshold: str
    calibration: str  # the temperature and prior shift the SavedModel applies, how fitted
    int8: str         # the int8 LiteRT network (training/int8_model.py serves it)
    int8_head: str    # its float32 last layer
    int8_parity: str  # whether it is offered (training/int8_export.py)

    @classmethod
    def of(cls, export_dir: str) -> "ExportPaths":
        return cls(export_dir, os.path.join(export_dir, "saved_model"),
                   os.path.join(export_dir, "model.keras"),
                   os.path.join(export_dir, "preprocessing.json"),
                   os.path.join(export_dir, THRESHOLD_FILE),
                   os.path.join(export_dir, "calibration.json"),
                   os.path.join(export_dir, "model_int8.tflite"),
                   os.path.join(export_dir, "model_int8_head.npz"),
                   os.path.join(export_dir, "int8_parity.json"))


def find_export(model: str) -> ExportPaths:
    """--model (a model_dir, its export/ dir, or a saved_model dir) -> the export's paths.

    Raises ModelNotFoundError naming what was looked for when there is no SavedModel.
    """
    model = os.path.abspath(os.path.expanduser(model))
    for export_dir in (model, os.path.join(model, EXPORT)):
        if os.path.isfile(os.path.join(export_dir, "saved_model", "saved_model.pb")):
            return ExportPaths.of(export_dir)
    if os.path.isfile(os.path.join(model, "saved_model.pb")):  # export/saved_model itself
        return ExportPaths.of(os.path.dirname(model))
    raise ModelNotFoundError(
        f"--model={model!r}: no SavedModel at {model}/export/saved_model, "
        f"{model}/saved_model or {model}; give a training run's --model_dir or its "
        "export/ folder (python -m idc_engine.train writes it at the end)")


@dataclasses.dataclass(frozen=True)
class Threshold:
    value: float
    source: str          # the threshold.json path, "--threshold", or "default"

    def describe(self) -> str:
        if self.source == "default":
            return (f"{self.value:g} (default: no {THRESHOLD_FILE} in the export; training "
                    "and python -m idc_engine.evaluate choose one on the validation split)")
        return f"{self.value:g} (from {self.source})"


def load_threshold(paths: ExportPaths, override: float | None = None) -> Threshold:
    """The decision threshold: `override`, else threshold.json's "threshold", else 0.5.

    Raises ExportError for a threshold.json without a usable "threshold" in [0, 1].
    """
    if override is not None:
        value, source = float(override), "--threshold"
    elif os.path.isfile(paths.threshold):
        try:
            with open(paths.threshold) as f:
                value = float(json.load(f)["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{paths.threshold!r} has no usable \"threshold\" ({e!r})") from None
        source = paths.threshold
    else:
        value, source = DEFAULT_THRESHOLD, "default"
    if not 0.0 <= value <= 1.0:
        raise ExportError(f"threshold {value} (from {source}) is not in [0, 1]")
    return Threshold(value, source)


def write_threshold(export_dir: str, record: dict) -> str:
    """Writes export_dir/threshold.json ({"threshold": float, ...}) atomically and durably."""
    path = ExportPaths.of(export_dir).threshold
    atomic_files.write_json_atomically(path, record)
    return path


def load_preprocessing(paths: ExportPaths) -> dict:
    """preprocessing.json: {"image_size", "channel_mean", "channel_std"} that model.keras expects."""
    with open(paths.preprocessing) as f:
        return json.load(f)
