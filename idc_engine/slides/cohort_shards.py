"""Which slides of a cohort this worker takes: shard I of N, from a flag or the scheduler.

    --shard=I/N                      explicit (0 <= I < N)
    Slurm job array                  I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN,
                                     N = SLURM_ARRAY_TASK_COUNT (arrays may start at 1 or any
                                     index; a step other than 1, --array=0-9:2, is refused)
    Kubernetes Indexed Job           I = JOB_COMPLETION_INDEX, N = --num_shards (the Job's
                                     completions; the pod is not told it)
    none of these                    0/1: every slide

Slides are dealt round-robin over the list as expanded (cohort_inputs: the same order on every
worker), so the shards are disjoint, cover the list and differ in size by at most one slide.
Whatever the dealing, a per-slide lock (cohort_locks) keeps two workers off one slide.
"""

import dataclasses
import os
import re

from idc_engine import errors


class ShardError(errors.EngineError, ValueError):
    """A shard that cannot be used; the message names the flag or variable."""


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str  # where it came from, for the log

    def take(self, slides: list) -> list:
        """This shard's slides: every count-th from index."""
        return slides[self.index::self.count]


def _integer(value: str, name: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", value or ""):
        raise ShardError(f"{name}={value!r}: not a whole number >= 0")
    return int(value)


def _checked(index: int, count: int, source: str) -> Shard:
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"{source}: shard {index} of {count} does not exist (0 <= I < N)")
    return Shard(index, count, source)


def _slurm(environ) -> Shard:
    task = _integer(environ["SLURM_ARRAY_TASK_ID"], "SLURM_ARRAY_TASK_ID")
    if "SLURM_ARRAY_TASK_COUNT" not in environ:
        raise ShardError("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT: give "
                         "--shard=I/N")
    count = _integer(environ["SLURM_ARRAY_TASK_COUNT"], "SLURM_ARRAY_TASK_COUNT")
    low = _integer(environ.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN")
    step = _integer(environ.get("SLURM_ARRAY_TASK_STEP", "1"), "SLURM_ARRAY_TASK_STEP")
    if step != 1:
        raise ShardError(f"SLURM_ARRAY_TASK_STEP={step}: an array with a step leaves gaps "
                         "between task ids; use --array=0-N or give --shard=I/N")
    return _checked(task - low, count, f"Slurm array task {task} of {low}..{low + count - 1}")


def resolve_shard(flag: str, num_shards: int, environ=None) -> Shard:
    """The Shard from --shard (I/N, or empty), --num_shards and the environment."""
    environ = os.environ if environ is None else environ
    if flag:
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", flag)
        if not found:
            raise ShardError(f"--shard={flag!r}: give I/N, e.g. --shard=0/4")
        return _checked(int(found.group(1)), int(found.group(2)), f"--shard={flag}")
    if "SLURM_ARRAY_TASK_ID" in environ:
        return _slurm(environ)
    if "JOB_COMPLETION_INDEX" in environ:
        index = _integer(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX")
        if num_shards < 1:
            raise ShardError(f"JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) needs "
                             "--num_shards=N, the Job's completions")
        return _checked(index, num_shards, f"Kubernetes JOB_COMPLETION_INDEX={index} of "
                                           f"--num_shards={num_shards}")
    if num_shards > 1:
        raise ShardError(f"--num_shards={num_shards} without --shard or JOB_COMPLETION_INDEX: "
                         "which shard is this?")
    return Shard(0, 1, "every slide (no --shard, Slurm array or Indexed Job)")
