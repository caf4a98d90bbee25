"""Test-time augmentation: the mean IDC probability over the 8 dihedral transforms of a patch.

A histology patch has no up, down or handedness, so its 4 rotations and their mirror images
(the dihedral group D4) are equally valid views; averaging the model over them is free accuracy.
The 8 views of N patches go through the served function as **one** batch of 8N (not 8 calls),
so the device sees one large batch. Transforms are applied to the uint8 patches, before the
SavedModel's own preprocessing, which is what a deployed model receives.

Invariance by construction: the 8 views of any transform g(x) are the 8 views of x in another
order, and the mean is taken over the values sorted per patch, so the sum runs in the same order
whatever the order of the views: tta(g(x)) == tta(x).

    TestTimeAugmented(served)          # what evaluate, predict and a slide step wrap
    tta_outputs(served.outputs, images)  # the function form, for any served callable
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


def mean_over_views(values) -> np.ndarray:
    """float [8N] (view-major, as dihedral_views orders them) -> float32 [N]: per patch, the
    mean of its 8 values summed in sorted order (the same whatever order the views came in)."""
    per_view = np.sort(np.asarray(values, np.float64).reshape(NUM_VIEWS, -1), axis=0)
    return per_view.mean(axis=0).astype(np.float32)


def tta_outputs(outputs, images) -> dict:
    """outputs: uint8 [M, 50, 50, 3] -> {name: float [M]} (e.g. ServedModel.outputs); images
    uint8 [N, 50, 50, 3] -> {name: float32 [N]}, each the mean over the 8 views, from one call
    of outputs on the 8N views."""
    return {name: mean_over_views(value)
            for name, value in outputs(dihedral_views(images)).items()}


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
