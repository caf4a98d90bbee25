"""The suite's few quality bounds on a trained model, each checked and, for
tools/suite_spread.sh, recorded.

A bound is the right test only where no guarantee can be stated (a tile read from a slide is
not the patch's exact pixels, so "agrees with the patch" has a tolerance). Each such bound was
set from the spread of the observed value over seeds, thread counts and oneDNN variants
(BUILD.md, "The test suite: what holds on every machine"): the docstring of the test that uses it gives the
measured minimum and the margin. With IDC_BOUNDS_LOG set, every check appends
{"bound", "observed", "limit", "kind"} to that JSON-lines file; the spread script reads it.
"""

import json
import os


def at_least(name: str, observed: float, limit: float) -> None:
    """Asserts observed >= limit, recording both under `name`."""
    _record(name, observed, limit, "at_least")
    assert observed >= limit, f"{name}: {observed:.4f} < {limit}"


def at_most(name: str, observed: float, limit: float) -> None:
    """Asserts observed <= limit, recording both under `name`."""
    _record(name, observed, limit, "at_most")
    assert observed <= limit, f"{name}: {observed:.4f} > {limit}"


def _record(name: str, observed: float, limit: float, kind: str) -> None:
    log = os.environ.get("IDC_BOUNDS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"bound": name, "observed": float(observed), "limit": limit,
                                "kind": kind}) + "\n")
