"""Augmentation on the accelerator, inside the training step: batched, per-sample random, stateless.

    images = augment_on_device(images_uint8, seed=0, step=step,
                               spec="d4|hed(0.05,0.05)|brightness(0.1)|contrast(0.1)|saturation(0.1)")

A spec is a "|"-separated string (or a list of such strings) of ops from the registry below, each
with optional positional or keyword arguments: `hed(0.05, 0.05)`, `affine(rotation=20, zoom=0.05)`.
Presets name whole specs: "pathology" (the default recipe above), "tutorial" (the PyImageSearch
CancerNet recipe: rotation 20 deg, zoom 0.05, shift 0.1, shear 0.05, horizontal and vertical
flips, with Keras ImageDataGenerator's meaning of each), "none".

Randomness: every op draws per-sample parameters from `tf.random.stateless_*` with a seed derived
from (seed, step, op position, replica id), so a step's augmentation is reproducible, differs
between steps and replicas, and needs no random state to checkpoint. Every op compiles under
`tf.function(jit_compile=True)`; the geometric warp is a gather with bilinear weights because
ImageProjectiveTransformV3 has no XLA kernel.

Ops see float32 [B, H, W, C] images in [0, 1], except the pixel permutations (d4, flips), which
run on whatever dtype they get, so a uint8 batch with only those ops is never converted at all.
"""

import ast
import dataclasses
import inspect
import math

import numpy as np
import tensorflow as tf

from idc_engine.input import stain as stain_ops

PRESETS = {
    "none": "",
    "pathology": "d4|hed(0.05, 0.05)|brightness(0.1)|contrast(0.1)|saturation(0.1)",
    # Keras ImageDataGenerator(rotation_range=20, zoom_range=0.05, width_shift_range=0.1,
    # height_shift_range=0.1, shear_range=0.05, horizontal_flip=True, vertical_flip=True,
    # fill_mode="nearest"): one warp, then the flips.
    "tutorial": "affine(rotation=20, zoom=0.05, shift=0.1, shear=0.05)|flip_lr|flip_ud",
}

# One algorithm on every device ("auto_select" would pick ThreeFry on TPUs). XLA-compiled and
# regular kernels still draw different numbers for the same seed: each is reproducible on its own.
_RNG_ALG = "philox"


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    fn: object            # fn(images [B, H, W, C], seed int [2], *args) -> images
    needs_float: bool     # False: a pixel permutation, works on any dtype


OPS: dict[str, Op] = {}


def register(name: str, needs_float: bool = True):
    def wrap(fn):
        OPS[name] = Op(name, fn, needs_float)
        return fn
    return wrap


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32,
                                       alg=_RNG_ALG)


def _coin(seed, batch, probability=0.5):
    """bool [B, 1, 1, 1]: per-sample True with `probability`."""
    return _uniform(seed, [batch, 1, 1, 1], 0.0, 1.0) < probability


def _seeds(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n, alg=_RNG_ALG))


# --- pixel permutations ----------------------------------------------------------------------

