"""Stain normalisation (idc_engine/input/stain.py) against torchstain's numpy implementation,
image by image, on the synthetic generator's patches (real TFRecords) and on
skimage.data.immunohistochemistry(); the target, the flag, the export and the augmentation.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from idc_engine.inference import gradcam
from idc_engine.inference.serving import ServedModel
from idc_engine.input import augment, host_cache, stain, stain_target
from idc_engine.models.preprocessing import model_input
from idc_engine.training import config as config_lib
from idc_engine.training import export, run_dir, setup


@pytest.fixture(scope="module")
def patches(eval_data):
    """uint8 [24, 50, 50, 3]: test patches with at least 5% tissue, spread over the split."""
    images = host_cache.load_split_arrays(eval_data[0], "test").images
    fraction = stain.tissue_mask(stain.optical_density(images)).numpy().mean(axis=1)
    chosen = np.flatnonzero(fraction >= 0.05)
    return images[chosen[np.linspace(0, len(chosen) - 1, 24).astype(int)]]


@pytest.fixture(scope="module")
def ihc_tiles():
    """uint8 [16, 50, 50, 3]: tiles of skimage's immunohistochemistry image (bundled, offline)."""
    data = pytest.importorskip("skimage.data")
    image = data.immunohistochemistry()
    return np.stack([image[r:r + 50, c:c + 50] for r in range(0, 400, 100)
                     for c in range(25, 425, 100)])


@pytest.fixture(scope="module")
def target(patches):
    """The fitted target of the test patches (both methods)."""
    return stain_target.fit_target(patches)


def _target_image(eval_data):
    """One train patch with plenty of tissue: the reference's target image."""
    images = host_cache.load_split_arrays(eval_data[0], "train").images[:400]
    fraction = stain.tissue_mask(stain.optical_density(images)).numpy().mean(axis=1)
    return images[int(np.argmax(fraction))]


def _assert_close_to_reference(ours, reference_fn, images):
    """Per image: our float output truncated as the reference truncates (uint8) matches it to one
    level on >= 99.5% of the values and on average to 0.02 levels."""
    for i, image in enumerate(images):
        diff = np.abs(np.floor(ours[i]) - reference_fn(image).astype(float))
        assert np.mean(diff <= 1) >= 0.995, (i, diff.max())
        assert diff.mean() < 0.02, (i, diff.mean())


@pytest.mark.parametrize("source", ["synthetic", "ihc"])
def test_macenko_matches_torchstain_per_image(source, patches, ihc_tiles, eval_data):
    images = patches if source == "synthetic" else ihc_tiles
    reference = NumpyMacenkoNormalizer()
    reference.fit(_target_image(eval_data))
    ours = stain.macenko(images, reference.HERef, reference.maxCRef).numpy()
    _assert_close_to_reference(ours, lambda im: reference.normalize(im, stains=False)[0], images)
    # and the per-image stain matrices themselves (HE of torchstain's private helper)
    stains, _, max_conc, tissue = (t.numpy() for t in stain.macenko_decompose(images[:4]))
    assert tissue.all()
    for i in range(4):
        he, _, their_max = reference._NumpyMacenkoNormalizer__compute_matrices(
            images[i].reshape(-1, 3), 240, 1, 0.15)
        np.testing.assert_allclose(stains[i], he, atol=2e-3)
        np.testing.assert_allclose(max_conc[i], their_max, rtol=2e-3)


@pytest.mark.parametrize("source", ["synthetic", "ihc"])
def test_reinhard_matches_torchstain_per_image(source, patches, ihc_tiles, eval_data):
    images = patches if source == "synthetic" else ihc_tiles
    reference = NumpyReinhardNormalizer()
    reference.fit(_target_image(eval_data))
    ours = stain.reinhard(images, reference.target_means, reference.target_stds).numpy()
    _assert_close_to_reference(ours, reference.normalize, images)


