"""The input pipeline: converted TFRecord shards -> uint8 batches for the training step.

Three ways to feed a step, the fastest last:

    make_dataset(data_dir, "train", 256, training=True)               tf.data from the shards
    make_dataset(data_dir, "train", 256, training=True, cache=True)   split decoded once into RAM
    make_device_resident_sampler(data_dir, "train", 256)              split in accelerator memory

All three yield uint8 images [B, 50, 50, 3] and int32 labels [B]: float conversion and
normalization (`to_float_and_normalize`) and augmentation (`idc_engine.input.augment`) run on the
device inside the step, so the host moves 1 byte per channel instead of 4.

Why the host pipeline is shaped the way it is: on 2 cores per-record tf.data work is what costs,
so records are read in chunks of
`CHUNK_RECORDS` per shard, parsed with ONE vectorized `tf.io.parse_example` + `decode_raw` per
chunk inside the parallel interleave, and shuffled as chunks; a stateless permutation of each
window of a few batches then mixes single records, so the batch composition changes every epoch.
benchmarks/input_pipeline.py times the result against the bare TFRecord read.

Both `make_dataset` variants take a `tf.distribute.InputContext`, so they plug into
`strategy.distribute_datasets_from_function`: each input pipeline reads distinct shards.
"""

import dataclasses
import math
import os
import random
import re
import warnings

import numpy as np
import tensorflow as tf

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records
from idc_engine.data.manifest import ManifestError

CHUNK_RECORDS = 64               # records per vectorized parse; also the unit of the shuffle buffer
DEFAULT_SHUFFLE_BUFFER = 16384   # records (~120 MB of decoded images)
DEFAULT_CYCLE_LENGTH = 8         # shards read at once by each input pipeline
_WINDOW_BATCHES = 4              # record-level shuffle: a permutation of >= this many batches
_WINDOW_MIN_CHUNKS = 16          # ... and of records from >= this many chunks (small batches)
_READ_BUFFER_BYTES = 1 << 20
_LOAD_BATCH = 2048               # batch size when loading a split into memory


class ShardError(ManifestError):
    """A shard that is there but cannot be read in full (truncated, corrupt); names the file."""


# --- parsing ---------------------------------------------------------------------------------

def _feature_spec(with_metadata: bool) -> dict:
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    if with_metadata:
        spec.update(patient_id=tf.io.FixedLenFeature([], tf.string),
                    x=tf.io.FixedLenFeature([], tf.int64),
                    y=tf.io.FixedLenFeature([], tf.int64))
    return spec


def _parse_records(serialized, with_metadata: bool):
    """tf.string [B] -> (image bytes tf.string [B], labels int32 [B][, metadata]); one parse op."""
    features = tf.io.parse_example(serialized, _feature_spec(with_metadata))
    labels = tf.cast(features["label"], tf.int32)
    if not with_metadata:
        return features["image"], labels
    metadata = {"patient_id": features["patient_id"],
                "x": tf.cast(features["x"], tf.int32), "y": tf.cast(features["y"], tf.int32)}
    return features["image"], labels, metadata


def decode_images(image_bytes, image_encoding: str = "raw", image_shape=records.IMAGE_SHAPE):
    """tf.string [B] of stored images -> uint8 [B, H, W, C].

    "raw": one `decode_raw` for the whole batch (a copy). "png": one `decode_png` per image.
    """
    if image_encoding == "raw":
        return tf.reshape(tf.io.decode_raw(image_bytes, tf.uint8), [-1, *image_shape])
    if image_encoding == "png":
        return tf.map_fn(
            lambda png: tf.ensure_shape(tf.io.decode_png(png, channels=image_shape[-1]),
                                        image_shape),
            image_bytes, fn_output_signature=tf.TensorSpec(image_shape, tf.uint8))
    raise ValueError(f"image_encoding must be one of {records.IMAGE_ENCODINGS}, got {image_encoding!r}")


def _decode_element(image_encoding: str, image_shape):
    def decode(image_bytes, *rest):
        return (decode_images(image_bytes, image_encoding, image_shape), *rest)
    return decode


