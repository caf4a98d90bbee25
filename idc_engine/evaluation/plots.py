"""Figures of an evaluation, as PNG files ready for a paper (matplotlib, Agg backend).

    confusion_matrix.png   counts and row percentages, classes named, the threshold in the title
    roc.png                ROC curve, AUC with its CI, the operating point, chance line
    precision_recall.png   PR curve, average precision with its CI, the operating point,
                           the IDC prevalence (a random classifier's precision)
    calibration.png        reliability curve with patch counts per bin, Brier score and ECE
    patients.png           predicted vs true IDC fraction per patient, MAE and Pearson r
    threshold.png          on the threshold split: F1, sensitivity, specificity vs threshold
    training_curves.png    loss and accuracy of the run from its TensorBoard event files

Every function takes plain numbers or arrays and a path; none needs TensorFlow except
`read_scalars` (event files).
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as sk  # noqa: E402

from idc_engine.scoring.metrics import CLASS_NAMES  # noqa: E402

DPI = 200
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": DPI, "savefig.dpi": DPI,
    "savefig.bbox": "tight", "savefig.pad_inches": 0.05, "axes.grid": True, "grid.alpha": 0.25,
}
IDC_COLOUR = "#c0392b"      # red: IDC
NON_IDC_COLOUR = "#2e86c1"  # blue: non-IDC
MODEL_COLOUR = "#1b2631"


def save_figure(figure, path: str) -> str:
    """Writes the figure to path (PNG, its folder made if needed), closes it; returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _ci(interval: dict | None) -> str:
    if not interval or not all(math.isfinite(interval.get(k, math.nan)) for k in ("low", "high")):
        return ""
    return f" (95% CI {interval['low']:.3f}-{interval['high']:.3f})"


def plot_confusion_matrix(matrix, threshold: float, path: str, title: str = "") -> str:
    """matrix [[tn, fp], [fn, tp]]: counts, and the share of each true class (row %)."""
    matrix = np.asarray(matrix, np.int64)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    share = matrix / rows
    with plt.rc_context({**STYLE, "axes.grid": False}):
        figure, axes = plt.subplots(figsize=(3.6, 3.1))
        image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                axes.text(j, i, f"{matrix[i, j]:,}\n{share[i, j]:.1%}", ha="center",
                          va="center", fontsize=10,
                          color="white" if share[i, j] > 0.55 else "black")
        axes.set_xticks([0, 1], [f"{n}" for n in CLASS_NAMES])
        axes.set_yticks([0, 1], [f"{n}" for n in CLASS_NAMES])
        axes.set_xlabel(f"predicted class (IDC if p >= {threshold:.3g})")
        axes.set_ylabel("true class")
        for side in ("top", "right"):
            axes.spines[side].set_visible(True)
        bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        bar.set_label("share of the true class")
        axes.set_title(title or "confusion matrix (patches)")
        return save_figure(figure, path)


def _point_label(operating_point: dict, first: tuple[str, str], second: tuple[str, str]) -> str:
    """"threshold 0.42: sens 0.812, spec 0.903": the threshold, then two (shown name, key) values
    of operating_point."""
    (first_name, first_key), (second_name, second_key) = first, second
    return (f"threshold {operating_point['threshold']:.3g}: {first_name} "
            f"{operating_point[first_key]:.3f}, {second_name} {operating_point[second_key]:.3f}")


def _finish_unit_square(axes, point: tuple | None, xlabel: str, ylabel: str, legend_loc: str,
                        title: str) -> None:
    """What the ROC and precision-recall figures share after their curves: the operating point
    (x, y, legend label) when given, the axis labels, the unit square at equal aspect, the legend
    and the title."""
    if point:
        x, y, label = point
        axes.plot(x, y, "o", color=IDC_COLOUR, ms=6, label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.legend(loc=legend_loc)
    axes.set_title(title)


def plot_roc(labels, idc_probability, path: str, operating_point: dict | None = None,
             auc_interval: dict | None = None, title: str = "") -> str:
    """operating_point: {"idc_sensitivity", "idc_specificity", "threshold"} at the threshold."""
    fpr, tpr, _ = sk.roc_curve(labels, idc_probability)
    auc = sk.auc(fpr, tpr)
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(3.6, 3.6))
        axes.plot(fpr, tpr, color=MODEL_COLOUR, lw=1.6, label=f"model, AUC {auc:.3f}"
                  + _ci(auc_interval))
        axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
        point = None
        if operating_point:
            point = (1 - operating_point["idc_specificity"], operating_point["idc_sensitivity"],
                     _point_label(operating_point, ("sens", "idc_sensitivity"),
                                  ("spec", "idc_specificity")))
        _finish_unit_square(axes, point, "1 - IDC specificity (false positive rate)",
                            "IDC sensitivity (true positive rate)", "lower right",
                            title or "ROC curve (patches)")
        return save_figure(figure, path)


