"""Fitting the export's calibration (idc_engine/scoring/calibration.py) on the val split.

Done at the end of training's export, with the float32 serving function about to be saved, so
the SavedModel is complete when it is written: predict, evaluate and a slide step get calibrated
probabilities from it without another step, and no later command rewrites a deployed model.
The val split is where training selects its best model; test labels are never read.
"""

import numpy as np

from idc_engine.data import manifest as manifest_lib
from idc_engine.scoring import calibration

UNCALIBRATED = "idc_probability_uncalibrated"


def val_predictions(serve, data_dir: str, batch_size: int = 512):
    """(labels int64 [N], uncalibrated P(IDC) float32 [N]) of the val split through `serve`
    (uint8 [B, 50, 50, 3] -> {UNCALIBRATED: float32 [B], ...}); None without a val split."""
    from idc_engine.input import pipeline

    if "val" not in manifest_lib.load_manifest(data_dir).get("splits", {}):
        return None
    labels, probabilities = [], []
    for images, batch_labels in pipeline.make_dataset(data_dir, "val", batch_size,
                                                      training=False, deterministic=True):
        probabilities.append(serve(images)[UNCALIBRATED].numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(labels).astype(np.int64), np.concatenate(probabilities)


def fit_on_val(serve, data_dir: str, class_weights) -> dict | None:
    """calibration.fit_temperature's record for the val split (class_weights [w_non_idc, w_idc]
    of the run: their prior shift is removed first); None without a val split holding both
    classes, and the export then stays uncalibrated (temperature 1, no shift)."""
    predictions = val_predictions(serve, data_dir)
    if predictions is None:
        return None
    labels, probability = predictions
    try:
        return calibration.fit_temperature(labels, probability,
                                           calibration.prior_shift(class_weights))
    except ValueError:
        return None