@register("d4", needs_float=False)
def d4(images, seed):
    """One of the 8 dihedral transforms per sample (rotations by 90 degrees, flips), uniformly.

    Transpose, flip up-down and flip left-right, each with probability 1/2, generate D4 for square
    images; tissue has no orientation, so all 8 are the same patch.
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"d4 needs square images, got {images.shape[1:3]}; use flip_lr|flip_ud")
    batch = tf.shape(images)[0]
    transpose, flip_ud_, flip_lr_ = (_coin(s, batch) for s in _seeds(seed, 3))
    images = tf.where(transpose, tf.transpose(images, [0, 2, 1, 3]), images)
    images = tf.where(flip_ud_, tf.reverse(images, [1]), images)
    return tf.where(flip_lr_, tf.reverse(images, [2]), images)


@register("flip_lr", needs_float=False)
def flip_lr(images, seed, probability=0.5):
    return tf.where(_coin(seed, tf.shape(images)[0], probability), tf.reverse(images, [2]), images)


@register("flip_ud", needs_float=False)
def flip_ud(images, seed, probability=0.5):
    return tf.where(_coin(seed, tf.shape(images)[0], probability), tf.reverse(images, [1]), images)


# --- colour ----------------------------------------------------------------------------------

# Ruifrok & Johnston stain vectors (optical density per RGB channel), as in skimage.color.rgb2hed:
# rows are hematoxylin, eosin, DAB.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                          [0.07, 0.99, 0.11],
                          [0.27, 0.57, 0.78]], np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


@register("hed")
def hed(images, seed, scale=0.05, shift=0.05):
    """H&E stain jitter (Tellez et al. 2018): colour deconvolution, then per sample and per stain
    concentration c -> c * U(1-scale, 1+scale) + U(-shift, shift), then back to RGB.

    Concentrations are optical densities (natural log); light maps to I = (255 x + 1) / 256 so
    black stays finite and zero strength is the identity.
    """
    batch = tf.shape(images)[0]
    scale_seed, shift_seed = _seeds(seed, 2)
    density = -tf.math.log((images * 255.0 + 1.0) / 256.0)
    stains = tf.einsum("bhwc,cs->bhws", density, _HED_FROM_RGB)
    stains = (stains * _uniform(scale_seed, [batch, 1, 1, 3], 1.0 - scale, 1.0 + scale)
              + _uniform(shift_seed, [batch, 1, 1, 3], -shift, shift))
    density = tf.einsum("bhws,sc->bhwc", stains, _RGB_FROM_HED)
    return tf.clip_by_value((tf.exp(-density) * 256.0 - 1.0) / 255.0, 0.0, 1.0)


@register("stain")
def stain(images, seed, scale=0.2, shift=0.05, vectors=0.05):
    """Stain jitter on each sample's own Macenko decomposition (input/stain.py; Tellez et al.
    2018, torchstain's MacenkoAugmentor): per sample and stain, concentrations
    c -> c * U(1-scale, 1+scale) + U(-shift, shift) and every stain-vector component + U(-vectors,
    vectors) (then unit length), recomposed. Unlike `hed`, whose stain vectors are fixed, it
    follows each patch's own stains; a patch that is nearly all glass is left unchanged.
    """
    batch = tf.shape(images)[0]
    scale_seed, shift_seed, vector_seed = _seeds(seed, 3)
    pixels = images * 255.0
    stains, conc, _, tissue = stain_ops.macenko_decompose(pixels)
    conc = (conc * _uniform(scale_seed, [batch, 1, 2], 1.0 - scale, 1.0 + scale)
            + _uniform(shift_seed, [batch, 1, 2], -shift, shift))
    stains = tf.maximum(stains + _uniform(vector_seed, [batch, 3, 2], -vectors, vectors), 1e-3)
    stains /= tf.norm(stains, axis=1, keepdims=True)
    jittered = tf.reshape(stain_ops.compose(stains, conc), tf.shape(images)) / 255.0
    return tf.where(tissue[:, None, None, None], tf.clip_by_value(jittered, 0.0, 1.0), images)


@register("brightness")
def brightness(images, seed, delta=0.1):
    """Adds U(-delta, delta) per sample (on the 0..1 scale)."""
    offset = _uniform(seed, [tf.shape(images)[0], 1, 1, 1], -delta, delta)
    return tf.clip_by_value(images + offset, 0.0, 1.0)


@register("contrast")
def contrast(images, seed, delta=0.1):
    """Scales each sample's deviation from its per-channel mean by U(1-delta, 1+delta)."""
    factor = _uniform(seed, [tf.shape(images)[0], 1, 1, 1], 1.0 - delta, 1.0 + delta)
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * factor + mean, 0.0, 1.0)


# A tuple, not a tensor: no TF op may run at import (MultiWorkerMirroredStrategy must start first).
_LUMA = (0.299, 0.587, 0.114)


@register("saturation")
def saturation(images, seed, delta=0.1):
    """Blends each sample with its grey version: factor U(1-delta, 1+delta) (PIL's definition)."""
    factor = _uniform(seed, [tf.shape(images)[0], 1, 1, 1], 1.0 - delta, 1.0 + delta)
    grey = tf.reduce_sum(images * _LUMA, axis=-1, keepdims=True)
    return tf.clip_by_value((images - grey) * factor + grey, 0.0, 1.0)


# --- geometry --------------------------------------------------------------------------------

