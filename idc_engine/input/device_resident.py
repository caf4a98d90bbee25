"""The device-resident sampler: a whole split in accelerator memory, each step gathering its batch there."""

import numpy as np
import tensorflow as tf

from idc_engine.input.host_cache import SplitArrays
from idc_engine.input.packed_split import PackedSplit, aligned, unpack_images
from idc_engine.input.permutation import random_permutation_index


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
    host = tf.experimental.dlpack.from_dlpack(aligned(array).__dlpack__())
    if not tf.config.list_logical_devices("GPU"):
        return host
    return tf.Variable(host, trainable=False, name=name)
