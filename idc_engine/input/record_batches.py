"""tf.data from the shards: chunked vectorized parsing, shuffling, batches.

Why the host pipeline is shaped the way it is: on 2 cores per-record tf.data work is what costs,
so records are read in chunks of `CHUNK_RECORDS` per shard, parsed with ONE vectorized
`tf.io.parse_example` + `decode_raw` per chunk inside the parallel interleave, and shuffled as
chunks; a stateless permutation of each window of a few batches then mixes single records, so
the batch composition changes every epoch. benchmarks/input_pipeline.py times the result against
the bare TFRecord read.
"""

import math

import tensorflow as tf

from idc_engine.input import parsing
from idc_engine.input.shards import READ_BUFFER_BYTES, SplitSource

CHUNK_RECORDS = 64               # records per vectorized parse; also the unit of the shuffle buffer
DEFAULT_SHUFFLE_BUFFER = 16384   # records (~120 MB of decoded images)
DEFAULT_CYCLE_LENGTH = 8         # shards read at once by each input pipeline
_WINDOW_BATCHES = 4              # record-level shuffle: a permutation of >= this many batches
_WINDOW_MIN_CHUNKS = 16          # ... and of records from >= this many chunks (small batches)
_LOAD_BATCH = 2048               # batch size when loading a split into memory


def tuned_options(deterministic: bool) -> tf.data.Options:
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
    records_ds = tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)
    if source.record_shard is not None:
        # Sharding records within each file keeps the split disjoint whatever the file order.
        records_ds = records_ds.shard(*source.record_shard)
    decode = parsing.decode_element("raw", source.image_shape)

    def parse(serialized):
        parsed = parsing.parse_records(serialized, with_metadata)
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


def _shuffled_batches(chunks: tf.data.Dataset, batch_size: int, shuffle_buffer: int, seed: int,
                      deterministic: bool) -> tf.data.Dataset:
    """Training batches: chunks shuffled, then records permuted within windows; whole batches only.

    Each window mixes records of many chunks (shards, positions).
    """
    window = batch_size * max(_WINDOW_BATCHES,
                              math.ceil(_WINDOW_MIN_CHUNKS * CHUNK_RECORDS / batch_size))
    return (chunks.shuffle(max(1, shuffle_buffer // CHUNK_RECORDS), seed=seed)
            .rebatch(window, drop_remainder=True)
            .enumerate()
            .map(_permute_window(seed), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=deterministic)
            .rebatch(batch_size, drop_remainder=True))


def records_dataset(source: SplitSource, batch_size: int, training: bool, shuffle_buffer: int,
                    seed: int, deterministic: bool, with_metadata: bool,
                    cycle_length: int) -> tf.data.Dataset:
    """Batches of (images uint8 [B, H, W, C], labels int32 [B][, metadata]) read from the shards.

    training: shards shuffled, repeated forever, `_shuffled_batches`; else one pass in file order,
    the last batch partial.
    """
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
        batches = _shuffled_batches(chunks, batch_size, shuffle_buffer, seed, deterministic)
    if source.image_encoding != "raw":
        batches = batches.map(parsing.decode_element(source.image_encoding, source.image_shape),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return batches


def read_all(source: SplitSource, with_metadata: bool, batch_size: int = _LOAD_BATCH):
    """Every record of `source` once, in a fixed order, as numpy batches of `batch_size`."""
    dataset = records_dataset(source, batch_size, training=False, shuffle_buffer=0, seed=0,
                              deterministic=True, with_metadata=with_metadata,
                              cycle_length=DEFAULT_CYCLE_LENGTH)
    return dataset.with_options(tuned_options(deterministic=True)).as_numpy_iterator()
