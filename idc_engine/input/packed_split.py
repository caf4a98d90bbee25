"""A split in the device-resident sampler's layout: each image's bytes as int64 words, 64-byte
aligned, read straight from the shards into that layout."""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from idc_engine.data import records
from idc_engine.input import record_batches, shards
from idc_engine.input.host_cache import SplitArrays, load_split_arrays

# TF's CPU allocator aligns buffers to 64 bytes and its kernels may assume it of any buffer.
_TF_ALIGNMENT = 64


def _aligned_empty(nbytes: int) -> np.ndarray:
    """Uninitialized uint8 [nbytes] whose data starts on a 64-byte boundary (numpy's own large
    arrays start 16 bytes past a page), so TensorFlow can use the buffer in place."""
    raw = np.empty(nbytes + _TF_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % _TF_ALIGNMENT
    return raw[offset:offset + nbytes]


def aligned(array: np.ndarray) -> np.ndarray:
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


def unpack_images(words, image_shape=records.IMAGE_SHAPE):
    """int64 [B, words] from `pack_images` -> uint8 [B, H, W, C] (a bitcast and a slice)."""
    flat = tf.reshape(tf.bitcast(words, tf.uint8), [tf.shape(words)[0], -1])
    return tf.reshape(flat[:, :math.prod(image_shape)], [-1, *image_shape])


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
        return cls(pack_images(arrays.images), aligned(arrays.labels.astype(np.int64)),
                   tuple(arrays.images.shape[1:]))


def read_packed_split(data_dir: str, split: str) -> PackedSplit:
    """Reads a whole split straight into the resident layout, in `load_split_arrays`' order.

    The words array (~7.5 kB a patch) is allocated once at the count the manifest lists and each
    decoded chunk of records is copied into its rows once: no list of parts, no concatenation,
    no packing copy, so the host holds one copy of the split plus a few chunks in flight.
    Raises ShardError as `load_split_arrays` does.
    """
    source = shards.split_source(data_dir, split)
    expected = source.num_examples
    if expected is None:  # a manifest without counts: read, then pack
        return PackedSplit.from_arrays(load_split_arrays(data_dir, split))
    image_bytes = math.prod(source.image_shape)
    rows = _packed_rows(expected, image_bytes)
    labels = _aligned_empty(8 * expected).view(np.int64)
    count = 0
    try:
        for images, batch_labels in record_batches.read_all(
                source, with_metadata=False, batch_size=record_batches.CHUNK_RECORDS):
            n = len(batch_labels)
            if count + n <= expected:
                rows[count:count + n, :image_bytes] = images.reshape(n, image_bytes)
                labels[count:count + n] = batch_labels
            count += n
    except tf.errors.DataLossError as e:
        raise shards.explain_data_loss(data_dir, split, e) from e
    shards.check_record_count(data_dir, split, count, expected)
    return PackedSplit(rows.view(np.int64), labels, source.image_shape)
