"""The exported int8 model as a CPU serves it: to its caller it is the SavedModel, uint8
patches in, the calibrated IDC probability out (training/int8_export.py writes it).

    uint8 [N, 50, 50, 3]
      -> model_input: (x - mean) / std in numpy when the export has no stain normalisation and
         no resize (the same float32 arithmetic), else TensorFlow's model_input
      -> model_int8.tflite in LiteRT (XNNPACK): the network up to the head's ReLU, int8 inside,
         float32 [N, 256] out
      -> model_int8_head.npz: the head's BatchNorm folded into the last Dense, float32
         [256, 2] (512 multiply-adds a patch), then the softmax: P(IDC) before calibration
      -> scoring/calibration.py's calibrate, float64, as the SavedModel computes it

What runs around the interpreter does so because LiteRT's builtins lack it (Macenko's eigh,
float64) or because int8 breaks it (the head's BatchNorm: see int8_export.py).
"""

import json
import os

import numpy as np

from idc_engine.data import records
from idc_engine.scoring import calibration
from idc_engine.training import run_dir

UNCALIBRATED = "idc_probability_uncalibrated"


def default_threads() -> int:
    """TensorFlow's intra-op thread count when the environment sets it, else the usable cores."""
    return int(os.environ.get("TF_NUM_INTRAOP_THREADS") or len(os.sched_getaffinity(0)))


class Network:
    """A LiteRT model with one float32 input and one float32 output, resized to each batch."""

    def __init__(self, content: bytes | None = None, path: str | None = None,
                 num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=content, model_path=path,
                                        num_threads=num_threads or default_threads())
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, ...] -> float32 [N, ...]: the model's output."""
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != self._batch:
            self._interpreter.resize_tensor_input(self._input, x.shape)
            self._interpreter.allocate_tensors()
            self._batch = x.shape
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)


def softmax_idc(logits: np.ndarray) -> np.ndarray:
    """float32 [N, 2] logits -> float32 [N]: the softmax's P(IDC), as Keras computes it."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


class Int8Model:
    """The int8 export of `paths` (run_dir.ExportPaths), with the SavedModel's interface:
    outputs(images) -> {"idc_probability", "idc_probability_uncalibrated"}; __call__."""

    def __init__(self, paths: run_dir.ExportPaths, num_threads: int | None = None):
        try:
            with open(paths.preprocessing) as f:
                self._preprocessing = json.load(f)
            with np.load(paths.int8_head) as head:
                self._weight, self._bias = head["weight"], head["bias"]
            self._network = Network(path=paths.int8, num_threads=num_threads)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise run_dir.ExportError(f"cannot load the int8 model in {paths.export_dir!r} "
                                      f"({paths.int8}, {paths.int8_head}): {e}") from e
        self._calibration = _calibration(paths.calibration)
        self._tf_input = None

    def model_input(self, images) -> np.ndarray:
        """uint8 [N, 50, 50, 3] -> float32 [N, S, S, 3], what the network eats."""
        pre = self._preprocessing
        stain = pre.get("stain_normalization") or {"method": "none"}
        if stain["method"] == "none" and pre["image_size"] == records.PATCH_SIZE:
            mean = np.asarray(pre["channel_mean"], np.float32)
            inv_std = np.float32(1.0) / np.asarray(pre["channel_std"], np.float32)
            return (np.asarray(images, np.float32) - mean) * inv_std
        if self._tf_input is None:
            self._tf_input = _tf_model_input(pre, stain)
        return self._tf_input(images).numpy()

    def uncalibrated(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, S, S, 3] (model_input's) -> float32 [N]: the network's P(IDC)."""
        return softmax_idc(self._network(x) @ self._weight + self._bias)

    def outputs(self, images) -> dict:
        """images uint8 [N, 50, 50, 3] (numpy or tensor) -> {output name: float32 [N]}."""
        images = np.asarray(images)
        if not len(images):
            empty = np.zeros(0, np.float32)
            return {"idc_probability": empty, UNCALIBRATED: empty}
        p = self.uncalibrated(self.model_input(images))
        temperature, shift = self._calibration
        return {"idc_probability": calibration.calibrate(p, temperature, shift).astype(np.float32),
                UNCALIBRATED: p}

    def __call__(self, images) -> np.ndarray:
        """images uint8 [N, 50, 50, 3] -> float32 [N], the calibrated P(IDC)."""
        return self.outputs(images)["idc_probability"]


def _calibration(path: str) -> tuple[float, float]:
    """(temperature, prior shift) of calibration.json; (1, 0), the identity, without one."""
    if not os.path.isfile(path):
        return 1.0, 0.0
    with open(path) as f:
        fitted = json.load(f)
    return float(fitted["temperature"]), float(fitted["prior_shift"])


def _tf_model_input(pre: dict, stain: dict):
    """TensorFlow's model_input for this export: uint8 [N, 50, 50, 3] -> float32 tensor."""
    import tensorflow as tf

    from idc_engine.models.preprocessing import model_input

    stain = None if stain["method"] == "none" else stain

    @tf.function(input_signature=[tf.TensorSpec([None, *records.IMAGE_SHAPE], tf.uint8)])
    def preprocess(images):
        return model_input(images, pre["image_size"], pre["channel_mean"], pre["channel_std"],
                           stain=stain)

    return preprocess