def plot_precision_recall(labels, idc_probability, path: str, operating_point: dict | None = None,
                          ap_interval: dict | None = None, title: str = "") -> str:
    """operating_point: {"idc_sensitivity", "idc_precision", "threshold"} at the threshold."""
    labels = np.asarray(labels)
    precision, recall, _ = sk.precision_recall_curve(labels, idc_probability)
    ap = sk.average_precision_score(labels, idc_probability)
    prevalence = float(np.mean(labels == 1))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(3.6, 3.6))
        axes.step(recall, precision, where="post", color=MODEL_COLOUR, lw=1.6,
                  label=f"model, AP {ap:.3f}" + _ci(ap_interval))
        axes.axhline(prevalence, ls="--", color="grey", lw=0.8,
                     label=f"chance (IDC prevalence {prevalence:.3f})")
        point = None
        if operating_point:
            point = (operating_point["idc_sensitivity"], operating_point["idc_precision"],
                     _point_label(operating_point, ("recall", "idc_sensitivity"),
                                  ("precision", "idc_precision")))
        _finish_unit_square(axes, point, "IDC recall (sensitivity)", "IDC precision (PPV)",
                            "lower left", title or "precision-recall curve (patches)")
        return save_figure(figure, path)


def plot_calibration(calibration: dict, brier_score: float, path: str, title: str = "") -> str:
    """calibration: idc_engine.scoring.metrics.calibration_bins(...)."""
    edges = np.asarray(calibration["bin_edges"])
    count = np.asarray(calibration["count"])
    mean_prob = np.asarray(calibration["mean_probability"], np.float64)
    observed = np.asarray(calibration["observed_idc_fraction"], np.float64)
    filled = count > 0
    with plt.rc_context(STYLE):
        figure, (axes, hist) = plt.subplots(
            2, 1, figsize=(3.6, 4.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
        axes.plot(mean_prob[filled], observed[filled], "o-", color=MODEL_COLOUR, lw=1.4, ms=4,
                  label=f"model: Brier {brier_score:.3f}, ECE "
                        f"{calibration['expected_calibration_error']:.3f}")
        axes.set_ylabel("observed IDC fraction")
        axes.set_xlim(0, 1)
        axes.set_ylim(-0.01, 1.01)
        axes.legend(loc="upper left")
        axes.set_title(title or "calibration (reliability curve, patches)")
        hist.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="#95a5a6",
                 edgecolor="white")
        hist.set_yscale("log" if count.max(initial=0) > 50 * max(np.median(count[filled]), 1)
                        else "linear")
        hist.set_xlabel("predicted IDC probability (bin mean)")
        hist.set_ylabel("patches")
        figure.align_ylabels([axes, hist])
        return save_figure(figure, path)


def plot_patient_fractions(rows: list[dict], path: str, patient_metrics: dict | None = None,
                           title: str = "") -> str:
    """rows: idc_engine.evaluation.patients.per_patient(...); one dot per patient."""
    true = np.array([r["true_idc_fraction"] for r in rows])
    predicted = np.array([r["predicted_idc_fraction"] for r in rows])
    sizes = np.array([r["num_patches"] for r in rows], np.float64)
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(3.8, 3.8))
        axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="identity")
        label = "patient (area ~ patches)"
        if patient_metrics:
            label += (f"\nMAE {patient_metrics['idc_fraction_mae']:.3f}, Pearson r "
                      f"{patient_metrics['idc_fraction_pearson_r']:.3f}")
        axes.scatter(true, predicted, s=12 + 120 * sizes / max(sizes.max(initial=1), 1),
                     color=IDC_COLOUR, alpha=0.6, edgecolor="black", lw=0.5, label=label)
        if len(rows) <= 12:
            for r in rows:
                axes.annotate(r["patient_id"], (r["true_idc_fraction"],
                                                r["predicted_idc_fraction"]),
                              textcoords="offset points", xytext=(5, -3), fontsize=7)
        axes.set_xlabel("true IDC fraction of the patient's patches")
        axes.set_ylabel("predicted IDC fraction")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_aspect("equal")
        axes.legend(loc="upper left")
        axes.set_title(title or f"IDC extent per patient ({len(rows)} patients)")
        return save_figure(figure, path)


