"""Shared fixtures: one synthetic Kaggle-like tree with every quirk, and its conversion.

Session-scoped so the whole suite generates and converts once; tests that modify data copy it.
"""

import os

import pytest

from idc_engine import convert, synthetic

# TensorFlow's C++ start-up lines, to drop from a subprocess's stderr before reading it.
TF_STARTUP_LINES = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")

# Small but not trivial: ~16 patients, a few thousand patches, every real-world quirk.
TREE_OPTIONS = dict(num_patients=16, seed=7, min_patches=60, max_patches=220, quirks=True)


@pytest.fixture(scope="session")
def idc_tree(tmp_path_factory):
    """(root, summary) of a generated tree in the real Kaggle layout, quirks included."""
    root = str(tmp_path_factory.mktemp("idc_tree") / "IDC")
    summary = synthetic.write_dataset(root, **TREE_OPTIONS)
    return root, summary


@pytest.fixture(scope="session")
def converted(idc_tree, tmp_path_factory):
    """(output_dir, manifest) of the tree converted with default settings, 2 workers."""
    root, _ = idc_tree
    out = str(tmp_path_factory.mktemp("converted") / "tfrecords")
    manifest = convert.convert_tree(root, out, num_workers=2, min_shards=3, progress=False)
    return out, manifest


@pytest.fixture(scope="session")
def trained_model_dir(converted, tmp_path_factory):
    """A model_dir with export/ from a short in-process training run (~20 s on 2 cores), shared
    by the tests that need a model better than chance but not a particular one."""
    from idc_engine.training import loop
    from idc_engine.training.config import TrainConfig

    data_dir, _ = converted
    model_dir = str(tmp_path_factory.mktemp("trained_model") / "run")
    loop.train(TrainConfig(data_dir=data_dir, model_dir=model_dir, train_steps=100,
                           global_batch_size=32, steps_per_loop=10, bn_momentum=0.9,
                           learning_rate=2e-3, input_mode="cache", validation_every_steps=50,
                           augment="d4", strategy="default"))
    return model_dir


def read_records(path: str) -> list[dict]:
    """Every record of a shard as a dict of python values (image as uint8 [50, 50, 3])."""
    import numpy as np
    import tensorflow as tf

    out = []
    for serialized in tf.data.TFRecordDataset(path):
        feature = tf.train.Example.FromString(serialized.numpy()).features.feature
        record = {name: (feature[name].bytes_list.value[0] if kind == "bytes"
                         else feature[name].int64_list.value[0])
                  for name, kind in (("image", "bytes"), ("patient_id", "bytes"), ("label", "int"),
                                     ("x", "int"), ("y", "int"), ("height", "int"),
                                     ("width", "int"))}
        record["patient_id"] = record["patient_id"].decode()
        if record["image"][:4] == b"\x89PNG":
            record["image"] = tf.io.decode_png(record["image"], channels=3).numpy()
        else:
            record["image"] = np.frombuffer(record["image"], np.uint8).reshape(50, 50, 3)
        out.append(record)
    return out


def shard_paths(output_dir: str, manifest: dict, split: str | None = None) -> list[str]:
    splits = [split] if split else list(manifest["splits"])
    return [os.path.join(output_dir, f) for s in splits for f in manifest["splits"][s]["files"]]
