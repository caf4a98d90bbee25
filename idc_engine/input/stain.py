"""Stain normalisation as batched TensorFlow ops: Reinhard and Macenko, per image, on the device.

    out = normalize(images, "macenko", target)    # uint8 or float [B, H, W, 3] on 0..255
                                                  # -> float32 [B, H, W, 3] on 0..255

Both reproduce the reference algorithms as `torchstain` (numpy backend) implements them, image by
image, but run a whole batch at once with no per-image Python and no host round trip, so they
compile with XLA and live inside the training step and the exported SavedModel:

* Reinhard (Reinhard et al. 2001): CIE LAB per pixel; each image's per-channel LAB mean and
  standard deviation (over all pixels) moved to the target's.
* Macenko (Macenko et al. 2009): optical density OD = -ln((I + 1) / Io) with Io = 240; pixels with
  OD < beta = 0.15 in any channel are background (glass) and left out of the stain estimate; the
  plane of the two largest eigenvectors of the tissue pixels' OD covariance; the stain vectors at
  the alpha = 1st and 99th percentiles of the angle in that plane (hematoxylin: the one with the
  larger red OD); concentrations of every pixel by least squares; each stain's 99th percentile
  concentration scaled to the target's; recomposed with the target stain matrix.

Deliberate differences from the reference (tests/test_stain.py checks the rest):
* A patch with less than MIN_TISSUE_FRACTION of tissue pixels (nearly all glass) is returned
  unchanged by both methods; the reference raises (Macenko: no pixels for the covariance) or
  amplifies sensor noise into coloured speckle (Reinhard: std of near-flat glass).
* The output is float32, not truncated to uint8: the model eats floats, and truncation would
  only add a bias of half a level.
"""

import math

import numpy as np
import tensorflow as tf

METHODS = ("none", "reinhard", "macenko")
LIGHT = 240.0              # Io: the transmitted light's intensity (Macenko's, torchstain's)
BACKGROUND_OD = 0.15       # beta: a pixel with OD below this in any channel is glass
ANGLE_PERCENTILE = 1.0     # alpha: robust extremes of the stain angle
CONCENTRATION_PERCENTILE = 99.0
MIN_TISSUE_FRACTION = 0.02       # 50 of a 50x50 patch's 2,500 pixels

# torchstain's defaults (the reference patch of Macenko's MATLAB code), used when no target is
# fitted: columns hematoxylin, eosin.
DEFAULT_STAIN_MATRIX = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
DEFAULT_MAX_CONCENTRATION = (1.9705, 1.0308)

# sRGB (D65) <-> XYZ, the matrix torchstain and OpenCV use; the D65 white point.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = (0.95047, 1.0, 1.08883)


def mix(pixels, matrix):
    """pixels float32 [B, N, I] @ matrix [B or 1, I, J] or [I, J] -> float32 [B, N, J].

    Written as I multiply-adds per output channel, not einsum: XLA fuses these into one loop
    over the pixels, while a batched dot of such thin matrices ran about 2x slower on the CPU."""
    matrix = tf.convert_to_tensor(matrix, tf.float32)
    if matrix.shape.rank == 2:
        matrix = matrix[None]
    channels = tf.unstack(pixels, axis=-1)
    return tf.stack([sum(channels[i] * matrix[:, i, j][:, None] for i in range(len(channels)))
                     for j in range(matrix.shape[2])], axis=-1)


def _flat(images):
    """uint8 or float [B, H, W, 3] -> float32 [B, H*W, 3], H*W static (percentile needs it)."""
    x = tf.cast(images, tf.float32)
    _, height, width, _ = x.shape
    if height is None or width is None:
        raise ValueError(f"stain normalisation needs a static patch size, got {x.shape}")
    return tf.reshape(x, [-1, height * width, 3])


def percentile(values, q: float, valid=None):
    """float32 [B, N] -> [B]: numpy's percentile (linear interpolation) of each row's valid
    entries (bool [B, N]; all when None). A row with no valid entry gives +-inf or NaN.

    From the k smallest (q <= 50) or largest entries only, k the most the rank q can need: a
    top_k is ~80x faster than a full sort on a CPU (TensorFlow's sort of [256, 2500] takes about
    0.3 s) and compiles under XLA too. N must be static (it is: the patch size).
    """
    n = values.shape[1]
    low_side = q <= 50.0
    if valid is None:
        count = tf.fill([tf.shape(values)[0]], float(n))
    else:
        values = tf.where(valid, values, np.inf if low_side else -np.inf)  # invalid: never picked
        count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)
    last = tf.maximum(count - 1.0, 0.0)
    position = last * (q / 100.0)
    low = tf.floor(position)
    high = tf.minimum(low + 1.0, last)
    rank_span = (n - 1) * (q / 100.0 if low_side else 1.0 - q / 100.0)
    k = min(n, math.floor(rank_span) + 2)
    if low_side:
        kept = -tf.math.top_k(-values, k, sorted=True).values    # ascending: rank i at i
        ranks = (low, high)
    else:
        kept = tf.math.top_k(values, k, sorted=True).values      # descending: rank i at last - i
        ranks = (last - low, last - high)
    below, above = (tf.gather(kept, tf.cast(tf.minimum(r, k - 1.0), tf.int32)[:, None],
                              batch_dims=1)[:, 0] for r in ranks)
    return below + (position - low) * (above - below)


