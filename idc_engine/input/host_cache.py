"""A split decoded once into host memory (numpy), and the tf.data batches gathered from it."""

import dataclasses

import numpy as np
import tensorflow as tf

from idc_engine.input import record_batches, shards


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


def load_split_arrays(data_dir: str, split: str, input_context=None,
                      with_metadata: bool = False) -> SplitArrays:
    """Reads and decodes a split (this input pipeline's shards) into host memory, in file order.

    About 7.5 kB per patch: the whole train split is ~1.7 GB. The images array is allocated once
    at the size the manifest lists, not grown by concatenation.
    Raises ShardError naming the file if a shard is corrupt, or if the split holds fewer or more
    records than the manifest lists.
    """
    source = shards.split_source(data_dir, split, input_context)
    expected = source.num_examples
    images = np.empty((expected or 0, *source.image_shape), np.uint8)
    image_parts, other_parts, count = [], [], 0
    try:
        for batch in record_batches.read_all(source, with_metadata):
            n = len(batch[1])
            if expected is None:
                image_parts.append(batch[0])
            elif count + n <= expected:
                images[count:count + n] = batch[0]
            count += n
            other_parts.append(batch[1:])
    except tf.errors.DataLossError as e:
        raise shards.explain_data_loss(data_dir, split, e) from e
    if expected is None:
        images = np.concatenate(image_parts) if image_parts else images
    else:
        shards.check_record_count(data_dir, split, count, expected)
    labels = np.concatenate([p[0] for p in other_parts]) if other_parts else np.empty(0, np.int32)
    arrays = SplitArrays(images, labels.astype(np.int32))
    if with_metadata:
        metadata = [p[1] for p in other_parts]
        arrays.patient_id = np.concatenate([m["patient_id"] for m in metadata])
        arrays.x = np.concatenate([m["x"] for m in metadata])
        arrays.y = np.concatenate([m["y"] for m in metadata])
    return arrays


def cached_dataset(arrays: SplitArrays, batch_size: int, training: bool, seed: int,
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
