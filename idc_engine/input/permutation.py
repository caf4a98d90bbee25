"""A stateless pseudo-random permutation evaluated element by element (the resident sampler's order)."""

import math

import tensorflow as tf

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
