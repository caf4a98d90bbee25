"""Exporting a trained model: `.keras`, a SavedModel that serves raw uint8 patches and its int8
LiteRT version for CPUs (int8_export.py), laid out as idc_engine/training/run_dir.py describes.

The exported model is rebuilt in float32 whatever the training precision (variables are float32
under mixed precision anyway), so it serves on any device.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from idc_engine import atomic_files
from idc_engine.data import records
from idc_engine.models.preprocessing import model_input
from idc_engine.scoring import calibration, thresholds
from idc_engine.training import calibration_fit, run_dir


class ServingModule(tf.Module):
    """The SavedModel's serving function, with the calibration (scoring/calibration.py:
    sigmoid((log-odds - prior_shift) / temperature)) as two variables, identity until set."""

    def __init__(self, model, image_size: int, mean, std, stain: dict | None = None):
        super().__init__()
        self.stain = stain  # its target's numbers become constants of the traced graph
        self.model = model
        self.image_size = image_size
        self.mean = tf.constant(mean, tf.float32)
        self.std = tf.constant(std, tf.float32)
        self.temperature = tf.Variable(1.0, dtype=tf.float64, trainable=False)
        self.prior_shift = tf.Variable(0.0, dtype=tf.float64, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, *records.IMAGE_SHAPE], tf.uint8,
                                                name="images")])
    def serve(self, images):
        """images uint8 [N, 50, 50, 3] -> {"idc_probability": float32 [N] (calibrated),
        "idc_probability_uncalibrated": float32 [N] (the network's softmax P(IDC))}."""
        x = model_input(images, self.image_size, self.mean, self.std, stain=self.stain)
        p = self.model(x, training=False)[:, 1]
        # a function of p alone, in float64: strictly increasing, so patches keep their ranking
        # (log of 0 or 1 gives -inf / +inf, whose sigmoid is exactly 0 / 1)
        p64 = tf.cast(p, tf.float64)
        z = tf.math.log(p64) - tf.math.log1p(-p64)
        calibrated = tf.sigmoid((z - self.prior_shift) / self.temperature)
        return {"idc_probability": tf.cast(calibrated, tf.float32),
                "idc_probability_uncalibrated": p}


def export_model(model, rebuild, export_dir: str, image_size: int, mean, std,
                 threshold: dict | None = None, calibrate_on: str | None = None,
                 class_weights=(1.0, 1.0), stain: dict | None = None, int8: bool = True) -> dict:
    """Writes the artefacts above, replacing the older export as a whole; returns their paths.

    They are written to export_dir + ".tmp" and moved into place complete
    (atomic_files.replace_directory): a crash or an error leaves the older export whole.
    rebuild: a function returning a fresh model of the same architecture (built here in float32).
    threshold: the threshold.json record for this model ({"threshold": float, ...}, on
      uncalibrated probabilities); without one the export has none (an older one was chosen for
      other weights).
    calibrate_on: a converted data directory whose val split the calibration is fitted on
      (training/calibration_fit.py; class_weights [w_non_idc, w_idc] are the run's); None: none.
    stain: the run's stain normalisation ({"method", "target"}; None: none), in the SavedModel's
      graph and in preprocessing.json (for explain's Keras model).
    int8: also the int8 LiteRT model and its parity record (int8_export.py).
    """
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        portable = rebuild()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    portable.set_weights(model.get_weights())
    export_dir = os.path.normpath(export_dir)
    staging = atomic_files.temporary_path(export_dir)
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted export left
    os.makedirs(staging)
    try:
        names = _write_artefacts(portable, run_dir.ExportPaths.of(staging), image_size, mean, std,
                                 threshold, calibrate_on, class_weights, stain, int8)
        atomic_files.replace_directory(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = run_dir.ExportPaths.of(export_dir)
    return {name: getattr(final, name) for name in names}


def _write_artefacts(portable, target: run_dir.ExportPaths, image_size, mean, std, threshold,
                     calibrate_on, class_weights, stain, int8: bool = True) -> list[str]:
    """Writes model.keras, the SavedModel, preprocessing.json, when there are some,
    calibration.json and threshold.json, and the int8 model with its parity record, into
    target's (new, empty) directory; returns the names of the ExportPaths fields written."""
    portable.save(target.keras)
    module = ServingModule(portable, image_size, mean, std, stain)
    fitted = _calibrate(module, calibrate_on, class_weights, target.calibration)
    tf.saved_model.save(module, target.saved_model, signatures={"serving_default": module.serve})
    preprocessing = {
        "image_size": image_size, "channel_mean": list(mean), "channel_std": list(std),
        "input": "uint8 RGB patches, 50x50, resized to image_size, then (x - mean) / std",
        "stain_normalization": stain or {"method": "none"},
        # the scale the model was trained at, which whole-slide inference tiles slides to
        "patch_size": records.PATCH_SIZE, "patch_um_per_pixel": records.PATCH_UM_PER_PIXEL}
    atomic_files.write_json_atomically(target.preprocessing, preprocessing,
                                       trailing_newline=False)
    names = ["keras", "saved_model", "preprocessing"]
    if fitted is not None:
        names.append("calibration")
        if threshold is not None:  # the same operating point, on the calibrated scale
            threshold = {**threshold, "threshold_uncalibrated": threshold["threshold"],
                         "threshold": float(calibration.calibrate(
                             [threshold["threshold"]], fitted["temperature"],
                             fitted["prior_shift"])[0])}
    if threshold is not None:
        run_dir.write_threshold(target.export_dir, threshold)
        names.append("threshold")
    if int8:
        names += _write_int8(portable, module, target, preprocessing, calibrate_on, threshold)
    return names


def _write_int8(portable, module: ServingModule, target: run_dir.ExportPaths,
                preprocessing: dict, data_dir: str | None, threshold: dict | None) -> list[str]:
    """The int8 model and its parity record (int8_export.py); the names of the fields written."""
    from idc_engine.training import int8_export  # the LiteRT converter only where it is used

    record = int8_export.write_int8(
        portable, target, preprocessing, data_dir,
        lambda images: module.serve(images)["idc_probability"].numpy(),
        threshold["threshold"] if threshold else run_dir.DEFAULT_THRESHOLD)
    return ["int8_parity"] + (["int8", "int8_head"] if "val" in record else [])


def _calibrate(module: ServingModule, data_dir: str | None, class_weights,
               record_path: str) -> dict | None:
    """Fits and sets the module's calibration on data_dir's val split and writes its record to
    record_path (calibration.json); None (and no record) when nothing was fitted."""
    fitted = calibration_fit.fit_on_val(module.serve, data_dir, class_weights) if data_dir else None
    if fitted is None:
        return None
    module.temperature.assign(fitted["temperature"])
    module.prior_shift.assign(fitted["prior_shift"])
    atomic_files.write_json_atomically(record_path, {**fitted, "data_dir": os.path.abspath(
        data_dir), "class_weights": list(class_weights)}, trailing_newline=False)
    return fitted


def best_threshold_record(run: run_dir.RunDir, best_checkpoint: str | None,
                          data_dir: str) -> dict | None:
    """threshold.json's record for the exported best checkpoint: the max_f1 threshold its
    validation chose on the val split (None without a validation that chose one)."""
    if not best_checkpoint or not os.path.isfile(run.best_json):
        return None
    with open(run.best_json) as f:
        best = json.load(f)
    if "val_max_f1_threshold" not in best:
        return None
    return {"threshold": best["val_max_f1_threshold"], "rule": thresholds.DEFAULT_RULE,
            "chosen_on": "val", "chosen_by": "idc_engine.train, at the best validation",
            "model_step": best["step"], "idc_f1": best["val_idc_f1_at_max_f1"],
            "accuracy": best["val_accuracy_at_max_f1"],
            "balanced_accuracy": best["val_balanced_accuracy_at_max_f1"],
            "data_dir": os.path.abspath(data_dir)}
