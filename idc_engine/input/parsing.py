"""Serialized records -> tensors: one vectorized `tf.io.parse_example` per batch, then the images
decoded (schema: idc_engine/data/records.py)."""

import tensorflow as tf

from idc_engine.data import records


def _feature_spec(with_metadata: bool) -> dict:
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    if with_metadata:
        spec.update(patient_id=tf.io.FixedLenFeature([], tf.string),
                    x=tf.io.FixedLenFeature([], tf.int64),
                    y=tf.io.FixedLenFeature([], tf.int64))
    return spec


def parse_records(serialized, with_metadata: bool):
    """tf.string [B] -> (image bytes tf.string [B], labels int32 [B][, metadata]); one parse op."""
    features = tf.io.parse_example(serialized, _feature_spec(with_metadata))
    labels = tf.cast(features["label"], tf.int32)
    if not with_metadata:
        return features["image"], labels
    metadata = {"patient_id": features["patient_id"],
                "x": tf.cast(features["x"], tf.int32), "y": tf.cast(features["y"], tf.int32)}
    return features["image"], labels, metadata


def decode_images(image_bytes, image_encoding: str = "raw", image_shape=records.IMAGE_SHAPE):
    """tf.string [B] of stored images -> uint8 [B, H, W, C].

    "raw": one `decode_raw` for the whole batch (a copy). "png": one `decode_png` per image.
    """
    if image_encoding == "raw":
        return tf.reshape(tf.io.decode_raw(image_bytes, tf.uint8), [-1, *image_shape])
    if image_encoding == "png":
        return tf.map_fn(
            lambda png: tf.ensure_shape(tf.io.decode_png(png, channels=image_shape[-1]),
                                        image_shape),
            image_bytes, fn_output_signature=tf.TensorSpec(image_shape, tf.uint8))
    raise ValueError(f"image_encoding must be one of {records.IMAGE_ENCODINGS}, got {image_encoding!r}")


def decode_element(image_encoding: str, image_shape):
    """(image bytes [B], *rest) -> (uint8 images [B, H, W, C], *rest): for Dataset.map."""
    def decode(image_bytes, *rest):
        return (decode_images(image_bytes, image_encoding, image_shape), *rest)
    return decode


def parse_batch(serialized, image_encoding: str = "raw", with_metadata: bool = False,
                image_shape=records.IMAGE_SHAPE):
    """Parses a batch of serialized records with one vectorized `tf.io.parse_example`.

    Args:
      serialized: tf.string [B], serialized `tf.train.Example`s (schema: idc_engine/data/records.py).
      image_encoding: "raw" (uint8 HWC bytes, one `decode_raw` for the batch) or "png".
      with_metadata: also return patient_id, x, y (for evaluation).
      image_shape: (H, W, C) of the stored images.

    Returns:
      (images uint8 [B, H, W, C], labels int32 [B]), or with_metadata
      (images, labels, {"patient_id": tf.string [B], "x": int32 [B], "y": int32 [B]}).
    """
    return decode_element(image_encoding, image_shape)(*parse_records(serialized, with_metadata))
