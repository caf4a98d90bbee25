"""The evaluation python -m idc_engine.evaluate runs, one phase per function.

    check_inputs       the splits exist and the --slides ids belong to the split (before any
                       prediction)
    choose_threshold   on --threshold_split only, written to export/threshold.json
    score              patch metrics, calibration, per-patient rows, bootstrap intervals on
                       --split, at the threshold held fixed
    draw_figures       the PNG figures (idc_engine/evaluation/plots.py)
    draw_slide_maps    slides/patient_<id>.png (idc_engine/evaluation/slide_maps.py)
    then the files, the summary and TensorBoard (idc_engine/evaluation/report.py).
"""

import dataclasses
import datetime
import json
import os

import numpy as np

from idc_engine import __version__
from idc_engine.data import manifest as manifest_lib
from idc_engine.evaluation import (
    calibration_report,
    patients,
    plots,
    report,
    slide_maps,
    slide_patches,
    tta_comparison,
)
from idc_engine.evaluation.config import EvaluateConfig, EvaluationError
from idc_engine.inference import runtime as runtime_lib
from idc_engine.inference import serving, tta
from idc_engine.scoring import metrics as metrics_lib
from idc_engine.scoring import thresholds
from idc_engine.training import run_dir


@dataclasses.dataclass
class Scores:
    """Everything measured on the evaluated split at the threshold chosen before it."""
    threshold: float
    predictions: serving.Predictions  # the split's patches, in file order
    patch: dict                       # scoring.metrics.evaluation_metrics
    classification_report: dict
    classification_report_text: str
    calibration: dict                 # scoring.metrics.calibration_bins
    patients: list[dict]              # patients.per_patient rows, sorted by patient id
    patient: dict                     # patients.patient_metrics
    intervals: dict | None            # patients.bootstrap; None with --bootstrap=0


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _select_slides(rows: list[dict], selection: str) -> list[str]:
    try:
        return slide_maps.select_patients(rows, selection)
    except ValueError as e:
        raise EvaluationError(str(e)) from e


def check_inputs(config: EvaluateConfig) -> None:
    """Raises ManifestError for a split the conversion lacks and EvaluationError for --slides
    ids that are not the split's, before the model is loaded."""
    manifest = manifest_lib.load_manifest(config.data_dir)
    manifest_lib.split_info(manifest, config.split, config.data_dir)
    if not config.threshold_is_fixed:
        manifest_lib.split_info(manifest, config.threshold_split, config.data_dir)
    split_patients = manifest["splits"][config.split].get("patients", [])
    _select_slides([{"patient_id": p, "true_idc_fraction": 0.0} for p in split_patients],
                   config.slides)


def model_step(paths: run_dir.RunDir) -> int | None:
    """The training step of the exported model (best.json), when the run recorded it."""
    try:
        with open(paths.best_json) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError):
        return None


def train_note(paths: run_dir.RunDir) -> str:
    """"class-weighted, augmented" as the run's config.json says (for the training curves)."""
    try:
        with open(paths.config_json) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return ""
    notes = []
    if config.get("class_weights", "none") != "none":
        notes.append("class-weighted")
    if config.get("augment", "none") != "none":
        notes.append("augmented")
    return ", ".join(notes)


def predict(served: serving.ServedModel, config: EvaluateConfig,
            split: str) -> serving.Predictions:
    """The served model over every patch of `split`; raises EvaluationError for an empty split."""
    predictions = serving.predict_split(served, config.data_dir, split, config.batch_size)
    if not len(predictions):
        raise EvaluationError(f"split {split!r} of {config.data_dir!r} holds no patches")
    return predictions


def choose_threshold(config: EvaluateConfig,
                     served: serving.ServedModel) -> tuple[float, dict, serving.Predictions | None]:
    """(threshold, details of scoring.thresholds.choose_threshold, the threshold split's
    predictions or None for a fixed --threshold). Reads no label of --split."""
    if config.threshold_is_fixed:
        threshold, details = thresholds.choose_threshold([], [], config.threshold)
        return threshold, details, None
    tuning = predict(served, config, config.threshold_split)
    try:
        threshold, details = thresholds.choose_threshold(
            tuning.labels, tuning.idc_probability, config.threshold)
    except ValueError as e:
        raise EvaluationError(f"--threshold={config.threshold} on the "
                              f"{config.threshold_split} split: {e}") from e
    return threshold, details, tuning


