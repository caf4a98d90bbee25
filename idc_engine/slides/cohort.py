"""A cohort: many slides, many workers, reruns that finish what is left.

    for each slide of this worker's shard (cohort_shards), in the order given:
        its output name (cohort_locks.claim_name: a/1.svs and b/1.svs never share a folder)
        its lock, or the next slide if another worker holds it
        skipped if OUT/<name>/summary.json is complete and was made by the same slide
          (openslide.quickhash-1), export and settings (`fingerprint`), unless --overwrite
        given up as an error if --max_attempts runs of it never completed (a slide that
          crashes the process must not stop every rerun at the same place)
        planned, served and written (run.py's phases); its error, if any, kept for the table
    then OUT/cohort.csv, cohort.json and the figure rebuilt (cohort_table).

No per-slide stall: a planner thread prepares and plans the next slide (open, thumbnail, tissue
mask) and a writer thread writes the previous one's outputs (the heatmap's render among them)
while this thread reads and serves the current one (--overlap_slides=off: in turn). A slide that
an earlier run left unfinished runs alone: nothing planned beside it, the previous outputs
written first, so that when it crashes the process again only its own attempt is counted.

Outputs are atomic (slides/outputs.py), so a worker killed at any instant leaves each slide
either complete or without outputs, its attempt counted; rerunning the same command finishes
the cohort without redoing finished slides.
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os

from absl import logging as absl_logging

from idc_engine.slides import cohort_locks, cohort_progress, cohort_table, outputs, reader, run


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


@dataclasses.dataclass
class SlideJob:
    """A slide on its way: outcome set when it needs no model (skipped, held, error: message
    holds the `error:` text), else plan (run.SlidePlan), then prediction; earlier_attempts:
    runs of it an earlier process started and never completed (> 0: it runs alone)."""
    slide: str
    name: str
    lock: cohort_locks.SlideLock | None = None
    outcome: str | None = None
    message: str | None = None
    plan: run.SlidePlan | None = None
    prediction: run.SlidePrediction | None = None
    earlier_attempts: int = 0
    summary: dict | None = None


class _Cohort:
    """One worker's run of its slides (run_cohort's arguments)."""

    def __init__(self, config, served, strategy, threshold, scale, devices, wanted, runtime):
        self.config, self.served, self.strategy = config, served, strategy
        self.threshold, self.scale, self.devices = threshold, scale, devices
        self.wanted, self.runtime = wanted, runtime

    def prepare(self, slide: str) -> SlideJob:
        """Name, lock, the give-up check and the attempt counted (before OpenSlide first opens
        the file, which can crash the process), then plan(); a slide an earlier run left
        unfinished is not planned (no plan, no outcome): plan() it alone. The planner
        thread's work."""
        out = self.config.output_dir
        job = SlideJob(slide, cohort_locks.claim_name(out, slide))
        lock = cohort_locks.SlideLock(out, job.name, self.config.lock_expiry_seconds)
        if not lock.acquire():
            job.outcome = f"held by {lock.holder()}, left to it"
            return job
        job.lock = lock
        if not self._count_attempt(job):
            return self._end(job, "error", cohort_locks.read_attempts(out, job.name)["error"])
        return job if job.earlier_attempts else self.plan(job)

    def plan(self, job: SlideJob) -> SlideJob:
        """Skipped if complete (its attempt uncounted), else run.plan_slide."""
        out = self.config.output_dir
        try:
            quickhash = reader.quickhash(job.slide)
            if not self.config.overwrite and _complete(out, job.name, job.slide, quickhash,
                                                       self.wanted):
                cohort_locks.clear_attempts(out, job.name)
                return self._end(job, "skipped: complete")
            job.plan = run.plan_slide(job.slide, self.config, self.scale)
        except reader.SlideError as e:
            self._fail(job, e)
        return job

    def _count_attempt(self, job: SlideJob) -> bool:
        """Counts a run of the slide; False (given up, recorded) once --max_attempts runs never
        completed."""
        out, config = self.config.output_dir, self.config
        record = cohort_locks.read_attempts(out, job.name) if not config.overwrite else {}
        job.earlier_attempts = attempts = record.get("attempts", 0)
        if attempts >= config.max_attempts:
            if not record.get("gave_up"):
                last = record.get("error") or "the process ended during the run: killed or crashed"
                record.update(gave_up=True, error=f"{job.slide}: given up after {attempts} runs "
                              f"that did not complete (last: {last})")
                cohort_locks.write_attempts(out, job.name, record)
            return False
        cohort_locks.write_attempts(out, job.name, {"slide": job.slide, "attempts": attempts + 1,
                                                    "error": None})
        return True

    def infer(self, job: SlideJob) -> SlideJob:
        try:
            job.prediction = run.predict_slide(job.plan, self.config, self.served, self.strategy,
                                               self.scale, self.runtime)
        except reader.SlideError as e:
            self._fail(job, e)
        return job

    def write(self, job: SlideJob) -> SlideJob:
        """The writer thread's work: the outputs, the attempt cleared, the lock released."""
        try:
            job.summary = run.write_slide(job.plan, job.prediction, self.config, self.threshold,
                                          self.scale, self.devices, self.runtime, job.name,
                                          {"fingerprint": self.wanted})
            cohort_locks.clear_attempts(self.config.output_dir, job.name)
            job.outcome = "ok"
        except reader.SlideError as e:
            self._fail(job, e)
        finally:
            job.plan = job.prediction = None  # the thumbnail and tiles: not kept past the slide
            self._release(job)
        return job

    def _fail(self, job: SlideJob, error: reader.SlideError) -> None:
        record = cohort_locks.read_attempts(self.config.output_dir, job.name)
        record.update(slide=job.slide, attempts=record.get("attempts", 0), error=str(error))
        cohort_locks.write_attempts(self.config.output_dir, job.name, record)
        self._end(job, "error", str(error))

    def _end(self, job: SlideJob, outcome: str, message: str | None = None) -> SlideJob:
        job.outcome, job.message, job.plan = outcome, message, None
        self._release(job)
        return job

    @staticmethod
    def _release(job: SlideJob) -> None:
        if job.lock is not None:
            job.lock.release()
            job.lock = None

    def abandon(self, job: SlideJob) -> None:
        """A prepared slide that will not run (the run stopped on an exception): its lock
        released, its attempt uncounted."""
        if job.lock is None:
            return
        out = self.config.output_dir
        if job.earlier_attempts:
            record = cohort_locks.read_attempts(out, job.name)
            cohort_locks.write_attempts(out, job.name, {**record, "attempts": job.earlier_attempts})
        else:
            cohort_locks.clear_attempts(out, job.name)
        self._release(job)