def parse_batch(serialized, image_encoding: str = "raw", with_metadata: bool = False,
                image_shape=records.IMAGE_SHAPE):
    """Parses a batch of serialized records with one vectorized `tf.io.parse_example`.

    Args:
      serialized: tf.string [B], serialized `tf.train.Example`s (schema: idc_engine/data/records.py).
      image_encoding: "raw" (uint8 HWC bytes, one `decode_raw` for the batch) or "png".
      with_metadata: also return patient_id, x, y (for evaluation).
      image_shape: (H, W, C) of the stored images.

    Returns:
      (images uint8 [B, H, W, C], labels int32 [B]), or with_metadata
      (images, labels, {"patient_id": tf.string [B], "x": int32 [B], "y": int32 [B]}).
    """
    return _decode_element(image_encoding, image_shape)(*_parse_records(serialized, with_metadata))


# --- shards: which files, checked how --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SplitSource:
    """What one input pipeline reads of a split."""
    data_dir: str
    split: str
    paths: list                  # absolute shard paths this pipeline reads
    image_encoding: str
    image_shape: tuple
    num_examples: int | None     # records this pipeline yields per epoch, when known
    record_shard: tuple | None   # (num_pipelines, pipeline_id) when shards are too few to share


def _image_encoding(manifest: dict, data_dir: str) -> str:
    encoding = manifest.get("image_encoding", "raw")
    if encoding not in records.IMAGE_ENCODINGS:
        raise ManifestError(f"{manifest_lib.manifest_path(data_dir)!r} has image_encoding "
                            f"{encoding!r}; this idc_engine reads {records.IMAGE_ENCODINGS}")
    return encoding


def _check_shard_sizes(data_dir: str, info: dict) -> None:
    """Truncated shards caught by one stat() each, before TF fails deep inside iteration.

    TF's DataLossError for a truncated record does not name the file; the manifest records each
    shard's size, so comparing sizes names it for the cost of a stat.
    """
    for shard in info.get("shards", []):
        if "num_bytes" not in shard:
            continue
        path = os.path.join(data_dir, shard["file"])
        size = os.path.getsize(path)
        if size != shard["num_bytes"]:
            raise ShardError(f"shard {path!r} has {size:,} bytes but "
                             f"{manifest_lib.manifest_path(data_dir)!r} says {shard['num_bytes']:,}: "
                             "it is truncated or was modified; copy it again or re-run "
                             "python -m idc_engine.convert")


def split_source(data_dir: str, split: str, input_context=None) -> SplitSource:
    """Reads the manifest, checks the split's shards and picks this input pipeline's share.

    Each pipeline of `input_context` reads distinct shards (shard i goes to pipeline
    i % num_input_pipelines). With fewer shards than pipelines every pipeline reads all shards
    and keeps every n-th record instead (slower: each reads everything), with a warning.
    Raises ManifestError (or its subclass ShardError) naming what is missing or broken.
    """
    manifest = manifest_lib.load_manifest(data_dir)
    info = manifest_lib.split_info(manifest, split, data_dir)
    paths = manifest_lib.split_files(data_dir, split, manifest)
    if not paths:
        raise ManifestError(f"split {split!r} of {manifest_lib.manifest_path(data_dir)!r} "
                            "lists no shards")
    _check_shard_sizes(data_dir, info)
    counts = {os.path.join(data_dir, s["file"]): s.get("num_examples")
              for s in info.get("shards", [])}
    record_shard = None
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    if num_pipelines > 1:
        pipeline_id = input_context.input_pipeline_id
        if len(paths) >= num_pipelines:
            paths = paths[pipeline_id::num_pipelines]
        else:
            warnings.warn(f"split {split!r} has {len(paths)} shards for {num_pipelines} input "
                          "pipelines: each pipeline reads every shard and keeps every "
                          f"{num_pipelines}-th record. Convert with --min_shards>={num_pipelines} "
                          "so each pipeline reads its own files.", stacklevel=3)
            record_shard = (num_pipelines, pipeline_id)
    known = [counts.get(p) for p in paths]
    num_examples = None  # every n-th record of a shard: not listed anywhere
    if record_shard is None and None not in known:
        num_examples = sum(known)
    elif record_shard is None and num_pipelines == 1:
        num_examples = info.get("num_examples")
    return SplitSource(data_dir, split, paths, _image_encoding(manifest, data_dir),
                       tuple(manifest.get("image_shape", records.IMAGE_SHAPE)), num_examples,
                       record_shard)


