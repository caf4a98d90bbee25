"""uint8 patches -> what the model eats; the one definition used by training, validation,
export and prediction, so that a served model sees exactly what it was trained on."""

import tensorflow as tf

from idc_engine.data import records
from idc_engine.input import stain as stain_lib


def model_input(images, image_size: int, mean, std, dtype=tf.float32, stain=None):
    """images uint8 or float [B, 50, 50, 3] on the 0..255 scale -> dtype [B, S, S, 3] normalized.

    S = image_size: 50 keeps the patches as they are; 48 reproduces the tutorial's resize.
    stain: {"method": "reinhard"|"macenko", "target": ...} (input/stain.py, the run's
    --stain_normalization) applied first, on the patch as scanned; None or method "none": nothing.
    """
    images = stain_normalized(images, stain)
    if image_size != records.PATCH_SIZE:
        images = tf.image.resize(images, [image_size, image_size], method="bilinear")
    return to_float_and_normalize(images, mean, std, dtype)


def stain_normalized(images, stain=None):
    """uint8 or float [B, H, W, 3] (0..255) -> float32 [B, H, W, 3] (0..255): the patches with
    the run's stain normalisation ({"method", "target"}, or None: unchanged, as float32).

    Training applies it before colour augmentation, so that the augmentation varies the
    normalised colours instead of being normalised away; model_input applies it elsewhere."""
    images = tf.cast(images, tf.float32)
    if stain and stain["method"] != "none":
        images = stain_lib.normalize(images, stain["method"], stain["target"])
    return images


def to_float_and_normalize(images, mean, std, dtype=tf.float32):
    """uint8 [B, H, W, C] (0..255) -> dtype [B, H, W, C], (x - mean) / std per channel.

    Runs on the device inside the (possibly jit-compiled) step; arithmetic in float32, then cast,
    so bfloat16/float16 compute dtypes lose nothing in the subtraction.
    """
    mean = tf.cast(mean, tf.float32)
    inv_std = 1.0 / tf.cast(std, tf.float32)
    return tf.cast((tf.cast(images, tf.float32) - mean) * inv_std, dtype)
