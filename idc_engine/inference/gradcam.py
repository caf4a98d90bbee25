"""What the model looks at: the export's Keras model, Grad-CAM heatmaps and block feature maps.

Gradients need the Keras model (the SavedModel only serves): `Explainer` loads the export's
`model.keras` with the preprocessing it was trained with, so its probabilities are the
SavedModel's (to float tolerance).

Grad-CAM (Selvaraju et al. 2017): the gradient of the target score w.r.t. a convolution layer's
output, averaged over positions, weights that layer's channels; the ReLU of the weighted sum is
the map. The target score is the log-odds of the class, logit[c] - logit[other] for the two-class
models here (softmax depends on the difference only, so the raw logit would also credit what
raises both logits). Each heatmap is divided by its own maximum: compare where, not how much,
between patches.
"""

import dataclasses
import json
import os
import re

import numpy as np

from idc_engine import errors
from idc_engine.data import records
from idc_engine.scoring import calibration
from idc_engine.training import run_dir

CANCERNET_GRADCAM_LAYER = "block3_bn3"


class ExplainError(errors.EngineError, ValueError):
    """A model that cannot be explained as asked; the message names the file or the flag."""


# --- the model ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Explainer:
    """An exported Keras model with the preprocessing it was trained with."""
    model: object                 # keras.Model: normalized float [B, S, S, 3] -> probabilities
    image_size: int
    mean: list
    std: list
    threshold: run_dir.Threshold
    stain: dict | None = None     # the run's stain normalisation (preprocessing.json)
    calibration: dict | None = None  # export/calibration.json: what the SavedModel applies

    @classmethod
    def from_export(cls, model_path: str, threshold: float | None = None) -> "Explainer":
        """--model as predict takes it (model_dir, export dir or saved_model dir).

        Raises ExportError (run_dir) for a missing export or model.keras, ExplainError for an
        unreadable model.keras or preprocessing.json.
        """
        import keras

        paths = run_dir.find_export(model_path)
        if not os.path.isfile(paths.keras):
            raise run_dir.ModelNotFoundError(f"{paths.keras!r} is missing: explanations need the "
                                             "Keras model of the export")
        try:
            pre = run_dir.load_preprocessing(paths)
            model = keras.saving.load_model(paths.keras)
        except ValueError as e:
            raise ExplainError(str(e)) from e
        return cls(model, int(pre["image_size"]), list(pre["channel_mean"]),
                   list(pre["channel_std"]), run_dir.load_threshold(paths, threshold),
                   pre.get("stain_normalization"), _calibration(paths))

    def inputs(self, images):
        """uint8 [N, 50, 50, 3] -> what the model eats (idc_engine.models.preprocessing)."""
        from idc_engine.models.preprocessing import model_input

        return model_input(images, self.image_size, self.mean, self.std, stain=self.stain)

    def probabilities(self, images, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, 50, 50, 3] -> P(IDC) float32 [N], as the SavedModel serves it."""
        out = [self.model(self.inputs(images[i:i + batch_size]), training=False).numpy()[:, 1]
               for i in range(0, len(images), batch_size)]
        return self.served_probability(np.concatenate(out) if out else np.empty(0, np.float32))

    def served_probability(self, p_idc) -> np.ndarray:
        """The network's P(IDC) float [N] -> float32 [N] on the scale the SavedModel serves and
        threshold.json is chosen on: calibrated when the export is."""
        if not self.calibration:
            return np.asarray(p_idc, np.float32)
        return calibration.calibrate(p_idc, self.calibration["temperature"],
                                     self.calibration["prior_shift"]).astype(np.float32)


def _calibration(paths: run_dir.ExportPaths) -> dict | None:
    """export/calibration.json, or None for an export without calibration."""
    if not os.path.isfile(paths.calibration):
        return None
    try:
        with open(paths.calibration) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExplainError(f"{paths.calibration!r} cannot be read: {e}") from e


# --- which layers ------------------------------------------------------------------------------

def is_feature_layer(layer) -> bool:
    """A layer whose output is a 4D feature map worth explaining: not pooling, dropout, input."""
    import keras

    skipped = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
               keras.layers.InputLayer)
    output = getattr(layer, "output", None)
    return (output is not None and len(output.shape) == 4 and not isinstance(layer, skipped))


def check_layer(model, name: str) -> None:
    """Raises ExplainError naming the model's 4D layers when --layer `name` is not a layer."""
    try:
        model.get_layer(name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers if is_feature_layer(layer))
        raise ExplainError(f"--layer={name!r} is not a layer of the model; 4D layers: "
                           f"{names}") from None


def default_gradcam_layer(model) -> str:
    """block3_bn3 for CancerNet, else the last 4D layer that is not pooling or dropout.

    CancerNet's block3_bn3 is 12x12 for a 50x50 patch; for mobilenet_v2/resnet50 the last 4D
    layer is the backbone output, coarse: 2x2 for a 50x50 input.
    """
    names = [layer.name for layer in model.layers]
    if CANCERNET_GRADCAM_LAYER in names:
        return CANCERNET_GRADCAM_LAYER
    candidates = [layer.name for layer in model.layers if is_feature_layer(layer)]
    if not candidates:
        raise ValueError(f"model {model.name!r} has no 4D layer to explain")
    return candidates[-1]


