"""On-device augmentation: shapes, dtypes, what each op preserves, true permutations, randomness, XLA."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from idc_engine.input import augment

BATCH = 32


@pytest.fixture(scope="module")
def images():
    """uint8 [32, 50, 50, 3] with structure (gradients + noise), so transforms are visible."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 50, dtype=np.float32)
    base = ramp[None, :, None, None] + ramp[None, None, :, None] * 0.25
    noise = rng.integers(0, 55, (BATCH, 50, 50, 3))
    return tf.constant(np.clip(base + noise, 0, 255).astype(np.uint8))


def dihedral_variants(image: np.ndarray) -> list[np.ndarray]:
    rotations = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


ALL_SPECS = sorted(augment.OPS) + ["pathology", "tutorial",
                                   "affine(rotation=20, zoom=0.05, shift=0.1, shear=0.05)"]


def _check_permuted(x, y, transforms):
    """Each output image is exactly one of the given transforms of its input image."""
    for a, b in zip(x, y):
        assert any(np.array_equal(t(a), b) for t in transforms)


def _check_resampled(x, y):
    """A warp interpolates between pixels of the same image and channel (bilinear, nearest-edge
    fill), so each output channel stays within the range of that channel of its input."""
    low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    assert np.all(y >= low) and np.all(y <= high)


def _unclipped(y):
    """Pixels no channel of which was clipped to 0 or 255 (a rounded value in 1..254 was not)."""
    return np.all((y >= 1) & (y <= 254), axis=-1)


def _check_brightness(x, y):
    """One offset per image: out - in is the same (+-1 for rounding) at every unclipped pixel."""
    for a, b, keep in zip(x.astype(int), y.astype(int), _unclipped(y)):
        diff = (b - a)[keep]
        assert diff.max() - diff.min() <= 1


def _check_contrast(x, y):
    """A positive per-image, per-channel scaling about the mean keeps the order of the pixels."""
    for a, b in zip(x, y):
        for c in range(3):
            order = np.argsort(a[..., c], axis=None, kind="stable")
            assert np.all(np.diff(b[..., c].ravel()[order].astype(int)) >= 0)


def _check_saturation(x, y):
    """Blending with the grey (luma) image keeps each pixel's luma (+-0.5 for rounding)."""
    luma = np.array([0.299, 0.587, 0.114])
    keep = _unclipped(y)
    assert np.all(np.abs((y.astype(float) - x) @ luma)[keep] <= 0.5 + 1e-3)


def _check_pointwise_colour(x, y, spec):
    """A colour transform maps each pixel on its own: it commutes with moving the pixels (a
    transpose), +-1 for rounding."""
    moved = augment.augment_on_device(tf.transpose(x, [0, 2, 1, 3]), seed=1, step=2, spec=spec)
    assert np.abs(np.transpose(y, [0, 2, 1, 3]).astype(int) - moved.numpy()).max() <= 1


def _check_pathology(x, y):
    """Dihedral moves, then mild colour jitter: each image is, up to one of the 8 dihedral
    transforms, strongly correlated with its input."""
    for a, b in zip(x.astype(float), y.astype(float)):
        best = max(np.corrcoef(v.ravel(), b.ravel())[0, 1] for v in dihedral_variants(a))
        assert best > 0.9


# What each op or preset guarantees on uint8 images; every op of the registry must be here.
UINT8_PROPERTIES = {
    "d4": lambda x, y, spec: _check_permuted(x, y, [
        lambda a, k=k: dihedral_variants(a)[k] for k in range(8)]),
    "flip_lr": lambda x, y, spec: _check_permuted(x, y, [np.copy, lambda a: a[:, ::-1]]),
    "flip_ud": lambda x, y, spec: _check_permuted(x, y, [np.copy, lambda a: a[::-1]]),
    "affine": lambda x, y, spec: np.testing.assert_array_equal(y, x),  # all strengths 0
    "rotate": lambda x, y, spec: _check_resampled(x, y),
    "zoom": lambda x, y, spec: _check_resampled(x, y),
    "shift": lambda x, y, spec: _check_resampled(x, y),
    "shear": lambda x, y, spec: _check_resampled(x, y),
    "tutorial": lambda x, y, spec: _check_resampled(x, y),  # a warp, then flips
    "affine(rotation=20, zoom=0.05, shift=0.1, shear=0.05)":
        lambda x, y, spec: _check_resampled(x, y),
    "brightness": lambda x, y, spec: _check_brightness(x, y),
    "contrast": lambda x, y, spec: _check_contrast(x, y),
    "saturation": lambda x, y, spec: _check_saturation(x, y),
    "hed": _check_pointwise_colour,
    "stain": _check_pointwise_colour,  # per image, each pixel by its own concentrations
    "pathology": lambda x, y, spec: _check_pathology(x, y),
}
# ops that may leave the images unchanged with their default arguments: affine's strengths are
# all 0, shear's is 0.05 degrees (a displacement of at most ~0.02 pixel)
MAY_BE_IDENTITY = {"affine", "shear"}


