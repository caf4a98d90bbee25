"""Prediction from PNG files and converted splits: CSV rows for good and bad inputs, padding as
the converter pads, the saved threshold, and the SavedModel agreeing with the Keras model.

One CancerNet is trained briefly per session (module fixture `trained_model_dir`); real PNGs
of the synthetic tree (with its truncated and undersized patches) plus hand-made bad files.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_flags import check_every_flag_is_documented
from conftest import TF_STARTUP_LINES, read_records, shard_paths
from PIL import Image

from idc_engine.data import kaggle_tree, records
from idc_engine.inference import patch_files, prediction_csv, prediction_rows, serving
from idc_engine.training import run_dir


@pytest.fixture(scope="session")
def predictor(trained_model_dir):
    return serving.ServedModel(run_dir.find_export(trained_model_dir).saved_model)


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    """A folder of inputs a user might feed by mistake, with litter and a non-PNG file."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "text.png").write_text("this is not an image\n")
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(d / "big60.png")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)).save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (50, 50, 4), dtype=np.uint8)).save(d / "rgba.png")
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "._gray.png").write_bytes(b"\0\5\26\7AppleDouble")
    (d / "notes.txt").write_text("a note")
    return d


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cli(*args, timeout=300):
    result = subprocess.run([sys.executable, "-m", "idc_engine.predict", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout)
    result.stderr_tail = "\n".join(line for line in result.stderr.splitlines()
                                   if not line.startswith(TF_STARTUP_LINES))[-3000:]
    return result


# --- the command line on files ---------------------------------------------------------------

def test_cli_gives_every_good_and_bad_file_a_row_and_goes_on(idc_tree, trained_model_dir, bad_dir,
                                                            tmp_path):
    root, summary = idc_tree
    truncated = [os.path.join(root, p) for p in summary["truncated"]]
    undersized = [os.path.join(root, u["path"]) for u in summary["undersized"]]
    good = os.path.join(root, summary["undersized"][0]["path"].split("/")[0])  # a patient folder
    missing = tmp_path / "no_such_patch.png"
    output = tmp_path / "out" / "predictions.csv"
    inputs = [bad_dir, truncated[0], missing, *undersized, good, truncated[1]]
    result = _cli(f"--model={trained_model_dir}", f"--output={output}", "--batch_size=64", *inputs)
    assert result.returncode == 0, result.stderr_tail

    rows = _read_csv(output)
    assert tuple(rows[0]) == prediction_rows.CSV_COLUMNS
    by_path = {row["path"]: row for row in rows}
    listed = patch_files.list_inputs([str(p) for p in inputs]).files
    assert [row["path"] for row in rows] == listed  # one row per input, in order
    assert not any(os.path.basename(p).startswith(("._", ".DS")) or p.endswith(".txt")
                   for p in by_path)

    def error(name):
        return by_path[str(bad_dir / name)]["error"]
    assert error("text.png").startswith("not a readable PNG")
    assert error("empty.png") == "empty file"
    assert error("big60.png") == "larger than 50x50 (use the converter's patch size): 60x60"
    assert by_path[str(missing)]["error"] == "no such file"
    for path in truncated[:2]:
        assert "not a readable PNG" in by_path[path]["error"] and "truncated" in by_path[path]["error"]
        assert by_path[path]["idc_probability"] == by_path[path]["predicted_label"] == ""
    # decodable files get a probability, whatever came before or after them
    for name, note in (("gray.png", "mode L converted to RGB"),
                       ("rgba.png", "mode RGBA converted to RGB (alpha dropped)")):
        row = by_path[str(bad_dir / name)]
        assert row["error"] == "" and 0.0 <= float(row["idc_probability"]) <= 1.0
        assert row["note"] == note and (row["height"], row["width"]) == ("50", "50")
    predicted = [r for r in rows if not r["error"]]
    assert len(predicted) > 30
    threshold_file = os.path.join(trained_model_dir, "export", "threshold.json")
    threshold = json.loads(open(threshold_file).read())["threshold"]  # training's choice
    for row in predicted:
        p = float(row["idc_probability"])
        assert 0.0 <= p <= 1.0 and row["predicted_label"] == str(int(p >= threshold))
    for u in summary["undersized"]:
        row = by_path[os.path.join(root, u["path"])]
        assert (row["height"], row["width"]) == (str(u["height"]), str(u["width"]))
        assert row["note"].startswith(f"padded from {u['height']}x{u['width']}")
    # the Kaggle name gives patient, position and annotation
    row = by_path[undersized[0]]
    parsed = kaggle_tree.parse_patch_name(os.path.basename(undersized[0]))
    assert (row["patient_id"], row["x"], row["y"], row["label"]) == (
        parsed.patient, str(parsed.x), str(parsed.y), str(parsed.label))

    errors = sum(1 for r in rows if r["error"])
    assert f"Predicted {len(predicted):,} of {len(rows):,} files" in result.stdout
    assert f"errors: {errors:,}" in result.stdout and "images/s" in result.stdout
    assert f"threshold {threshold:g} (from {threshold_file})" in result.stdout
    listing = patch_files.list_inputs([str(p) for p in inputs])
    assert listing.ignored_litter >= 2 and listing.ignored_other >= 1  # bad_dir's at least
    assert (f"ignored: {listing.ignored_litter:,} litter files (.DS_Store, Thumbs.db, ._*), "
            f"{listing.ignored_other:,} non-PNG files") in result.stdout
    assert os.listdir(output.parent) == ["predictions.csv"]  # no temporary file left behind


def test_usage_errors_exit_2_with_a_message(trained_model_dir, tmp_path, bad_dir):
    result = _cli(f"--model={tmp_path / 'nowhere'}", bad_dir / "gray.png",
                  f"--output={tmp_path / 'p.csv'}")
    assert result.returncode == 2 and "no SavedModel" in result.stderr
    result = _cli(f"--model={trained_model_dir}", f"--output={tmp_path / 'p.csv'}")
    assert result.returncode != 0 and "give PNG files/folders or --data_dir" in result.stderr
    assert not (tmp_path / "p.csv").exists()


# --- decoding and padding --------------------------------------------------------------------

def test_undersized_patches_get_the_converters_pixels_and_probability(idc_tree, converted,
                                                                       predictor):
    root, summary = idc_tree
    data_dir, manifest = converted
    stored = {(r["patient_id"], r["x"], r["y"]): r
              for path in shard_paths(data_dir, manifest) for r in read_records(path)}
    paths = [os.path.join(root, u["path"]) for u in summary["undersized"]]
    rows = list(prediction_rows.predict_files(predictor, paths, 0.5, batch_size=3))
    assert len(rows) == len(paths) >= 3
    for path, row in zip(paths, rows):
        parsed = kaggle_tree.parse_patch_name(os.path.basename(path))
        record = stored[(parsed.patient, parsed.x, parsed.y)]
        decoded = patch_files.decode_file(path)
        np.testing.assert_array_equal(decoded.image, record["image"])  # same bytes, same padding
        assert (decoded.height, decoded.width) == (record["height"], record["width"])
        assert (decoded.image[record["height"]:] == 255).all()
        assert (decoded.image[:, record["width"]:] == 255).all()
        from_record = predictor(record["image"][None])[0]
        assert float(row["idc_probability"]) == pytest.approx(float(from_record), abs=1e-6)


def test_decode_file_never_raises(bad_dir, tmp_path):
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    huge = tmp_path / "huge.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (800, 900, 3), np.uint8)).save(huge)
    assert os.path.getsize(huge) > patch_files.HEADER_CHECK_BYTES  # refused from its header
    cases = {bad_dir / "text.png": "not a readable PNG", bad_dir / "empty.png": "empty file",
             folder: "is a directory", huge: "larger than 50x50 (use the converter's patch size)",
             tmp_path / "missing.png": "no such file"}
    for path, reason in cases.items():
        decoded = patch_files.decode_file(str(path))
        assert decoded.image is None and decoded.error.startswith(reason), (path, decoded.error)
    assert "BytesIO" not in patch_files.decode_file(str(bad_dir / "text.png")).error


def test_list_inputs_walks_folders_sorted_and_skips_litter(tmp_path):
    for rel in ("b/1/z.png", "b/0/a.PNG", "a.png", "__MACOSX/b/._a.png", "b/Thumbs.db",
                "b/._x.png", "b/readme.md"):
        path = tmp_path / "tree" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    listing = patch_files.list_inputs([str(tmp_path / "tree"), str(tmp_path / "given.jpg")])
    tree = str(tmp_path / "tree")
    assert listing.files == [f"{tree}/a.png", f"{tree}/b/0/a.PNG", f"{tree}/b/1/z.png",
                             str(tmp_path / "given.jpg")]  # named files are tried as given
    assert (listing.ignored_litter, listing.ignored_other) == (2, 1)


# --- threshold -------------------------------------------------------------------------------

def test_threshold_json_is_respected(idc_tree, trained_model_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(run_dir.find_export(trained_model_dir).export_dir, export)
    root, _ = idc_tree
    listing = patch_files.list_inputs([root])
    files = listing.files[:300]
    model = serving.ServedModel(str(export / "saved_model"))
    probabilities = np.array([float(r["idc_probability"]) for r in
                              prediction_rows.predict_files(model, files, 0.5) if not r["error"]])
    chosen = float(np.quantile(probabilities, 0.7))  # a threshold that splits these patches
    (export / "threshold.json").write_text(json.dumps({"threshold": chosen, "metric": "idc_f1"}))

    threshold = run_dir.load_threshold(run_dir.find_export(str(export)))
    assert threshold.value == chosen and threshold.source == str(export / "threshold.json")
    output = tmp_path / "p.csv"
    result = _cli(f"--model={export}", f"--output={output}", *files)
    assert result.returncode == 0, result.stderr_tail
    rows = [r for r in _read_csv(output) if not r["error"]]
    labels = np.array([int(r["predicted_label"]) for r in rows])
    p = np.array([float(r["idc_probability"]) for r in rows])
    np.testing.assert_array_equal(labels, (p >= chosen).astype(int))
    assert 0 < labels.sum() < len(labels) and labels.sum() != (p >= 0.5).sum()
    assert f"threshold {chosen:g} (from {export / 'threshold.json'})" in result.stdout

    assert run_dir.load_threshold(run_dir.find_export(str(export)), override=0.9).value == 0.9
    (export / "threshold.json").write_text(json.dumps({"thresh": 0.3}))
    with pytest.raises(ValueError, match="no usable \"threshold\""):
        run_dir.load_threshold(run_dir.find_export(str(export)))
    os.remove(export / "threshold.json")
    threshold = run_dir.load_threshold(run_dir.find_export(str(export)))
    assert (threshold.value, threshold.source) == (0.5, "default")
    assert "default: no threshold.json" in threshold.describe()


def test_model_may_be_the_model_dir_the_export_or_the_saved_model(trained_model_dir, tmp_path):
    export = os.path.join(trained_model_dir, "export")
    for given in (trained_model_dir, export, os.path.join(export, "saved_model")):
        paths = run_dir.find_export(given)
        assert paths.export_dir == export and paths.keras == os.path.join(export, "model.keras")
    with pytest.raises(run_dir.ModelNotFoundError, match="no SavedModel"):
        run_dir.find_export(str(tmp_path))


# --- a converted split -----------------------------------------------------------------------

def test_cli_reads_a_converted_split(converted, trained_model_dir, predictor, tmp_path):
    data_dir, manifest = converted
    output = tmp_path / "test.csv"
    result = _cli(f"--model={trained_model_dir}", f"--data_dir={data_dir}", "--split=test",
                  f"--output={output}", "--batch_size=100", "--runtime=savedmodel")
    assert result.returncode == 0, result.stderr_tail
    rows = _read_csv(output)
    stored = [r for path in shard_paths(data_dir, manifest, "test") for r in read_records(path)]
    assert len(rows) == len(stored) == manifest["splits"]["test"]["num_examples"]
    assert all(r["error"] == "" and r["path"] == "" for r in rows)
    by_key = {(r["patient_id"], int(r["x"]), int(r["y"])): r for r in rows}
    expected = predictor(np.stack([r["image"] for r in stored]))
    for record, probability in zip(stored, expected):
        row = by_key[(record["patient_id"], record["x"], record["y"])]
        assert row["label"] == str(record["label"])
        assert (int(row["height"]), int(row["width"])) == (record["height"], record["width"])
        # the same patches in other batches: float32 kernels may round differently with the batch
        # size (4e-6 seen with TF_ENABLE_ONEDNN_OPTS=0); a wrong patch would be off by far more
        assert float(row["idc_probability"]) == pytest.approx(float(probability), abs=2e-5)
    assert f"annotated IDC (file names / records): {manifest['splits']['test']['num_positive']:,}" \
        in result.stdout



def test_a_missing_split_fails_before_any_csv_is_left(predictor, tmp_path):
    from idc_engine.data.manifest import ManifestError

    with pytest.raises(ManifestError, match="does not exist"):
        rows = prediction_rows.predict_split_rows(predictor, str(tmp_path / "none"), "test", 0.5)
        prediction_csv.write_csv(rows, str(tmp_path / "x.csv"))
    assert os.listdir(tmp_path) == []  # neither the CSV nor its temporary file


def test_write_csv_counts_what_the_summary_reports(tmp_path):
    def row(**fields):
        return {**dict.fromkeys(prediction_rows.CSV_COLUMNS, ""), **fields}
    rows = [row(path="a.png", idc_probability="0.9", predicted_label=1, label=1, patient_id="7",
                x=1, y=1, note="padded from 40x50 to 50x50"),
            row(path="b.png", idc_probability="0.1", predicted_label=0, label=1, patient_id="7",
                x=1, y=1, note="mode L converted to RGB"),
            row(path="c.png", error="no such file"),
            row(path="d.png", error="not a readable PNG (truncated)")]
    output = tmp_path / "deeper" / "p.csv"
    summary = prediction_csv.write_csv(iter(rows), str(output))
    assert [r["path"] for r in _read_csv(output)] == ["a.png", "b.png", "c.png", "d.png"]
    assert os.listdir(output.parent) == ["p.csv"]
    assert (summary.rows, summary.predicted, summary.predicted_idc) == (4, 2, 1)
    assert (summary.labelled, summary.true_idc, summary.repeated_patches) == (2, 2, 1)
    assert (summary.padded, summary.converted) == (1, 1)
    assert summary.errors == {"no such file": 1, "not a readable PNG": 1}
    text = prediction_csv.format_summary(summary, run_dir.Threshold(0.5, "--threshold"),
                                         str(output), patch_files.InputListing([], 3, 0))
    assert text.startswith("Predicted 2 of 4 files in ")
    assert "predicted IDC: 1 (50.0%) at threshold 0.5 (from --threshold)" in text
    assert "1 files repeat the patient, x and y" in text and "ignored: 3 litter files" in text
    assert "padded to 50x50: 1; converted to RGB: 1" in text and "errors: 2" in text
    assert text.endswith(f"wrote {output}")


# --- the SavedModel against the Keras model ---------------------------------------------------

@pytest.mark.parametrize("image_size", [50, 48])
def test_saved_model_agrees_with_the_in_memory_keras_model(tmp_path, image_size):
    """An in-memory CancerNet whose BatchNorm statistics were set from data (one training-mode
    pass, momentum 0: outputs that vary, unlike a fresh model's), exported; the SavedModel on
    uint8 patches, the in-memory model and the reloaded .keras model on model_input agree."""
    import keras

    from idc_engine import models
    from idc_engine.models.preprocessing import model_input
    from idc_engine.training import export

    keras.utils.set_random_seed(1)
    build = lambda: models.build_model("cancernet", (image_size, image_size, 3))
    model = build()
    mean, std = [190.0, 140.0, 185.0], [45.0, 47.0, 29.0]
    rng = np.random.default_rng(1)
    calibration = rng.integers(0, 256, (64, *records.IMAGE_SHAPE), dtype=np.uint8)
    models.set_batchnorm_momentum(model, 0.0)
    model(model_input(calibration, image_size, mean, std), training=True)
    paths = export.export_model(model, build, str(tmp_path / "export"), image_size, mean, std)
    images = rng.integers(0, 256, (37, *records.IMAGE_SHAPE), dtype=np.uint8)

    served = serving.ServedModel(paths["saved_model"])(images)
    in_memory = model(model_input(images, image_size, mean, std), training=False).numpy()[:, 1]
    reloaded = keras.saving.load_model(paths["keras"])
    pre = run_dir.load_preprocessing(run_dir.find_export(str(tmp_path / "export")))
    from_file = reloaded(model_input(images, pre["image_size"], pre["channel_mean"],
                                     pre["channel_std"]), training=False).numpy()[:, 1]
    assert served.shape == (37,) and served.dtype == np.float32
    assert served.std() > 0.05  # not a constant output that would agree trivially
    np.testing.assert_allclose(served, in_memory, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_file, in_memory, rtol=1e-5, atol=1e-6)
    # batch composition does not change a patch's probability beyond float noise
    one_by_one = np.concatenate([serving.ServedModel(paths["saved_model"])(images[i:i + 1])
                                 for i in range(3)])
    np.testing.assert_allclose(one_by_one, served[:3], rtol=1e-5, atol=1e-6)


def _tree_digest(root: str) -> dict:
    """{relative path: bytes} of every file under root."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return found


def test_an_export_replaces_the_older_one_whole_or_not_at_all(tmp_path):
    """Re-exporting leaves no file of the older export; an export that fails midway (here: its
    calibration data cannot be read, after model.keras was written) leaves the older one as it
    was, byte for byte, and nothing half-written beside it."""
    import keras

    from idc_engine import models
    from idc_engine.training import export

    keras.utils.set_random_seed(2)
    build = lambda: models.build_model("plain_cnn", (50, 50, 3))  # noqa: E731
    mean, std = [190.0] * 3, [45.0] * 3
    export_dir = str(tmp_path / "export")
    export.export_model(build(), build, export_dir, 50, mean, std, threshold={"threshold": 0.3})
    first = _tree_digest(export_dir)
    assert "threshold.json" in first
    second_model = build()
    export.export_model(second_model, build, export_dir, 50, mean, std)
    second = _tree_digest(export_dir)
    assert "threshold.json" not in second          # chosen for the first model's weights
    assert second["model.keras"] != first["model.keras"]
    from idc_engine.data.manifest import ManifestError
    with pytest.raises(ManifestError):
        export.export_model(build(), build, export_dir, 50, mean, std,
                            calibrate_on=str(tmp_path / "no_such_data"))
    assert _tree_digest(export_dir) == second
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_trained_export_agrees_with_its_keras_model_on_real_patches(converted, trained_model_dir,
                                                                    predictor):
    import keras

    from idc_engine.models.preprocessing import model_input

    data_dir, manifest = converted
    images = np.stack([r["image"] for r in read_records(shard_paths(data_dir, manifest, "val")[0])])
    paths = run_dir.find_export(trained_model_dir)
    pre = run_dir.load_preprocessing(paths)
    model = keras.saving.load_model(paths.keras)
    direct = model(model_input(images, pre["image_size"], pre["channel_mean"], pre["channel_std"]),
                   training=False).numpy()[:, 1]
    # the network's own output; the served idc_probability is it calibrated (test_calibration)
    np.testing.assert_allclose(predictor.outputs(images)["idc_probability_uncalibrated"], direct,
                               rtol=1e-5, atol=1e-6)


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "idc_engine.predict", "--helpfull"],
                            capture_output=True, text=True, timeout=120)
    checked = check_every_flag_is_documented("idc_engine.predict", result.stdout)
    assert {"model", "data_dir", "output", "threshold"} <= set(checked)
