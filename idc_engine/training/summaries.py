"""TensorBoard for a run: `<tensorboard>/{train,validation}` (RunDir.tensorboard), written by the
chief only.

Train and validation scalars share names ("loss", "accuracy", ...) so TensorBoard overlays
their curves. Each validation also writes a confusion-matrix image; the run's resolved
configuration goes to the HParams dashboard.
"""

import io
import math
import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

_SCALAR_SKIP = ("confusion_matrix", "num_examples", "threshold")


class Writers:
    def __init__(self, root: str, enabled: bool):
        make = (tf.summary.create_file_writer if enabled
                else lambda _: tf.summary.create_noop_writer())
        self.train = make(os.path.join(root, "train"))
        self.val = make(os.path.join(root, "validation"))
        self.enabled = enabled

    def train_scalars(self, step: int, **values) -> None:
        with self.train.as_default():
            for name, value in values.items():
                if value is not None:
                    tf.summary.scalar(name, value, step=step)

    def validation(self, step: int, metrics: dict) -> None:
        """metrics: {"val_<name>": value} from idc_engine.scoring.metrics.classification_metrics."""
        with self.val.as_default():
            for name, value in metrics.items():
                name = name.removeprefix("val_")
                if name not in _SCALAR_SKIP and isinstance(value, float) and math.isfinite(value):
                    tf.summary.scalar(name, value, step=step)
            if self.enabled:
                tf.summary.image("confusion_matrix", confusion_matrix_image(
                    metrics["val_confusion_matrix"]), step=step)

    def hparams(self, config: dict) -> None:
        values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        with self.train.as_default():
            hparams_api.hparams(values)

    def close(self) -> None:
        for writer in (self.train, self.val):
            writer.flush()
            writer.close()


def confusion_matrix_image(matrix) -> np.ndarray:
    """[[tn, fp], [fn, tp]] -> uint8 [1, H, W, 4]: a labelled heat map with counts and row %."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    figure, axes = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    axes.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    names = ["non-IDC", "IDC"]
    axes.set_xticks([0, 1], names)
    axes.set_yticks([0, 1], names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            share = matrix[i, j] / max(rows[i, 0], 1)
            axes.text(j, i, f"{matrix[i, j]:,}\n{share:.1%}", ha="center", va="center",
                      color="white" if share > 0.5 else "black")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return tf.image.decode_png(buffer.getvalue(), channels=4)[None].numpy()


def format_metrics(metrics: dict) -> str:
    keys = ("loss", "accuracy", "auc", "idc_precision", "idc_recall", "idc_f1",
            "balanced_accuracy", "max_f1_threshold", "accuracy_at_max_f1")
    return ", ".join(f"{k} {metrics['val_' + k]:.4f}" for k in keys if "val_" + k in metrics)


def format_run(summary: dict, strategy: str) -> str:
    """The end-of-run report printed by python -m idc_engine.train."""
    rate = summary.get("images_per_sec")
    lines = [f"trained {summary['final_step']} steps on {strategy}, {summary['precision']}, "
             f"XLA {'on' if summary['xla'] else 'off'}"
             + (f": {rate:,.0f} images/s" if rate else "")
             + (" (stopped early)" if summary["stopped_early"] else "")]
    if summary.get("best_value") is not None:
        lines.append(f"best {summary['best_metric']}: {summary['best_value']:.4f}")
    last = summary.get("last_validation")
    if last:
        lines += [
            f"last validation ({last['val_num_examples']:,} patches, threshold "
            f"{last['val_threshold']}):",
            f"  loss {last['val_loss']:.4f}  accuracy {last['val_accuracy']:.4f}  balanced "
            f"accuracy {last['val_balanced_accuracy']:.4f}  ROC-AUC {last['val_auc']:.4f}",
            f"  IDC      precision {last['val_idc_precision']:.4f}  recall (sensitivity) "
            f"{last['val_idc_recall']:.4f}  F1 {last['val_idc_f1']:.4f}",
            f"  non-IDC  precision {last['val_non_idc_precision']:.4f}  recall (specificity) "
            f"{last['val_non_idc_recall']:.4f}  F1 {last['val_non_idc_f1']:.4f}",
            f"  confusion [[TN, FP], [FN, TP]]: {last['val_confusion_matrix']}"]
        if "val_max_f1_threshold" in last:
            lines.append(f"  at threshold {last['val_max_f1_threshold']:.4g} (max IDC F1, what "
                         f"evaluate chooses): accuracy {last['val_accuracy_at_max_f1']:.4f}  "
                         f"balanced accuracy {last['val_balanced_accuracy_at_max_f1']:.4f}")
    if summary.get("export"):
        lines.append(f"exported: {summary['export']['saved_model']} (uint8 patches -> IDC "
                     f"probability) and {summary['export']['keras']}")
    return "\n".join(lines)
