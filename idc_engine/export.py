"""Exporting a trained model: `.keras` and a SavedModel that serves raw uint8 patches.

    export/model.keras                    the Keras model (input: normalized float images)
    export/saved_model/                   signature serving_default:
                                          images uint8 [N, 50, 50, 3] -> idc_probability float32 [N]
    export/preprocessing.json             image_size, channel mean/std: what model.keras expects
    export/threshold.json                 the decision threshold python -m idc_engine.predict
                                          applies: chosen on the val split by training's best
                                          validation, then by python -m idc_engine.evaluate

The exported model is rebuilt in float32 whatever the training precision (variables are float32
under mixed precision anyway), so it serves on any device.
"""

import json
import os

import keras
import tensorflow as tf

from idc_engine import manifest as manifest_lib
from idc_engine import records
from idc_engine.model_input import model_input

THRESHOLD_FILE = "threshold.json"


class ServingModule(tf.Module):
    def __init__(self, model, image_size: int, mean, std):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.mean = tf.constant(mean, tf.float32)
        self.std = tf.constant(std, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, *records.IMAGE_SHAPE], tf.uint8,
                                                name="images")])
    def serve(self, images):
        """images uint8 [N, 50, 50, 3] -> {"idc_probability": float32 [N]}."""
        x = model_input(images, self.image_size, self.mean, self.std)
        return {"idc_probability": self.model(x, training=False)[:, 1]}


def export_model(model, rebuild, export_dir: str, image_size: int, mean, std,
                 threshold: dict | None = None) -> dict:
    """Writes the artefacts above (replacing older ones); returns their paths.

    rebuild: a function returning a fresh model of the same architecture (built here in float32).
    threshold: the threshold.json record for this model ({"threshold": float, ...}); without
      one, an older threshold.json (chosen for other weights) is removed.
    """
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        portable = rebuild()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    portable.set_weights(model.get_weights())
    os.makedirs(export_dir, exist_ok=True)
    keras_path = os.path.join(export_dir, "model.keras")
    portable.save(keras_path)
    saved_model = os.path.join(export_dir, "saved_model")
    module = ServingModule(portable, image_size, mean, std)
    tf.saved_model.save(module, saved_model, signatures={"serving_default": module.serve})
    preprocessing = os.path.join(export_dir, "preprocessing.json")
    with open(preprocessing, "w") as f:
        json.dump({"image_size": image_size, "channel_mean": list(mean),
                   "channel_std": list(std), "input": "uint8 RGB patches, 50x50, resized to "
                   "image_size, then (x - mean) / std"}, f, indent=1)
    paths = {"keras": keras_path, "saved_model": saved_model, "preprocessing": preprocessing}
    threshold_path = os.path.join(export_dir, THRESHOLD_FILE)
    if threshold is not None:
        paths["threshold"] = write_threshold(export_dir, threshold)
    elif os.path.exists(threshold_path):
        os.remove(threshold_path)
    return paths


def write_threshold(export_dir: str, record: dict) -> str:
    """Writes export_dir/threshold.json atomically and durably; returns its path."""
    path = os.path.join(export_dir, THRESHOLD_FILE)
    manifest_lib.write_json_atomically(path, record)
    return path
