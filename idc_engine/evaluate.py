"""Evaluates an exported model on a split: clinically named metrics, patient level, figures.

    python -m idc_engine.evaluate --model_dir=runs/demo/cancernet --data_dir=runs/demo/tfrecords
    python -m idc_engine.evaluate ... --threshold=recall:0.90 --slides=all --bootstrap=2000

What it does, in order:
  1. loads the served model, `model_dir/export/saved_model` (uint8 patches -> IDC probability:
     exactly what users deploy);
  2. chooses the decision threshold on --threshold_split (val; test is refused) by --threshold
     (max_f1, youden, recall:R, specificity:S or a number) and writes it to
     `model_dir/export/threshold.json`, which python -m idc_engine.predict applies; the
     evaluated split's labels are never read before the threshold is fixed;
  3. on --split (test): patch-level metrics named by class, scikit-learn's classification report,
     calibration; per-patient IDC extent and accuracy; 95% confidence intervals by bootstrap over
     patients (idc_engine/evaluation/patients.py);
  4. writes --output_dir (default model_dir/evaluation/<split>): metrics.json, summary.txt,
     patients.csv, predictions.csv, PNG figures, slides/patient_<id>.png; the same metrics and
     figures to TensorBoard (model_dir/tensorboard/evaluation_<split>); prints a summary table.

Every flag: --helpfull.
"""

import csv
import dataclasses
import datetime
import json
import logging as std_logging
import math
import os
import sys

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from idc_engine import __version__, atomic_files, errors
from idc_engine.data import manifest as manifest_lib
from idc_engine.evaluation import slide_maps
from idc_engine.inference import serving
from idc_engine.scoring import thresholds
from idc_engine.training import run_dir

FLAGS = flags.FLAGS
THRESHOLD_FILE = run_dir.THRESHOLD_FILE  # in model_dir/export; python -m idc_engine.predict reads it


class EvaluationError(errors.EngineError, ValueError):
    """An evaluation that cannot run as asked; the message names the flag or path."""


@dataclasses.dataclass
class EvaluateConfig:
    model_dir: str = ""
    data_dir: str = ""
    split: str = "test"
    threshold: str = thresholds.DEFAULT_RULE
    threshold_split: str = "val"
    bootstrap: int = 1000
    seed: int = 0
    slides: str = "4"
    output_dir: str = ""
    batch_size: int = 512

    @property
    def saved_model_dir(self) -> str:
        return os.path.join(self.model_dir, "export", "saved_model")

    @property
    def resolved_output_dir(self) -> str:
        return self.output_dir or os.path.join(self.model_dir, "evaluation", self.split)

    def validate(self) -> None:
        """Checks every flag before any TensorFlow work; raises EvaluationError naming it."""
        def need(condition, message):
            if not condition:
                raise EvaluationError(message)

        need(self.threshold_split != "test",
             "--threshold_split=test is refused: the test split must stay unseen until it is "
             "scored, and a threshold chosen on its labels makes every test figure optimistic; "
             "choose it on val (the default)")
        need(self.model_dir, "--model_dir is required: a directory written by "
             "python -m idc_engine.train")
        need(os.path.isdir(self.model_dir), f"--model_dir {self.model_dir!r} does not exist")
        need(os.path.isfile(os.path.join(self.saved_model_dir, "saved_model.pb")),
             f"{self.saved_model_dir!r} holds no SavedModel: train with --export (the default) "
             "so the run exports its best model there")
        need(self.data_dir, "--data_dir is required: a directory written by "
             "python -m idc_engine.convert")
        need(self.split, "--split is required")
        try:
            name, _ = thresholds.parse_rule(self.threshold)
        except ValueError as e:
            raise EvaluationError(f"--threshold: {e}") from e
        need(name == "fixed" or self.threshold_split,
             "--threshold_split is required unless --threshold is a number")
        need(self.bootstrap >= 0, "--bootstrap must be >= 0 (0: no confidence intervals)")
        need(self.batch_size >= 1, "--batch_size must be >= 1")
        try:
            slide_maps.parse_selection(self.slides)
        except ValueError as e:
            raise EvaluationError(str(e)) from e