def optical_density(images, light=LIGHT):
    """uint8 or float [B, H, W, 3] on 0..255 -> float32 OD [B, H*W, 3] = -ln((I + 1) / light)."""
    return -tf.math.log((_flat(images) + 1.0) / light)


def tissue_mask(density, beta=BACKGROUND_OD):
    """OD [B, N, 3] -> bool [B, N]: pixels with OD >= beta in every channel (not glass)."""
    return tf.reduce_all(density >= beta, axis=-1)


def has_tissue(mask, min_fraction=MIN_TISSUE_FRACTION):
    """bool [B, N] -> bool [B]: enough tissue pixels for a stain estimate."""
    return tf.reduce_mean(tf.cast(mask, tf.float32), axis=1) >= min_fraction


def tissue_covariance(density, mask):
    """OD [B, N, 3], tissue bool [B, N] -> float32 [B, 3, 3]: each image's covariance of its
    tissue pixels' OD (numpy's np.cov: divided by count - 1), from the six channel products."""
    weight = tf.cast(mask, tf.float32)                                # [B, N]
    count = tf.reduce_sum(weight, axis=1)                             # [B]
    channels = tf.unstack(density, axis=-1)
    centred = [(c - tf.reduce_sum(c * weight, 1, keepdims=True) / tf.maximum(count, 1.0)[:, None])
               * weight for c in channels]
    products = {(i, j): tf.reduce_sum(centred[i] * centred[j], axis=1)
                for i in range(3) for j in range(i, 3)}
    rows = [tf.stack([products[min(i, j), max(i, j)] for j in range(3)], -1) for i in range(3)]
    return tf.stack(rows, 1) / tf.maximum(count - 1.0, 1.0)[:, None, None]


def stain_matrix(density, mask, alpha=ANGLE_PERCENTILE):
    """OD [B, N, 3], tissue bool [B, N] -> float32 [B, 3, 2]: unit stain vectors (columns
    hematoxylin, eosin) of each image, from its tissue pixels (Macenko)."""
    _, vectors = tf.linalg.eigh(tissue_covariance(density, mask))     # ascending eigenvalues
    plane = vectors[:, :, 1:3]                                        # [B, 3, 2]
    projected = mix(density, plane)                                   # [B, N, 2]
    angle = tf.atan2(projected[..., 1], projected[..., 0])
    extremes = tf.stack([percentile(angle, alpha, mask),
                         percentile(angle, 100.0 - alpha, mask)], axis=1)   # [B, 2]
    directions = tf.stack([tf.cos(extremes), tf.sin(extremes)], axis=1)     # [B, 2, 2]
    v_min_max = tf.linalg.matmul(plane, directions)                         # [B, 3, 2]
    # Hematoxylin first: the vector with the larger red OD (torchstain's rule).
    min_first = v_min_max[:, 0, 0] > v_min_max[:, 0, 1]
    return tf.where(min_first[:, None, None], v_min_max, tf.reverse(v_min_max, axis=[2]))


def concentrations(density, stains):
    """OD [B, N, 3], stain matrix [B, 3, 2] -> float32 [B, N, 2]: least-squares concentrations.

    The 2x2 normal equations solved in closed form (numpy's lstsq for a full-rank matrix).
    """
    gram = tf.linalg.matmul(stains, stains, transpose_a=True)         # [B, 2, 2]
    a, b, d = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    det = a * d - b * b
    det = tf.where(tf.abs(det) > 1e-12, det, 1e-12)  # parallel stains: only on glass, replaced
    inverse = tf.stack([tf.stack([d, -b], -1), tf.stack([-b, a], -1)], 1) / det[:, None, None]
    solve = tf.linalg.matmul(inverse, stains, transpose_b=True)      # [B, 2, 3]: the pinv
    return mix(density, tf.transpose(solve, [0, 2, 1]))


def max_concentrations(conc, q=CONCENTRATION_PERCENTILE):
    """[B, N, 2] -> [B, 2]: each stain's q-th percentile concentration over all pixels."""
    per_stain = tf.transpose(conc, [0, 2, 1])                         # [B, 2, N]
    flat = tf.reshape(per_stain, [-1, tf.shape(conc)[1]])
    return tf.reshape(percentile(flat, q), [-1, 2])


