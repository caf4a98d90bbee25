"""The converter's worker processes: started early, fed the shard tasks, watched by a progress line."""

import concurrent.futures
import multiprocessing
import os
import sys
import time

from idc_engine import atomic_files
from idc_engine.data import shard_writer

# What the workers' forkserver imports once. Besides the worker modules, the dependencies of the
# command line (idc_engine/convert.py): multiprocessing makes every worker run the parent's
# __main__ again, which is quicker with them already loaded. (Not idc_engine.convert itself:
# runpy warns when the module it is about to run as __main__ is already imported.)
WORKER_PRELOAD = ["idc_engine.data.shard_writer", "idc_engine.data.kaggle_tree", "idc_engine.data.splits",
                  "idc_engine.data.manifest", "idc_engine.data.conversion",
                  "idc_engine.data.conversion_report", "idc_engine.cli", "absl.app", "absl.flags"]


class Progress:
    """One stderr line: patches done, patches/s, ETA. Redrawn on a terminal, logged otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.start = self.last_print = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def show(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or not (final or self.tty or now - self.last_print >= 10):
            return
        self.last_print = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        bar = "#" * int(width * done / max(self.total, 1))
        line = (f"[{bar:<{width}}] {done:,}/{self.total:,} patches  {rate:,.0f} patches/s"
                + ("" if final else f"  ETA {eta:,.0f}s"))
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def start_workers(num_workers: int):
    """A process pool, its workers started now so that their start overlaps the tree scan.

    Workers are forked from a fresh forkserver process that has imported only WORKER_PRELOAD
    (numpy, PIL, the worker modules, absl): never forked from this process, which may hold
    TensorFlow's threads (tests, notebooks; a fork of those can deadlock), and cheaper than
    spawning each worker (one interpreter start and import instead of one per worker, none on
    later conversions in the same process). spawn where there is no fork. None for
    num_workers == 1 (in-process).
    """
    if num_workers == 1:
        return None
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        # multiprocessing re-imports __main__ by its path in every worker: impossible for a
        # script read from stdin ("<stdin>"), which would only break the pool mid-run.
        print(f"warning: __main__ is {main_file!r}, not a file that worker processes can "
              "import; converting in this process only", file=sys.stderr)
        return None
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_PRELOAD)
    else:
        context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=shard_writer.init_worker, initargs=(counter,))
    pool.progress_counter = counter
    for _ in range(num_workers):
        pool.submit(int)  # a no-op task per worker makes the pool start them all now
    return pool


def run_tasks(tasks, pool, progress: Progress) -> list[shard_writer.ShardResult]:
    """Writes the shards, largest first, in the pool's processes (in this one if pool is None).

    Each finished shard is fsynced by a thread of this process while the workers go on: a
    worker waiting for the disk (60 MB shards) would leave its core idle. Returns once every
    shard is on the disk.
    """
    tasks = sorted(tasks, key=lambda t: -len(t.patches))
    results, synced = [], []
    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="fsync") as syncer:
        def finished(result):
            results.append(result)
            synced.append(syncer.submit(atomic_files.fsync_path, result.path))

        if pool is None:
            for task in tasks:
                finished(shard_writer.write_shard(task))
                progress.show(sum(r.num_examples + len(r.skipped) for r in results))
        else:
            pending = {pool.submit(shard_writer.write_shard, task) for task in tasks}
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                for future in done:
                    finished(future.result())
                progress.show(pool.progress_counter.value)
        for future in synced:
            future.result()
    return results
