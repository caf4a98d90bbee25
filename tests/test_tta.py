"""Test-time augmentation (idc_engine/inference/tta.py) on the session's trained export.

The model is conftest's `trained_model_dir` (a real CancerNet SavedModel); the patches are
`eval_data`'s test split, read from its shards.
"""

import numpy as np
import pytest
import sklearn.metrics

from idc_engine.evaluation import tta_comparison
from idc_engine.evaluation.config import EvaluateConfig
from idc_engine.inference import serving, tta
from idc_engine.input import host_cache
from idc_engine.training import run_dir


@pytest.fixture(scope="module")
def served(trained_model_dir):
    return serving.ServedModel(run_dir.find_export(trained_model_dir).saved_model)


@pytest.fixture(scope="module")
def patches(eval_data):
    data_dir, _ = eval_data
    return host_cache.load_split_arrays(data_dir, "test").images[:24]


def _transforms(images: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of uint8 [N, H, W, C], in numpy (independent of tta.py)."""
    rotations = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return rotations + [r[:, :, ::-1] for r in rotations]


def test_the_8_views_are_the_8_distinct_dihedral_transforms(patches):
    views = np.asarray(tta.dihedral_views(patches[:3])).reshape(8, 3, 50, 50, 3)
    expected = _transforms(patches[:3])
    for view in views:
        assert sum(np.array_equal(view, e) for e in expected) == 1
    assert len({v.tobytes() for v in views}) == 8


def test_tta_is_the_mean_of_the_8_separate_predictions(served, patches):
    separate = np.stack([served(np.ascontiguousarray(t)) for t in _transforms(patches)])
    augmented = tta.TestTimeAugmented(served)(patches)
    assert augmented.shape == (len(patches),) and augmented.dtype == np.float32
    np.testing.assert_allclose(augmented, separate.mean(axis=0), rtol=0, atol=2e-6)
    # a model that is not invariant by itself: else the test could not fail
    assert np.max(np.ptp(separate, axis=0)) > 1e-3


def test_tta_prediction_is_invariant_under_every_dihedral_transform(served, patches):
    augmented = tta.TestTimeAugmented(served)
    reference = augmented(patches)
    for transformed in _transforms(patches)[1:]:
        np.testing.assert_allclose(augmented(np.ascontiguousarray(transformed)), reference,
                                   rtol=0, atol=1e-6)


def test_tta_calls_the_served_function_once_with_8n_patches(served, patches):
    calls = []

    class Counting:
        def outputs(self, images):
            calls.append(int(images.shape[0]))
            return served.outputs(images)

    tta.TestTimeAugmented(Counting())(patches)
    assert calls == [8 * len(patches)]


def test_an_unknown_mode_is_refused(served):
    with pytest.raises(ValueError, match="--tta='d8'"):
        tta.with_tta(served, "d8")


def test_evaluate_with_tta_reports_the_plain_model_and_the_cost(trained_model_dir, eval_data,
                                                                 served):
    data_dir, _ = eval_data
    config = EvaluateConfig(model_dir=trained_model_dir, data_dir=data_dir, tta="d4",
                            batch_size=256)
    entry = tta_comparison.compare(config, served, tta.with_tta(served, "d4"))
    plain = serving.predict_split(served, data_dir, "test", 256)
    assert entry["without_tta"]["patch"]["auc"] == pytest.approx(
        sklearn.metrics.roc_auc_score(plain.labels, plain.idc_probability))
    # both rates are reported (which is faster is a benchmark's question: benchmarks/tta.py)
    rates = entry["images_per_second"]
    assert rates["none"] > 0 and rates["d4"] > 0
    assert entry["cost"] == pytest.approx(rates["none"] / rates["d4"], rel=1e-3)
    lines = tta_comparison.format_lines(entry, entry["without_tta"]["patch"], 0.5)
    assert f"{entry['cost']:.1f}x slower with d4" in lines[-1]