_HELP = {
    "model_dir": "A training run (python -m idc_engine.train): its export/saved_model is "
                 "evaluated, the chosen threshold goes to its export/threshold.json and the "
                 "metrics to its TensorBoard.",
    "data_dir": "A directory written by python -m idc_engine.convert.",
    "split": "The split to evaluate (train, val, test).",
    "threshold": f"Decision threshold on IDC probability: {thresholds.RULE_HELP}. A rule is "
                 "applied on --threshold_split and the threshold it finds is used unchanged on "
                 "--split. max_f1: best IDC F1; youden: best sensitivity + specificity - 1; "
                 "recall:0.90: the highest threshold with IDC sensitivity >= 0.90; "
                 "specificity:0.95: the lowest with IDC specificity >= 0.95.",
    "threshold_split": "The split the threshold is chosen on: val, or train; test is refused "
                       "(a threshold chosen on the test labels makes every test figure "
                       "optimistic).",
    "bootstrap": "Bootstrap replicates over patients for the 95% confidence intervals "
                 "(0: none).",
    "seed": "Seed of the bootstrap: the same seed gives the same intervals.",
    "slides": "Slide maps (tissue, true IDC, predicted IDC probability) to draw: all; a count "
              "N (patients spread over the range of IDC extent); or comma-separated patient "
              "ids (a number that is a patient id of the split is taken as that id); 0: none.",
    "output_dir": "Where metrics.json, the figures and slides/ go; default "
                  "<model_dir>/evaluation/<split>.",
    "batch_size": "Patches per call of the served model.",
}


def define_flags() -> None:
    for field in dataclasses.fields(EvaluateConfig):
        default, help_text = field.default, _HELP[field.name]
        if isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


def config_from_flags() -> EvaluateConfig:
    return EvaluateConfig(**{field.name: FLAGS[field.name].value
                             for field in dataclasses.fields(EvaluateConfig)})


# --- predictions -------------------------------------------------------------------------------

def load_served_model(model_dir: str) -> serving.ServedModel:
    """The served function of model_dir/export/saved_model (what users deploy)."""
    try:
        return serving.ServedModel(os.path.join(model_dir, "export", "saved_model"))
    except serving.ServingError as e:
        raise EvaluationError(str(e)) from e


def predict_split(served, data_dir: str, split: str, batch_size: int) -> serving.Predictions:
    """Runs the served model over every patch of a split, once each, in file order."""
    predictions = serving.predict_split(served, data_dir, split, batch_size)
    if not len(predictions):
        raise EvaluationError(f"split {split!r} of {data_dir!r} holds no patches")
    return predictions


def read_patient_patches(data_dir: str, split: str, patient_ids) -> dict:
    """{patient_id: (images uint8 [n, 50, 50, 3], x int64 [n], y int64 [n])}, reading only the
    shards the manifest lists for those patients."""
    import tensorflow as tf

    from idc_engine.input import pipeline

    manifest = manifest_lib.load_manifest(data_dir)
    info = manifest_lib.split_info(manifest, split, data_dir)
    wanted = set(patient_ids)
    files = [os.path.join(data_dir, shard["file"]) for shard in info.get("shards", [])
             if wanted & set(shard.get("patients", []))]
    if not files:  # a manifest without per-shard patients: read the whole split
        files = manifest_lib.split_files(data_dir, split, manifest)
    encoding = manifest.get("image_encoding", "raw")
    shape = tuple(manifest.get("image_shape", (50, 50, 3)))
    dataset = tf.data.TFRecordDataset(files).batch(1024).map(
        lambda s: pipeline.parse_batch(s, encoding, with_metadata=True, image_shape=shape))
    found: dict = {p: ([], [], []) for p in wanted}
    for images, _, metadata in dataset.as_numpy_iterator():
        ids = np.array([i.decode() for i in metadata["patient_id"]])
        for patient in wanted & set(ids):
            keep = ids == patient
            found[patient][0].append(images[keep])
            found[patient][1].append(metadata["x"][keep])
            found[patient][2].append(metadata["y"][keep])
    return {p: tuple(np.concatenate(parts).astype(np.uint8 if i == 0 else np.int64)
                     for i, parts in enumerate(found[p]))
            for p in wanted if found[p][0]}