def block_output_layers(model) -> dict:
    """{"block1": layer name, ...}: the last 4D layer before pooling of each block{B}_* group.

    CancerNet: block1_bn1, block2_bn2, block3_bn3. plain_cnn: block{B}_relu. Backbone models have
    no such names: {}.
    """
    blocks = {}
    for layer in model.layers:
        match = re.match(r"^(block\d+)_", layer.name)
        if match and is_feature_layer(layer):
            blocks[match[1]] = layer.name
    return blocks


def _layer_output(model, name: str):
    """The symbolic output of layer `name` in `model`'s own graph.

    For a nested model (the backbone of mobilenet_v2/resnet50) `.output` is the output of its
    inner graph, not connected to the outer inputs; its call in the outer graph is its node.
    """
    import keras

    layer = model.get_layer(name)
    nodes = getattr(layer, "_inbound_nodes", None)
    if isinstance(layer, keras.Model) and nodes:
        return nodes[-1].output_tensors[0]
    return layer.output


# --- Grad-CAM and feature maps -----------------------------------------------------------------

@dataclasses.dataclass
class GradCam:
    heatmaps: np.ndarray          # float32 [N, 50, 50] in [0, 1], each divided by its maximum
    raw: np.ndarray               # float32 [N, h, w] >= 0, at the layer's resolution
    probabilities: np.ndarray     # float32 [N] P(target class)
    layer: str


def grad_cam(model, inputs, layer_name: str | None = None, target_class: int = 1,
             patch_size: int = records.PATCH_SIZE) -> GradCam:
    """Grad-CAM of `layer_name` for `target_class` on model inputs.

    Args:
      model: keras.Model with a "logits" layer (every model of idc_engine.models).
      inputs: float32 [N, S, S, 3], already normalized (Explainer.inputs).
      layer_name: a layer with a 4D output; None: default_gradcam_layer(model).
      target_class: 1 explains the IDC evidence, 0 the non-IDC evidence.
      patch_size: side of the original patches the heatmaps are mapped onto.

    Returns:
      GradCam with heatmaps float32 [N, patch_size, patch_size].
    """
    import keras
    import tensorflow as tf

    layer_name = layer_name or default_gradcam_layer(model)
    probe = keras.Model(model.inputs, [_layer_output(model, layer_name),
                                       model.get_layer("logits").output])
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    with tf.GradientTape() as tape:
        features, logits = probe(inputs, training=False)
        if logits.shape[-1] == 2:  # log-odds of the target class
            score = logits[:, target_class] - logits[:, 1 - target_class]
        else:
            score = logits[:, target_class]
        # samples are independent (inference-mode BN): the gradient of the sum is per sample
        total = tf.reduce_sum(score)
    grads = tape.gradient(total, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)                 # [N, 1, 1, C]
    raw = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()       # [N, h, w]
    probabilities = tf.nn.softmax(logits)[:, target_class].numpy()
    heatmaps = heatmap_to_patch(raw, int(inputs.shape[1]), patch_size)
    return GradCam(heatmaps, raw.astype(np.float32), probabilities, layer_name)


def heatmap_to_patch(raw: np.ndarray, input_size: int, patch_size: int = records.PATCH_SIZE):
    """[N, h, w] maps of a layer -> [N, patch_size, patch_size] in [0, 1], aligned with the patch.

    A layer of stride s = input_size // h covers s*h input pixels from the top-left (pooling
    floors odd sizes: CancerNet's 12 cells cover 48 of the 50 pixels): the map is resized to
    that, its edge repeated over the rest, then the model input is scaled back to the patch
    (the inverse of model_input's resize).
    """
    import tensorflow as tf

    raw = np.asarray(raw, np.float32)
    n, h, w = raw.shape
    covered = (input_size // h * h, input_size // w * w)
    maps = tf.image.resize(raw[..., None], covered, method="bilinear").numpy()[..., 0]
    maps = np.pad(maps, ((0, 0), (0, input_size - covered[0]), (0, input_size - covered[1])),
                  mode="edge")
    if input_size != patch_size:
        maps = tf.image.resize(maps[..., None], [patch_size, patch_size],
                               method="bilinear").numpy()[..., 0]
    peak = maps.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).clip(0, 1).astype(np.float32)


def feature_maps(model, inputs, layer_names) -> dict:
    """{layer name: float32 [N, h, w, C]} of the given layers for normalized inputs."""
    import keras

    layer_names = list(layer_names)
    if not layer_names:
        return {}
    probe = keras.Model(model.inputs, [_layer_output(model, n) for n in layer_names])
    outputs = probe(inputs, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(out) for name, out in zip(layer_names, outputs)}