def test_compiled_with_xla_as_eager(patches, target):
    both = lambda x: [stain.normalize(x, m, target[m]) for m in ("macenko", "reinhard")]
    compiled = tf.function(both, jit_compile=True)(tf.constant(patches[:8]))
    for method, out in zip(("macenko", "reinhard"), compiled):
        eager = stain.normalize(patches[:8], method, target[method]).numpy()
        np.testing.assert_allclose(out.numpy(), eager, atol=0.05)
        # float input on the same scale gives the same as uint8
        np.testing.assert_allclose(stain.normalize(patches[:8].astype(np.float32), method,
                                                   target[method]).numpy(), eager, atol=1e-3)


def test_nearly_all_glass_is_left_unchanged(patches, target):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (2, 50, 50, 3)), 0, 255).astype(np.uint8)
    glass[1, :5, :5] = (120, 60, 140)   # 25 tissue pixels: 1%, under MIN_TISSUE_FRACTION
    batch = np.concatenate([glass, patches[:2]])
    for method in ("macenko", "reinhard"):
        out = stain.normalize(batch, method, target[method]).numpy()
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[:2], glass.astype(np.float32))
        assert np.abs(out[2:] - patches[:2]).mean() > 0.5   # the tissue patches did move


def test_normalisation_removes_a_stain_strength_change(patches, target):
    """The same tissue with each stain's strength scaled per patch (the augmentation's
    concentration jitter, as between labs): after Macenko the two are much closer than before.
    (Stain vectors jittered as well, patches dominated by one stain are where Macenko's angle
    estimate is fragile: the median still improves, a few patches do not.)"""
    shifted = augment.stain(tf.constant(patches, tf.float32) / 255.0, tf.constant([3, 4]),
                            scale=0.3, shift=0.0, vectors=0.0).numpy() * 255.0
    before = np.abs(shifted - patches).mean(axis=(1, 2, 3))
    after = np.abs(stain.normalize(shifted, "macenko", target["macenko"]).numpy()
                   - stain.normalize(patches, "macenko", target["macenko"]).numpy()).mean(axis=(1, 2, 3))
    assert np.median(before) > 2.0 and np.median(after / before) < 0.5, (before, after)


def test_stain_augmentation_op(patches):
    images = tf.constant(patches)
    first = augment.augment_on_device(images, seed=1, step=tf.constant(3), spec="stain(0.2, 0.05)")
    again = augment.augment_on_device(images, seed=1, step=tf.constant(3), spec="stain(0.2, 0.05)")
    other = augment.augment_on_device(images, seed=1, step=tf.constant(4), spec="stain(0.2, 0.05)")
    assert first.dtype == tf.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    moved = np.abs(first.numpy().astype(float) - patches).mean(axis=(1, 2, 3))
    assert (moved > 1.0).mean() > 0.8 and np.abs(first.numpy() - other.numpy()).max() > 0
    glass = np.full((1, 50, 50, 3), 238, np.uint8)
    np.testing.assert_array_equal(augment.augment_on_device(glass, 0, tf.constant(0), "stain"),
                                  glass)


@pytest.fixture(scope="module")
def fitted_data(eval_data, tmp_path_factory):
    """A copy of eval_data with its stain_target.json, by the command's function."""
    data_dir = str(tmp_path_factory.mktemp("stain") / "data")
    shutil.copytree(eval_data[0], data_dir)
    stain_target.fit_and_write(data_dir, max_patches=600)
    return data_dir