def affine_matrices(seed, batch, height, width, rotation=0.0, zoom=0.0, shift=0.0, shear=0.0):
    """float32 [B, 2, 3]: per-sample maps from output (row, col, 1) to input (row, col).

    Keras ImageDataGenerator's random_transform: angle U(-rotation, rotation) degrees, shifts
    U(-shift, shift) * size, shear angle U(-shear, shear) degrees, zoom U(1-zoom, 1+zoom) per
    axis; composed rotation @ shift @ shear @ zoom about the image centre.
    """
    s_rot, s_shift, s_shear, s_zoom = _seeds(seed, 4)
    theta = _uniform(s_rot, [batch], -rotation, rotation) * (math.pi / 180.0)
    t_row, t_col = tf.unstack(_uniform(s_shift, [2, batch], -shift, shift))
    t_row, t_col = t_row * height, t_col * width
    phi = _uniform(s_shear, [batch], -shear, shear) * (math.pi / 180.0)
    z_row, z_col = tf.unstack(_uniform(s_zoom, [2, batch], 1.0 - zoom, 1.0 + zoom))
    zeros, ones = tf.zeros([batch]), tf.ones([batch])

    def matrix(rows):  # [[a, b, c], [d, e, f], [0, 0, 1]] per sample -> [B, 3, 3]
        return tf.stack([tf.stack(r, axis=-1) for r in rows + [[zeros, zeros, ones]]], axis=1)

    cos, sin = tf.cos(theta), tf.sin(theta)
    transform = (matrix([[cos, -sin, zeros], [sin, cos, zeros]])
                 @ matrix([[ones, zeros, t_row], [zeros, ones, t_col]])
                 @ matrix([[ones, -tf.sin(phi), zeros], [zeros, tf.cos(phi), zeros]])
                 @ matrix([[z_row, zeros, zeros], [zeros, z_col, zeros]]))
    centre_row, centre_col = (height - 1) / 2.0, (width - 1) / 2.0
    to_centre = tf.constant([[1, 0, centre_row], [0, 1, centre_col], [0, 0, 1]], tf.float32)
    from_centre = tf.constant([[1, 0, -centre_row], [0, 1, -centre_col], [0, 0, 1]], tf.float32)
    return (to_centre @ transform @ from_centre)[:, :2, :]


def warp(images, matrices):
    """Bilinear resampling of float [B, H, W, C] at matrices [B, 2, 3] @ (row, col, 1).

    Points outside the image take the nearest edge pixel (Keras fill_mode="nearest"). Four
    batched gathers: compiles under XLA on every device.
    """
    _, height, width, channels = images.shape
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32),
                             tf.range(width, dtype=tf.float32), indexing="ij")
    grid = tf.stack([rows, cols, tf.ones_like(rows)], axis=-1)          # [H, W, 3]
    source = tf.einsum("bij,hwj->bhwi", matrices, grid)                 # [B, H, W, 2]
    src_row = tf.clip_by_value(source[..., 0], 0.0, height - 1.0)
    src_col = tf.clip_by_value(source[..., 1], 0.0, width - 1.0)
    row0, col0 = tf.floor(src_row), tf.floor(src_col)
    w_row, w_col = (src_row - row0)[..., None], (src_col - col0)[..., None]
    row0, col0 = tf.cast(row0, tf.int32), tf.cast(col0, tf.int32)
    row1, col1 = tf.minimum(row0 + 1, height - 1), tf.minimum(col0 + 1, width - 1)
    flat = tf.reshape(images, [-1, height * width, channels])

    def pixels(r, c):
        index = tf.reshape(r * width + c, [-1, height * width])
        return tf.reshape(tf.gather(flat, index, batch_dims=1), [-1, height, width, channels])

    top = pixels(row0, col0) * (1.0 - w_col) + pixels(row0, col1) * w_col
    bottom = pixels(row1, col0) * (1.0 - w_col) + pixels(row1, col1) * w_col
    return top * (1.0 - w_row) + bottom * w_row


@register("affine")
def affine(images, seed, rotation=0.0, zoom=0.0, shift=0.0, shear=0.0):
    """Random rotation (deg), zoom (fraction), shift (fraction of size), shear (deg), one warp."""
    _, height, width, _ = images.shape
    return warp(images, affine_matrices(seed, tf.shape(images)[0], height, width,
                                        rotation, zoom, shift, shear))


# One-parameter shorthands of affine, named as specs write their argument ("rotate(degrees=10)").
register("rotate")(lambda images, seed, degrees=20.0: affine(images, seed, rotation=degrees))
register("zoom")(lambda images, seed, fraction=0.05: affine(images, seed, zoom=fraction))
register("shift")(lambda images, seed, fraction=0.1: affine(images, seed, shift=fraction))
register("shear")(lambda images, seed, degrees=0.05: affine(images, seed, shear=degrees))


