"""The input pipeline: converted TFRecord shards -> uint8 batches for the training step.

Three ways to feed a step, the fastest last:

    make_dataset(data_dir, "train", 256, training=True)               tf.data from the shards
    make_dataset(data_dir, "train", 256, training=True, cache=True)   split decoded once into RAM
    make_device_resident_sampler(data_dir, "train", 256)              split in accelerator memory

All three yield uint8 images [B, 50, 50, 3] and int32 labels [B]: float conversion and
normalization (`to_float_and_normalize`) and augmentation (`idc_engine.input.augment`) run on the
device inside the step, so the host moves 1 byte per channel instead of 4. The shape of the
host pipeline is explained in idc_engine/input/record_batches.py.

`make_dataset` takes a `tf.distribute.InputContext`, so it plugs into
`strategy.distribute_datasets_from_function`: each input pipeline reads distinct shards.
"""

import random

import tensorflow as tf

from idc_engine.data.manifest import ManifestError
from idc_engine.input import host_cache, record_batches, shards
from idc_engine.input.device_resident import DeviceResidentSampler
from idc_engine.input.packed_split import read_packed_split
from idc_engine.input.record_batches import DEFAULT_CYCLE_LENGTH, DEFAULT_SHUFFLE_BUFFER


def per_replica_batch_size(global_batch_size: int, input_context=None) -> int:
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
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
      data_dir, split: a converted directory and one of the splits its manifest lists.
      global_batch_size: summed over replicas; each batch here holds global / replicas records.
      training: shuffle (shards, chunks, then records within windows of >= 4 batches), repeat forever,
        drop the remainder. Otherwise: one pass, every record exactly once, last batch partial.
      input_context: from distribute_datasets_from_function; picks this pipeline's shards.
      shuffle_buffer: records in the chunk shuffle buffer (training).
      seed: shuffle seed; None draws one (0 when deterministic). Equal seeds with
        deterministic=True give equal batches; deterministic keeps tf.data's element order.
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
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2**31)
    if cache:
        arrays = host_cache.load_split_arrays(data_dir, split, input_context, with_metadata)
        dataset = host_cache.cached_dataset(arrays, batch_size, training, seed, with_metadata)
    else:
        source = shards.split_source(data_dir, split, input_context)
        dataset = record_batches.records_dataset(source, batch_size, training, shuffle_buffer,
                                                 seed, deterministic, with_metadata, cycle_length)
    dataset = dataset.with_options(record_batches.tuned_options(deterministic))
    if prefetch_to_device:
        return dataset.apply(tf.data.experimental.prefetch_to_device(prefetch_to_device))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_device_resident_sampler(data_dir: str, split: str, global_batch_size: int,
                                 seed: int = 0) -> DeviceResidentSampler:
    """Loads a whole split into the memory of the current device(s); see DeviceResidentSampler.

    The split is read straight into its resident layout (`read_packed_split`) and placed without
    a copy on a CPU, so host memory peaks near the split's own size (~7.5 kB a patch) above what
    TensorFlow itself holds.
    Every worker loads the whole split; replicas draw disjoint slices of each global batch.
    """
    return DeviceResidentSampler(read_packed_split(data_dir, split), global_batch_size, seed)


def channel_mean_std(manifest: dict) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the train split on the 0..255 scale, from the manifest."""
    mean, std = manifest.get("train_channel_mean"), manifest.get("train_channel_std")
    if not mean or not std or len(mean) != len(std):
        raise ManifestError("the manifest has no train_channel_mean / train_channel_std "
                            "(convert with a train split)")
    return [float(m) for m in mean], [float(s) for s in std]
