"""The int8 export: offered only with parity, refused when quantization breaks the model.

On the session's trained model (conftest `trained_model_dir`, exported with its int8 model) and
its val split: the exported int8 model serves what the SavedModel serves; the naive recipe
(everything int8) is refused by the same gate; the gate itself refuses real predictions
perturbed just past each tolerance and offers them just inside it.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from idc_engine.inference import runtime, serving
from idc_engine.scoring import calibration, parity
from idc_engine.training import int8_export, int8_model, run_dir


@pytest.fixture(scope="module")
def exported(trained_model_dir, eval_data):
    """(export paths, val uint8 images, labels, SavedModel's calibrated P(IDC) float32 [N],
    patient ids)."""
    paths = run_dir.find_export(trained_model_dir)
    images, labels, patients = int8_export.val_split(eval_data[0])
    reference = serving.ServedModel(paths.saved_model)(images)
    return paths, images, labels, reference, patients


@pytest.fixture(scope="module")
def exported_threshold(exported):
    with open(exported[0].int8_parity) as f:
        return json.load(f)["val"]["threshold"]


def test_export_writes_the_int8_model_and_its_parity_record(exported):
    paths = exported[0]
    with open(paths.int8_parity) as f:
        record = json.load(f)
    assert record["parity_on"] == "val"
    assert record["representative_patches"] >= 9  # one at least from each of 9 train patients
    assert record["offered"] == record["val"]["passed"]
    assert record["val"]["num_patches"] == len(exported[1])


def test_int8_model_serves_what_the_savedmodel_serves(exported):
    paths, images, labels, reference, _ = exported
    served = int8_model.Int8Model(paths)
    outputs = served.outputs(images)
    assert outputs["idc_probability"].dtype == np.float32
    assert outputs["idc_probability"].shape == reference.shape
    difference = np.abs(outputs["idc_probability"] - reference)
    assert difference.mean() < 0.02, difference.mean()
    # the calibration around the network is the SavedModel's: applied to the int8 model's own
    # uncalibrated output it gives its calibrated one
    with open(paths.calibration) as f:
        fitted = json.load(f)
    np.testing.assert_allclose(
        calibration.calibrate(outputs[int8_model.UNCALIBRATED], fitted["temperature"],
                              fitted["prior_shift"]), outputs["idc_probability"], atol=1e-6)
    # negative control: another model's output (the patches in reverse order) is far off
    assert np.abs(outputs["idc_probability"][::-1] - reference).mean() > 0.05


def test_the_exported_recipe_passes_and_the_naive_one_is_refused(exported, exported_threshold,
                                                                 eval_data):
    """Everything in int8 (the converter's defaults on the whole model, softmax included) is
    refused by the gate on the same data where the exported recipe's decisions agree.
    Measured here: the naive model changed 17 of 288 decisions outside the band (mean |dP|
    0.079), the float head alone 5 (0.033), the exported recipe none (0.013)."""
    import keras

    paths, images, labels, reference, _ = exported
    model = keras.models.load_model(paths.keras)
    with open(paths.preprocessing) as f:
        pre = json.load(f)
    patches = int8_export.representative_patches(eval_data[0])
    mean, std = np.float32(pre["channel_mean"]), np.float32(pre["channel_std"])
    naive = int8_model.Network(int8_export.quantize(model, (patches - mean) / std))
    with open(paths.calibration) as f:
        fitted = json.load(f)
    naive_p = calibration.calibrate(naive((images - mean) / std)[:, 1], fitted["temperature"],
                                    fitted["prior_shift"])
    refused = parity.measure(labels, reference, naive_p, exported_threshold)
    offered = parity.measure(labels, reference, int8_model.Int8Model(paths)(images),
                             exported_threshold)
    assert not refused["passed"], refused
    # the recipe's decisions agree (its AUC, on 3 val patients, is left to the exported record:
    # measured 0.004 from the SavedModel's here, the naive one's 0.008)
    assert offered["agreement_outside_band"] >= parity.Tolerance().agreement, offered
    assert refused["mean_abs_difference"] > 2 * offered["mean_abs_difference"]


def _flip(reference, threshold, count: int, among=None):
    """reference with the `count` patches outside threshold +- band nearest to it (of those
    where `among`, bool [N], is true) moved to the other side of the threshold (mirrored about
    it): `count` decisions changed."""
    band = parity.Tolerance().band
    candidate = reference.astype(np.float64).copy()
    distance = np.abs(reference - threshold)
    outside = np.flatnonzero((distance > band) & (True if among is None else among))
    nearest = outside[np.argsort(distance[outside], kind="stable")[:count]]
    candidate[nearest] = np.clip(2 * threshold - reference[nearest], 0, 1)
    return candidate


def test_gate_refuses_one_flip_past_the_agreement_tolerance(exported, exported_threshold):
    _, _, labels, reference, _ = exported
    outside = int(np.sum(np.abs(reference - exported_threshold) > parity.Tolerance().band))
    allowed = int(np.floor(outside * (1 - parity.Tolerance().agreement) + 1e-9))
    inside = parity.measure(labels, reference, _flip(reference, exported_threshold, allowed),
                            exported_threshold)
    past = parity.measure(labels, reference, _flip(reference, exported_threshold, allowed + 1),
                          exported_threshold)
    assert inside["decisions_disagreeing_outside_band"] == allowed
    assert inside["passed"], inside
    assert past["decisions_disagreeing_outside_band"] == allowed + 1
    assert not past["passed"] and "decisions agree" in past["reason"], past


def test_gate_refuses_an_auc_change_just_past_its_tolerance(exported, exported_threshold):
    """A real perturbation (the probabilities of the patches within 0.2 of the threshold
    shuffled among them) whose AUC change d is refused under a tolerance just below d and
    offered just above (agreement not required here: the shuffle changes decisions too)."""
    _, _, labels, reference, _ = exported
    candidate = reference.astype(np.float64).copy()
    band = np.flatnonzero(np.abs(reference - exported_threshold) <= 0.2)
    candidate[band] = candidate[band][np.random.default_rng(0).permutation(len(band))]
    change = abs(parity.measure(labels, reference, candidate, exported_threshold)["auc_candidate"]
                 - parity.measure(labels, reference, reference, exported_threshold)["auc_reference"])
    assert change > 0
    just_inside = parity.Tolerance(auc_difference=change + 1e-9, agreement=0.0)
    just_outside = parity.Tolerance(auc_difference=change - 1e-9, agreement=0.0)
    assert parity.measure(labels, reference, candidate, exported_threshold, just_inside)["passed"]
    refused = parity.measure(labels, reference, candidate, exported_threshold, just_outside)
    assert not refused["passed"] and "ROC-AUC" in refused["reason"], refused


def test_gate_refuses_a_patients_slide_whose_idc_fraction_moves_past_its_tolerance(
        exported, exported_threshold):
    """The val patient with most patches (a slide of the dataset): floor(0.01 n) changed
    decisions are within the IDC fraction's tolerance, one more is refused."""
    _, _, labels, reference, patients = exported
    names, counts = np.unique(patients, return_counts=True)
    largest = patients == names[np.argmax(counts)]
    allowed = int(np.floor(counts.max() * parity.Tolerance().idc_fraction_difference + 1e-9))
    # every patient's slide checked, the other tolerances left out
    tolerance = parity.Tolerance(auc_difference=1.0, agreement=0.0, min_slide_patches=1)
    inside, past = (parity.measure(labels, reference,
                                   _flip(reference, exported_threshold, count, largest),
                                   exported_threshold, tolerance, patient_id=patients)
                    for count in (allowed, allowed + 1))
    assert inside["passed"], inside
    assert not past["passed"] and "IDC fraction of 1 of" in past["reason"], past["reason"]
    # with the default tolerance only patients of >= 200 patches are checked
    checked = parity.measure(labels, reference, reference, exported_threshold,
                             patient_id=patients)["slides"]
    assert [row["checked"] for row in checked] == [n >= 200 for n in counts]


def test_slide_idc_fraction_tolerance():
    reference = np.linspace(0, 1, 1000)  # 500 tiles at or above 0.5
    lost = parity.idc_fractions(reference, np.where(reference < 0.51, reference, 0.0), 0.5)
    assert not lost["passed"]  # 490 of 500 IDC tiles lost
    near = reference.copy()
    near[491:500] = 0.5  # 9 more of 1000 tiles IDC: 0.009
    assert parity.idc_fractions(reference, near, 0.5)["passed"]
    near[489:491] = 0.5  # 11 more: 0.011
    assert not parity.idc_fractions(reference, near, 0.5)["passed"]


# --- the runtime a command uses ----------------------------------------------------------------

def _export_copy(exported, tmp_path, offered: bool | None):
    """A copy of the export whose int8_parity.json says `offered` (None: no int8 model)."""
    import shutil

    paths = exported[0]
    copy = tmp_path / "export"
    shutil.copytree(paths.export_dir, copy)
    copied = run_dir.ExportPaths.of(str(copy))
    if offered is None:
        os.remove(copied.int8)
    else:
        with open(copied.int8_parity) as f:
            record = json.load(f)
        record.update(offered=offered, reason="the test's reason")
        with open(copied.int8_parity, "w") as f:
            json.dump(record, f)
    return copied


def test_auto_uses_int8_only_when_offered_and_int8_is_refused_otherwise(exported, tmp_path):
    offered = _export_copy(exported, tmp_path / "offered", True)
    assert runtime.choose(offered, "auto").name == "int8"  # the suite runs without a GPU
    assert runtime.choose(offered, "int8").name == "int8"
    assert runtime.choose(offered, "savedmodel").name == "savedmodel"
    refused = _export_copy(exported, tmp_path / "refused", False)
    chosen = runtime.choose(refused, "auto")
    assert chosen.name == "savedmodel" and "the test's reason" in chosen.reason
    with pytest.raises(run_dir.ExportError, match="int8_parity.json.*the test's reason"):
        runtime.choose(refused, "int8")
    absent = _export_copy(exported, tmp_path / "absent", None)
    assert runtime.choose(absent, "auto").name == "savedmodel"
    with pytest.raises(run_dir.ExportError, match="no int8 model"):
        runtime.choose(absent, "int8")


def test_commands_record_the_runtime(exported, trained_model_dir, eval_data, tmp_path):
    """predict's CSV rows and evaluate's metrics.json name the runtime that served them; a
    refused int8 model is an error naming its parity file (exit 2)."""
    output = tmp_path / "p.csv"
    command = [sys.executable, "-m", "idc_engine.predict", f"--model={trained_model_dir}",
               f"--data_dir={eval_data[0]}", "--split=val", f"--output={output}"]
    result = subprocess.run([*command, "--runtime=int8"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["runtime"] for row in rows} == {"int8"}
    assert "runtime: int8 (--runtime=int8; parity at export:" in result.stdout
    # the rows are the int8 model's probabilities, in the split's order
    served = int8_model.Int8Model(exported[0])(exported[1])
    np.testing.assert_allclose([float(row["idc_probability"]) for row in rows], served,
                               atol=1e-6)
    refused = _export_copy(exported, tmp_path / "refused", False)
    result = subprocess.run([*command, f"--model={refused.export_dir}", "--runtime=int8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "error: --runtime=int8 refused" in result.stderr


def test_a_slide_with_the_int8_runtime_matches_the_savedmodels(exported, eval_data, tmp_path):
    """run_slide with each runtime on one truth slide (tests/slide_files.py: test patients'
    patches at known places, read back by OpenSlide): the same tiles, close probabilities, the
    IDC fraction within the parity tolerance, the runtime in each summary.json."""
    import slide_files
    import tensorflow as tf

    from idc_engine.slides import truth_slide
    from idc_engine.slides.config import SlideConfig, model_scale
    from idc_engine.slides.run import run_slide

    paths = exported[0]
    slide = str(tmp_path / "patients.tiff")
    truth_slide.write_truth_slide(slide, slide + ".truth.csv",
                                  slide_files.split_patches(eval_data[0]),
                                  slide_files.UM_PER_PIXEL, slide_files.LEVELS)
    tiles = {}
    for name in ("savedmodel", "int8"):
        chosen = runtime.Runtime(name, "the test's")
        config = SlideConfig(model_dir=paths.export_dir, output_dir=str(tmp_path / name))
        summary = run_slide(slide, config, runtime.load(paths, chosen),
                            tf.distribute.get_strategy(), run_dir.load_threshold(paths),
                            model_scale(paths), runtime=chosen)
        with open(os.path.join(summary["output_dir"], "summary.json")) as f:
            assert json.load(f)["runtime"] == name
        with open(os.path.join(summary["output_dir"], "tiles.csv"), newline="") as f:
            tiles[name] = {(r["x"], r["y"]): float(r["idc_probability"])
                           for r in csv.DictReader(f)}
    assert tiles["int8"].keys() == tiles["savedmodel"].keys()
    keys = sorted(tiles["savedmodel"])
    reference, candidate = (np.array([tiles[name][k] for k in keys])
                            for name in ("savedmodel", "int8"))
    assert np.abs(candidate - reference).mean() < 0.02
    threshold = run_dir.load_threshold(paths).value
    assert parity.idc_fractions(reference, candidate, threshold)["passed"]
    # negative control: the tiles' probabilities in another order are far off
    assert np.abs(candidate[::-1] - reference).mean() > 0.05