def test_fit_writes_a_target_training_reads(fitted_data):
    with open(stain_target.target_path(fitted_data)) as f:
        written = json.load(f)
    assert 0 < written["patches"] <= 600
    matrix = np.array(written["macenko"]["stain_matrix"])
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=0), 1.0, atol=1e-5)
    assert matrix[0, 0] > matrix[0, 1]          # hematoxylin absorbs more red than eosin
    config = config_lib.TrainConfig(data_dir=fitted_data, model_dir="unused",
                                    stain_normalization="macenko")
    plan = setup.plan_run(config)
    assert plan.stain == {"method": "macenko", "target": written["macenko"]}
    # standardised with the normalised sample's statistics: mean 0, std 1 per channel there
    sample = stain_target.sample_split(fitted_data, "train", 600)
    standard = model_input(sample, 50, plan.mean, plan.std, stain=plan.stain).numpy()
    np.testing.assert_allclose(standard.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(standard.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    unnormalised = setup.plan_run(config_lib.TrainConfig(data_dir=fitted_data, model_dir="u"))
    assert np.abs(np.subtract(plan.mean, unnormalised.mean)).max() > 1.0


def test_missing_or_stale_target_is_refused(fitted_data, tmp_path):
    data_dir = str(tmp_path / "data")
    shutil.copytree(fitted_data, data_dir)
    manifest_path = os.path.join(data_dir, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["splits"]["train"]["num_examples"] += 1
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(stain_target.StainTargetError, match="another conversion"):
        stain_target.load_target(data_dir, "reinhard")
    os.remove(stain_target.target_path(data_dir))
    config = config_lib.TrainConfig(data_dir=data_dir, model_dir="unused",
                                    stain_normalization="reinhard")
    with pytest.raises(stain_target.StainTargetError, match="stain_target.json.*stain fit"):
        setup.plan_run(config)
    with pytest.raises(config_lib.ConfigError, match="--stain_normalization"):
        config_lib.TrainConfig(data_dir=data_dir, model_dir="m",
                               stain_normalization="vahadane").validate()


def test_the_export_carries_the_normalisation(trained_model_dir, fitted_data, patches, tmp_path):
    """The SavedModel and explain's Keras path both normalise, with no flag at serving time."""
    source = run_dir.find_export(trained_model_dir)
    model = keras.saving.load_model(source.keras)
    pre = run_dir.load_preprocessing(source)
    stain_cfg = {"method": "macenko", "target": stain_target.load_target(fitted_data, "macenko")}
    export_dir = str(tmp_path / "export")
    export.export_model(model, lambda: keras.models.clone_model(model), export_dir,
                        pre["image_size"], pre["channel_mean"], pre["channel_std"],
                        stain=stain_cfg)
    expected = model(model_input(patches, pre["image_size"], pre["channel_mean"],
                                 pre["channel_std"], stain=stain_cfg), training=False)[:, 1]
    plain = ServedModel(source.saved_model)(patches)
    served = ServedModel(os.path.join(export_dir, "saved_model"))(patches)
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-5)
    assert np.abs(served - plain).max() > 1e-3    # the normalisation changed the predictions
    explainer = gradcam.Explainer.from_export(export_dir)
    assert explainer.stain == stain_cfg
    np.testing.assert_allclose(explainer.probabilities(patches), served, atol=1e-5)


def _max_concentrations_of_training_input(fitted_data, patches, augment_spec):
    """Each patch's Macenko 99th-percentile concentrations [B, 2] in what the Trainer feeds
    the model (standardisation undone), at four steps."""
    from idc_engine.training.step import Trainer
    config = config_lib.TrainConfig(data_dir=fitted_data, model_dir="unused", model="plain_cnn",
                                    stain_normalization="macenko", augment=augment_spec,
                                    precision="float32", xla="off")
    devices, plan = setup.set_up_devices(config), setup.plan_run(config)
    trainer = Trainer(config, devices, plan, setup.build_model_state(config, devices, plan),
                      None, None, frozen=False)
    found = []
    for step in range(4):
        x = trainer.training_input(tf.constant(patches[:32]), tf.constant(step, tf.int64))
        scanned = x * np.array(plan.std, np.float32) + np.array(plan.mean, np.float32)
        found.append(stain.macenko_decompose(scanned)[2].numpy())
    return np.stack(found), np.array(plan.stain["target"]["max_concentration"])


def test_training_augments_the_normalised_colours(fitted_data, patches):
    """Normalisation first, then augmentation: the stain strengths the augmentation draws reach
    the model (normalising after it would reset every patch to the target's)."""
    plain, target = _max_concentrations_of_training_input(fitted_data, patches, "none")
    jittered, _ = _max_concentrations_of_training_input(fitted_data, patches,
                                                        "stain(0.2, 0.0, 0.0)")
    # normalising a normalised patch moves its estimate by ~2%; x U(0.8, 1.2) by ~7% (median)
    assert np.median(np.abs(plain / target - 1.0)) < 0.03
    assert np.median(np.abs(jittered / target - 1.0)) > 0.045
    assert np.std(jittered[:, :, 0], axis=0).mean() > 0.05    # a new draw every step
