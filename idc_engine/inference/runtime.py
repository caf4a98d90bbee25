"""Which runtime serves an export: the SavedModel (TensorFlow) or its int8 model (LiteRT, CPU).

    --runtime=savedmodel   the SavedModel, everywhere
    --runtime=int8         the int8 model; refused (an error naming int8_parity.json and its
                           reason) when the export has none or parity did not hold
    --runtime=auto         the int8 model on a machine without a GPU when parity held at export
                           (training/int8_export.py); else the SavedModel, and the reason why

Both serve the same interface (outputs(images) -> {"idc_probability", ...}; __call__), so
predict, evaluate and slide use either unchanged. The choice and its reason are logged and
written into every output (Runtime.record).
"""

import dataclasses
import json
import os

from absl import logging

from idc_engine.training import run_dir

RUNTIMES = ("savedmodel", "int8", "auto")
HELP = ("Which runtime serves the export: savedmodel (TensorFlow), int8 (the export's int8 "
        "LiteRT model, CPU; refused when parity with the SavedModel did not hold at export, "
        "see <export>/int8_parity.json), or auto (int8 on a machine without a GPU when parity "
        "held, else the SavedModel). The choice and its reason go into the outputs.")


@dataclasses.dataclass(frozen=True)
class Runtime:
    name: str    # "savedmodel" or "int8"
    reason: str  # why, in words

    def record(self) -> dict:
        return {"runtime": self.name, "runtime_reason": self.reason}


def check_flag(requested: str) -> None:
    """Raises run_dir.ExportError naming --runtime for a value not in RUNTIMES."""
    if requested not in RUNTIMES:
        raise run_dir.ExportError(f"--runtime={requested!r}: use one of {', '.join(RUNTIMES)}")


def _parity(paths: run_dir.ExportPaths) -> dict | None:
    """int8_parity.json, or None when the export has no int8 model (exported before it)."""
    if not (os.path.isfile(paths.int8_parity) and os.path.isfile(paths.int8)):
        return None
    with open(paths.int8_parity) as f:
        return json.load(f)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose(paths: run_dir.ExportPaths, requested: str) -> Runtime:
    """The runtime --runtime=requested gives for this export (logged). Raises ExportError for
    --runtime=int8 without an offered int8 model."""
    check_flag(requested)
    if requested == "savedmodel":
        runtime = Runtime("savedmodel", "--runtime=savedmodel")
    else:
        runtime = _int8_or_fallback(paths, requested)
    logging.info("runtime: %s (%s)", runtime.name, runtime.reason)
    return runtime


def _int8_or_fallback(paths: run_dir.ExportPaths, requested: str) -> Runtime:
    parity = _parity(paths)
    if parity is None:
        missing = f"the export has no int8 model ({paths.int8}, {paths.int8_parity})"
        if requested == "int8":
            raise run_dir.ExportError(f"--runtime=int8: {missing}; re-export the model with "
                                      "python -m idc_engine.train, or use --runtime=savedmodel")
        return Runtime("savedmodel", f"auto: {missing}")
    if not parity.get("offered"):
        why = f"{paths.int8_parity}: the int8 model is not offered: {parity.get('reason')}"
        if requested == "int8":
            raise run_dir.ExportError(f"--runtime=int8 refused: {why}")
        return Runtime("savedmodel", f"auto: {why}")
    if requested == "int8":
        return Runtime("int8", f"--runtime=int8; parity at export: {parity['reason']}")
    if _has_gpu():
        return Runtime("savedmodel", "auto: a GPU is visible, where the SavedModel runs")
    return Runtime("int8", f"auto: no GPU, and parity held at export: {parity['reason']}")


def load(paths: run_dir.ExportPaths, runtime: Runtime, num_threads: int | None = None):
    """The served model of `runtime`: serving.ServedModel or training.int8_model.Int8Model."""
    if runtime.name == "int8":
        from idc_engine.training.int8_model import Int8Model

        return Int8Model(paths, num_threads)
    from idc_engine.inference.serving import ServedModel

    return ServedModel(paths.saved_model)
