"""The input pipeline on real (tiny) TFRecord shards written with idc_engine.data.records."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records
from idc_engine.data.manifest import ManifestError
from idc_engine.input import (
    device_resident,
    host_cache,
    packed_split,
    parsing,
    permutation,
    pipeline,
    shards,
)
from idc_engine.models import preprocessing

# 8 patients, 4 shards of 2 patients each; each shard stores its patients one after the other,
# the worst case for mixing: only the pipeline's shuffling can mix patients in a batch.
PATIENTS = [f"{9000 + i}" for i in range(8)]
PER_PATIENT = 48
SHARD_PATIENTS = [PATIENTS[0:2], PATIENTS[2:4], PATIENTS[4:6], PATIENTS[6:8]]
MEAN, STD = [200.0, 150.0, 180.0], [40.0, 50.0, 45.0]


def patch_image(patient: str, k: int) -> np.ndarray:
    """The image stored for patch k of a patient: random, but known to the test."""
    return np.random.default_rng([int(patient), k]).integers(0, 256, records.IMAGE_SHAPE,
                                                             dtype=np.uint8)


def patch_key(patient: str, k: int) -> tuple:
    return (patient, 50 * (k % 8) + 1, 50 * (k // 8) + 1)


def write_converted(root, shard_patients=SHARD_PATIENTS, image_encoding="raw",
                    split="train", with_sizes=True) -> dict:
    """A converted directory with one split, the layout of idc_engine.data.manifest; returns it."""
    os.makedirs(root, exist_ok=True)
    shard_entries = []
    for index, patients in enumerate(shard_patients):
        name = f"{split}-{index:05d}-of-{len(shard_patients):05d}.tfrecord"
        num_positive = 0
        with open(os.path.join(root, name), "wb") as f:
            for patient in patients:
                for k in range(PER_PATIENT):
                    image = patch_image(patient, k)
                    if image_encoding == "png":
                        out = io.BytesIO()
                        Image.fromarray(image).save(out, format="PNG")
                        data = out.getvalue()
                    else:
                        data = image.tobytes()
                    label = k % 3 == 0
                    num_positive += label
                    _, x, y = patch_key(patient, k)
                    f.write(records.frame_record(records.encode_example(
                        data, int(label), patient, x, y, 50, 50)))
        shard = {"file": name, "num_examples": len(patients) * PER_PATIENT,
                 "num_positive": num_positive, "patients": list(patients)}
        if with_sizes:
            shard["num_bytes"] = os.path.getsize(os.path.join(root, name))
        shard_entries.append(shard)
    manifest = {
        "schema_version": manifest_lib.SCHEMA_VERSION, "image_shape": [50, 50, 3],
        "image_encoding": image_encoding,
        "splits": {split: {"files": [s["file"] for s in shard_entries],
                           "num_examples": sum(s["num_examples"] for s in shard_entries),
                           "num_positive": sum(s["num_positive"] for s in shard_entries),
                           "patients": [p for ps in shard_patients for p in ps],
                           "shards": shard_entries}},
        "train_channel_mean": MEAN, "train_channel_std": STD,
    }
    manifest_lib.write_manifest(str(root), manifest)
    return manifest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline") / "converted")
    write_converted(root)
    return root


def all_keys():
    return {patch_key(p, k) for p in PATIENTS for k in range(PER_PATIENT)}


def eval_records(dataset) -> list[tuple]:
    """(patient, x, y, label, image) of every record a with_metadata dataset yields."""
    out = []
    for images, labels, meta in dataset.as_numpy_iterator():
        for i in range(len(labels)):
            out.append((meta["patient_id"][i].decode(), int(meta["x"][i]), int(meta["y"][i]),
                        int(labels[i]), images[i]))
    return out


def check_records(found, expected_keys):
    keys = [r[:3] for r in found]
    assert len(keys) == len(set(keys)), "a record was yielded twice"
    assert set(keys) == expected_keys
    for patient, x, y, label, image in found:
        k = (x - 1) // 50 + 8 * ((y - 1) // 50)
        assert label == int(k % 3 == 0)
        np.testing.assert_array_equal(image, patch_image(patient, k))


# --- every example once, in the right shape ---------------------------------------------------

@pytest.mark.parametrize("cache", [False, True])
def test_eval_yields_every_example_exactly_once(data_dir, cache):
    dataset = pipeline.make_dataset(data_dir, "train", 40, training=False, cache=cache,
                                    with_metadata=True)
    found = eval_records(dataset)
    check_records(found, all_keys())
    assert len(found) == len(PATIENTS) * PER_PATIENT


def test_png_shards_read_like_raw(tmp_path):
    root = str(tmp_path / "png")
    write_converted(root, shard_patients=SHARD_PATIENTS[:2], image_encoding="png")
    found = eval_records(pipeline.make_dataset(root, "train", 32, training=False,
                                               with_metadata=True))
    check_records(found, {patch_key(p, k) for ps in SHARD_PATIENTS[:2] for p in ps
                          for k in range(PER_PATIENT)})
    training = pipeline.make_dataset(root, "train", 32, training=True, seed=0)
    for images, _ in training.take(2):
        assert images.shape == (32, 50, 50, 3) and images.dtype == tf.uint8


def test_training_batches_have_static_shape_and_dtypes(data_dir):
    dataset = pipeline.make_dataset(data_dir, "train", 32, training=True, seed=1)
    images, labels = dataset.element_spec
    assert images.shape == (32, 50, 50, 3) and images.dtype == tf.uint8
    assert labels.shape == (32,) and labels.dtype == tf.int32
    for _, labels in dataset.take(3):
        assert set(np.unique(labels.numpy())) <= {0, 1}


def test_prefetch_to_device(data_dir):
    dataset = pipeline.make_dataset(data_dir, "train", 32, training=True, seed=0,
                                    prefetch_to_device="/cpu:0")
    images, labels = next(iter(dataset))
    assert images.shape == (32, 50, 50, 3) and "CPU:0" in images.device


def test_training_repeats_past_one_epoch(data_dir):
    steps = 3 * len(PATIENTS) * PER_PATIENT // 32
    count = sum(1 for _ in pipeline.make_dataset(data_dir, "train", 32, training=True,
                                                 seed=0).take(steps))
    assert count == steps


# --- mixing and determinism ------------------------------------------------------------------

def batch_patients(dataset, num_batches):
    return [set(meta["patient_id"].tolist())
            for _, _, meta in dataset.take(num_batches).as_numpy_iterator()]


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_mix_patients(data_dir, cache):
    dataset = pipeline.make_dataset(data_dir, "train", 32, training=True, seed=3, cache=cache,
                                    with_metadata=True)
    patients = batch_patients(dataset, 24)
    assert min(len(p) for p in patients) >= 2, "a batch held a single patient"
    assert np.mean([len(p) for p in patients]) >= 4


def first_batches(dataset, n):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(n)]


@pytest.mark.parametrize("cache", [False, True])
def test_deterministic_mode_gives_the_same_batches_twice(data_dir, cache):
    def batches(seed):
        return first_batches(pipeline.make_dataset(
            data_dir, "train", 32, training=True, seed=seed, deterministic=True, cache=cache), 20)

    first, second, other_seed = batches(7), batches(7), batches(8)
    for (a_images, a_labels), (b_images, b_labels) in zip(first, second):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    assert any((a[0] != b[0]).any() for a, b in zip(first, other_seed))


def test_consecutive_epochs_are_ordered_differently(data_dir):
    per_epoch = len(PATIENTS) * PER_PATIENT // 32
    batches = first_batches(pipeline.make_dataset(data_dir, "train", 32, training=True, seed=0,
                                                  deterministic=True), 2 * per_epoch)
    epoch1 = np.concatenate([b[0] for b in batches[:per_epoch]])
    epoch2 = np.concatenate([b[0] for b in batches[per_epoch:]])
    assert (epoch1 != epoch2).any()


# --- distribution ----------------------------------------------------------------------------

def context(i, n=2):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i,
                                      num_replicas_in_sync=n)


def test_two_workers_read_disjoint_files_whose_union_is_the_split(data_dir):
    files = [set(shards.split_source(data_dir, "train", context(i)).paths) for i in range(2)]
    assert files[0] and files[1] and not files[0] & files[1]
    assert files[0] | files[1] == set(manifest_lib.split_files(data_dir, "train"))
    found = [eval_records(pipeline.make_dataset(data_dir, "train", 64, training=False,
                                                input_context=context(i), with_metadata=True))
             for i in range(2)]
    keys = [{r[:3] for r in f} for f in found]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == all_keys()


def test_per_replica_batch_is_global_over_replicas(data_dir):
    dataset = pipeline.make_dataset(data_dir, "train", 64, training=True, seed=0,
                                    input_context=context(0))
    assert dataset.element_spec[0].shape[0] == 32


def test_fewer_shards_than_workers_falls_back_to_record_sharding(tmp_path):
    root = str(tmp_path / "one_shard")
    write_converted(root, shard_patients=[PATIENTS[:3]])
    expected = {patch_key(p, k) for p in PATIENTS[:3] for k in range(PER_PATIENT)}
    with pytest.warns(UserWarning, match="1 shards for 2 input pipelines"):
        found = [eval_records(pipeline.make_dataset(root, "train", 16, training=False,
                                                    input_context=context(i),
                                                    with_metadata=True))
                 for i in range(2)]
    keys = [{r[:3] for r in f} for f in found]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == expected


# --- clear errors ----------------------------------------------------------------------------

def copy_dir(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def edit_manifest(root, change):
    with open(manifest_lib.manifest_path(root)) as f:
        manifest = json.load(f)
    change(manifest)
    manifest_lib.write_manifest(root, manifest)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        pipeline.make_dataset(str(tmp_path / "nowhere"), "train", 32, training=True)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json.*is missing"):
        pipeline.make_dataset(str(tmp_path), "train", 32, training=True)


def test_unknown_schema_version_is_refused(data_dir, tmp_path):
    root = copy_dir(data_dir, str(tmp_path / "v99"))
    edit_manifest(root, lambda m: m.update(schema_version=99))
    with pytest.raises(ManifestError, match="schema_version 99"):
        pipeline.make_dataset(root, "train", 32, training=False)


def test_unknown_split_is_named(data_dir):
    with pytest.raises(ManifestError, match="split 'test' is not in .*it has: train"):
        pipeline.make_dataset(data_dir, "test", 32, training=False)


def test_listed_but_absent_shard_is_named(data_dir, tmp_path):
    root = copy_dir(data_dir, str(tmp_path / "absent"))
    os.remove(os.path.join(root, "train-00002-of-00004.tfrecord"))
    with pytest.raises(ManifestError, match="train-00002-of-00004.tfrecord.*does not exist"):
        pipeline.make_dataset(root, "train", 32, training=True)


def truncate(path, keep=0.6):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


@pytest.mark.parametrize("cache", [False, True])
def test_truncated_shard_is_named_before_reading(data_dir, tmp_path, cache):
    root = copy_dir(data_dir, str(tmp_path / "truncated"))
    truncate(os.path.join(root, "train-00001-of-00004.tfrecord"))
    with pytest.raises(shards.ShardError, match="train-00001-of-00004.tfrecord.*truncated"):
        pipeline.make_dataset(root, "train", 32, training=True, cache=cache)


def test_truncated_shard_without_listed_size_is_named_on_read(tmp_path):
    # Older or hand-made manifests have no num_bytes: TF's DataLossError is then translated.
    root = str(tmp_path / "no_sizes")
    write_converted(root, with_sizes=False)
    truncate(os.path.join(root, "train-00003-of-00004.tfrecord"))
    dataset = pipeline.make_dataset(root, "train", 32, training=False)
    with pytest.raises(tf.errors.DataLossError) as raised:
        for _ in dataset:
            pass
    error = shards.explain_data_loss(root, "train", raised.value)
    assert "train-00003-of-00004.tfrecord" in str(error)
    with pytest.raises(shards.ShardError, match="train-00003-of-00004.tfrecord"):
        host_cache.load_split_arrays(root, "train")


# --- the device-resident sampler ------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 4097])
def test_random_permutation_index_is_a_permutation_per_epoch(n):
    positions = tf.range(n, dtype=tf.int64)
    first = permutation.random_permutation_index(positions, n, seed=3, epoch=0).numpy()
    second = permutation.random_permutation_index(positions, n, seed=3, epoch=1).numpy()
    np.testing.assert_array_equal(np.sort(first), np.arange(n))
    np.testing.assert_array_equal(np.sort(second), np.arange(n))
    if n >= 100:
        assert (first != second).mean() > 0.9
        assert abs(np.corrcoef(first, np.arange(n))[0, 1]) < 0.2  # shuffled, not shifted


def test_device_resident_sampler_draws_every_record_once_per_epoch(data_dir):
    sampler = pipeline.make_device_resident_sampler(data_dir, "train", 32, seed=5)
    total = len(PATIENTS) * PER_PATIENT
    assert sampler.steps_per_epoch == total // 32
    arrays = host_cache.load_split_arrays(data_dir, "train")
    index_of = {arrays.images[i].tobytes(): i for i in range(total)}

    step_fn = tf.function(sampler, jit_compile=True)
    seen = []
    for step in range(sampler.steps_per_epoch):
        images, labels = step_fn(tf.constant(step, tf.int64))
        assert images.dtype == tf.uint8 and images.shape == (32, 50, 50, 3)
        for image, label in zip(images.numpy(), labels.numpy()):
            i = index_of[image.tobytes()]
            assert label == arrays.labels[i]
            seen.append(i)
    assert sorted(seen) == list(range(total))
    again, _ = step_fn(tf.constant(0, tf.int64))
    next_epoch, _ = step_fn(tf.constant(sampler.steps_per_epoch, tf.int64))
    assert [index_of[im.tobytes()] for im in again.numpy()] == seen[:32]
    assert [index_of[im.tobytes()] for im in next_epoch.numpy()] != seen[:32]


def test_replicas_draw_disjoint_halves_of_the_global_batch(data_dir):
    sampler = pipeline.make_device_resident_sampler(data_dir, "train", 64, seed=1)
    halves = [set(sampler.indices(4, replica, 2).numpy()) for replica in range(2)]
    assert len(halves[0]) == len(halves[1]) == 32 and not halves[0] & halves[1]
    assert halves[0] | halves[1] == set(sampler.indices(4).numpy())


def test_pack_unpack_images_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 3), dtype=np.uint8)
    words = packed_split.pack_images(images)
    assert words.dtype == np.int64 and words.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed_split.unpack_images(tf.constant(words)).numpy(), images)


def test_read_packed_split_is_the_packed_split_in_the_same_order(data_dir):
    packed = packed_split.read_packed_split(data_dir, "train")
    arrays = host_cache.load_split_arrays(data_dir, "train")
    np.testing.assert_array_equal(packed.words, packed_split.pack_images(arrays.images))
    np.testing.assert_array_equal(packed.labels, arrays.labels)
    assert packed.words.dtype == packed.labels.dtype == np.int64
    assert packed.words.ctypes.data % 64 == 0 and packed.labels.ctypes.data % 64 == 0
    assert packed.image_shape == (50, 50, 3) and len(packed) == len(PATIENTS) * PER_PATIENT


def test_resident_split_on_cpu_is_the_buffer_the_shards_were_read_into(data_dir):
    """No copy of the split on a CPU: not when placing it, not at the first gather (TF copies a
    variable's whole buffer there), not when drawing batches."""
    packed = packed_split.read_packed_split(data_dir, "train")
    sampler = device_resident.DeviceResidentSampler(packed, 32, seed=0)
    before = packed.words.ctypes.data
    images, _ = tf.function(sampler)(tf.constant(3, tf.int64))
    sampler(tf.constant(4, tf.int64))
    assert np.asarray(sampler.words).ctypes.data == before
    # what the sampler draws is what was read: the buffer is shared, so a change shows through
    indices = sampler.indices(3).numpy()
    np.testing.assert_array_equal(
        images.numpy(), packed_split.unpack_images(tf.constant(packed.words[indices])).numpy())
    packed.words[indices[0]] = 0
    again, _ = sampler(tf.constant(3, tf.int64))
    assert not again.numpy()[0].any()


def test_read_packed_split_names_a_shard_with_records_missing(tmp_path):
    root = str(tmp_path / "short")
    manifest = write_converted(root)
    manifest["splits"]["train"]["num_examples"] += 1
    for shard in manifest["splits"]["train"]["shards"]:
        shard.pop("num_examples")
    manifest_lib.write_manifest(root, manifest)
    with pytest.raises(shards.ShardError, match="read 384 records where the manifest lists 385"):
        packed_split.read_packed_split(root, "train")


# --- normalization ----------------------------------------------------------------------------

def test_to_float_and_normalize_uses_manifest_statistics(data_dir):
    mean, std = pipeline.channel_mean_std(manifest_lib.load_manifest(data_dir))
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (4, 50, 50, 3), np.uint8))
    fn = tf.function(lambda x: preprocessing.to_float_and_normalize(x, mean, std), jit_compile=True)
    out = fn(images).numpy()
    expected = (images.numpy().astype(np.float32) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    half = preprocessing.to_float_and_normalize(images, mean, std, dtype=tf.bfloat16)
    assert half.dtype == tf.bfloat16


def test_parse_batch_returns_metadata():
    serialized = tf.constant([records.encode_example(patch_image("9001", 3).tobytes(), 1,
                                                     "9001", 151, 1, 50, 50)])
    images, labels, meta = parsing.parse_batch(serialized, "raw", with_metadata=True)
    np.testing.assert_array_equal(images[0].numpy(), patch_image("9001", 3))
    assert labels.numpy().tolist() == [1] and labels.dtype == tf.int32
    assert meta["patient_id"].numpy().tolist() == [b"9001"]
    assert (meta["x"].numpy()[0], meta["y"].numpy()[0]) == (151, 1)


# --- under a real strategy (own process: logical devices must be set before TF starts) --------

def test_mirrored_strategy_over_two_logical_cpus(data_dir):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from idc_engine.input import pipeline
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for cache in (False, True):
            dataset = strategy.distribute_datasets_from_function(
                lambda ctx: pipeline.make_dataset({data_dir!r}, "train", 64, training=True,
                                                  input_context=ctx, seed=0, cache=cache))
            images, labels = next(iter(dataset))
            sizes = [int(t.shape[0]) for t in strategy.experimental_local_results(images)]
            assert sizes == [32, 32], sizes
        with strategy.scope():
            sampler = pipeline.make_device_resident_sampler({data_dir!r}, "train", 64)

        @tf.function
        def step(i):
            return strategy.run(lambda: sampler(i)[1])
        labels = strategy.experimental_local_results(step(tf.constant(0, tf.int64)))
        assert [int(t.shape[0]) for t in labels] == [32, 32]
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            timeout=300)
    assert "OK" in result.stdout, result.stderr[-3000:]


# --- on the converter's own output (the shared fixture of tests/conftest.py) ------------------

def test_reads_what_the_converter_wrote(converted):
    out, manifest = converted
    for split, info in manifest["splits"].items():
        labels, patients, count = 0, set(), 0
        for images, batch_labels, meta in pipeline.make_dataset(
                out, split, 128, training=False, with_metadata=True).as_numpy_iterator():
            assert images.shape[1:] == (50, 50, 3)
            count += len(batch_labels)
            labels += int(batch_labels.sum())
            patients |= {p.decode() for p in meta["patient_id"]}
        assert count == info["num_examples"]
        assert labels == info["num_positive"]
        assert patients == set(info["patients"])
    mean, std = pipeline.channel_mean_std(manifest)
    assert len(mean) == len(std) == 3
