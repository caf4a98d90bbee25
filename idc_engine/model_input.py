"""uint8 patches -> what the model eats; the one definition used by training, validation,
export and prediction, so that a served model sees exactly what it was trained on."""

import tensorflow as tf

from idc_engine import records
from idc_engine.pipeline import to_float_and_normalize


def model_input(images, image_size: int, mean, std, dtype=tf.float32):
    """images uint8 or float [B, 50, 50, 3] on the 0..255 scale -> dtype [B, S, S, 3] normalized.

    S = image_size: 50 keeps the patches as they are; 48 reproduces the tutorial's resize.
    """
    images = tf.cast(images, tf.float32)
    if image_size != records.PATCH_SIZE:
        images = tf.image.resize(images, [image_size, image_size], method="bilinear")
    return to_float_and_normalize(images, mean, std, dtype)
