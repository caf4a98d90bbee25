"""`manifest.json`: what the converter wrote, and the one reader every consumer uses.

Layout (schema_version 1; paths are relative to the output directory):

    {
      "schema_version": 1,
      "image_shape": [50, 50, 3],
      "image_encoding": "raw" | "png",
      "splits": {
        "train": {"files": ["shards-<id>/train-00000-of-00008.tfrecord", ...],
                  "num_examples": int, "num_positive": int, "patients": [...],
                  "shards": [{"file", "num_examples", "num_positive", "num_bytes", "patients"}]},
        "val": {...}, "test": {...}            # a split with no patients is left out
        # --split=kfold: "fold0" ... "fold<K-1>" (and "test" when held out) instead
      },
      "train_channel_mean": [r, g, b], "train_channel_std": [r, g, b],   # 0..255, unpadded pixels
      "split_settings": {"mode", "seed", ...},
      "excluded_patients": [...], "missing_patients": [...],
      "skipped": [{"path", "reason"}], "num_skipped": int,
      "num_padded": int, "padded": [{"path", "height", "width"}],
      "num_lost_patches": int,                # patches none of whose copies decoded
      "num_duplicates": int, "ignored_files": {"litter": int, "other": int},
      "input": {"dir", "num_png_files", "fingerprint"},   # sha256 of each subtree's .png paths
      "created_by": str, "created_at": str
    }

A directory is a finished conversion exactly when `manifest.json` is there: the converter
writes it last, atomically. The conversion is what it lists; other entries (a previous
conversion's `shards-<id>/` folder left by a crash) are not part of it. Shard paths use "/" on
every OS; a manifest listing shards directly in the directory ("train-00000-of-00008.tfrecord")
reads the same way.
"""

import json
import os

from idc_engine import atomic_files, errors

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_TEMPORARY_NAME = atomic_files.temporary_path(MANIFEST_NAME)  # renamed to MANIFEST_NAME
SPLITS = ("train", "val", "test")
FOLD_PREFIX = "fold"  # --split=kfold's splits: fold0 ... fold<K-1>, and test when held out


def fold_split(index: int) -> str:
    return f"{FOLD_PREFIX}{index}"


def ordered_splits(names) -> list[str]:
    """The split names present in `names`, in SPLITS order, then folds by number."""
    names = set(names)
    folds = sorted((n for n in names if n.startswith(FOLD_PREFIX) and n[len(FOLD_PREFIX):]
                    .isdigit()), key=lambda n: int(n[len(FOLD_PREFIX):]))
    return [s for s in SPLITS if s in names] + folds


def is_training_data(split: str) -> bool:
    """The splits a model may be trained on, whose pixels give the channel mean/std: train, or
    every fold of a k-fold conversion (the statistics are label-free; test is never in them)."""
    return split == "train" or split not in SPLITS and ordered_splits([split]) == [split]


class ManifestError(errors.EngineError, ValueError):
    """A converted data directory that cannot be read; the message names the path."""


def manifest_path(data_dir: str) -> str:
    return os.path.join(data_dir, MANIFEST_NAME)


def load_manifest(data_dir: str) -> dict:
    """Reads and checks `data_dir/manifest.json`; raises ManifestError naming what is wrong."""
    if not os.path.isdir(data_dir):
        raise ManifestError(f"data directory {data_dir!r} does not exist; "
                            "convert the dataset first: python -m idc_engine.convert")
    path = manifest_path(data_dir)
    if not os.path.isfile(path):
        raise ManifestError(f"{path!r} is missing: {data_dir!r} is not a finished conversion "
                            "(python -m idc_engine.convert writes the manifest last)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read {path!r}: {e}") from e
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path!r} has schema_version {version!r}; this idc_engine reads "
                            f"version {SCHEMA_VERSION}: re-run python -m idc_engine.convert")
    return manifest


def split_info(manifest: dict, split: str, data_dir: str = "") -> dict:
    """The manifest entry of one split; raises ManifestError for a split it does not have."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ManifestError(f"split {split!r} is not in {manifest_path(data_dir)!r}; "
                            f"it has: {', '.join(sorted(splits)) or 'none'}")
    return splits[split]


def split_files(data_dir: str, split: str, manifest: dict | None = None) -> list[str]:
    """Absolute shard paths of a split, each checked to exist (ManifestError names a missing one)."""
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    paths = [os.path.join(data_dir, f) for f in split_info(manifest, split, data_dir)["files"]]
    for path in paths:
        if not os.path.isfile(path):
            raise ManifestError(f"shard {path!r} is listed in {manifest_path(data_dir)!r} "
                                "but does not exist")
    return paths


def write_manifest(data_dir: str, manifest: dict) -> None:
    """Writes the manifest atomically and durably."""
    atomic_files.write_json_atomically(manifest_path(data_dir), manifest, sort_keys=True)
