"""The converter's worker: decodes the PNGs of one shard and writes it as a TFRecord file.

Runs in a separate process per core (spawned, no TensorFlow import), so conversion scales with
cores and is bounded by PNG decoding. A patch whose file cannot be decoded falls back to its
next copy (the Kaggle duplicate tree); if every copy fails it is skipped with the reason.
"""

import dataclasses
import io
import os
import random

import numpy as np
from PIL import Image

from idc_engine import records

# Undersized edge patches are padded at the bottom/right with white: the glass background of an
# H&E slide, i.e. "no tissue here". The record keeps the original height and width.
PAD_VALUE = 255
_PROGRESS_EVERY = 64
_progress_counter = None  # a multiprocessing.Value shared with the parent, set per worker


@dataclasses.dataclass
class ShardTask:
    split: str
    index: int
    path: str                       # where to write (a temporary name; the parent renames)
    input_dir: str
    patches: list                   # [(patient, x, y, label, [relative paths...])]
    image_encoding: str             # "raw" or "png"
    seed: int
    with_stats: bool                # accumulate per-channel pixel sums (the train split)


@dataclasses.dataclass
class ShardResult:
    split: str
    index: int
    path: str
    num_examples: int
    num_positive: int
    num_bytes: int
    patients: list
    skipped: list                   # [{"path", "reason"}]
    padded: list                    # [{"path", "height", "width"}]
    pixel_count: int
    channel_sum: list               # float sums over unpadded pixels, per channel
    channel_sum_sq: list


def init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter


def _report_progress(n: int) -> None:
    if _progress_counter is not None and n:
        with _progress_counter.get_lock():
            _progress_counter.value += n


def decode_patch(path: str) -> tuple[np.ndarray, int, int, bytes | None]:
    """Decodes one PNG to a padded uint8 [50, 50, 3] array.

    Returns (image, original height, original width, the file's bytes if it is an RGB PNG
    else None). Raises ValueError with the reason for files that are not usable patches.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            is_rgb_png = image.format == "PNG" and image.mode == "RGB"
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable PNG ({e})") from None
    height, width = array.shape[:2]
    if height > records.PATCH_SIZE or width > records.PATCH_SIZE:
        raise ValueError(f"larger than {records.PATCH_SIZE}x{records.PATCH_SIZE}: {height}x{width}")
    if (height, width) != (records.PATCH_SIZE, records.PATCH_SIZE):
        padded = np.full(records.IMAGE_SHAPE, PAD_VALUE, np.uint8)
        padded[:height, :width] = array
        array = padded
    return array, height, width, data if is_rgb_png else None


def _image_bytes(array: np.ndarray, source_png: bytes | None, encoding: str) -> bytes:
    if encoding == "raw":
        return array.tobytes()
    if source_png is not None:  # already a 50x50 RGB PNG: keep its bytes, no re-encoding
        return source_png
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_shard(task: ShardTask) -> ShardResult:
    """Writes one shard with its records in a seeded random order; returns what it wrote."""
    order = list(task.patches)
    random.Random(f"{task.seed}/{task.split}/{task.index}").shuffle(order)
    skipped, padded, patients = [], [], set()
    num_examples = num_positive = pixel_count = 0
    channel_sum = np.zeros(3, np.float64)
    channel_sum_sq = np.zeros(3, np.float64)
    pending = 0
    with open(task.path, "wb") as out:
        for patient, x, y, label, paths in order:
            decoded = None
            for rel_path in paths:
                try:
                    decoded = decode_patch(os.path.join(task.input_dir, rel_path))
                    break
                except (OSError, ValueError) as e:
                    reason = str(e) if isinstance(e, ValueError) else f"cannot read: {e}"
                    if len(paths) > 1:
                        reason += f" (one of {len(paths)} copies)"
                    skipped.append({"path": rel_path, "reason": reason})
            pending += 1
            if pending == _PROGRESS_EVERY:
                _report_progress(pending)
                pending = 0
            if decoded is None:
                continue
            array, height, width, source_png = decoded
            if (height, width) != (records.PATCH_SIZE, records.PATCH_SIZE):
                padded.append({"path": rel_path, "height": height, "width": width})
                source_png = None
            image = _image_bytes(array, source_png, task.image_encoding)
            out.write(records.frame_record(records.encode_example(
                image, label, patient, x, y, height, width)))
            num_examples += 1
            num_positive += label
            patients.add(patient)
            if task.with_stats:
                pixels = array[:height, :width].reshape(-1, 3)
                pixel_count += pixels.shape[0]
                channel_sum += pixels.sum(axis=0, dtype=np.int64)
                wide = pixels.astype(np.int32)
                channel_sum_sq += np.einsum("ij,ij->j", wide, wide)
        out.flush()
        os.fsync(out.fileno())
    _report_progress(pending)
    return ShardResult(task.split, task.index, task.path, num_examples, num_positive,
                       os.path.getsize(task.path), sorted(patients), skipped, padded,
                       pixel_count, channel_sum.tolist(), channel_sum_sq.tolist())
