"""The exported model as it is deployed: its SavedModel signature, and a split run through it.

evaluate and predict both go through here, so what they measure and what they predict come
from the same function users serve (idc_engine/training/export.py writes it).
"""

import dataclasses

import numpy as np

from idc_engine import errors

# The second output of a calibrated export (idc_engine/training/export.py): P(IDC) before the
# calibration, as the network gives it.
UNCALIBRATED = "idc_probability_uncalibrated"


class ServingError(errors.EngineError, ValueError):
    """An export that cannot be served; the message names the path."""


class ServedModel:
    """The serving_default signature of a SavedModel: uint8 [N, 50, 50, 3] -> P(IDC) float32 [N]."""

    def __init__(self, saved_model_dir: str):
        import tensorflow as tf

        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(saved_model_dir)  # keeps the variables alive
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise ServingError(f"cannot load the SavedModel {saved_model_dir!r}: {e}") from e
        self._serve = self._loaded.signatures.get("serving_default")
        if self._serve is None or "idc_probability" not in self._serve.structured_outputs:
            raise ServingError(f"{saved_model_dir!r} has no serving_default signature returning "
                               "idc_probability; re-export it with python -m idc_engine.train")

    def outputs(self, images) -> dict:
        """images uint8 [N, 50, 50, 3] (numpy or tensor) -> {output name: float32 [N]}:
        idc_probability, and idc_probability_uncalibrated in exports that are calibrated."""
        images = self._tf.convert_to_tensor(images, self._tf.uint8)
        return {name: value.numpy() for name, value in self._serve(images=images).items()}

    @property
    def signature(self):
        """The serving_default concrete function: images=uint8 [N, 50, 50, 3] ->
        {"idc_probability": float32 [N]} (tensors), to call inside a tf.function."""
        return self._serve

    def __call__(self, images) -> np.ndarray:
        """images uint8 [N, 50, 50, 3] (numpy or tensor) -> float32 [N]."""
        return self.outputs(images)["idc_probability"]


@dataclasses.dataclass
class Predictions:
    """The served model's output on one split, with the patches' identity, in file order."""
    labels: np.ndarray           # int64 [N]
    idc_probability: np.ndarray  # float32 [N]
    patient_id: np.ndarray       # str [N]
    x: np.ndarray                # int64 [N]
    y: np.ndarray                # int64 [N]
    # float32 [N] before the export's calibration; None when the export has no calibration
    idc_probability_uncalibrated: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def predict_split(served: ServedModel, data_dir: str, split: str, batch_size: int) -> Predictions:
    """Runs the served model over every patch of a converted split, once each, in file order.

    Raises ManifestError / ShardError (idc_engine.input.shards) for a missing or corrupt split.
    """
    import tensorflow as tf

    from idc_engine.input import pipeline, shards

    dataset = pipeline.make_dataset(data_dir, split, batch_size, training=False,
                                    with_metadata=True, deterministic=True)
    parts, uncalibrated = [], []
    try:
        for images, labels, metadata in dataset:
            outputs = _outputs(served, images)
            parts.append((labels.numpy(), outputs["idc_probability"],
                          metadata["patient_id"].numpy(), metadata["x"].numpy(),
                          metadata["y"].numpy()))
            uncalibrated.append(outputs.get(UNCALIBRATED))
    except tf.errors.DataLossError as e:
        raise shards.explain_data_loss(data_dir, split, e) from e
    if not parts:
        return Predictions(*(np.zeros(0, dtype) for dtype in
                             (np.int64, np.float32, str, np.int64, np.int64)))
    labels, prob, ids, x, y = (np.concatenate(column) for column in zip(*parts))
    before = (None if any(u is None for u in uncalibrated)
              else np.concatenate(uncalibrated).astype(np.float32))
    return Predictions(labels.astype(np.int64), prob.astype(np.float32),
                       np.array([i.decode() for i in ids]), x.astype(np.int64),
                       y.astype(np.int64), before)


def _outputs(served, images) -> dict:
    """{output name: float32 [N]} of a ServedModel-like object, or of a plain callable
    uint8 [N, 50, 50, 3] -> P(IDC) [N]."""
    if hasattr(served, "outputs"):
        return served.outputs(images)
    return {"idc_probability": served(images)}