def plot_threshold_choice(points: dict, threshold: float, rule: str, path: str,
                          split: str = "val") -> str:
    """points: idc_engine.scoring.thresholds.operating_points on the threshold split."""
    t = points["threshold"]
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(4.4, 3.2))
        axes.plot(t, points["idc_f1"], color=MODEL_COLOUR, lw=1.4, label="IDC F1")
        axes.plot(t, points["idc_sensitivity"], color=IDC_COLOUR, lw=1.2,
                  label="IDC sensitivity")
        axes.plot(t, points["idc_specificity"], color=NON_IDC_COLOUR, lw=1.2,
                  label="IDC specificity")
        axes.axvline(threshold, color="black", ls=":", lw=1.0,
                     label=f"chosen: {threshold:.3g} ({rule})")
        axes.set_xlim(0, 1)
        axes.set_ylim(-0.01, 1.01)
        axes.set_xlabel("threshold on IDC probability")
        axes.set_ylabel(f"value on the {split} split")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
        axes.set_title(f"threshold chosen on the {split} split "
                       f"({int(points['tp'][-1] + points['fp'][-1]):,} patches)")
        return save_figure(figure, path)


def read_scalars(event_dir: str) -> dict:
    """{tag: (steps int [K], values float [K])} of the scalar summaries in an event directory
    (the last value wins when a step was written twice, e.g. by a resumed run)."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    found: dict = {}
    if not os.path.isdir(event_dir):
        return {}
    files = [os.path.join(event_dir, n) for n in sorted(os.listdir(event_dir)) if "tfevents" in n]
    for record in (tf.data.TFRecordDataset(files) if files else []):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "scalars":
                found.setdefault(value.tag, {})[int(event.step)] = float(
                    tf.make_ndarray(value.tensor))
            elif value.HasField("simple_value"):
                found.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return {tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)]))
            for tag, v in found.items()}


def plot_training_curves(tensorboard_dir: str, path: str, exported_step: int | None = None,
                         train_note: str = "") -> str | None:
    """Loss and accuracy of train and validation from `tensorboard_dir/{train,validation}`.

    Returns the path, or None when the run has no such scalars (e.g. trained elsewhere).
    """
    train = read_scalars(os.path.join(tensorboard_dir, "train"))
    val = read_scalars(os.path.join(tensorboard_dir, "validation"))
    if not any(tag in logs for logs in (train, val) for tag in ("loss", "accuracy")):
        return None
    with plt.rc_context(STYLE):
        figure, panels = plt.subplots(1, 2, figsize=(7.4, 3.0))
        for axes, tag, name in ((panels[0], "loss", "cross-entropy loss"),
                                (panels[1], "accuracy", "accuracy")):
            if tag in train:
                steps, values = train[tag]
                axes.plot(steps, values, color="#7f8c8d", lw=1.0, alpha=0.9,
                          label="train" + (f" ({train_note})" if train_note else ""))
            if tag in val:
                steps, values = val[tag]
                axes.plot(steps, values, "o-", color=IDC_COLOUR, lw=1.4, ms=3.5,
                          label="validation")
            if exported_step is not None:
                axes.axvline(exported_step, color="black", ls=":", lw=1.0,
                             label=f"exported model (step {exported_step})")
            axes.set_xlabel("training step")
            axes.set_ylabel(name)
            axes.legend(loc="best")
        panels[0].set_title("loss")
        panels[1].set_title("accuracy (threshold 0.5)")
        figure.tight_layout()
        return save_figure(figure, path)
