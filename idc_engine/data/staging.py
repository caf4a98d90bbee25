"""The converter's files in an output directory, and the commit that keeps one conversion whole.

A conversion writes its shards under `STAGING_PREFIX + id`, renamed `SHARD_DIR_PREFIX + id` when
all are written; id: 8 hex digits, new for each conversion (`new_conversion_id`). Then
`manifest.json` is replaced atomically, then the previous conversion's files are removed
(`commit_conversion`). At every instant the output directory holds one complete conversion, the
previous one or the new one; a first run stopped at any point leaves no manifest, so nothing that
looks complete. Entries the converter does not write (the user's files) are never touched.

One conversion at a time writes into an output directory: it holds an exclusive flock on
`LOCK_NAME` inside it from before its first check of the folder to after its commit
(`conversion_lock`), and a second conversion into that folder is refused at once.
"""

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil

from idc_engine import atomic_files, errors
from idc_engine.data import manifest as manifest_lib

STAGING_PREFIX = ".convert-staging-"
SHARD_DIR_PREFIX = "shards-"
LOCK_NAME = ".convert.lock"
_SHARD_DIR = re.compile(re.escape(SHARD_DIR_PREFIX) + "[0-9a-f]{8}")
# shards directly in the output directory: what converters before shard folders wrote
_TOP_LEVEL_SHARD = re.compile(r"(train|val|test)-\d{5}-of-\d{5}\.tfrecord")


def is_converter_entry(name: str) -> bool:
    """Whether a top-level entry of an output directory has a name the converter writes."""
    return (name in (manifest_lib.MANIFEST_NAME, manifest_lib.MANIFEST_TEMPORARY_NAME, LOCK_NAME)
            or name.startswith(STAGING_PREFIX) or bool(_SHARD_DIR.fullmatch(name))
            or bool(_TOP_LEVEL_SHARD.fullmatch(name)))


def leftovers(output_dir: str, manifest: dict) -> list[str]:
    """Sorted top-level entries of `output_dir` that the converter writes but `manifest` does not
    use: staging and shard folders or shards of earlier and interrupted conversions, a temporary
    manifest. Other files (the user's) are never among them, nor the lock file (a running
    conversion's, or one a killed conversion left: the next conversion takes it over)."""
    used = {manifest_lib.MANIFEST_NAME, LOCK_NAME}
    used |= {path.split("/")[0] for info in manifest.get("splits", {}).values()
             for path in info.get("files", [])}
    return sorted(e for e in os.listdir(output_dir) if is_converter_entry(e) and e not in used)


class ConversionRunning(errors.EngineError, RuntimeError):
    """Another conversion holds the output directory's lock."""


@contextlib.contextmanager
def conversion_lock(output_dir: str):
    """Holds the exclusive lock of `output_dir` (which must exist) for the `with` block, or raises
    ConversionRunning at once if another conversion holds it. The lock file is removed on the
    way out, while still locked: a process that opened it meanwhile finds, once it gets the
    lock, that the path no longer names the file it locked, and starts again on a new one."""
    path = os.path.join(output_dir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ConversionRunning(
                f"--output_dir {output_dir!r}: another conversion is running into this folder "
                f"(it holds {path!r}); wait for it to end, or choose another directory") from None
        if _names_the_same_file(path, fd):
            break
        os.close(fd)  # locked a file its holder removed on its way out: take the new one
    try:
        yield
    finally:
        os.remove(path)
        os.close(fd)


def _names_the_same_file(path: str, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def new_conversion_id(output_dir: str) -> str:
    """8 hex digits naming this conversion's folders, used by no entry of `output_dir`."""
    while True:
        conversion_id = secrets.token_hex(4)
        if not any(os.path.lexists(os.path.join(output_dir, prefix + conversion_id))
                   for prefix in (STAGING_PREFIX, SHARD_DIR_PREFIX)):
            return conversion_id


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def remove_staging_folders(output_dir: str) -> None:
    """Removes the staging folders of interrupted runs (never part of a complete conversion)."""
    for entry in os.listdir(output_dir):
        if entry.startswith(STAGING_PREFIX):
            _remove(os.path.join(output_dir, entry))


def remove_leftovers(output_dir: str, manifest: dict) -> None:
    """Removes what leftovers() lists: files of conversions that `manifest` does not list."""
    for name in leftovers(output_dir, manifest):
        _remove(os.path.join(output_dir, name))


def commit_conversion(output_dir: str, staging: str, shard_dir: str, manifest: dict) -> None:
    """Puts a conversion whose shards are all written in `staging` in place of the previous one.

    At every instant `output_dir` holds one complete conversion: the previous one until
    manifest.json is replaced, this one from then on. The shards move in under `shard_dir`, a
    name the previous conversion does not use, so nothing its manifest lists is touched; the
    manifest is replaced in one rename once the new shards are durably in place; the previous
    conversion's files (and any interrupted run's) are removed only after the new manifest is
    on the disk. A crash anywhere leaves at most leftovers, which readers never see (they follow
    the manifest) and the next conversion removes.
    """
    atomic_files.fsync_path(staging)  # the shards' names in it
    os.rename(staging, os.path.join(output_dir, shard_dir))
    atomic_files.fsync_path(output_dir)  # the folder's name is on the disk before the manifest listing it
    manifest_lib.write_manifest(output_dir, manifest)
    remove_leftovers(output_dir, manifest)
