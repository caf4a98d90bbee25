"""Which patches to explain: --explain entries (files, folders, SPLIT:N), decoded files, and
records drawn from a converted split at random or as the most confident errors."""

import dataclasses
import os
import re

import numpy as np

from idc_engine.data import records
from idc_engine.inference import patch_files

SELECTIONS = ("random", "confident_errors")
_SPLIT_REQUEST = re.compile(r"^(?P<split>[A-Za-z][\w-]*):(?P<count>\d+)$")


@dataclasses.dataclass
class PatchItem:
    name: str                      # file-name stem of the figures
    source: str                    # the file, or split:patient:x:y
    image: np.ndarray | None       # uint8 [50, 50, 3]
    label: int | None = None
    height: int | None = None
    width: int | None = None
    error: str = ""


def parse_explain(entries) -> tuple[list, list]:
    """--explain entries -> (file and folder paths, [(split, count)]); existing paths win."""
    paths, requests = [], []
    for entry in entries:
        match = _SPLIT_REQUEST.match(entry)
        if match and not os.path.exists(entry):
            requests.append((match["split"], int(match["count"])))
        else:
            paths.append(entry)
    return paths, requests


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[:80] or "patch"


def items_from_files(paths) -> list:
    """Decodes files as predict does (padding like the converter); bad files keep their error."""
    items = []
    for path in paths:
        decoded = patch_files.decode_file(path)
        parsed = patch_files.name_fields(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        items.append(PatchItem(_safe_name(stem), path, decoded.image, parsed.get("label"),
                               decoded.height, decoded.width, decoded.error))
    return items


def select_records(probabilities, labels, count: int, selection: str, threshold: float,
                   seed: int = 0) -> np.ndarray:
    """Indices (int64) of `count` records of a split.

    random: half IDC, half non-IDC (the rest from the other class when one is short), seeded.
    confident_errors: the most confident false positives and false negatives, half each.
    probabilities float [N] P(IDC), may be None for "random"; labels int [N].
    """
    labels = np.asarray(labels)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if selection == "random":
        rng = np.random.default_rng(seed)
        first, second = rng.permutation(positives), rng.permutation(negatives)
    elif selection == "confident_errors":
        predicted = np.asarray(probabilities) >= threshold
        false_negatives = positives[~predicted[positives]]
        false_positives = negatives[predicted[negatives]]
        first = false_negatives[np.argsort(probabilities[false_negatives], kind="stable")]
        second = false_positives[np.argsort(-probabilities[false_positives], kind="stable")]
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    take_first = min(len(first), max(count // 2, count - len(second)))
    take_second = min(len(second), count - take_first)
    return np.concatenate([first[:take_first], second[:take_second]]).astype(np.int64)


def items_from_split(explainer, data_dir: str, split: str, count: int, selection: str,
                     seed: int = 0) -> list:
    """`count` records of a converted split picked by `selection` (SELECTIONS), as PatchItems.

    explainer: gradcam.Explainer, whose probabilities and threshold pick confident errors.
    Raises ManifestError / ShardError (idc_engine.input.shards) for a missing or corrupt split.
    """
    from idc_engine.data import manifest as manifest_lib
    from idc_engine.input import host_cache

    arrays = host_cache.load_split_arrays(data_dir, split, with_metadata=True)
    probabilities = None
    if selection == "confident_errors":
        probabilities = explainer.probabilities(arrays.images)
    chosen = select_records(probabilities, arrays.labels, count, selection,
                            explainer.threshold.value, seed)
    sizes = patch_files.padded_sizes(manifest_lib.load_manifest(data_dir))
    items = []
    for i in chosen:
        patient = arrays.patient_id[i].decode()
        x, y, label = int(arrays.x[i]), int(arrays.y[i]), int(arrays.labels[i])
        height, width = sizes.get((patient, x, y), (records.PATCH_SIZE, records.PATCH_SIZE))
        items.append(PatchItem(f"{split}_{patient}_x{x}_y{y}_class{label}",
                               f"{split}:{patient}:x{x}:y{y}", arrays.images[i], label,
                               height, width))
    return items