def compose(stains, conc, light=LIGHT):
    """stain matrix [B or 1, 3, 2], concentrations [B, N, 2] -> RGB float32 [B, N, 3] on 0..255
    (Beer-Lambert: light * exp(-OD), capped at 255)."""
    density = mix(conc, tf.transpose(stains, [0, 2, 1]))
    return tf.minimum(light * tf.exp(-density), 255.0)


def macenko_decompose(images):
    """uint8 or float [B, H, W, 3] -> (stain matrix [B, 3, 2], concentrations [B, N, 2],
    99th-percentile concentrations [B, 2], has tissue bool [B]); float32 throughout."""
    density = optical_density(images)
    mask = tissue_mask(density)
    stains = stain_matrix(density, mask)
    conc = concentrations(density, stains)
    return stains, conc, max_concentrations(conc), has_tissue(mask)


def _unchanged_unless(keep_mask, result, images):
    """result float32 [B, N, 3] where keep_mask [B], else the input, reshaped to [B, H, W, 3]."""
    original = tf.cast(images, tf.float32)
    result = tf.reshape(result, tf.shape(original))
    return tf.where(keep_mask[:, None, None, None], result, original)


def macenko(images, target_stains=DEFAULT_STAIN_MATRIX,
            target_max_concentration=DEFAULT_MAX_CONCENTRATION):
    """uint8 or float [B, H, W, 3] (0..255) -> float32 [B, H, W, 3]: Macenko-normalised to the
    target stain matrix [3, 2] and 99th-percentile concentrations [2]."""
    stains, conc, max_conc, tissue = macenko_decompose(images)
    target_max = tf.constant(target_max_concentration, tf.float32)
    scaled = conc * (target_max / tf.maximum(max_conc, 1e-6))[:, None, :]
    result = compose(tf.constant(target_stains, tf.float32)[None], scaled)
    return _unchanged_unless(tissue, result, images)


# --- Reinhard --------------------------------------------------------------------------------

def rgb_to_lab(rgb):
    """float32 [..., 3] sRGB in 0..1 -> CIE LAB (L 0..100; D65), torchstain's formulas."""
    linear = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
    xyz = mix(linear, _RGB_TO_XYZ.T) / _WHITE
    f = tf.where(xyz > 0.008856, tf.pow(tf.maximum(xyz, 1e-12), 1.0 / 3.0),
                 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """CIE LAB [..., 3] -> float32 sRGB [..., 3] clipped to 0..1 (the inverse of rgb_to_lab)."""
    lightness, a, b = tf.unstack(lab, axis=-1)
    fy = (lightness + 16.0) / 116.0
    f = tf.stack([a / 500.0 + fy, fy, fy - b / 200.0], axis=-1)
    xyz = tf.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787) * _WHITE
    linear = mix(xyz, _XYZ_TO_RGB.T)
    rgb = tf.where(linear > 0.0031308,
                   1.055 * tf.pow(tf.maximum(linear, 1e-12), 1.0 / 2.4) - 0.055, linear * 12.92)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def lab_statistics(images):
    """uint8 or float [B, H, W, 3] (0..255) -> (LAB [B, N, 3], mean [B, 3], std [B, 3])."""
    lab = rgb_to_lab(_flat(images) / 255.0)
    mean, variance = tf.nn.moments(lab, axes=[1])
    return lab, mean, tf.sqrt(variance)


def reinhard(images, target_mean, target_std):
    """uint8 or float [B, H, W, 3] (0..255) -> float32 [B, H, W, 3]: each image's LAB channel
    means and standard deviations [3] moved to the target's."""
    lab, mean, std = lab_statistics(images)
    scale = tf.constant(target_std, tf.float32) / tf.maximum(std, 1e-6)
    moved = (lab - mean[:, None]) * scale[:, None] + tf.constant(target_mean, tf.float32)
    tissue = has_tissue(tissue_mask(optical_density(images)))
    return _unchanged_unless(tissue, lab_to_rgb(moved) * 255.0, images)


def normalize(images, method: str, target: dict | None):
    """images uint8 or float [B, H, W, 3] (0..255) -> float32 [B, H, W, 3] (0..255).

    method: "none" (the input, as float32), "reinhard" or "macenko"; target: that method's
    entry of the fitted target (stain_target.py): {"lab_mean", "lab_std"} or
    {"stain_matrix", "max_concentration"}.
    """
    if method == "none":
        return tf.cast(images, tf.float32)
    if method == "reinhard":
        return reinhard(images, target["lab_mean"], target["lab_std"])
    if method == "macenko":
        return macenko(images, target["stain_matrix"], target["max_concentration"])
    raise ValueError(f"unknown stain normalisation {method!r}; known: {', '.join(METHODS)}")
