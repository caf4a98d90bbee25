"""The converter's worker: decodes the PNGs of one shard and writes it as a TFRecord file.

Runs in a separate process per core (no TensorFlow import), so conversion scales with
cores and is bounded by PNG decoding. A patch whose file cannot be decoded falls back to its
next copy (the Kaggle duplicate tree); if every copy fails it is skipped with the reason.
"""

import dataclasses
import io
import os
import random
import threading

import numpy as np
from PIL import Image

from idc_engine.data import records
from idc_engine.data.direct_file import DirectFile
from idc_engine.data.patch_png import decode_patch

# Patches a worker handles together: all decoded, then all recorded, then added to the moments
# at once (so at most _ChannelMoments.MAX_PATCHES). Progress and the read-ahead check go by chunk.
CHUNK_PATCHES = 64
_progress_counter = None  # a multiprocessing.Value shared with the parent, set per worker


@dataclasses.dataclass
class ShardTask:
    split: str
    index: int
    path: str                       # where to write (a temporary name; the parent renames)
    input_dir: str
    patches: list                   # [(patient, y, x, label, [relative paths...])]
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


def _png_bytes(pixels: bytes, source_png: bytes | None) -> bytes:
    """The record's image for --image_encoding=png."""
    if source_png is not None:  # already a 50x50 RGB PNG: keep its bytes, no re-encoding
        return source_png
    out = io.BytesIO()
    Image.frombytes("RGB", records.IMAGE_SHAPE[:2], pixels).save(out, format="PNG")
    return out.getvalue()


class _ChannelMoments:
    """Exact per-channel sum and sum of squares of uint8 pixels, accumulated a chunk at a time.

    A chunk's full-size patches are joined into one (n, 7500) array and reduced over the patch
    axis in one contiguous, vectorized pass rather than patch by patch; padded patches, rare, are
    added one by one over their unpadded pixels only. The squares are summed by einsum, which
    squares in its small cast buffers: a whole (n, 7500) uint16 array of squares would evict the
    PNG decoder's working set from the core's cache.
    """

    MAX_PATCHES = 256  # the uint16 / uint32 per-position sums of add() are exact up to here

    def __init__(self):
        self.count = 0
        self.sum = np.zeros(3, np.float64)
        self.sum_sq = np.zeros(3, np.float64)

    def add(self, patches: list[tuple[bytes, int, int]]) -> None:
        """Adds up to MAX_PATCHES patches: (raw uint8 HWC bytes of IMAGE_BYTES, height, width),
        of which height x width pixels are real."""
        if len(patches) > self.MAX_PATCHES:
            raise ValueError(f"at most {self.MAX_PATCHES} patches at a time, not {len(patches)}")
        full = [pixels for pixels, height, width in patches
                if height == records.PATCH_SIZE and width == records.PATCH_SIZE]
        if full:
            batch = np.frombuffer(b"".join(full), np.uint8).reshape(len(full), -1)
            # per position of the HWC patch, exact in small integers: 256 x 255 fits uint16,
            # 256 x 255**2 fits uint32
            sums = batch.sum(axis=0, dtype=np.uint16)
            sums_sq = np.einsum("ij,ij->j", batch, batch, dtype=np.uint32)
            # channel c: every third position from c. Three strided sums; one reduction of the
            # (2500, 3) view over its axis 0 costs 5x more (an inner loop 3 long).
            self.sum += [sums[c::3].sum(dtype=np.uint64) for c in range(3)]
            self.sum_sq += [sums_sq[c::3].sum(dtype=np.uint64) for c in range(3)]
            self.count += len(full) * records.PATCH_SIZE * records.PATCH_SIZE
        if len(full) == len(patches):
            return
        for pixels, height, width in patches:
            if height != records.PATCH_SIZE or width != records.PATCH_SIZE:
                image = np.frombuffer(pixels, np.uint8).reshape(records.IMAGE_SHAPE)
                real = image[:height, :width].reshape(-1, 3).astype(np.float64)
                self.count += real.shape[0]
                self.sum += real.sum(axis=0)
                self.sum_sq += (real * real).sum(axis=0)


def in_page_cache(path: str) -> bool:
    """Whether the start of a file is in the page cache (a non-blocking 1-byte read). True where
    that cannot be asked (no RWF_NOWAIT), so nothing extra happens there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # the decoder reports it
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    except (AttributeError, OSError):
        return True
    finally:
        os.close(fd)


def _advise(path: str, advice: int) -> None:
    """posix_fadvise(advice) over the whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, advice)
    finally:
        os.close(fd)


def drop_from_page_cache(paths) -> None:
    """posix_fadvise(DONTNEED) for each file: as if never read (a no-op on tmpfs). For measuring
    and testing conversions from input not in memory."""
    for path in paths:
        _advise(path, os.POSIX_FADV_DONTNEED)


