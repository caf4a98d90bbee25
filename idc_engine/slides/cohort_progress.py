"""A cohort's progress: slides done of this worker's total, tiles/s and an ETA.

On a terminal, a bar redrawn in place on stderr after each slide; otherwise (a batch job's log)
one log line per slide. TensorBoard scalars (step: slides done) in either case, when given a
folder.
"""

import os
import sys
import time

from absl import logging as absl_logging

BAR_WIDTH = 30


class Progress:
    """progress.slide_done(slide, outcome, tiles) after each slide; progress.clear() before
    printing anything else on a terminal, so that the bar never splits a line."""

    def __init__(self, total: int, tensorboard_dir: str | None = None, stream=None):
        self.total, self.done, self.tiles, self.start = total, 0, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.writer = None
        if tensorboard_dir and total:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(tensorboard_dir)

    def slide_done(self, slide: str, outcome: str, tiles: int = 0) -> str:
        """Counts the slide; returns its log line (drawn as the bar instead on a terminal)."""
        self.done += 1
        self.tiles += tiles
        elapsed = time.perf_counter() - self.start
        left = (self.total - self.done) * elapsed / self.done
        if self.writer is not None:
            self._scalars(tiles, elapsed, left)
        rate = f"{self.tiles / elapsed:,.0f} tiles/s so far, ETA {left / 60:.1f} min"
        line = f"[{self.done}/{self.total}] {os.path.basename(slide)}: {outcome}; {rate}"
        if self.terminal:
            filled = BAR_WIDTH * self.done // max(self.total, 1)
            self.stream.write(f"\r\033[K|{'#' * filled}{'.' * (BAR_WIDTH - filled)}| "
                              f"{self.done}/{self.total} slides, {rate}")
            self.stream.flush()
        else:
            absl_logging.info(line)
        return line

    def clear(self) -> None:
        if self.terminal and self.done:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.terminal and self.done:
            self.stream.write("\n")
            self.stream.flush()

    def _scalars(self, tiles: int, elapsed: float, left: float) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=self.done):
            tf.summary.scalar("cohort/slides_done", self.done)
            tf.summary.scalar("cohort/slides_left", self.total - self.done)
            tf.summary.scalar("cohort/tiles_per_second", self.tiles / elapsed)
            tf.summary.scalar("cohort/eta_minutes", left / 60)
            tf.summary.scalar("cohort/slide_tiles", tiles)
        self.writer.flush()
