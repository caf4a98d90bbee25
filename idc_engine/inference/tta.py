"""Test-time augmentation: the mean IDC probability over the 8 dihedral transforms of a patch.

A histology patch has no up, down or handedness, so its 4 rotations and their mirror images
(the dihedral group D4) are equally valid views; averaging the model over them is free accuracy.
The 8 views of N patches go through the served function as **one** batch of 8N (not 8 calls),
so the device sees one large batch. Transforms are applied to the uint8 patches, before the
SavedModel's own preprocessing, which is what a deployed model receives.

Invariance by construction: the 8 views of any transform g(x) are the 8 views of x in another
order, and the mean is taken over the values sorted per patch, so the sum runs in the same order
whatever the order of the views: tta(g(x)) == tta(x).

    TestTimeAugmented(served)          # what evaluate and predict wrap
    tta_outputs(served.outputs, images)  # the function form, for any served callable
    augmented_signature(signature)     # inside a tf.function (the slide step's replicas)
"""

import numpy as np

TTA_MODES = ("none", "d4")
NUM_VIEWS = 8


def dihedral_views(images):
    """uint8 [N, S, S, C] (square patches) -> uint8 [8N, S, S, C]: view v of patch i at
    v * N + i; views 0-3 are rotations by 0, 90, 180, 270 degrees, 4-7 the same mirrored."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    rotations = [tf.image.rot90(images, k) for k in range(4)]
    return tf.concat(rotations + [tf.image.flip_left_right(r) for r in rotations], axis=0)


def mean_over_views(values):
    """float [8N] (view-major, as dihedral_views orders them) -> float32 [N] tensor: per patch,
    the mean of its 8 values in float64, summed in sorted order (the same whatever order the
    views came in). Eager or inside a tf.function."""
    import tensorflow as tf

    per_view = tf.sort(tf.reshape(tf.cast(values, tf.float64), [NUM_VIEWS, -1]), axis=0)
    return tf.cast(tf.reduce_mean(per_view, axis=0), tf.float32)


def tta_outputs(outputs, images) -> dict:
    """outputs: uint8 [M, 50, 50, 3] -> {name: float [M]} (e.g. ServedModel.outputs); images
    uint8 [N, 50, 50, 3] -> {name: float32 [N]}, each the mean over the 8 views, from one call
    of outputs on the 8N views."""
    return {name: mean_over_views(value).numpy()
            for name, value in outputs(dihedral_views(images)).items()}


def augmented_signature(signature):
    """A SavedModel signature (images=uint8 [M, 50, 50, 3] -> {name: float [M]} tensors) ->
    the same call under D4 test-time augmentation, as tensors, for use inside a tf.function."""
    def call(images):
        return {name: mean_over_views(value)
                for name, value in signature(images=dihedral_views(images)).items()}
    return call


class TestTimeAugmented:
    """A served model (serving.ServedModel or anything with the same `outputs`) under D4
    test-time augmentation; called like it: uint8 [N, 50, 50, 3] -> P(IDC) float32 [N]."""

    def __init__(self, served):
        self.served = served

    def outputs(self, images) -> dict:
        """uint8 [N, 50, 50, 3] -> {output name: float32 [N]}, each averaged over 8 views."""
        return tta_outputs(self.served.outputs, images)

    def __call__(self, images) -> np.ndarray:
        return self.outputs(images)["idc_probability"]


def with_tta(served, mode: str):
    """`served` itself for mode "none", wrapped in TestTimeAugmented for "d4"; ValueError
    naming the accepted modes otherwise (callers turn it into their flag's error)."""
    if mode == "none":
        return served
    if mode == "d4":
        return TestTimeAugmented(served)
    raise ValueError(f"--tta={mode!r}: use one of {', '.join(TTA_MODES)}")