def test_every_op_has_a_checked_property():
    assert set(ALL_SPECS) == set(UINT8_PROPERTIES)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_uint8_output_keeps_shape_and_the_ops_property(images, spec):
    out = augment.augment_on_device(images, seed=1, step=2, spec=spec)
    assert out.shape == images.shape and out.dtype == tf.uint8
    x, y = images.numpy(), out.numpy()
    UINT8_PROPERTIES[spec](x, y, spec)
    if spec not in MAY_BE_IDENTITY:
        assert not np.array_equal(x, y), "the op changed nothing"


@pytest.mark.parametrize("spec", ["pathology", "tutorial"])
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.0, 255.0)])
def test_keeps_shape_dtype_and_range_for_float(images, spec, value_range):
    low, high = value_range
    x = tf.cast(images, tf.float32) / 255.0 * (high - low) + low
    out = augment.augment_on_device(x, seed=1, step=2, spec=spec, value_range=value_range)
    assert out.shape == x.shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= low and float(tf.reduce_max(out)) <= high
    assert float(tf.reduce_mean(tf.abs(out - x))) > 0.001 * (high - low)


def test_d4_is_a_true_pixel_permutation_per_sample(images):
    out = augment.augment_on_device(images, seed=0, step=0, spec="d4").numpy()
    used = set()
    for before, after in zip(images.numpy(), out):
        matches = [k for k, v in enumerate(dihedral_variants(before)) if np.array_equal(v, after)]
        assert matches, "d4 produced an image that is no dihedral transform of its input"
        used.add(matches[0])
    assert len(used) >= 6, f"per-sample transforms expected, saw only {sorted(used)} of 8"


def test_d4_reaches_all_eight_transforms(images):
    seen = set()
    for step in range(8):
        out = augment.augment_on_device(images, seed=3, step=step, spec="d4").numpy()
        for before, after in zip(images.numpy(), out):
            seen.add(next(k for k, v in enumerate(dihedral_variants(before))
                          if np.array_equal(v, after)))
    assert seen == set(range(8))


def test_randomness_is_per_sample_and_stateless_in_seed_and_step(images):
    x = tf.fill([BATCH, 50, 50, 3], tf.constant(0.5))
    out = augment.augment_on_device(x, seed=5, step=1, spec="brightness(0.2)", value_range=(0, 1))
    per_sample = tf.reduce_mean(out, axis=[1, 2, 3]).numpy()
    assert len(np.unique(np.round(per_sample, 5))) == BATCH
    again = augment.augment_on_device(x, seed=5, step=1, spec="brightness(0.2)",
                                      value_range=(0, 1))
    np.testing.assert_array_equal(out.numpy(), again.numpy())
    for seed, step in [(5, 2), (6, 1)]:
        other = augment.augment_on_device(x, seed=seed, step=step, spec="brightness(0.2)",
                                          value_range=(0, 1))
        assert not np.array_equal(out.numpy(), other.numpy())


@pytest.mark.parametrize("spec", ["hed(0, 0)", "brightness(0)", "contrast(0)", "saturation(0)",
                                  "affine()"])
def test_zero_strength_is_the_identity(images, spec):
    out = augment.augment_on_device(images, seed=1, step=1, spec=spec)
    np.testing.assert_array_equal(out.numpy(), images.numpy())


def test_hed_jitter_changes_colour_but_keeps_structure(images):
    out = augment.augment_on_device(images, seed=1, step=1, spec="hed(0.2, 0.2)")
    x, y = images.numpy().astype(np.float32), out.numpy().astype(np.float32)
    assert np.abs(x - y).mean() > 2.0
    for i in range(4):  # per-channel spatial structure survives a colour transform
        corr = np.corrcoef(x[i, ..., 1].ravel(), y[i, ..., 1].ravel())[0, 1]
        assert corr > 0.9


