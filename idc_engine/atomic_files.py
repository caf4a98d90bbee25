"""Writing a file so that at every instant it is the old complete one or the new complete one.

Every output a later step reads (manifest.json, threshold.json, evaluation JSON, prediction CSVs,
the converter's shard folder, a run's export directory) goes through here: the new contents are
written to a temporary name beside the target, flushed to the disk, renamed over the target in
one step, and the rename itself is flushed (the directory's entry), so a crash or a full disk
leaves the old file.
"""

import contextlib
import json
import os
import uuid


def fsync_path(path: str) -> None:
    """Flushes a file's data, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: str) -> str:
    """Where replace_atomically writes `path`'s new contents before the rename."""
    return path + ".tmp"


@contextlib.contextmanager
def replace_atomically(path: str, mode: str = "w", shared: bool = False, **open_args):
    """`with replace_atomically(p) as f: f.write(...)`: p is replaced only if the block ends
    without an exception; otherwise p is untouched and the temporary file removed.

    shared: several processes may write p at once (a cohort's table): each writes a temporary
    file of its own, and the last rename wins, whole."""
    tmp = temporary_path(path)
    if shared:
        tmp = f"{tmp}.{os.getpid()}.{uuid.uuid4().hex}"
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(os.path.dirname(path) or ".")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path: str, value, sort_keys: bool = False,
                          trailing_newline: bool = True, shared: bool = False) -> None:
    """Writes `value` as JSON (indent 1) to `path` atomically and durably. The training run's
    own files (config.json, best.json, preprocessing.json) have no trailing newline."""
    with replace_atomically(path, shared=shared) as f:
        json.dump(value, f, indent=1, sort_keys=sort_keys)
        if trailing_newline:
            f.write("\n")


def _fsync_tree(root: str) -> None:
    """Flushes every file and directory under root (files first, then their directories)."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def _exchange(first: str, second: str) -> bool:
    """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                     rename_exchange) == 0


def replace_directory(staging: str, path: str) -> None:
    """Moves the complete directory `staging` to `path`, replacing what was there, durably.

    Where the system can swap two directories in one step (Linux), `path` is at every instant
    the old complete directory or the new one. Elsewhere the old one is renamed aside first, so
    for an instant `path` is absent, never mixed."""
    import shutil

    _fsync_tree(staging)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path):
        os.rename(staging, path)
    elif _exchange(staging, path):
        shutil.rmtree(staging)            # now the old directory
    else:
        aside = path + ".old"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        os.rename(staging, path)
        shutil.rmtree(aside)
    fsync_path(parent)
