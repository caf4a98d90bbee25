"""The tile grid at the model's scale, and the tissue tiles streamed through tf.data.

The grid is laid on the chosen pyramid level (idc_engine/slides/reader.py: nearest the model's
scale without being coarser): tiles of `size` level pixels, size = 50 x (model um/px) / (level
um/px) rounded, so each tile covers what a 50x50 training patch covered; the model's input is
the tile resized to 50x50 on the device (idc_engine/slides/predict.py).

Reading: OpenSlide's cost is mostly per call and per TIFF tile decoded, so tiles are read by
blocks (up to BLOCK x BLOCK neighbouring grid tiles in one read_region, cut apart in numpy), by
`threads` threads, at most 2 x threads blocks ahead: memory stays flat whatever the slide's
size, as nothing but those blocks and tf.data's prefetched batches is ever held. A block that
cannot be read is retried tile by tile, and only the tiles that still fail are reported. An
error that stops the reading (a thread cannot reopen the slide) ends the stream and is kept in
the ReadReport for the caller to raise: through tf.data it would become a TensorFlow error.
"""

import collections
import concurrent.futures
import dataclasses
import math
import time

import numpy as np

from idc_engine.slides.reader import RegionReader, SlideError, UnreadableRegion

BLOCK = 8  # grid tiles per block side: ~0.4-1k-pixel reads, a few TIFF tiles each


@dataclasses.dataclass(frozen=True)
class TileGrid:
    level: int
    downsample: float    # level-0 pixels per level pixel
    size: int            # tile side in level pixels (read), resized to patch_size for the model
    columns: int
    rows: int
    level_um_per_pixel: float

    @property
    def tile_um_per_pixel(self) -> float:
        """The scale the model sees after the resize (50 px per tile)."""
        return self.level_um_per_pixel * self.size / 50

    @property
    def level0_size(self) -> int:
        """A tile's side in level-0 pixels (rounded)."""
        return int(round(self.size * self.downsample))

    def level0_xy(self, col, row) -> tuple[np.ndarray, np.ndarray]:
        """int64 [N] level-0 top-left corners of grid tiles (col, row int [N])."""
        scale = self.size * self.downsample
        return (np.round(np.asarray(col) * scale).astype(np.int64),
                np.round(np.asarray(row) * scale).astype(np.int64))


def make_grid(level: int, level_dimensions, downsample: float, slide_um_per_pixel: float,
              target_um_per_pixel: float, patch_size: int) -> TileGrid:
    """The grid covering the level (edge tiles reach past it: OpenSlide gives white there)."""
    level_um = slide_um_per_pixel * downsample
    size = max(1, int(round(patch_size * target_um_per_pixel / level_um)))
    width, height = level_dimensions
    return TileGrid(level, float(downsample), size, math.ceil(width / size),
                    math.ceil(height / size), level_um)


def _blocks(col: np.ndarray, row: np.ndarray) -> list[np.ndarray]:
    """Indices of the tiles (col, row int [N]) grouped by BLOCK x BLOCK block, row-major."""
    key = (row // BLOCK) * (col.max(initial=0) // BLOCK + 1) + col // BLOCK
    order = np.argsort(key, kind="stable")
    splits = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(order, splits) if len(order) else []


def _read_block(reader: RegionReader, grid: TileGrid, col, row, index):
    """(images uint8 [n, size, size, 3], index int64 [n], failures) for one block's tiles."""
    c0, r0, s = int(col.min()), int(row.min()), grid.size
    x0, y0 = grid.level0_xy(c0, r0)
    try:
        region = reader.read(grid.level, int(x0), int(y0), (int(col.max()) - c0 + 1) * s,
                             (int(row.max()) - r0 + 1) * s)
    except UnreadableRegion:
        return _read_tiles(reader, grid, col, row, index)
    images = np.stack([region[(r - r0) * s:(r - r0 + 1) * s, (c - c0) * s:(c - c0 + 1) * s]
                       for c, r in zip(col, row)])
    return images, index, []


def _read_tiles(reader: RegionReader, grid: TileGrid, col, row, index):
    """The block's tiles one by one: those OpenSlide cannot read go to failures (level-0
    x, y, width, height and OpenSlide's message)."""
    images, kept, failures = [], [], []
    xs, ys = grid.level0_xy(col, row)
    for x, y, i in zip(xs, ys, index):
        try:
            images.append(reader.read(grid.level, int(x), int(y), grid.size, grid.size))
            kept.append(i)
        except UnreadableRegion as e:
            failures.append({"x": int(x), "y": int(y), "width": grid.level0_size,
                             "height": grid.level0_size, "error": str(e)})
    empty = np.zeros((0, grid.size, grid.size, 3), np.uint8)
    return (np.stack(images) if images else empty), np.asarray(kept, np.int64), failures


def read_tiles(path: str, grid: TileGrid, col: np.ndarray, row: np.ndarray, threads: int,
               failures: list):
    """Yields (images uint8 [n, size, size, 3], index int64 [n]) block by block, in order;
    `index` points into col/row. Unreadable tiles are appended to `failures`."""
    reader = RegionReader(path)
    col, row = np.asarray(col), np.asarray(row)
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            pending = collections.deque()
            for block in _blocks(col, row):
                pending.append(pool.submit(_read_block, reader, grid, col[block], row[block],
                                           block.astype(np.int64)))
                if len(pending) > 2 * threads:
                    yield from _done(pending.popleft(), failures)
            while pending:
                yield from _done(pending.popleft(), failures)
    finally:
        reader.close()


def _done(future, failures: list):
    images, index, failed = future.result()
    failures.extend(failed)
    if len(index):
        yield images, index


@dataclasses.dataclass
class ReadReport:
    """What reading a slide's tiles met: the tiles OpenSlide could not decode (read_tiles'
    failures; the rest went on), and the SlideError that stopped the reading, if one did.
    deadline: time.monotonic() after which the reading stops (--slide_timeout_seconds)."""
    unreadable: list = dataclasses.field(default_factory=list)
    stopped_by: SlideError | None = None
    deadline: float | None = None
    timeout_message: str = ""


def tile_dataset(path: str, grid: TileGrid, col, row, batch_size: int, threads: int,
                 report: ReadReport):
    """tf.data.Dataset of (images uint8 [B, size, size, 3], index int64 [B]) batches of the
    tiles (col, row int [N]), read ahead while the model runs (prefetch). After the iteration,
    the caller raises report.stopped_by if it is set (the stream then ended early)."""
    import tensorflow as tf

    def generate():
        try:
            for batch in read_tiles(path, grid, col, row, threads, report.unreadable):
                if report.deadline is not None and time.monotonic() > report.deadline:
                    report.stopped_by = SlideError(report.timeout_message)
                    return
                yield batch
        except SlideError as e:
            report.stopped_by = e

    spec = (tf.TensorSpec([None, grid.size, grid.size, 3], tf.uint8),
            tf.TensorSpec([None], tf.int64))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    options = tf.data.Options()
    # one generator in one process: nothing to shard between workers
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # Nothing here to tune (the buffer sizes are fixed), and with autotuning on, the end of the
    # iteration can wait for the tuning thread's next wake-up, whose period doubles as it runs:
    # seconds after the last tile on a slide of a minute.
    options.autotune.enabled = False
    return dataset.unbatch().batch(batch_size).prefetch(2).with_options(options)
