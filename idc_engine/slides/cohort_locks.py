"""Workers sharing one output folder: each slide's name, lock and attempts, in OUT/.cohort/.

    OUT/.cohort/names/<name>        the slide (absolute path) whose outputs are OUT/<name>/
    OUT/.cohort/<name>.lock         held while a worker processes the slide: host, pid, token
    OUT/.cohort/<name>.attempts.json   runs started and the last error, until one completes

Every claim is a hard link of a complete temporary file onto its name: link() creates the name
only if it does not exist, in one step, on local file systems and on NFS and Lustre alike,
where flock() and O_EXCL are not reliable across hosts (flock is local-only on some NFS
mounts; O_EXCL was not atomic before NFSv3). Its content is complete when the name appears.

A lock's file is touched every expiry/4 seconds by its holder; one untouched for longer than
the expiry belongs to a killed worker and is broken by the next worker that wants the slide, as
is at once a lock whose holder was a process of this host that no longer exists.
Ages are measured on the file server's clock (the mtime of a file this worker just touched),
not this host's, so clock skew between hosts does not break live locks.
"""

import json
import os
import socket
import threading
import uuid

from idc_engine import atomic_files
from idc_engine.slides import outputs

STATE_DIR = ".cohort"
# OUT's own folders beside the slides' (the cohort run's TensorBoard, this state)
RESERVED_NAMES = ("tensorboard", STATE_DIR)


def state_dir(output_dir: str) -> str:
    return os.path.join(output_dir, STATE_DIR)


def _link_new(path: str, content: str) -> bool:
    """Creates `path` holding `content` if it does not exist (True), else False."""
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(temporary)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def claim_name(output_dir: str, slide: str) -> str:
    """The name of `slide`'s output folder, OUT/<name>/: its file name up to the first dot,
    then `_2`, `_3`, ... if that name belongs to another slide (a/1.svs and b/1.svs), claimed
    once in OUT/.cohort/names/ and the same on every later run and worker."""
    names = os.path.join(state_dir(output_dir), "names")
    os.makedirs(names, exist_ok=True)
    base = os.path.basename(slide)
    stem = base.split(".")[0] or base
    for number in range(1, 100_000):
        name = stem if number == 1 else f"{stem}_{number}"
        if name in RESERVED_NAMES:
            continue
        claim = os.path.join(names, name)
        if _read(claim) is None and _taken_by_older_run(output_dir, name, slide):
            continue
        if _link_new(claim, slide) or _read(claim) == slide:
            return name
    raise RuntimeError(f"{slide}: 100,000 slides named {stem!r} in {output_dir}")


def _taken_by_older_run(output_dir: str, name: str, slide: str) -> bool:
    """Whether OUT/<name>/ holds another slide's outputs, written before names were claimed."""
    return (outputs.read_summary(output_dir, name) or {}).get("slide") not in (None, slide)


def _server_now(folder: str) -> float:
    """The file server's clock: the mtime of a file this worker touches now."""
    probe = os.path.join(folder, f"clock-{socket.gethostname()}-{os.getpid()}.tmp")
    with open(probe, "w"):
        pass
    try:
        return os.stat(probe).st_mtime
    finally:
        os.remove(probe)


class SlideLock:
    """`lock = SlideLock(OUT, name, expiry); if lock.acquire(): ... lock.release()`."""

    def __init__(self, output_dir: str, name: str, expiry_seconds: float):
        self.folder = state_dir(output_dir)
        self.path = os.path.join(self.folder, f"{name}.lock")
        self.expiry = expiry_seconds
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat = None

    def holder(self) -> str:
        """Who holds the lock now ("host pid N"), or "" if nobody."""
        content = _read(self.path)
        try:
            owner = json.loads(content) if content else None
        except ValueError:
            return "unknown"
        return f"{owner['host']} pid {owner['pid']}" if owner else ""

    def acquire(self) -> bool:
        """True if this worker now holds the slide's lock (breaking an expired one)."""
        os.makedirs(self.folder, exist_ok=True)
        content = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "token": self.token})
        if not _link_new(self.path, content):
            if not self._break_if_expired() or not _link_new(self.path, content):
                return False
        self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                           name=f"lock {os.path.basename(self.path)}")
        self._heartbeat.start()
        return True

    def _break_if_expired(self) -> bool:
        """Removes the lock if its holder stopped touching it `expiry` seconds ago."""
        try:
            stale = os.stat(self.path)
        except FileNotFoundError:
            return True
        if not self._holder_is_dead() and _server_now(self.folder) - stale.st_mtime <= self.expiry:
            return False
        broken = f"{self.path}.{self.token}.broken"
        try:
            os.rename(self.path, broken)
        except FileNotFoundError:
            return True  # another worker broke it first
        if os.stat(broken).st_ino != stale.st_ino:
            # a fresh lock was taken in between: put it back (should a third worker have
            # locked meanwhile, the fresh holder's beat notices and stops touching it)
            _link_new_from(broken, self.path)
        os.remove(broken)
        return True

    def _holder_is_dead(self) -> bool:
        """Whether the lock's holder was a process of this host that no longer runs (a rerun
        after kill -9 need not wait for the expiry); holders on other hosts cannot be asked."""
        try:
            owner = json.loads(_read(self.path) or "{}")
        except ValueError:
            return False
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.expiry / 4):
            if not self.held():
                return
            os.utime(self.path)

    def held(self) -> bool:
        content = _read(self.path)
        return content is not None and self.token in content

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.held():
            os.remove(self.path)


def _link_new_from(source: str, path: str) -> bool:
    try:
        os.link(source, path)
        return True
    except FileExistsError:
        return False


def attempts_path(output_dir: str, name: str) -> str:
    return os.path.join(state_dir(output_dir), f"{name}.attempts.json")


def read_attempts(output_dir: str, name: str) -> dict:
    """{"slide", "attempts": runs started without completing, "error": the last one or None}."""
    content = _read(attempts_path(output_dir, name))
    try:
        return json.loads(content) if content else {}
    except ValueError:
        return {}


def write_attempts(output_dir: str, name: str, record: dict) -> None:
    os.makedirs(state_dir(output_dir), exist_ok=True)
    atomic_files.write_json_atomically(attempts_path(output_dir, name), record)


def clear_attempts(output_dir: str, name: str) -> None:
    try:
        os.remove(attempts_path(output_dir, name))
    except FileNotFoundError:
        pass
