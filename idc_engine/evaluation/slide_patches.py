"""The patches of a few patients read back from a converted split, for their slide maps.

The served model's predictions keep no images, so the slide maps read the images again, from
only the shards the manifest lists for the chosen patients.
"""

import os

import numpy as np

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records


def _shard_files(data_dir: str, split: str, manifest: dict, wanted: set) -> list[str]:
    """The split's shards holding any of the wanted patients (all of them when the manifest
    does not record which patients a shard holds)."""
    info = manifest_lib.split_info(manifest, split, data_dir)
    files = [os.path.join(data_dir, shard["file"]) for shard in info.get("shards", [])
             if wanted & set(shard.get("patients", []))]
    return files or manifest_lib.split_files(data_dir, split, manifest)


def read_patient_patches(data_dir: str, split: str, patient_ids) -> dict:
    """{patient_id: (images uint8 [n, 50, 50, 3], x int64 [n], y int64 [n])}, reading only the
    shards the manifest lists for those patients; a patient without patches is left out."""
    import tensorflow as tf

    from idc_engine.input import parsing

    manifest = manifest_lib.load_manifest(data_dir)
    wanted = set(patient_ids)
    encoding = manifest.get("image_encoding", "raw")
    shape = tuple(manifest.get("image_shape", records.IMAGE_SHAPE))
    dataset = tf.data.TFRecordDataset(_shard_files(data_dir, split, manifest, wanted)).batch(
        1024).map(lambda s: parsing.parse_batch(s, encoding, with_metadata=True,
                                                 image_shape=shape))
    found: dict = {p: ([], [], []) for p in wanted}
    for images, _, metadata in dataset.as_numpy_iterator():
        ids = np.array([i.decode() for i in metadata["patient_id"]])
        for patient in wanted & set(ids):
            keep = ids == patient
            found[patient][0].append(images[keep])
            found[patient][1].append(metadata["x"][keep])
            found[patient][2].append(metadata["y"][keep])
    return {p: (np.concatenate(images).astype(np.uint8), np.concatenate(x).astype(np.int64),
                np.concatenate(y).astype(np.int64))
            for p, (images, x, y) in found.items() if images}
