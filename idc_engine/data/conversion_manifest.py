"""The manifest of a finished conversion, built from the tree scan, the split and the shard results.

Its layout is described, and read back, in idc_engine/data/manifest.py.
"""

import datetime
import math
import os

import idc_engine
from idc_engine.data import manifest as manifest_lib
from idc_engine.data import patch_png, records


def channel_stats(results) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..255) of the unpadded pixels of the train split."""
    count = sum(r.pixel_count for r in results)
    if not count:
        return [], []
    sums = [sum(r.channel_sum[c] for r in results) for c in range(3)]
    sums_sq = [sum(r.channel_sum_sq[c] for r in results) for c in range(3)]
    mean = [s / count for s in sums]
    std = [math.sqrt(max(sq / count - m * m, 0.0)) for sq, m in zip(sums_sq, mean)]
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]


def _split_entries(results, shard_dir: str) -> dict:
    """{split: its manifest entry} for the splits that have shards, in manifest_lib.ordered_splits order."""
    entries = {}
    for split in manifest_lib.ordered_splits(r.split for r in results):
        shards = sorted((r for r in results if r.split == split), key=lambda r: r.index)
        if not shards:
            continue
        files = [f"{shard_dir}/{os.path.basename(r.path)}" for r in shards]  # "/" on every OS
        entries[split] = {
            "files": files,
            "num_examples": sum(r.num_examples for r in shards),
            "num_positive": sum(r.num_positive for r in shards),
            "patients": sorted({p for r in shards for p in r.patients}),
            "shards": [{"file": file, "num_examples": r.num_examples,
                        "num_positive": r.num_positive, "num_bytes": r.num_bytes,
                        "patients": r.patients} for file, r in zip(files, shards)],
        }
    return entries


def build_manifest(listing, patient_split, settings, results, input_dir, image_encoding,
                   shard_dir: str) -> dict:
    """The manifest of a conversion whose shards go to `output_dir/shard_dir`."""
    skipped = listing.skipped + [s for r in results for s in r.skipped]
    padded = sorted((p for r in results for p in r.padded), key=lambda p: p["path"])
    mean, std = channel_stats([r for r in results if manifest_lib.is_training_data(r.split)])
    return {
        "schema_version": manifest_lib.SCHEMA_VERSION,
        "image_shape": list(records.IMAGE_SHAPE),
        "image_encoding": image_encoding,
        "features": records.FEATURES,
        "pad_value": patch_png.PAD_VALUE,
        "splits": _split_entries(results, shard_dir),
        "train_channel_mean": mean,
        "train_channel_std": std,
        "split_settings": settings,
        "excluded_patients": patient_split.excluded,
        "missing_patients": patient_split.missing,
        "num_skipped": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "num_padded": len(padded),
        "padded": padded,
        "num_lost_patches": sum(r.num_lost for r in results),
        "num_duplicates": listing.num_duplicates,
        "ignored_files": listing.ignored,
        "input": {"dir": os.path.abspath(input_dir), "num_png_files": listing.num_png_files,
                  "num_unique_patches": len(listing.rows), "fingerprint": listing.fingerprint},
        "created_by": f"idc_engine.convert {idc_engine.__version__}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
