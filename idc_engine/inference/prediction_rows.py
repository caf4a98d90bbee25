"""Predictions as CSV rows: one dict of CSV_COLUMNS per PNG file or per record of a split.

The label is `idc_probability >= threshold`; a file that cannot be decoded gets a row with the
reason in `error` and no probability, so the rows are always one per input, in order.
"""

import numpy as np

from idc_engine.data import records
from idc_engine.inference import patch_files, serving

CSV_COLUMNS = ("path", "idc_probability", "predicted_label", "error", "height", "width",
               "patient_id", "x", "y", "label", "note", "runtime")


def _probability_fields(probability: float, threshold: float) -> dict:
    # 9 significant digits: a float32 written so that it reads back to the same value
    return {"idc_probability": format(float(probability), ".9g"),
            "predicted_label": int(probability >= threshold)}


def _file_row(decoded: patch_files.DecodedFile) -> dict:
    """The row of one decoded file, without its probability (filled in after the model call)."""
    return {"path": decoded.path, "idc_probability": "", "predicted_label": "",
            "error": decoded.error, "height": decoded.height or "", "width": decoded.width or "",
            "patient_id": "", "x": "", "y": "", "label": "", "note": decoded.note,
            **patch_files.name_fields(decoded.path)}


def predict_files(predictor, paths: list, threshold: float, batch_size: int = 256,
                  num_threads: int = 2):
    """Yields one CSV row (a dict of CSV_COLUMNS) per path, in order; never raises for a file.

    predictor: uint8 [N, 50, 50, 3] -> P(IDC) [N] (e.g. serving.ServedModel).
    """
    waiting, images = [], []

    def flush():
        if images:
            probabilities = predictor(np.stack(images))
            for row, probability in zip((r for r in waiting if r["error"] == ""), probabilities):
                row.update(_probability_fields(probability, threshold))
        yield from waiting
        waiting.clear()
        images.clear()

    decoded_files = patch_files.decode_files(paths, num_threads,
                                             max_pending_files=max(4096, 4 * batch_size))
    for decoded in decoded_files:
        waiting.append(_file_row(decoded))
        if decoded.image is not None:
            images.append(decoded.image)
            if len(images) == batch_size:
                yield from flush()
    yield from flush()


def predict_split_rows(predictor, data_dir: str, split: str, threshold: float,
                       batch_size: int = 256):
    """Yields one CSV row per record of a converted split, in file order (deterministic).

    Raises ManifestError / ShardError (idc_engine.input.shards) for a missing or corrupt split.
    """
    from idc_engine.data import manifest as manifest_lib

    sizes = patch_files.padded_sizes(manifest_lib.load_manifest(data_dir))
    predictions = serving.predict_split(predictor, data_dir, split, batch_size)
    full = records.PATCH_SIZE
    for i, probability in enumerate(predictions.idc_probability):
        patient = str(predictions.patient_id[i])
        x, y = int(predictions.x[i]), int(predictions.y[i])
        height, width = sizes.get((patient, x, y), (full, full))
        note = "" if (height, width) == (full, full) else (
            f"padded from {height}x{width} by the converter")
        yield {"path": "", **_probability_fields(probability, threshold), "error": "",
               "height": height, "width": width, "patient_id": patient, "x": x, "y": y,
               "label": int(predictions.labels[i]), "note": note}