# --- specs -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BoundOp:
    """A registry op with the arguments a spec gave it."""
    op: Op
    args: tuple
    kwargs: dict

    def __call__(self, images, seed):
        return self.op.fn(images, seed, *self.args, **self.kwargs)


def _parse_item(item: str) -> BoundOp:
    try:
        node = ast.parse(item.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            name = node.func.id
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise ValueError(f"augmentation {item!r}: arguments must be numbers") from None
    else:
        raise ValueError(f"augmentation {item!r} is not of the form name or name(args)")
    if name not in OPS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(sorted(OPS))}; "
                         f"presets: {', '.join(sorted(PRESETS))}")
    op = OPS[name]
    try:  # check the arguments now, not deep inside a traced step
        inspect.signature(op.fn).bind(None, None, *args, **kwargs)
    except TypeError as e:
        raise ValueError(f"augmentation {item!r}: {e}") from None
    return BoundOp(op, args, kwargs)


def parse_spec(spec) -> list[BoundOp]:
    """"d4|hed(0.05,0.05)", a preset name, or a list of such strings -> the ops to apply, in order.

    Raises ValueError naming an unknown op or arguments its function does not take.
    """
    items = [spec] if isinstance(spec, str) else list(spec or [])
    ops = []
    for item in items:
        if isinstance(item, BoundOp):
            ops.append(item)
            continue
        for part in item.split("|"):
            part = part.strip()
            if part in PRESETS:
                ops.extend(parse_spec(PRESETS[part]))
            elif part:
                ops.append(_parse_item(part))
    return ops


def _step_seed(seed, step):
    """int64 [2] from (seed, step), with the replica id folded in under a multi-replica strategy."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        base = tf.random.experimental.stateless_fold_in(base, context.replica_id_in_sync_group,
                                                        alg=_RNG_ALG)
    return base


def augment_on_device(images, seed, step, spec="pathology", value_range=(0.0, 255.0)):
    """Applies the ops of `spec` to a batch, each sample with its own random parameters.

    Args:
      images: uint8 [B, H, W, 3] (0..255), or float [B, H, W, 3] in `value_range`.
      seed: int or int scalar tensor: the run's augmentation seed.
      step: int scalar tensor: the training step (a new draw every step).
      spec: ops string, preset name, list of those, or the BoundOps of parse_spec.
      value_range: (low, high) of float inputs; ignored for uint8.

    Returns:
      Same shape and dtype as `images`, values in the same range (uint8: rounded).
    """
    ops = parse_spec(spec)
    if not ops:
        return images
    dtype = images.dtype
    low, high = (0.0, 255.0) if dtype == tf.uint8 else (float(value_range[0]), float(value_range[1]))
    base = _step_seed(seed, step)
    x, is_unit_float = images, False
    for position, bound in enumerate(ops):
        if bound.op.needs_float and not is_unit_float:
            x, is_unit_float = (tf.cast(x, tf.float32) - low) / (high - low), True
        x = bound(x, tf.random.experimental.stateless_fold_in(base, position, alg=_RNG_ALG))
    if not is_unit_float:
        return x
    x = x * (high - low) + low
    if dtype == tf.uint8:
        return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
    return tf.cast(x, dtype)


# --- TensorBoard -----------------------------------------------------------------------------

def _to_uint8(images, value_range):
    if images.dtype == tf.uint8:
        return images
    low, high = value_range
    x = (tf.cast(images, tf.float32) - low) / (high - low)
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def before_after_grid(before, after, max_images: int = 8, upscale: int = 2,
                      value_range=(0.0, 255.0)):
    """uint8 [1, 2*H*upscale, n*W*upscale, 3]: originals on the top row, augmented below."""
    rows = []
    for batch in (before, after):
        images = _to_uint8(batch[:max_images], value_range)
        images = tf.repeat(tf.repeat(images, upscale, axis=1), upscale, axis=2)  # [n, H', W', 3]
        _, height, width, channels = images.shape
        rows.append(tf.reshape(tf.transpose(images, [1, 0, 2, 3]), [height, -1, channels]))
    return tf.concat(rows, axis=0)[None]


def write_augmentation_summary(before, after, step, name: str = "augmentation/before_after",
                               max_images: int = 8, value_range=(0.0, 255.0)) -> None:
    """Writes the before/after grid to the default tf.summary writer."""
    tf.summary.image(name, before_after_grid(before, after, max_images,
                                             value_range=value_range), step=step)
