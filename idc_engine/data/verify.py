"""`python -m idc_engine.convert --verify`: re-read every shard and check it against the manifest.

Catches truncated or corrupted shards (file size, TFRecord CRCs), records that break the schema,
counts that disagree with the manifest, a patient in two splits or two shards, and a patch
(patient, x, y) stored twice. Uses TensorFlow's own reader, so what passes here reads in training.
"""

import collections
import os

import numpy as np
import tensorflow as tf

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records

_BATCH = 1024


def _parse_spec() -> dict:
    kinds = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], kinds[kind]) for name, kind in records.FEATURES.items()}


def _read_shard(path: str, image_encoding: str):
    """Yields parsed batches of a shard as numpy dicts; raises tf.errors.DataLossError if corrupt."""
    spec = _parse_spec()
    dataset = tf.data.TFRecordDataset(path).batch(_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, spec))
    for batch in dataset.as_numpy_iterator():
        if image_encoding == "png":
            # a list, not a numpy array: numpy's bytes dtype would drop trailing zero bytes
            batch["image"] = [tf.io.decode_png(png, channels=3).numpy().tobytes()
                              for png in batch["image"]]
        yield batch


def _check_shard(path, shard, image_encoding, seen_keys, problems) -> None:
    name = shard["file"]
    if not os.path.isfile(path):
        problems.append(f"{name}: listed in the manifest but missing")
        return
    size = os.path.getsize(path)
    if "num_bytes" in shard and size != shard["num_bytes"]:
        problems.append(f"{name}: {size:,} bytes, the manifest says {shard['num_bytes']:,} "
                        "(truncated or modified)")
    count = positives = 0
    patients = set()
    try:
        for batch in _read_shard(path, image_encoding):
            lengths = {len(image) for image in batch["image"]}
            if lengths != {records.IMAGE_BYTES}:
                problems.append(f"{name}: image sizes {sorted(lengths)} bytes, expected "
                                f"{records.IMAGE_BYTES}")
            labels = batch["label"]
            if not np.isin(labels, (0, 1)).all():
                problems.append(f"{name}: labels outside {{0, 1}}")
            for dim in ("height", "width"):
                if ((batch[dim] < 1) | (batch[dim] > records.PATCH_SIZE)).any():
                    problems.append(f"{name}: {dim} outside 1..{records.PATCH_SIZE}")
            for patient, x, y in zip(batch["patient_id"], batch["x"], batch["y"]):
                key = (patient.decode(), int(x), int(y))
                if key in seen_keys:
                    problems.append(f"{name}: patch {key} also in {seen_keys[key]}")
                seen_keys[key] = name
                patients.add(key[0])
            count += len(labels)
            positives += int(labels.sum())
    except tf.errors.OpError as e:
        problems.append(f"{name}: unreadable after {count:,} records, truncated or corrupt "
                        f"({type(e).__name__}: {e.message.splitlines()[0]})")
        return
    if count != shard["num_examples"] or positives != shard["num_positive"]:
        problems.append(f"{name}: {count:,} records ({positives:,} IDC), the manifest says "
                        f"{shard['num_examples']:,} ({shard['num_positive']:,} IDC)")
    if sorted(patients) != sorted(shard["patients"]):
        problems.append(f"{name}: patients {sorted(patients)} differ from the manifest's "
                        f"{shard['patients']}")


def verify_conversion(output_dir: str) -> list[str]:
    """Returns the problems found (empty when every shard matches the manifest)."""
    try:
        manifest = manifest_lib.load_manifest(output_dir)
    except manifest_lib.ManifestError as e:
        return [str(e)]
    problems = []
    seen_keys: dict = {}
    patient_split: dict = {}
    patient_shard = collections.defaultdict(set)
    for split, info in manifest["splits"].items():
        if [s["file"] for s in info["shards"]] != info["files"]:
            problems.append(f"split {split}: 'files' and 'shards' disagree in the manifest")
        for patient in info["patients"]:
            if patient in patient_split:
                problems.append(f"patient {patient} is in both {patient_split[patient]} and {split}")
            patient_split[patient] = split
        for shard in info["shards"]:
            for patient in shard["patients"]:
                patient_shard[patient].add(shard["file"])
            _check_shard(os.path.join(output_dir, shard["file"]), shard,
                         manifest["image_encoding"], seen_keys, problems)
        total = sum(s["num_examples"] for s in info["shards"])
        if total != info["num_examples"]:
            problems.append(f"split {split}: shards hold {total:,} examples, the split says "
                            f"{info['num_examples']:,}")
    for patient, shards in patient_shard.items():
        if len(shards) > 1:
            problems.append(f"patient {patient} is spread over shards {sorted(shards)}")
    return problems
