"""The stain target: fitted once from the train split, stored with the data as
`<data_dir>/stain_target.json`, read by training and copied into the export.

    python -m idc_engine.stain fit --data_dir=DATA

Why fitted by a command and not at conversion: a conversion that exists already (the full-scale
one takes a while) gets a target without being redone, and the converter stays one concern.
The file records the manifest's fingerprint, so a target fitted on another conversion is refused.

Why the median of per-patch estimates and not one estimate over pooled pixels: Macenko's stain
vectors are the angle extremes (1st/99th percentiles) of the pixels it sees; pooled over many
patients those are the extremes of the most unusual slides, not a typical stain. The median of
each patch's own estimate is the train split's typical patch, which every image is then moved to
(the Reinhard statistics likewise).
"""

import hashlib
import json
import math
import os

import numpy as np
import tensorflow as tf

from idc_engine import atomic_files
from idc_engine.data import manifest as manifest_lib
from idc_engine.errors import EngineError
from idc_engine.input import record_batches, shards, stain

TARGET_FILE = "stain_target.json"
FIT_COMMAND = "python -m idc_engine.stain fit --data_dir={}"


class StainTargetError(EngineError):
    """A missing, unreadable or stale stain_target.json."""


def target_path(data_dir: str) -> str:
    return os.path.join(data_dir, TARGET_FILE)


@tf.function(reduce_retracing=True)
def _patch_estimates(images):
    """uint8 [B, H, W, 3] -> per-patch (stain matrix [B, 3, 2], 99th-percentile concentrations
    [B, 2], LAB mean [B, 3], LAB std [B, 3], has tissue bool [B])."""
    stains, _, max_conc, tissue = stain.macenko_decompose(images)
    _, mean, std = stain.lab_statistics(images)
    return stains, max_conc, mean, std, tissue


def fit_target(images: np.ndarray, batch_size: int = 512) -> dict:
    """uint8 [N, H, W, 3] patches -> {"macenko": {...}, "reinhard": {...}, "patches": n}: the
    medians of the per-patch estimates of the patches with tissue (see the module docstring).

    Raises StainTargetError when no patch has tissue.
    """
    parts = [[t.numpy() for t in _patch_estimates(tf.constant(images[i:i + batch_size]))]
             for i in range(0, len(images), batch_size)]
    stains, max_conc, mean, std, tissue = (np.concatenate(p) for p in zip(*parts)) if parts \
        else (np.empty(0),) * 5
    if not np.any(tissue):
        raise StainTargetError(f"none of the {len(images)} patches has enough tissue "
                               f"({stain.MIN_TISSUE_FRACTION:.0%} of pixels) to fit a stain target")
    matrix = np.median(stains[tissue], axis=0)
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    typical = lambda v: np.asarray(v, float).round(6).tolist()
    target = {
        "macenko": {"stain_matrix": typical(matrix),
                    "max_concentration": typical(np.median(max_conc[tissue], axis=0))},
        "reinhard": {"lab_mean": typical(np.median(mean[tissue], axis=0)),
                     "lab_std": typical(np.median(std[tissue], axis=0))},
        "patches": int(np.sum(tissue)),
    }
    for method in ("macenko", "reinhard"):
        entry = target[method]
        channel_mean, channel_std = normalized_channel_stats(images, method, entry, batch_size)
        entry.update(channel_mean=typical(channel_mean), channel_std=typical(channel_std))
    return target


@tf.function(reduce_retracing=True)
def _channel_sums(images, method: str, entry: dict):
    """float64 ([3] sums, [3] sums of squares) of the normalised patches' pixels."""
    x = tf.cast(tf.reshape(stain.normalize(images, method, entry), [-1, 3]), tf.float64)
    return tf.reduce_sum(x, 0), tf.reduce_sum(x * x, 0)


def normalized_channel_stats(images: np.ndarray, method: str, entry: dict,
                             batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(mean [3], std [3]) over every pixel of the patches uint8 [N, H, W, 3] once normalised by
    `method` to `entry`: what training standardises with when it normalises (0..255 scale)."""
    sums, squares = np.zeros(3), np.zeros(3)
    for i in range(0, len(images), batch_size):
        s, q = _channel_sums(tf.constant(images[i:i + batch_size]), method, entry)
        sums, squares = sums + s.numpy(), squares + q.numpy()
    count = max(1, len(images) * images.shape[1] * images.shape[2])
    mean = sums / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def sample_split(data_dir: str, split: str = "train", max_patches: int = 20000) -> np.ndarray:
    """uint8 [n, 50, 50, 3]: every k-th patch of the split in file order (all its patients,
    k = ceil(size / max_patches)), read without holding the whole split."""
    source = shards.split_source(data_dir, split)
    stride = max(1, math.ceil((source.num_examples or 0) / max_patches))
    kept, seen = [], 0
    for batch in record_batches.read_all(source, with_metadata=False):
        images = batch[0]
        kept.append(images[(-seen) % stride::stride])
        seen += len(images)
    return np.concatenate(kept)[:max_patches] if kept else np.empty((0, 50, 50, 3), np.uint8)


def fit_and_write(data_dir: str, max_patches: int = 20000) -> dict:
    """Fits the target on the train split's sample and writes <data_dir>/stain_target.json
    atomically; returns what it wrote."""
    manifest = manifest_lib.load_manifest(data_dir)
    target = fit_target(sample_split(data_dir, "train", max_patches))
    target["fitted_on"] = {"split": "train", "max_patches": max_patches,
                           "manifest_fingerprint": _fingerprint(manifest)}
    atomic_files.write_json_atomically(target_path(data_dir), target)
    return target


def _fingerprint(manifest: dict) -> str:
    """What identifies a conversion's train split: a hash of its manifest entry (shard files,
    counts, patients; the shards' folder is new for every conversion)."""
    entry = json.dumps(manifest["splits"]["train"], sort_keys=True, default=str)
    return hashlib.sha256(entry.encode()).hexdigest()[:16]


def load_target(data_dir: str, method: str) -> dict:
    """`method`'s entry of <data_dir>/stain_target.json ({"stain_matrix", ...} or {"lab_mean",
    ...}). Raises StainTargetError naming the file and the command that fits it when the file is
    missing, unreadable or fitted on another conversion of data_dir."""
    path = target_path(data_dir)
    fit = FIT_COMMAND.format(data_dir)
    if not os.path.isfile(path):
        raise StainTargetError(f"--stain_normalization={method} needs {path}: run `{fit}` first")
    try:
        with open(path) as f:
            target = json.load(f)
        entry = target[method]
        fitted_on = target["fitted_on"]["manifest_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StainTargetError(f"{path} is not a stain target ({e!r}); run `{fit}` again") from e
    if fitted_on != _fingerprint(manifest_lib.load_manifest(data_dir)):
        raise StainTargetError(f"{path} was fitted on another conversion of {data_dir}; "
                               f"run `{fit}` again")
    return entry