def test_warp_with_a_quarter_turn_matrix_is_rot90(images):
    # output (r, c) <- input (c, 49 - r): rotating by 90 degrees, exact on the pixel grid.
    matrix = tf.constant([[[0.0, 1.0, 0.0], [-1.0, 0.0, 49.0]]] * BATCH)
    out = augment.warp(tf.cast(images, tf.float32), matrix).numpy()
    expected = np.stack([np.rot90(im, k=1, axes=(0, 1)) for im in images.numpy()])
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_warp_fills_outside_with_the_nearest_edge_pixel(images):
    shift_right = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, -10.0]]] * BATCH)  # col <- col - 10
    out = augment.warp(tf.cast(images, tf.float32), shift_right).numpy()
    x = images.numpy().astype(np.float32)
    np.testing.assert_allclose(out[:, :, 10:], x[:, :, :40], atol=1e-3)
    np.testing.assert_allclose(out[:, :, :10], np.repeat(x[:, :, :1], 10, axis=2), atol=1e-3)


def test_tutorial_affine_stays_close_to_the_input(images):
    # rotation <= 20 deg, zoom 5%, shift 10%: a mild warp, not noise.
    out = augment.augment_on_device(images, seed=0, step=0, spec="tutorial").numpy()
    assert not np.array_equal(out, images.numpy())
    assert out.astype(np.float32).mean() == pytest.approx(images.numpy().mean(), abs=8.0)


@pytest.mark.parametrize("spec", ["pathology", "tutorial", "d4|flip_lr|flip_ud",
                                  "rotate(20)|zoom(0.1)|shift(0.1)|shear(5)"])
def test_compiles_under_xla(images, spec):
    compiled = tf.function(lambda x, step: augment.augment_on_device(x, 7, step, spec),
                           jit_compile=True)
    out = compiled(images, tf.constant(3, tf.int64))
    assert out.shape == images.shape and out.dtype == tf.uint8
    np.testing.assert_array_equal(out.numpy(), compiled(images, tf.constant(3, tf.int64)).numpy())
    assert not np.array_equal(out.numpy(), compiled(images, tf.constant(4, tf.int64)).numpy())
    floats = compiled(tf.cast(images, tf.float32), tf.constant(3, tf.int64))
    assert floats.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(floats)) and float(tf.reduce_max(floats)) <= 255.0


def test_d4_compiled_is_still_a_permutation(images):
    compiled = tf.function(lambda x: augment.augment_on_device(x, 1, 9, "d4"), jit_compile=True)
    for before, after in zip(images.numpy(), compiled(images).numpy()):
        assert any(np.array_equal(v, after) for v in dihedral_variants(before))


def test_spec_parsing():
    names = [s.op.name for s in augment.parse_spec("d4|hed(0.1, shift=0.02)|brightness")]
    assert names == ["d4", "hed", "brightness"]
    assert [s.op.name for s in augment.parse_spec(["tutorial", "d4"])] == [
        "affine", "flip_lr", "flip_ud", "d4"]
    assert augment.parse_spec("none") == [] and augment.parse_spec("") == []
    with pytest.raises(ValueError, match="unknown augmentation 'blur'.*known: .*d4"):
        augment.parse_spec("d4|blur(3)")
    with pytest.raises(ValueError, match="brightness\\(0.1, 0.2, 0.3\\)"):
        augment.parse_spec("brightness(0.1, 0.2, 0.3)")
    with pytest.raises(ValueError, match="numbers"):
        augment.parse_spec("hed(scale=x)")


def test_before_after_grid_is_written_to_tensorboard(images, tmp_path):
    after = augment.augment_on_device(images, seed=0, step=0, spec="pathology")
    grid = augment.before_after_grid(images, after, max_images=8, upscale=2)
    assert grid.shape == (1, 200, 800, 3) and grid.dtype == tf.uint8
    np.testing.assert_array_equal(grid[0, :100:2, :100:2].numpy(), images[0].numpy())
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        augment.write_augmentation_summary(images, after, step=0)
    writer.close()
    events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    tags = [v.tag for e in tf.compat.v1.train.summary_iterator(events[0])
            for v in e.summary.value]
    assert "augmentation/before_after" in tags
