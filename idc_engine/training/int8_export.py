"""The int8 export: CancerNet quantized for CPUs, and its parity with the SavedModel on val.

Post-training full-int8 quantization (weights per channel, activations per tensor, calibrated
on patches of every train patient) of a network rearranged first, in float32, so that int8
can hold it:

- Each BatchNorm after a ReLU (CancerNet's order) is folded into the layer before it:
  s * relu(z) + t = sign(s) * relu(|s| * z) + t, |s| into that conv's pointwise weights and
  bias, leaving a per-channel shift (and a sign, only for channels with s < 0). Quantized as
  they are, each such BatchNorm is an int8 multiply and an int8 add, two more roundings per
  layer; folded, the demo model's largest |dP| on val fell from 0.25 to 0.06 and it ran
  faster (one op less per layer).
- The head's BatchNorm and the final Dense stay float32, outside the int8 network
  (model_int8_head.npz, int8_model.py): that BatchNorm has channels of near-zero variance
  (scale up to ~32), and folded into the Dense as int8 they drown the other weights; everything
  in int8 moved the demo model's decisions on 7% of val patches.

Measured on the demo model (val, calibrated P(IDC), at the exported threshold): the naive
full-int8 model 93.1% of decisions agreeing outside threshold +- 0.02; the float head alone
99.4%; the float head and the folded BatchNorms 99.8%, max |dP| 0.064.

Written into the export's staging folder by export.py, with int8_parity.json: the int8 model is
offered (python -m idc_engine.predict/evaluate/slide --runtime=auto) only when parity held.
"""

import contextlib
import io
import math
import warnings

import keras
import numpy as np
from absl import logging
from keras import layers

from idc_engine import atomic_files
from idc_engine.data import manifest as manifest_lib
from idc_engine.models.preprocessing import model_input
from idc_engine.scoring import parity
from idc_engine.training import int8_model, run_dir

REPRESENTATIVE_PATCHES = 1024  # spread over the train patients, at least one each
RECIPE = ("full int8 (per-channel conv weights, per-tensor activations) of the network up to "
          "the head's ReLU, post-ReLU BatchNorm scales folded into the convs before it; the "
          "head's BatchNorm folded into the final Dense in float32; calibration in float64")


class Int8Unsupported(ValueError):
    """The model has no int8 recipe here (not CancerNet)."""


