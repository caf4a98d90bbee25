"""A cohort: many slides, many workers, reruns that finish what is left.

    for each slide of this worker's shard (cohort_shards), in the order given:
        its output name (cohort_locks.claim_name: a/1.svs and b/1.svs never share a folder)
        its lock, or the next slide if another worker holds it
        skipped if OUT/<name>/summary.json is complete and was made by the same slide
          (openslide.quickhash-1), export and settings (`fingerprint`), unless --overwrite
        given up as an error if --max_attempts runs of it never completed (a slide that
          crashes the process must not stop every rerun at the same place)
        run_slide; its error, if any, kept for the cohort table
    then OUT/cohort.csv, cohort.json and the figure rebuilt (cohort_table).

Outputs are atomic (slides/outputs.py), so a worker killed at any instant leaves each slide
either complete or without outputs, its attempt counted; rerunning the same command finishes
the cohort without redoing finished slides.
"""

import functools
import hashlib
import os
import time

from absl import logging as absl_logging

from idc_engine.slides import cohort_locks, cohort_table, outputs, reader
from idc_engine.slides.run import run_slide


def export_fingerprint(saved_model_dir: str) -> str:
    """16 hex digits of SHA-256 over the SavedModel's graph and its variables' index (which
    holds a CRC32C of every tensor): a retrained or recalibrated export differs."""
    digest = hashlib.sha256()
    for part in ("saved_model.pb", os.path.join("variables", "variables.index")):
        with open(os.path.join(saved_model_dir, part), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def fingerprint(config, export: str, threshold, scale: dict, runtime: str) -> dict:
    """What a slide's outputs depend on besides the slide itself: the export, the runtime
    (savedmodel or int8), the threshold, TTA, the scale and tissue settings (not batch size,
    threads or devices)."""
    return {"export": export, "runtime": runtime, "threshold": threshold.value, "tta": config.tta,
            "slide_um_per_pixel": config.slide_um_per_pixel,
            "override_slide_scale": config.override_slide_scale,
            "tissue_threshold": config.tissue_threshold,
            "min_tissue_fraction": config.min_tissue_fraction,
            "model_um_per_pixel": scale["patch_um_per_pixel"],
            "model_patch_size": scale["patch_size"]}


def _complete(output_dir: str, name: str, slide: str, quickhash: str, wanted: dict) -> bool:
    """Whether OUT/<name>/ holds this slide's complete outputs under the same fingerprint."""
    summary = outputs.read_summary(output_dir, name) or {}
    return (summary.get("slide") == slide and summary.get("slide_quickhash") == quickhash
            and summary.get("fingerprint") == wanted)


class Progress:
    """Slides done of this worker's total, tiles/s and an ETA: a log line per slide, and the
    same as TensorBoard scalars (step: slides done) in `tensorboard_dir` if given."""

    def __init__(self, total: int, tensorboard_dir: str | None = None):
        self.total, self.done, self.tiles, self.start = total, 0, 0, time.perf_counter()
        self.writer = None
        if tensorboard_dir and total:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(tensorboard_dir)

    def line(self, slide: str, outcome: str, tiles: int = 0) -> str:
        self.done += 1
        self.tiles += tiles
        elapsed = time.perf_counter() - self.start
        left = (self.total - self.done) * elapsed / self.done
        if self.writer is not None:
            self._scalars(tiles, elapsed, left)
        return (f"[{self.done}/{self.total}] {os.path.basename(slide)}: {outcome}; "
                f"{self.tiles / elapsed:,.0f} tiles/s so far, ETA {left / 60:.1f} min")

    def _scalars(self, tiles: int, elapsed: float, left: float) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=self.done):
            tf.summary.scalar("cohort/slides_done", self.done)
            tf.summary.scalar("cohort/slides_left", self.total - self.done)
            tf.summary.scalar("cohort/tiles_per_second", self.tiles / elapsed)
            tf.summary.scalar("cohort/eta_minutes", left / 60)
            tf.summary.scalar("cohort/slide_tiles", tiles)
        self.writer.flush()


def _attempt(config, name: str, slide: str, run) -> tuple[str, dict | None]:
    """Counts a run of the slide, then runs it: ("ok", summary) or ("error", None) with the
    error kept in its attempts record; ("error", None) without running once --max_attempts
    runs never completed."""
    out = config.output_dir
    record = cohort_locks.read_attempts(out, name) if not config.overwrite else {}
    attempts = record.get("attempts", 0)
    if attempts >= config.max_attempts:
        if not record.get("gave_up"):
            last = record.get("error") or "the process ended during the run: killed or crashed"
            record.update(gave_up=True, error=f"{slide}: given up after {attempts} runs that "
                          f"did not complete (last: {last})")
            cohort_locks.write_attempts(out, name, record)
        return "error", None
    cohort_locks.write_attempts(out, name, {"slide": slide, "attempts": attempts + 1,
                                            "error": None})
    summary = run()  # a SlideError goes to _one, which keeps it in the record
    cohort_locks.clear_attempts(out, name)
    return "ok", summary


def run_cohort(slides: list, config, served, strategy, threshold, scale: dict, devices: str,
               export: str, report, worker: str, runtime) -> list:
    """Runs this worker's `slides` (absolute paths); prints report(summary) for each slide run
    and an `error:` line for each that failed; returns the failed slides. worker: this run's
    name among the cohort's, its TensorBoard run OUT/tensorboard/<worker>; runtime:
    inference.runtime.Runtime (run_slide's)."""
    wanted = fingerprint(config, export, threshold, scale, runtime.name)
    progress = Progress(len(slides), os.path.join(config.output_dir, "tensorboard", worker))
    failed = []
    for slide in slides:
        name = cohort_locks.claim_name(config.output_dir, slide)
        lock = cohort_locks.SlideLock(config.output_dir, name, config.lock_expiry_seconds)
        if not lock.acquire():
            absl_logging.info(progress.line(slide, f"held by {lock.holder()}, left to it"))
            continue
        try:
            outcome, summary = _one(slide, name, config, wanted, functools.partial(
                run_slide, slide, config, served, strategy, threshold, scale, devices, runtime,
                name, {"fingerprint": wanted}))
        finally:
            lock.release()
        if outcome == "error":
            failed.append(slide)
        elif summary is not None:
            print(report(summary))
        absl_logging.info(progress.line(slide, outcome, summary["tiles_read"] if summary else 0))
    cohort_table.write_cohort(config.output_dir)
    return failed


def _one(slide: str, name: str, config, wanted: dict, run) -> tuple[str, dict | None]:
    """("skipped: complete", None), ("ok", summary) or ("error", None), printing the error."""
    try:
        quickhash = reader.quickhash(slide)
        if not config.overwrite and _complete(config.output_dir, name, slide, quickhash, wanted):
            cohort_locks.clear_attempts(config.output_dir, name)  # a run killed just after
            return "skipped: complete", None
        outcome, summary = _attempt(config, name, slide, run)
        if outcome == "error":
            print(f"error: {cohort_locks.read_attempts(config.output_dir, name)['error']}")
        return outcome, summary
    except reader.SlideError as e:  # raised before or by the run; counted if it ran
        record = cohort_locks.read_attempts(config.output_dir, name)
        record.update(slide=slide, attempts=record.get("attempts", 0), error=str(e))
        cohort_locks.write_attempts(config.output_dir, name, record)
        print(f"error: {e}")
        return "error", None