# --- files -------------------------------------------------------------------------------------

def _plain(value):
    """JSON-safe: numpy scalars and arrays to python, nan and inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: str, value) -> None:
    atomic_files.write_json_atomically(path, _plain(value))


def _write_csv(path: str, rows: list[dict], digits: int = 6) -> None:
    """digits: significant digits of floats (9 round-trips a float32 exactly)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.{digits}g}" if isinstance(v, float) else v)
                             for k, v in _plain(row).items()})


def _model_step(model_dir: str) -> int | None:
    """The training step of the exported model (best.json), when the run recorded it."""
    try:
        with open(os.path.join(model_dir, "best.json")) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError):
        return None


def _train_note(model_dir: str) -> str:
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return ""
    notes = []
    if config.get("class_weights", "none") != "none":
        notes.append("class-weighted")
    if config.get("augment", "none") != "none":
        notes.append("augmented")
    return ", ".join(notes)


# --- the summary table -------------------------------------------------------------------------

_PATCH_ROWS = (
    ("auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("idc_sensitivity", "IDC sensitivity (IDC recall)"),
    ("idc_specificity", "IDC specificity (non-IDC recall)"),
    ("idc_precision", "IDC precision (PPV)"),
    ("non_idc_precision", "non-IDC precision (NPV)"),
    ("idc_f1", "IDC F1"),
    ("non_idc_f1", "non-IDC F1"),
    ("mcc", "Matthews correlation"),
    ("brier_score", "Brier score (0 is best)"),
    ("expected_calibration_error", "expected calibration error"),
)
_PATIENT_ROWS = (
    ("idc_fraction_mae", "IDC fraction: mean abs. error"),
    ("idc_fraction_bias", "IDC fraction: mean (predicted - true)"),
    ("idc_fraction_pearson_r", "IDC fraction: Pearson r"),
    ("mean_probability_mae", "mean IDC probability: MAE to true fraction"),
    ("patient_mean_balanced_accuracy", "balanced accuracy, mean over patients"),
    ("patient_mean_idc_sensitivity", "IDC sensitivity, mean over patients"),
    ("patient_mean_idc_specificity", "IDC specificity, mean over patients"),
    ("patient_mean_auc", "ROC-AUC, mean over patients"),
)
_MAX_PATIENT_LINES = 20
_CRITERIA = {"idc_f1": "IDC F1", "youden_j": "Youden's J", "idc_sensitivity": "IDC sensitivity",
             "idc_specificity": "IDC specificity"}


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(ci: dict | None) -> str:
    if not ci or ci.get("low") is None or not math.isfinite(ci["low"]):
        return ""
    return f"[{ci['low']:.4f}, {ci['high']:.4f}]"


def format_summary(result: dict) -> str:
    """The readable report printed at the end (also written to summary.txt)."""
    t = result["threshold"]
    patch, ci = result["patch"], result.get("confidence_intervals") or {}
    n_patients = result["patient"]["num_patients"]
    step = result.get("model_step")
    lines = [f"evaluation of {result['model_dir']}{f' (step {step})' if step is not None else ''}"
             f" on the {result['split']} split: {patch['num_examples']:,} patches "
             f"({patch['num_idc']:,} IDC, {patch['idc_prevalence']:.1%}), {n_patients} patients"]
    if t["chosen_on"] == "fixed":
        lines.append(f"threshold {t['threshold']:.4g} on IDC probability: fixed by --threshold")
    else:
        criterion = _CRITERIA.get(t["criterion"], t["criterion"])
        lines.append(f"threshold {t['threshold']:.4g} on IDC probability: {t['rule']} on the "
                     f"{t['chosen_on']} split ({criterion} {t['value']:.4f} there)")
    if t["chosen_on"] == result["split"]:
        lines.append("  note: chosen on the evaluated split itself, so these metrics are "
                     "optimistic")
    ci_header = ""
    if ci:
        ci_header = (f"95% CI, bootstrap over {ci['num_patients']} patients "
                     f"({ci['num_samples']}x, seed {ci['seed']})")
    lines += ["", f"{'patch level':<44}{'value':>8}   {ci_header}"]
    for key, name in _PATCH_ROWS:
        lines.append(f"  {name:<42}{_number(patch[key]):>8}   "
                     f"{_interval(ci.get('patch', {}).get(key))}")
    (tn, fp), (fn, tp) = patch["confusion_matrix"]
    share = lambda a, b: f"{a:,} ({a / b:.1%})" if b else f"{a:,}"
    lines += ["", f"{'confusion matrix':<20}{'predicted non-IDC':>20}{'predicted IDC':>18}",
              f"  {'true non-IDC':<18}{share(tn, tn + fp):>20}{share(fp, tn + fp):>18}",
              f"  {'true IDC':<18}{share(fn, fn + tp):>20}{share(tp, fn + tp):>18}",
              "", "classification report (scikit-learn; IDC recall = sensitivity, non-IDC "
              "recall = specificity)", result["classification_report_text"].rstrip("\n")]
    rows = result["patients"]
    lines += ["", f"patient level ({n_patients} patients, each counted once)"]
    if len(rows) <= _MAX_PATIENT_LINES:
        lines.append(f"  {'patient':<10}{'patches':>8}{'true IDC':>10}{'pred. IDC':>11}"
                     f"{'mean p':>8}{'sens.':>8}{'spec.':>8}{'AUC':>8}")
        for r in rows:
            lines.append(f"  {r['patient_id']:<10}{r['num_patches']:>8,}"
                         f"{r['true_idc_fraction']:>10.1%}{r['predicted_idc_fraction']:>11.1%}"
                         f"{r['mean_idc_probability']:>8.3f}{_number(r['idc_sensitivity'], 3):>8}"
                         f"{_number(r['idc_specificity'], 3):>8}{_number(r['auc'], 3):>8}")
    else:
        lines.append("  one row per patient: patients.csv")
    for key, name in _PATIENT_ROWS:
        lines.append(f"  {name:<42}{_number(result['patient'][key]):>8}   "
                     f"{_interval(ci.get('patient', {}).get(key))}")
    if ci and 0 < n_patients < 10:
        lines.append(f"  note: intervals from {n_patients} patients are rough; report them "
                     "with the patient count")
    lines += ["", f"wrote {result['output_dir']}: metrics.json, summary.txt, patients.csv, "
              f"predictions.csv, {len(result['figures'])} figures, "
              f"{len(result['slide_maps'])} slide maps",
              f"threshold for predict: {result['threshold_file']}",
              f"TensorBoard: tensorboard --logdir={os.path.join(result['model_dir'], 'tensorboard')}"]
    return "\n".join(line.rstrip() for line in lines)


# --- TensorBoard -------------------------------------------------------------------------------

_TB_SKIP = ("confusion_matrix", "num_examples", "num_idc")


def write_tensorboard(log_dir: str, step: int, result: dict, images: dict) -> None:
    """Scalars (patch metrics named like the validation ones, so the curves overlay;
    patient/... for patient metrics), the figures as images and the summary as text."""
    import tensorflow as tf

    if os.path.isdir(log_dir):  # the latest evaluation of this split replaces the previous one
        for name in os.listdir(log_dir):
            if "tfevents" in name:
                os.remove(os.path.join(log_dir, name))
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for name, value in result["patch"].items():
            if name not in _TB_SKIP and isinstance(value, float) and math.isfinite(value):
                tf.summary.scalar(name, value, step=step)
        for name, value in result["patient"].items():
            if isinstance(value, float) and math.isfinite(value):
                tf.summary.scalar(f"patient/{name}", value, step=step)
        for name, path in images.items():
            with open(path, "rb") as f:
                image = tf.image.decode_png(f.read(), channels=3)
            tf.summary.image(name, image[None], step=step)
        tf.summary.text("summary", "```\n" + result["summary_text"] + "\n```", step=step)
        tf.summary.text("threshold", json.dumps(_plain(result["threshold"]), indent=1),
                        step=step)
    writer.flush()
    writer.close()


# --- the evaluation ----------------------------------------------------------------------------

def evaluate(config: EvaluateConfig) -> dict:
    """Runs the whole evaluation (see the module docstring); returns what metrics.json holds
    plus "summary_text". Raises EvaluationError or ManifestError naming what is wrong."""
    config.validate()
    from idc_engine.evaluation import patients, plots
    from idc_engine.scoring import metrics as metrics_lib

    manifest = manifest_lib.load_manifest(config.data_dir)
    manifest_lib.split_info(manifest, config.split, config.data_dir)
    rule_name, _ = thresholds.parse_rule(config.threshold)
    if rule_name != "fixed":
        manifest_lib.split_info(manifest, config.threshold_split, config.data_dir)
    try:  # unknown patient ids in --slides: refused now, not after the predictions
        split_patients = manifest["splits"][config.split].get("patients", [])
        slide_maps.select_patients([{"patient_id": p, "true_idc_fraction": 0.0}
                                    for p in split_patients], config.slides)
    except ValueError as e:
        raise EvaluationError(str(e)) from e
    output_dir = config.resolved_output_dir
    os.makedirs(output_dir, exist_ok=True)
    serve = load_served_model(config.model_dir)
    step = _model_step(config.model_dir)

    # --- the threshold: from the threshold split only --------------------------------------------
    figures = {}
    if rule_name == "fixed":
        threshold, details = thresholds.choose_threshold([], [], config.threshold)
        chosen_on = "fixed"
    else:
        tuning = predict_split(serve, config.data_dir, config.threshold_split, config.batch_size)
        try:
            threshold, details = thresholds.choose_threshold(
                tuning.labels, tuning.idc_probability, config.threshold)
        except ValueError as e:
            raise EvaluationError(f"--threshold={config.threshold} on the "
                                  f"{config.threshold_split} split: {e}") from e
        chosen_on = config.threshold_split
        figures["threshold"] = plots.plot_threshold_choice(
            thresholds.operating_points(tuning.labels, tuning.idc_probability), threshold,
            config.threshold, os.path.join(output_dir, "threshold.png"), config.threshold_split)
    threshold_record = {"threshold": threshold, "rule": config.threshold, "chosen_on": chosen_on,
                        **{k: v for k, v in details.items() if k != "rule"},
                        "model_step": step, "data_dir": os.path.abspath(config.data_dir),
                        "created_at": datetime.datetime.now().isoformat(timespec="seconds")}
    threshold_file = run_dir.write_threshold(os.path.join(config.model_dir, "export"),
                                            _plain(threshold_record))

    # --- predictions on the evaluated split --------------------------------------------------------
    if rule_name != "fixed" and config.split == config.threshold_split:
        evaluated = tuning
    else:
        evaluated = predict_split(serve, config.data_dir, config.split, config.batch_size)
    labels, prob = evaluated.labels, evaluated.idc_probability

    # --- patch level -------------------------------------------------------------------------------
    patch = metrics_lib.evaluation_metrics(labels, prob, threshold)
    report, report_text = metrics_lib.classification_report(labels, prob, threshold)
    calibration = metrics_lib.calibration_bins(labels, prob)

    # --- patient level and confidence intervals ---------------------------------------------------
    rows = patients.per_patient(evaluated.patient_id, labels, prob, threshold)
    patient = patients.patient_metrics(rows)
    intervals = None
    if config.bootstrap > 0:
        intervals = patients.bootstrap(evaluated.patient_id, labels, prob, threshold,
                                       config.bootstrap, config.seed)

    # --- figures -----------------------------------------------------------------------------------
    def out(name):
        return os.path.join(output_dir, name)

    ci_patch = (intervals or {}).get("patch", {})
    title_split = f"{config.split} split, {len(labels):,} patches, {len(rows)} patients"
    figures["confusion_matrix"] = plots.plot_confusion_matrix(
        patch["confusion_matrix"], threshold, out("confusion_matrix.png"),
        f"confusion matrix ({config.split}, patches)")
    point = {"threshold": threshold, **{k: patch[k] for k in (
        "idc_sensitivity", "idc_specificity", "idc_precision")}}
    if len(np.unique(labels)) == 2:
        figures["roc"] = plots.plot_roc(labels, prob, out("roc.png"), point,
                                        ci_patch.get("auc"), f"ROC ({title_split})")
        figures["precision_recall"] = plots.plot_precision_recall(
            labels, prob, out("precision_recall.png"), point, ci_patch.get("pr_auc"),
            f"precision-recall ({config.split} split)")
    figures["calibration"] = plots.plot_calibration(
        calibration, patch["brier_score"], out("calibration.png"),
        f"calibration ({config.split} split, patches)")
    figures["patients"] = plots.plot_patient_fractions(
        rows, out("patients.png"), patient,
        f"IDC extent per patient ({config.split}, {len(rows)} patients)")
    curves = plots.plot_training_curves(os.path.join(config.model_dir, "tensorboard"),
                                        out("training_curves.png"), step,
                                        _train_note(config.model_dir))
    if curves:
        figures["training_curves"] = curves

    # --- slide maps --------------------------------------------------------------------------------
    try:
        chosen = slide_maps.select_patients(rows, config.slides)
    except ValueError as e:
        raise EvaluationError(str(e)) from e
    slides = {}
    slide_dir = out("slides")
    if os.path.isdir(slide_dir):  # maps of an earlier evaluation would pass for this one's
        for name in os.listdir(slide_dir):
            if name.startswith("patient_") and name.endswith(".png"):
                os.remove(os.path.join(slide_dir, name))
    if chosen:
        patches = read_patient_patches(config.data_dir, config.split, chosen)
        index = {(p, int(x), int(y)): i for i, (p, x, y) in enumerate(
            zip(evaluated.patient_id, evaluated.x, evaluated.y))}
        by_id = {r["patient_id"]: r for r in rows}
        for patient_id in chosen:
            images, xs, ys = patches[patient_id]
            where = np.array([index[(patient_id, int(x), int(y))] for x, y in zip(xs, ys)])
            r = by_id[patient_id]
            subtitle = (f"{config.split} split; patch ROC-AUC {_number(r['auc'], 3)}, IDC "
                        f"sensitivity {_number(r['idc_sensitivity'], 3)}, specificity "
                        f"{_number(r['idc_specificity'], 3)}")
            slides[patient_id] = slide_maps.render_slide_map(
                os.path.join(slide_dir, f"patient_{patient_id}.png"), patient_id, images,
                labels[where], prob[where], xs, ys, threshold, subtitle)

    # --- files, summary, TensorBoard ---------------------------------------------------------------
    result = {
        "model_dir": config.model_dir, "data_dir": config.data_dir, "split": config.split,
        "model_step": step, "saved_model": config.saved_model_dir, "output_dir": output_dir,
        "threshold": threshold_record, "threshold_file": threshold_file,
        "patch": patch, "classification_report": report,
        "classification_report_text": report_text, "calibration": calibration,
        "patient": patient, "patients": rows, "confidence_intervals": intervals,
        "figures": figures, "slide_maps": slides,
        "idc_engine_version": __version__,
        "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    result["summary_text"] = format_summary(result)
    _write_json(out("metrics.json"), result)
    with open(out("summary.txt"), "w") as f:
        f.write(result["summary_text"] + "\n")
    _write_csv(out("patients.csv"), rows)
    called = metrics_lib.clip_probability(prob) >= threshold
    _write_csv(out("predictions.csv"), [
        {"patient_id": p, "x": int(x), "y": int(y), "label": int(t), "idc_probability": float(q),
         "predicted": int(c)}
        for p, x, y, t, q, c in zip(evaluated.patient_id, evaluated.x, evaluated.y, labels, prob,
                                    called)],
        digits=9)
    images = {f"plots/{name}": path for name, path in figures.items()}
    images.update({f"slides/patient_{p}": path for p, path in slides.items()})
    write_tensorboard(os.path.join(config.model_dir, "tensorboard", f"evaluation_{config.split}"),
                      step or 0, result, images)
    return result


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    try:
        config.validate()
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    absl_logging.get_absl_logger().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "idc_engine" in record.pathname)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    from idc_engine.data.manifest import ManifestError  # TensorFlow loads only past this point
    try:
        result = evaluate(config)
    except (EvaluationError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["summary_text"])
    return 0


def run() -> None:
    """Console-script entry point (idc-evaluate)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