class ChannelAffine(layers.Layer):
    """x * sign + shift per channel (sign omitted when every sign is +1): a folded BatchNorm's
    remainder. float32 [..., C] -> float32 [..., C]."""

    def __init__(self, sign, shift, **kwargs):
        super().__init__(**kwargs)
        self.sign = None if np.all(sign > 0) else np.asarray(sign, np.float32)
        self.shift = np.asarray(shift, np.float32)

    def call(self, x):
        return (x if self.sign is None else x * self.sign) + self.shift


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNormalization in inference mode as y = s * x + t: (s, t) float32 [C]."""
    gamma, beta, mean, variance = (w.numpy() for w in bn.weights)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def fold_for_int8(model: keras.Model) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """CancerNet (models/cancernet.py) -> (body: float32 [N, S, S, 3] normalized images ->
    float32 [N, 256], the head's ReLU; head weight float32 [256, 2], bias float32 [2]): the
    same function as `model`'s logits, rearranged as the module docstring says. The body is
    float32 whatever the global policy (a mixed-precision run's export happens under it)."""
    names = {layer.name for layer in model.layers}
    if not {"block1_sepconv1", "head_dense", "head_bn", "logits"} <= names:
        raise Int8Unsupported(f"model {model.name!r} is not CancerNet: no int8 recipe for it")
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        body = _folded_body(model)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    scale, shift = _bn_scale_shift(model.get_layer("head_bn"))
    weight, bias = model.get_layer("logits").get_weights()
    head_weight = (weight * scale[:, None]).astype(np.float32)
    head_bias = (bias + shift @ weight).astype(np.float32)
    return body, head_weight, head_bias


def _folded_body(model: keras.Model) -> keras.Model:
    """fold_for_int8's body, built under the current policy."""
    inputs = keras.Input(model.input_shape[1:], name="images")
    x = inputs
    for block, convs in ((1, 1), (2, 2), (3, 3)):
        for index in range(1, convs + 1):
            x = _folded_sepconv(model, block, index, x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    dense = layers.Dense(256)
    x = layers.ReLU()(dense(x))
    dense.set_weights(model.get_layer("head_dense").get_weights())
    return keras.Model(inputs, x, name="cancernet_int8_body")


def _folded_sepconv(model, block: int, index: int, x):
    """block{b}_sepconv{i} -> relu -> bn{i} of `model` as a conv with |s| folded in, relu,
    ChannelAffine(sign(s), t), applied to x."""
    conv = model.get_layer(f"block{block}_sepconv{index}")
    scale, shift = _bn_scale_shift(model.get_layer(f"block{block}_bn{index}"))
    depthwise, pointwise, bias = conv.get_weights()
    folded = layers.SeparableConv2D(conv.filters, conv.kernel_size, padding="same")
    x = layers.ReLU()(folded(x))
    folded.set_weights([depthwise, pointwise * np.abs(scale), bias * np.abs(scale)])
    return ChannelAffine(np.sign(scale) + (scale == 0), shift)(x)


def quantize(body: keras.Model, representative: np.ndarray) -> bytes:
    """A Keras model float32 [N, ...] -> [N, ...] and model inputs float32 [M, ...] ->
    the .tflite bytes, int8 inside, float32 input and output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(body)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def batches():
        for start in range(0, len(representative), 32):
            yield [representative[start:start + 32]]

    converter.representative_dataset = batches
    # the converter prints the temporary SavedModel's signature (the commands' stdout is
    # theirs) and warns that the float32 input has no statistics (the network quantizes it)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Statistics for quantized inputs")
        return converter.convert()


def representative_patches(data_dir: str, count: int = REPRESENTATIVE_PATCHES,
                           seed: int = 0) -> np.ndarray:
    """uint8 [M, 50, 50, 3]: about `count` train patches, ceil(count / patients) of each train
    patient (all of those with fewer), drawn uniformly (reservoir sampling, seeded)."""
    from idc_engine.input import pipeline

    patients = manifest_lib.load_manifest(data_dir)["splits"]["train"].get("patients") or [""]
    per_patient = max(1, math.ceil(count / len(patients)))
    rng = np.random.default_rng(seed)
    kept, seen = {}, {}
    for images, _, metadata in pipeline.make_dataset(data_dir, "train", 512, training=False,
                                                     with_metadata=True, deterministic=True):
        images = images.numpy()
        for image, patient in zip(images, metadata["patient_id"].numpy()):
            seen[patient] = seen.get(patient, 0) + 1
            slot = len(kept.setdefault(patient, []))
            if slot < per_patient:
                kept[patient].append(image)
            elif (j := rng.integers(seen[patient])) < per_patient:
                kept[patient][j] = image
    return np.stack([image for patient in sorted(kept) for image in kept[patient]])


def val_split(data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(uint8 [N, 50, 50, 3], labels int64 [N], patient ids str [N]) of the val split; None
    without one."""
    from idc_engine.input import pipeline

    if "val" not in manifest_lib.load_manifest(data_dir).get("splits", {}):
        return None
    images, labels, patients = zip(*(
        (x.numpy(), y.numpy(), metadata["patient_id"].numpy()) for x, y, metadata in
        pipeline.make_dataset(data_dir, "val", 512, training=False, with_metadata=True,
                              deterministic=True)))
    return (np.concatenate(images), np.concatenate(labels).astype(np.int64),
            np.array([p.decode() for p in np.concatenate(patients)]))


def write_int8(portable: keras.Model, target: run_dir.ExportPaths, preprocessing: dict,
               data_dir: str | None, reference, threshold: float) -> dict:
    """Writes model_int8.tflite, model_int8_head.npz and int8_parity.json into target's
    (staging) folder; returns the parity record ({"offered": bool, "reason": str, ...}).

    preprocessing: preprocessing.json's record; reference: the SavedModel's function, uint8
    [N, 50, 50, 3] -> calibrated P(IDC) float [N]; threshold: the exported decision threshold
    (calibrated scale). Without data (nothing to calibrate or measure on) or for a model with
    no recipe, only int8_parity.json is written, saying why nothing is offered.
    """
    record = {"recipe": RECIPE, "offered": False}
    val = val_split(data_dir) if data_dir else None
    if val is None:
        record["reason"] = "no val split to measure parity on: the int8 model is not written"
    else:
        try:
            body, weight, bias = fold_for_int8(portable)
        except Int8Unsupported as e:
            body, record["reason"] = None, f"{e}: the int8 model is not written"
        if body is not None:
            record.update(_quantize_and_measure(body, weight, bias, target, preprocessing,
                                                data_dir, val, reference, threshold))
    atomic_files.write_json_atomically(target.int8_parity, record, trailing_newline=False)
    (logging.info if record["offered"] else logging.warning)(
        "int8 model %s: %s", "offered" if record["offered"] else "not offered", record["reason"])
    return record


def _quantize_and_measure(body, weight, bias, target: run_dir.ExportPaths, preprocessing: dict,
                          data_dir: str, val, reference, threshold: float) -> dict:
    """Quantizes `body` on representative train patches, writes it and the float head, then
    measures parity on `val` ((images, labels, patients)); returns the record's fields."""
    patches = representative_patches(data_dir)
    stain = preprocessing.get("stain_normalization")
    inputs = model_input(patches, preprocessing["image_size"], preprocessing["channel_mean"],
                         preprocessing["channel_std"],
                         stain=None if stain and stain["method"] == "none" else stain).numpy()
    with atomic_files.replace_atomically(target.int8, "wb") as f:
        f.write(quantize(body, inputs))
    with atomic_files.replace_atomically(target.int8_head, "wb") as f:
        np.savez(f, weight=weight, bias=bias)
    images, labels, patients = val
    served = int8_model.Int8Model(target)
    batches = range(0, len(images), 512)
    candidate = np.concatenate([served(images[i:i + 512]) for i in batches])
    expected = np.concatenate([np.asarray(reference(images[i:i + 512])) for i in batches])
    measured = parity.measure(labels, expected, candidate, threshold, patient_id=patients)
    return {"representative_patches": int(len(patches)), "parity_on": "val",
            "val": measured, "offered": measured["passed"], "reason": measured["reason"]}
