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
    num_lost: int                   # patches none of whose copies could be decoded
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


def decode_patch(path: str) -> tuple[bytes, int, int, bytes | None]:
    """Decodes one PNG into the raw uint8 HWC bytes of a 50x50x3 patch (padded if smaller).

    Returns (pixels, original height, original width, the file's bytes if it is an RGB PNG
    else None). Raises ValueError with the reason for files that are not usable patches.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            is_rgb_png = image.format == "PNG" and image.mode == "RGB"
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            width, height = rgb.size
            pixels = rgb.tobytes()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable PNG ({e})") from None
    if height > records.PATCH_SIZE or width > records.PATCH_SIZE:
        raise ValueError(f"larger than {records.PATCH_SIZE}x{records.PATCH_SIZE}: {height}x{width}")
    if (height, width) != (records.PATCH_SIZE, records.PATCH_SIZE):
        padded = np.full(records.IMAGE_SHAPE, PAD_VALUE, np.uint8)
        padded[:height, :width] = np.frombuffer(pixels, np.uint8).reshape(height, width, 3)
        pixels = padded.tobytes()
    return pixels, height, width, data if is_rgb_png else None


def _image_bytes(pixels: bytes, source_png: bytes | None, encoding: str) -> bytes:
    if encoding == "raw":
        return pixels
    if source_png is not None:  # already a 50x50 RGB PNG: keep its bytes, no re-encoding
        return source_png
    out = io.BytesIO()
    Image.frombytes("RGB", records.IMAGE_SHAPE[:2], pixels).save(out, format="PNG")
    return out.getvalue()


class _ChannelMoments:
    """Exact per-channel sum and sum of squares of uint8 pixels, accumulated cheaply.

    Full-size patches are stacked into a buffer and reduced over the batch axis (contiguous,
    vectorized: ~4 us a patch instead of ~40 for a per-patch reduction); padded patches, rare,
    are added one by one over their unpadded pixels only.
    """

    def __init__(self, batch: int = 256):
        self.buffer = np.empty((batch,) + records.IMAGE_SHAPE, np.uint8)
        self.squares = np.empty((batch,) + records.IMAGE_SHAPE, np.uint16)
        self.used = 0
        self.count = 0
        self.sum = np.zeros(3, np.float64)
        self.sum_sq = np.zeros(3, np.float64)

    def add(self, image: np.ndarray, height: int, width: int) -> None:
        if (height, width) == records.IMAGE_SHAPE[:2]:
            self.buffer[self.used] = image
            self.used += 1
            if self.used == len(self.buffer):
                self.flush()
            return
        pixels = image[:height, :width].reshape(-1, 3).astype(np.float64)
        self.count += pixels.shape[0]
        self.sum += pixels.sum(axis=0)
        self.sum_sq += (pixels * pixels).sum(axis=0)

    def flush(self) -> None:
        batch = self.buffer[:self.used]
        squares = np.multiply(batch, batch, out=self.squares[:self.used], dtype=np.uint16)
        # uint32 holds 256 patches of 255**2 per position; totals go to float64
        self.sum += batch.sum(axis=0, dtype=np.uint32).reshape(-1, 3).sum(axis=0)
        self.sum_sq += squares.sum(axis=0, dtype=np.uint32).reshape(-1, 3).sum(axis=0)
        self.count += self.used * records.PATCH_SIZE * records.PATCH_SIZE
        self.used = 0


def write_shard(task: ShardTask) -> ShardResult:
    """Writes one shard with its records in a seeded random order; returns what it wrote."""
    order = list(task.patches)
    random.Random(f"{task.seed}/{task.split}/{task.index}").shuffle(order)
    skipped, padded, patients = [], [], set()
    num_examples = num_positive = num_lost = pending = 0
    moments = _ChannelMoments() if task.with_stats else None
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
                num_lost += 1
                continue
            pixels, height, width, source_png = decoded
            if (height, width) != (records.PATCH_SIZE, records.PATCH_SIZE):
                padded.append({"path": rel_path, "height": height, "width": width})
                source_png = None
            image = _image_bytes(pixels, source_png, task.image_encoding)
            out.write(records.frame_record(records.encode_example(
                image, label, patient, x, y, height, width)))
            num_examples += 1
            num_positive += label
            patients.add(patient)
            if moments is not None:
                moments.add(np.frombuffer(pixels, np.uint8).reshape(records.IMAGE_SHAPE),
                            height, width)
        out.flush()
        os.fsync(out.fileno())
    _report_progress(pending)
    if moments is not None:
        moments.flush()
    return ShardResult(task.split, task.index, task.path, num_examples, num_positive,
                       os.path.getsize(task.path), sorted(patients), skipped, num_lost, padded,
                       moments.count if moments else 0,
                       moments.sum.tolist() if moments else [0.0] * 3,
                       moments.sum_sq.tolist() if moments else [0.0] * 3)