def explain_data_loss(data_dir: str, split: str, error: Exception | None = None) -> ShardError:
    """Finds which shard of a split is corrupt after a tf.errors.DataLossError.

    TF's message ("truncated record at 992938") does not say which file. This re-reads each shard
    on its own (a full read of the split, paid only after a failure) and returns a ShardError that
    names the first unreadable one:

        except tf.errors.DataLossError as e:
            raise pipeline.explain_data_loss(data_dir, "train", e) from e
    """
    for path in manifest_lib.split_files(data_dir, split):
        try:
            tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).reduce(
                tf.constant(0, tf.int64), lambda n, _: n + 1)
        except tf.errors.DataLossError as e:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message).strip()
            return ShardError(f"shard {path!r} is corrupt or truncated ({reason}); "
                              "copy it again or re-run python -m idc_engine.convert")
    detail = f" ({error})" if error is not None else ""
    return ShardError(f"split {split!r} of {data_dir!r} failed to read{detail}, but every shard "
                      "reads in full on its own now: was a file replaced while training?")


# --- tf.data from the shards -----------------------------------------------------------------

def _tuned_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    # One thread per op: tf.data's own parallelism (interleave, map) is what uses the cores.
    options.threading.max_intra_op_parallelism = 1
    return options


def _shard_chunks(path, source: SplitSource, with_metadata: bool) -> tf.data.Dataset:
    """One shard as parsed chunks of up to CHUNK_RECORDS records (one parse op per chunk).

    Raw images are decoded here, inside the parallel interleave. PNG images stay encoded (2-3x
    smaller to shuffle) until whole batches are decoded in parallel at the end.
    """
    records_ds = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    if source.record_shard is not None:
        # Sharding records within each file keeps the split disjoint whatever the file order.
        records_ds = records_ds.shard(*source.record_shard)
    decode = _decode_element("raw", source.image_shape)

    def parse(serialized):
        parsed = _parse_records(serialized, with_metadata)
        return decode(*parsed) if source.image_encoding == "raw" else parsed

    return records_ds.batch(CHUNK_RECORDS).map(parse)


def _permute_window(seed: int):
    """Shuffles the records of a window (several batches) with a permutation seeded by its index."""
    def permute(index, window):
        size = tf.shape(tf.nest.flatten(window)[0])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), index]))
        return tf.nest.map_structure(lambda t: tf.gather(t, order), window)
    return permute