class _InThisThread:
    """An executor running each task at once, in the calling thread (slides in turn)."""

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 -- raised again by result(), as a pool's is
            future.set_exception(e)
        return future

    def shutdown(self, **_) -> None:
        pass


def run_cohort(slides: list, config, served, strategy, threshold, scale: dict, devices: str,
               export: str, report, worker: str, runtime) -> list:
    """Runs this worker's `slides` (absolute paths); prints report(summary) for each slide run
    and an `error:` line for each that failed; returns the failed slides. worker: this run's
    name among the cohort's, its TensorBoard run OUT/tensorboard/<worker>; runtime:
    inference.runtime.Runtime (run.run_slide's)."""
    cohort = _Cohort(config, served, strategy, threshold, scale, devices,
                     fingerprint(config, export, threshold, scale, runtime.name), runtime)
    progress = cohort_progress.Progress(
        len(slides), os.path.join(config.output_dir, "tensorboard", worker))
    failed = []

    def done(job: SlideJob) -> None:
        progress.clear()
        if job.outcome == "error":
            failed.append(job.slide)
            print(f"error: {job.message}")
        elif job.summary is not None:
            print(report(job.summary))
        progress.slide_done(job.slide, job.outcome, job.summary["tiles_read"] if job.summary
                            else 0)

    absl_logging.info("slides overlap: %s (--overlap_slides)", config.overlap_slides)
    overlap = config.overlap_slides == "on"
    pool = lambda name: (concurrent.futures.ThreadPoolExecutor(1, name)  # noqa: E731
                         if overlap else _InThisThread())
    planner, writer = pool("plan"), pool("write")
    upcoming = writing = None
    try:
        for i, slide in enumerate(slides):
            job, upcoming = (upcoming or planner.submit(cohort.prepare, slide)).result(), None
            alone = job.earlier_attempts > 0
            if alone and writing is not None:  # nothing else in flight while it runs
                done(writing.result())
                writing = None
            if job.outcome is None and job.plan is None:
                cohort.plan(job)
            if overlap and not alone and i + 1 < len(slides):
                upcoming = planner.submit(cohort.prepare, slides[i + 1])
            if job.plan is not None:
                cohort.infer(job)
            if job.prediction is None:
                done(job)
                continue
            if writing is not None:
                done(writing.result())
            writing = writer.submit(cohort.write, job)
            if alone:
                done(writing.result())
                writing = None
        if writing is not None:
            done(writing.result())
    finally:
        if upcoming is not None:  # only after an exception
            with contextlib.suppress(Exception):  # the exception on its way matters more
                cohort.abandon(upcoming.result())
        planner.shutdown(cancel_futures=True)
        writer.shutdown()
        progress.close()
    cohort_table.write_cohort(config.output_dir)
    return failed