def threshold_record(config: EvaluateConfig, threshold: float, details: dict,
                     step: int | None) -> dict:
    """threshold.json's contents: the threshold, how and where it was chosen, for which model."""
    return {"threshold": threshold, "rule": config.threshold,
            "chosen_on": "fixed" if config.threshold_is_fixed else config.threshold_split,
            **{k: v for k, v in details.items() if k != "rule"},
            "model_step": step, "data_dir": os.path.abspath(config.data_dir),
            "created_at": _now()}


def score(config: EvaluateConfig, evaluated: serving.Predictions, threshold: float) -> Scores:
    """Patch and patient metrics of the evaluated split, and their bootstrap intervals."""
    labels, prob = evaluated.labels, evaluated.idc_probability
    report_dict, report_text = metrics_lib.classification_report(labels, prob, threshold)
    rows = patients.per_patient(evaluated.patient_id, labels, prob, threshold)
    intervals = None
    if config.bootstrap > 0:
        intervals = patients.bootstrap(evaluated.patient_id, labels, prob, threshold,
                                       config.bootstrap, config.seed)
    return Scores(threshold, evaluated, metrics_lib.evaluation_metrics(labels, prob, threshold),
                  report_dict, report_text, metrics_lib.calibration_bins(labels, prob), rows,
                  patients.patient_metrics(rows), intervals)


def draw_figures(config: EvaluateConfig, scores: Scores, tuning: serving.Predictions | None,
                 output_dir: str, step: int | None) -> dict:
    """{figure name: PNG path} of every figure that applies (see plots.py)."""
    def out(name):
        return os.path.join(output_dir, name)

    split, labels, prob = config.split, scores.predictions.labels, scores.predictions.idc_probability
    patch, threshold, figures = scores.patch, scores.threshold, {}
    if tuning is not None:
        figures["threshold"] = plots.plot_threshold_choice(
            thresholds.operating_points(tuning.labels, tuning.idc_probability), threshold,
            config.threshold, out("threshold.png"), config.threshold_split)
    figures["confusion_matrix"] = plots.plot_confusion_matrix(
        patch["confusion_matrix"], threshold, out("confusion_matrix.png"),
        f"confusion matrix ({split}, patches)")
    if len(np.unique(labels)) == 2:
        ci_patch = (scores.intervals or {}).get("patch", {})
        point = {"threshold": threshold, **{k: patch[k] for k in (
            "idc_sensitivity", "idc_specificity", "idc_precision")}}
        figures["roc"] = plots.plot_roc(
            labels, prob, out("roc.png"), point, ci_patch.get("auc"),
            f"ROC ({split} split, {len(labels):,} patches, {len(scores.patients)} patients)")
        figures["precision_recall"] = plots.plot_precision_recall(
            labels, prob, out("precision_recall.png"), point, ci_patch.get("pr_auc"),
            f"precision-recall ({split} split)")
    figures["calibration"] = plots.plot_calibration(
        scores.calibration, patch["brier_score"], out("calibration.png"),
        f"calibration ({split} split, patches)")
    figures["patients"] = plots.plot_patient_fractions(
        scores.patients, out("patients.png"), scores.patient,
        f"IDC extent per patient ({split}, {len(scores.patients)} patients)")
    curves = plots.plot_training_curves(config.run_dir.tensorboard, out("training_curves.png"),
                                        step, train_note(config.run_dir))
    if curves:
        figures["training_curves"] = curves
    return figures


def _remove_slide_maps(slide_dir: str) -> None:
    """Maps of an earlier evaluation would pass for this one's."""
    if os.path.isdir(slide_dir):
        for name in os.listdir(slide_dir):
            if name.startswith("patient_") and name.endswith(".png"):
                os.remove(os.path.join(slide_dir, name))