def _records_dataset(source: SplitSource, batch_size: int, training: bool, shuffle_buffer: int,
                     seed: int, deterministic: bool, with_metadata: bool,
                     cycle_length: int) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(source.paths)
    if training:
        files = files.shuffle(len(source.paths), seed=seed, reshuffle_each_iteration=True).repeat()
    chunks = files.interleave(
        lambda path: _shard_chunks(path, source, with_metadata),
        cycle_length=max(1, min(cycle_length, len(source.paths))), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if not training:
        batches = chunks.rebatch(batch_size, drop_remainder=False)
    else:
        # Each window mixes records of many chunks (shards, positions); whole batches only.
        window = batch_size * max(_WINDOW_BATCHES,
                                  math.ceil(_WINDOW_MIN_CHUNKS * CHUNK_RECORDS / batch_size))
        batches = (chunks.shuffle(max(1, shuffle_buffer // CHUNK_RECORDS), seed=seed)
                   .rebatch(window, drop_remainder=True)
                   .enumerate()
                   .map(_permute_window(seed), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
                   .rebatch(batch_size, drop_remainder=True))
    if source.image_encoding != "raw":
        batches = batches.map(_decode_element(source.image_encoding, source.image_shape),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return batches


# --- the split in host memory ----------------------------------------------------------------

@dataclasses.dataclass
class SplitArrays:
    """A split (or one input pipeline's share of it) decoded into numpy arrays."""
    images: np.ndarray                    # uint8 [N, 50, 50, 3]
    labels: np.ndarray                    # int32 [N]
    patient_id: np.ndarray | None = None  # bytes objects [N], when loaded with_metadata
    x: np.ndarray | None = None           # int32 [N]
    y: np.ndarray | None = None           # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)


def _read_all(source: SplitSource, with_metadata: bool, batch_size: int = _LOAD_BATCH):
    """Every record of `source` once, in a fixed order, as numpy batches of `batch_size`."""
    dataset = _records_dataset(source, batch_size, training=False, shuffle_buffer=0, seed=0,
                               deterministic=True, with_metadata=with_metadata,
                               cycle_length=DEFAULT_CYCLE_LENGTH)
    return dataset.with_options(_tuned_options(deterministic=True)).as_numpy_iterator()


def _check_count(data_dir: str, split: str, count: int, expected: int) -> None:
    if count != expected:
        raise ShardError(f"split {split!r} of {data_dir!r}: read {count:,} records where the "
                         f"manifest lists {expected:,}; a shard was modified after conversion")


def load_split_arrays(data_dir: str, split: str, input_context=None,
                      with_metadata: bool = False) -> SplitArrays:
    """Reads and decodes a split (this input pipeline's shards) into host memory, in file order.

    About 7.5 kB per patch: the whole train split is ~1.7 GB. The images array is allocated once
    at the size the manifest lists, not grown by concatenation.
    Raises ShardError naming the file if a shard is corrupt, or if the split holds fewer or more
    records than the manifest lists.
    """
    source = split_source(data_dir, split, input_context)
    expected = source.num_examples
    images = np.empty((expected or 0, *source.image_shape), np.uint8)
    image_parts, other_parts, count = [], [], 0
    try:
        for batch in _read_all(source, with_metadata):
            n = len(batch[1])
            if expected is None:
                image_parts.append(batch[0])
            elif count + n <= expected:
                images[count:count + n] = batch[0]
            count += n
            other_parts.append(batch[1:])
    except tf.errors.DataLossError as e:
        raise explain_data_loss(data_dir, split, e) from e
    if expected is None:
        images = np.concatenate(image_parts) if image_parts else images
    else:
        _check_count(data_dir, split, count, expected)
    labels = np.concatenate([p[0] for p in other_parts]) if other_parts else np.empty(0, np.int32)
    arrays = SplitArrays(images, labels.astype(np.int32))
    if with_metadata:
        metadata = [p[1] for p in other_parts]
        arrays.patient_id = np.concatenate([m["patient_id"] for m in metadata])
        arrays.x = np.concatenate([m["x"] for m in metadata])
        arrays.y = np.concatenate([m["y"] for m in metadata])
    return arrays


def _cached_dataset(arrays: SplitArrays, batch_size: int, training: bool, seed: int,
                    with_metadata: bool) -> tf.data.Dataset:
    """Batches gathered by index from the decoded split: one gather per batch, no parsing.

    Training draws a fresh full permutation of the split every epoch (better mixing than any
    buffer), shuffling only int64 indices.
    """
    images = tf.convert_to_tensor(arrays.images)
    labels = tf.convert_to_tensor(arrays.labels)
    metadata = None
    if with_metadata:
        metadata = {"patient_id": tf.convert_to_tensor(arrays.patient_id, tf.string),
                    "x": tf.convert_to_tensor(arrays.x, tf.int32),
                    "y": tf.convert_to_tensor(arrays.y, tf.int32)}

    def gather(indices):
        batch = (tf.gather(images, indices), tf.gather(labels, indices))
        if metadata is None:
            return batch
        return (*batch, {k: tf.gather(v, indices) for k, v in metadata.items()})

    indices = tf.data.Dataset.range(len(arrays))
    if training:
        indices = indices.shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True).repeat()
    return indices.batch(batch_size, drop_remainder=training).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE)


# --- the public builder ----------------------------------------------------------------------

def per_replica_batch_size(global_batch_size: int, input_context=None) -> int:
    if input_context is None:
        return global_batch_size
    return input_context.get_per_replica_batch_size(global_batch_size)


def make_dataset(data_dir: str, split: str, global_batch_size: int, training: bool,
                 input_context: tf.distribute.InputContext | None = None, *,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, seed: int | None = None,
                 deterministic: bool = False, cache: bool = False, with_metadata: bool = False,
                 cycle_length: int = DEFAULT_CYCLE_LENGTH,
                 prefetch_to_device: str | None = None) -> tf.data.Dataset:
    """The tf.data pipeline of one split, for one input pipeline of a tf.distribute strategy.

        dataset = strategy.distribute_datasets_from_function(
            lambda ctx: make_dataset(data_dir, "train", 256, training=True, input_context=ctx))

    Args:
      data_dir: a converted directory (manifest.json and shards).
      split: "train", "val" or "test" (a split the manifest has).
      global_batch_size: summed over replicas; each batch here holds global / replicas records.
      training: shuffle (shards, chunks, then records within windows of >= 4 batches), repeat forever,
        drop the remainder. Otherwise: one pass, every record exactly once, last batch partial.
      input_context: from distribute_datasets_from_function; picks this pipeline's shards.
      shuffle_buffer: records in the chunk shuffle buffer (training).
      seed: shuffle seed; None draws one. Equal seeds with deterministic=True give equal batches.
      deterministic: reproducible order (tf.data keeps element order; a little slower). Uses
        seed 0 when seed is None.
      cache: decode the split once into host RAM (~7.5 kB a patch, ~1.7 GB for the train split),
        then serve batches by gathering indices, with a fresh permutation every epoch.
      with_metadata: also yield patient_id, x, y (to aggregate predictions per patient).
      cycle_length: shards read in parallel by this pipeline.
      prefetch_to_device: e.g. "/gpu:0" for a loop without a strategy; leave None under a
        strategy (its distributed iterator already prefetches to every replica's device).

    Returns:
      A dataset of (images uint8 [B, 50, 50, 3], labels int32 [B]), or with_metadata
      (images, labels, {"patient_id": tf.string [B], "x": int32 [B], "y": int32 [B]}),
      B = per-replica batch size (static when training).

    Raises:
      ManifestError: missing directory or manifest, unknown schema version, unknown split, or a
        listed shard that is absent; ShardError (a ManifestError) for a truncated shard.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2**31)
    if cache:
        arrays = load_split_arrays(data_dir, split, input_context, with_metadata)
        dataset = _cached_dataset(arrays, batch_size, training, seed, with_metadata)
    else:
        source = split_source(data_dir, split, input_context)
        dataset = _records_dataset(source, batch_size, training, shuffle_buffer, seed,
                                   deterministic, with_metadata, cycle_length)
    dataset = dataset.with_options(_tuned_options(deterministic))
    if prefetch_to_device:
        return dataset.apply(tf.data.experimental.prefetch_to_device(prefetch_to_device))
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- the split resident in accelerator memory ------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _hash32(x):
    """A 32-bit integer mix of int64 values in [0, 2**32).

    Multipliers stay below 2**31 so every product fits in int64: no overflow, and the kernels
    exist on every device and under XLA.
    """
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * 0x7FEB352D, _MASK32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = tf.bitwise.bitwise_and(x * 0x5BD1E995, _MASK32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def random_permutation_index(positions, num_items: int, seed, epoch, rounds: int = 4):
    """Element `positions` of a pseudo-random permutation of range(num_items), one per epoch.

    A stateless bijection computed per element (a Feistel network on the smallest 4**k >= n,
    cycle-walking values that land outside range(num_items)), so a step's batch costs O(batch),
    not a shuffle of the whole split. XLA-compilable.

    Args:
      positions: int64 [B] in [0, num_items).
      num_items: size of the permuted range.
      seed: int or int64 scalar tensor.
      epoch: int64 scalar or [B]; each epoch is a different permutation.

    Returns:
      int64 [B], distinct for distinct positions of one epoch.
    """
    half_bits = max(1, math.ceil(math.log2(max(num_items, 2)) / 2))
    half_mask = (1 << half_bits) - 1
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK32)
    epoch_key = _hash32(tf.bitwise.bitwise_xor(
        _hash32(tf.bitwise.bitwise_and(tf.cast(epoch, tf.int64), _MASK32)), seed))
    round_keys = [_hash32(tf.bitwise.bitwise_and(epoch_key + r * 0x3C6EF372, _MASK32))
                  for r in range(rounds)]

    def feistel(x):
        left, right = tf.bitwise.right_shift(x, half_bits), tf.bitwise.bitwise_and(x, half_mask)
        for key in round_keys:
            mixed = tf.bitwise.bitwise_and(_hash32(tf.bitwise.bitwise_xor(right, key)), half_mask)
            left, right = right, tf.bitwise.bitwise_xor(left, mixed)
        return tf.bitwise.bitwise_or(tf.bitwise.left_shift(left, half_bits), right)

    def outside(x):
        return tf.reduce_any(x >= num_items)

    def walk(x):  # cycle-walking: re-encrypt what fell outside until it lands inside
        return (tf.where(x >= num_items, feistel(x), x),)

    x = feistel(tf.cast(positions, tf.int64))
    return tf.while_loop(outside, walk, (x,))[0]


# TF's CPU allocator aligns buffers to 64 bytes and its kernels may assume it of any buffer.
_TF_ALIGNMENT = 64


def _aligned_empty(nbytes: int) -> np.ndarray:
    """Uninitialized uint8 [nbytes] whose data starts on a 64-byte boundary (numpy's own large
    arrays start 16 bytes past a page), so TensorFlow can use the buffer in place."""
    raw = np.empty(nbytes + _TF_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % _TF_ALIGNMENT
    return raw[offset:offset + nbytes]


def _aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself if C-contiguous and 64-byte aligned, else such a copy."""
    if array.flags.c_contiguous and array.ctypes.data % _TF_ALIGNMENT == 0:
        return array
    copy = _aligned_empty(array.nbytes).view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def _packed_rows(num_images: int, image_bytes: int) -> np.ndarray:
    """uint8 [num_images, image_bytes rounded up to 8], 64-byte aligned, the padding zeroed and
    the image bytes left to fill; `.view(np.int64)` gives `pack_images`' words."""
    row = -(-image_bytes // 8) * 8
    rows = _aligned_empty(num_images * row).reshape(num_images, row)
    rows[:, image_bytes:] = 0
    return rows


def pack_images(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> int64 [N, ceil(H*W*C / 8)], each image's bytes as 8-byte words.

    GPU gather kernels exist for int64 but not for uint8 (or int32), so resident images are kept
    as int64 words: same bytes, plus at most 7 bytes of padding per image. The result is a new
    64-byte-aligned array.
    """
    flat = images.reshape(len(images), -1)
    rows = _packed_rows(len(images), flat.shape[1])
    rows[:, :flat.shape[1]] = flat
    return rows.view(np.int64)


@dataclasses.dataclass
class PackedSplit:
    """A split in the resident sampler's layout, one allocation per array."""
    words: np.ndarray      # int64 [N, ceil(H*W*C / 8)], 64-byte aligned (`pack_images`)
    labels: np.ndarray     # int64 [N], 64-byte aligned
    image_shape: tuple     # (H, W, C) of the uint8 images

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_arrays(cls, arrays: SplitArrays) -> "PackedSplit":
        return cls(pack_images(arrays.images), _aligned(arrays.labels.astype(np.int64)),
                   tuple(arrays.images.shape[1:]))


def read_packed_split(data_dir: str, split: str) -> PackedSplit:
    """Reads a whole split straight into the resident layout, in `load_split_arrays`' order.

    The words array (~7.5 kB a patch) is allocated once at the count the manifest lists and each
    decoded chunk of records is copied into its rows once: no list of parts, no concatenation,
    no packing copy, so the host holds one copy of the split plus a few chunks in flight.
    Raises ShardError as `load_split_arrays` does.
    """
    source = split_source(data_dir, split)
    expected = source.num_examples
    if expected is None:  # a manifest without counts: read, then pack
        return PackedSplit.from_arrays(load_split_arrays(data_dir, split))
    image_bytes = math.prod(source.image_shape)
    rows = _packed_rows(expected, image_bytes)
    labels = _aligned_empty(8 * expected).view(np.int64)
    count = 0
    try:
        for images, batch_labels in _read_all(source, with_metadata=False,
                                              batch_size=CHUNK_RECORDS):
            n = len(batch_labels)
            if count + n <= expected:
                rows[count:count + n, :image_bytes] = images.reshape(n, image_bytes)
                labels[count:count + n] = batch_labels
            count += n
    except tf.errors.DataLossError as e:
        raise explain_data_loss(data_dir, split, e) from e
    _check_count(data_dir, split, count, expected)
    return PackedSplit(rows.view(np.int64), labels, source.image_shape)


def unpack_images(words, image_shape=records.IMAGE_SHAPE):
    """int64 [B, words] from `pack_images` -> uint8 [B, H, W, C] (a bitcast and a slice)."""
    flat = tf.reshape(tf.bitcast(words, tf.uint8), [tf.shape(words)[0], -1])
    return tf.reshape(flat[:, :math.prod(image_shape)], [-1, *image_shape])


class DeviceResidentSampler:
    """The whole split as one tensor in accelerator memory; each step gathers its batch there.

    No host input work per step: the batch indices come from `random_permutation_index` of
    (seed, step), so the step is a pure function of its number (restarts resume exactly), every
    record is drawn once per epoch, and each epoch has its own order. Create it inside
    `strategy.scope()`: the data become a mirrored variable, one copy per replica device (the
    2.08 GB of the full dataset fit on any modern GPU). On a CPU machine it lives in host memory,
    in the very buffer the shards were read into.

        sampler = make_device_resident_sampler(data_dir, "train", 256, seed=0)
        @tf.function
        def train_step(step):
            images, labels = sampler(step)    # per replica, inside strategy.run or not
    """

    def __init__(self, split: "PackedSplit | SplitArrays", global_batch_size: int,
                 seed: int = 0):
        """split: from `read_packed_split` (placed without a copy), or decoded SplitArrays
        (packed first: a copy)."""
        if isinstance(split, SplitArrays):
            split = PackedSplit.from_arrays(split)
        if len(split) < global_batch_size:
            raise ValueError(f"the split has {len(split)} records, fewer than one global batch "
                             f"of {global_batch_size}")
        self.num_examples = len(split)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.image_shape = tuple(split.image_shape)
        self.words = _place_resident(split.words, "resident_images")
        self.labels = _place_resident(split.labels, "resident_labels")
        # ~60 tiny integer ops: one XLA kernel instead of 60 launches. The gather stays outside:
        # XLA's CPU gather of wide rows is 4x slower than TF's.
        self._compiled_indices = tf.function(self.indices, jit_compile=True)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    def indices(self, step, replica_id=0, num_replicas: int = 1):
        """int64 [global_batch_size / num_replicas]: the records of this replica at `step`."""
        if self.global_batch_size % num_replicas:
            raise ValueError(f"global batch {self.global_batch_size} is not divisible by "
                             f"{num_replicas} replicas")
        per_replica = self.global_batch_size // num_replicas
        start = (tf.cast(step, tf.int64) * self.global_batch_size
                 + tf.cast(replica_id, tf.int64) * per_replica)
        positions = start + tf.range(per_replica, dtype=tf.int64)
        epoch, within = positions // self.num_examples, positions % self.num_examples
        return random_permutation_index(within, self.num_examples, self.seed, epoch)

    def __call__(self, step):
        """(images uint8 [b, 50, 50, 3], labels int32 [b]) for this replica at `step`.

        In a replica context (inside strategy.run) b = global / replicas and each replica gets
        its own slice of the step's global batch; elsewhere b = the global batch.
        """
        context = tf.distribute.get_replica_context()
        replica_id, num_replicas = 0, 1
        if context is not None:
            replica_id, num_replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
        indices = self._compiled_indices(tf.cast(step, tf.int64), tf.cast(replica_id, tf.int64),
                                         num_replicas)
        images = unpack_images(tf.gather(self.words, indices), self.image_shape)
        return images, tf.cast(tf.gather(self.labels, indices), tf.int32)


def _place_resident(array: np.ndarray, name: str):
    """`array` (64-byte aligned) on the device(s) the sampler draws from; a tensor or variable.

    DLPack hands the numpy buffer to TensorFlow without a copy. Without GPUs that host tensor
    IS the resident split: every replica (logical CPU devices share host memory) gathers from
    it, and host memory holds the split once. It is deliberately not a variable: TensorFlow
    copies a variable's whole buffer at its first gather unless the variable alone owns it
    (copy-on-read mode), a second copy of the split at the first step. With GPUs it becomes a
    variable, one copy in each replica's device memory (a mirrored variable inside
    `strategy.scope()`), and the host buffer is freed once the caller drops `array`.
    """
    host = tf.experimental.dlpack.from_dlpack(_aligned(array).__dlpack__())
    if not tf.config.list_logical_devices("GPU"):
        return host
    return tf.Variable(host, trainable=False, name=name)


def make_device_resident_sampler(data_dir: str, split: str, global_batch_size: int,
                                 seed: int = 0) -> DeviceResidentSampler:
    """Loads a whole split into the memory of the current device(s); see DeviceResidentSampler.

    The split is read straight into its resident layout (`read_packed_split`) and placed without
    a copy on a CPU (`_place_resident`), so host memory peaks near the split's own size (~7.5 kB
    a patch) above what TensorFlow itself holds.
    Every worker loads the whole split; replicas draw disjoint slices of each global batch.
    """
    return DeviceResidentSampler(read_packed_split(data_dir, split), global_batch_size, seed)


# --- on the device: uint8 -> normalized float -----------------------------------------------

def channel_mean_std(manifest: dict) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the train split on the 0..255 scale, from the manifest."""
    mean, std = manifest.get("train_channel_mean"), manifest.get("train_channel_std")
    if not mean or not std or len(mean) != len(std):
        raise ManifestError("the manifest has no train_channel_mean / train_channel_std "
                            "(convert with a train split)")
    return [float(m) for m in mean], [float(s) for s in std]