class _ReadAhead:
    """Asks the kernel to start reading the next files of a shard while this process decodes.

    Files not in memory (a first conversion after a reboot, a network disk) each cost a
    blocking read, which a process decoding them one by one would wait for at every patch. A
    thread opens the next WINDOW files and posix_fadvise(WILLNEED)s them: the kernel reads them
    asynchronously, many at once. write_shard starts it only when it finds files missing from
    memory, since the extra opens are wasted work in a warm run. benchmarks/convert.py times a
    conversion from input dropped from the page cache beside a warm one
    (convert_cold_vs_warm_input).
    """

    WINDOW = 256

    def __init__(self, paths: list[str], start: int):
        self.paths, self.position, self.stopped = paths, start, False
        # The thread sleeps until the decoder moves on (once a chunk of patches), not in a
        # polling loop: each wake-up of a polling thread takes the GIL from the decoder (a
        # 1 ms poll would be 1,000 GIL hand-offs a second in each worker).
        self.moved = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                       name="read-ahead")
        self.thread.start()

    def advance(self, position: int) -> None:
        """The decoder is at `position`: read ahead up to position + WINDOW."""
        with self.moved:
            self.position = position
            self.moved.notify()

    def _run(self, start: int) -> None:
        for i in range(start, len(self.paths)):
            with self.moved:
                while not self.stopped and i > self.position + self.WINDOW:
                    self.moved.wait()
                if self.stopped:
                    return
            try:
                _advise(self.paths[i], os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # the decoder reports it

    def stop(self) -> None:
        with self.moved:
            self.stopped = True
            self.moved.notify()
        self.thread.join()


def _chunks_reading_ahead(order: list, prefix: str):
    """Yields `order` in chunks of CHUNK_PATCHES patches (per-chunk work, not per-patch).
    Before each, while no read-ahead runs, checks whether the chunk's first file is in memory
    and if not starts a _ReadAhead for the rest."""
    read_ahead = None
    try:
        for start in range(0, len(order), CHUNK_PATCHES):
            if read_ahead is not None:
                read_ahead.advance(start)
            elif not in_page_cache(prefix + order[start][4][0]):
                read_ahead = _ReadAhead([prefix + p[4][0] for p in order], start + 1)
            yield order[start:start + CHUNK_PATCHES]
    finally:  # also when the caller stops early
        if read_ahead is not None:
            read_ahead.stop()


def _decode_first_copy(paths: list[str], prefix: str, keep_png: bool, skipped: list):
    """decode_patch of the first of a patch's copies that decodes, and its path; (None, None)
    if none does. Each copy that fails is added to `skipped` with the reason."""
    for rel_path in paths:
        try:
            return decode_patch(prefix + rel_path, keep_png), rel_path
        except (OSError, ValueError) as e:
            reason = str(e) if isinstance(e, ValueError) else f"cannot read: {e}"
            if len(paths) > 1:
                reason += f" (one of {len(paths)} copies)"
            skipped.append({"path": rel_path, "reason": reason})
    return None, None


def write_shard(task: ShardTask) -> ShardResult:
    """Writes one shard with its records in a seeded random order; returns what it wrote.

    A chunk of patches at a time: all decoded, then all their records written, then their
    moments added. Grouping the small per-patch steps keeps their code and data in the core's
    caches from one patch to the next, which a decode between them would evict.
    benchmarks/convert.py reports what a worker adds to decoding (convert_1_worker_vs_decode).
    """
    order = list(task.patches)
    random.Random(f"{task.seed}/{task.split}/{task.index}").shuffle(order)
    skipped, padded, patients = [], [], set()
    num_examples = num_positive = num_lost = 0
    moments = _ChannelMoments() if task.with_stats else None
    prefix = os.path.join(task.input_dir, "")
    keep_png = task.image_encoding == "png"
    with DirectFile(task.path) as out:
        write = out.write
        for chunk in _chunks_reading_ahead(order, prefix):
            decoded = [_decode_first_copy(row[4], prefix, keep_png, skipped) for row in chunk]
            written = []
            for (patient, y, x, label, _), (patch, rel_path) in zip(chunk, decoded):
                if patch is None:
                    num_lost += 1
                    continue
                pixels, height, width, source_png = patch
                if height != records.PATCH_SIZE or width != records.PATCH_SIZE:
                    padded.append({"path": rel_path, "height": height, "width": width})
                    source_png = None
                image = _png_bytes(pixels, source_png) if keep_png else pixels
                records.write_example(write, image, label, patient, x, y, height, width)
                num_positive += label
                patients.add(patient)
                written.append((pixels, height, width))
            num_examples += len(written)
            if moments is not None:
                moments.add(written)
            _report_progress(len(chunk))
    return ShardResult(task.split, task.index, task.path, num_examples, num_positive,
                       os.path.getsize(task.path), sorted(patients), skipped, num_lost, padded,
                       moments.count if moments else 0,
                       moments.sum.tolist() if moments else [0.0] * 3,
                       moments.sum_sq.tolist() if moments else [0.0] * 3)