def draw_slide_maps(config: EvaluateConfig, scores: Scores, output_dir: str) -> dict:
    """{patient_id: PNG path} of the slide maps --slides selects, in output_dir/slides."""
    chosen = _select_slides(scores.patients, config.slides)
    slide_dir = os.path.join(output_dir, "slides")
    _remove_slide_maps(slide_dir)
    if not chosen:
        return {}
    evaluated = scores.predictions
    patches = slide_patches.read_patient_patches(config.data_dir, config.split, chosen)
    index = {(p, int(x), int(y)): i for i, (p, x, y) in enumerate(
        zip(evaluated.patient_id, evaluated.x, evaluated.y))}
    rows = {r["patient_id"]: r for r in scores.patients}
    slides = {}
    for patient_id in chosen:
        images, xs, ys = patches[patient_id]
        where = np.array([index[(patient_id, int(x), int(y))] for x, y in zip(xs, ys)])
        r = rows[patient_id]
        subtitle = (f"{config.split} split; patch ROC-AUC {report.format_number(r['auc'], 3)}, "
                    f"IDC sensitivity {report.format_number(r['idc_sensitivity'], 3)}, "
                    f"specificity {report.format_number(r['idc_specificity'], 3)}")
        slides[patient_id] = slide_maps.render_slide_map(
            os.path.join(slide_dir, f"patient_{patient_id}.png"), patient_id, images,
            evaluated.labels[where], evaluated.idc_probability[where], xs, ys, scores.threshold,
            subtitle)
    return slides


def _result(config: EvaluateConfig, step: int | None, threshold: dict, threshold_file: str,
            scores: Scores, figures: dict, slides: dict) -> dict:
    """What metrics.json holds, in its order."""
    return {
        "model_dir": config.model_dir, "data_dir": config.data_dir, "split": config.split,
        "model_step": step, "saved_model": config.saved_model_dir,
        "output_dir": config.resolved_output_dir,
        "threshold": threshold, "threshold_file": threshold_file,
        "patch": scores.patch, "classification_report": scores.classification_report,
        "classification_report_text": scores.classification_report_text,
        "calibration": scores.calibration,
        "patient": scores.patient, "patients": scores.patients,
        "confidence_intervals": scores.intervals,
        "figures": figures, "slide_maps": slides,
        "idc_engine_version": __version__,
        "created_at": _now(),
    }


def evaluate(config: EvaluateConfig) -> dict:
    """Runs the whole evaluation (see idc_engine/evaluate.py); returns what metrics.json holds
    plus "summary_text". Raises EvaluationError, ManifestError or ServingError naming what is
    wrong."""
    config.validate()
    check_inputs(config)
    output_dir = config.resolved_output_dir
    os.makedirs(output_dir, exist_ok=True)
    runtime = runtime_lib.choose(config.run_dir.export, config.runtime)
    plain = runtime_lib.load(config.run_dir.export, runtime)
    served = tta.with_tta(plain, config.tta)
    step = model_step(config.run_dir)
    threshold, details, tuning = choose_threshold(config, served)
    # the runtime whose val predictions chose it (with auto, the int8 model's on a CPU)
    record = {**threshold_record(config, threshold, details, step), "chosen_with": runtime.name}
    threshold_file = run_dir.write_threshold(config.run_dir.export.export_dir,
                                             report.plain(record))
    same_split = tuning is not None and config.split == config.threshold_split
    evaluated = tuning if same_split else predict(served, config, config.split)
    scores = score(config, evaluated, threshold)
    figures = draw_figures(config, scores, tuning, output_dir, step) if config.figures else {}
    slides = draw_slide_maps(config, scores, output_dir) if config.figures else {}
    result = _result(config, step, record, threshold_file, scores, figures, slides)
    result.update(runtime.record())
    if runtime.name == "int8":  # beside the int8 model's metrics, its parity measured at export
        with open(config.run_dir.export.int8_parity) as f:
            result["int8_parity_at_export"] = json.load(f)
    if evaluated.idc_probability_uncalibrated is not None:
        result["calibration_effect"], figure = calibration_report.compare(
            evaluated, config.run_dir.export.calibration, config.split,
            output_dir if config.figures else None)
        figures.update({"calibration_uncalibrated": figure} if figure else {})
    result["summary_text"] = report.format_summary(result)
    if "calibration_effect" in result:
        result["summary_text"] += "\n".join(calibration_report.format_lines(
            result["calibration_effect"]))
    if config.tta != "none":
        result["tta"] = tta_comparison.compare(config, plain, served)
        result["summary_text"] += "\n".join(tta_comparison.format_lines(
            result["tta"], scores.patch, threshold))
    report.write_files(output_dir, result, evaluated, threshold)
    images = {f"plots/{name}": path for name, path in figures.items()}
    images.update({f"slides/patient_{p}": path for p, path in slides.items()})
    if config.figures:
        report.write_tensorboard(config.run_dir.evaluation_tensorboard(config.split),
                                 step or 0, result, images)
    return result
