"""A new file written around the page cache (O_DIRECT): how the converter writes its shards.

A shard is written once and not read back by the converter. Through the page cache each byte
costs CPU twice, the copy into newly allocated cache pages in write() and the kernel's writeback
at fsync, on the cores that decode the PNGs; with O_DIRECT the disk reads straight from this
process's buffer and that CPU goes to decoding. The cost: a step run right after the conversion
reads the shards from the disk rather than from memory.

O_DIRECT needs block-aligned memory, offsets and lengths, so bytes are gathered in page-aligned
buffers (anonymous mmaps) and written in whole blocks; close() pads the last block for its write
and truncates the file to its true size. Where O_DIRECT is unavailable or refused (macOS, some
FUSE and network filesystems, older tmpfs) the same class writes through the page cache.
"""

import errno
import fcntl
import mmap
import os
import threading

BLOCK = 4096          # a multiple of any disk's logical block size
CHUNK = 1 << 20       # bytes gathered per write


# Buffers of closed files, for the next file of this process: a converter worker writes shard
# after shard, and fresh memory costs a page fault (and zeroing) per 4 KB page.
_spare_buffers: list[mmap.mmap] = []


def _take_buffer(size: int) -> mmap.mmap:
    while _spare_buffers:
        buffer = _spare_buffers.pop()
        if len(buffer) == size:
            buffer.seek(0)
            return buffer
        buffer.close()
    # private: cheaper page faults than the default shared mapping, and no other process sees it
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _give_back(buffer: mmap.mmap) -> None:
    if len(_spare_buffers) < 2:
        _spare_buffers.append(buffer)
    else:
        buffer.close()


class DirectFile:
    """Appends bytes to a new file at `path` (created, or truncated); close() completes it.

    A context manager. The contents are complete only after close(); callers fsync the file as
    any other (O_DIRECT bypasses the page cache, not the disk's own write cache). An O_DIRECT
    write returns once the disk has the data, so full chunks are written by a thread while the
    caller fills the other of two buffers (os.write releases the GIL). `direct=False` writes
    through the page cache.

    The thread is handed each chunk with two bare locks rather than a ThreadPoolExecutor: each
    time it wakes it needs the GIL, taken from a caller busy decoding, and an executor's futures,
    queue and condition variables would add more such hand-offs and more Python run under the
    GIL.
    """

    def __init__(self, path: str, chunk: int = CHUNK, direct: bool = True):
        if chunk <= 0 or chunk % BLOCK:
            raise ValueError(f"chunk must be a positive multiple of {BLOCK}, not {chunk}")
        self.path, self.chunk = path, chunk
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.fd = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                    raise
        self.direct = self.fd is not None
        if self.fd is None:
            self.fd = os.open(path, flags, 0o644)
        # page-aligned, as O_DIRECT needs: one being filled here (its position: the bytes
        # gathered), one being written. A block more than a chunk, so that a chunk always fits
        # after the partial block carried over.
        self.buffers = [_take_buffer(chunk + BLOCK) for _ in range(2)]
        self.buffer = self.buffers[0]
        self.size = 0        # bytes handed to the file before those gathered
        # the writer thread: `go` released when `job` (a view, or None to stop) is set for it,
        # `done` released when it is written (`error` set if that failed)
        self.job = self.error = None
        self.busy = False
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.writer = threading.Thread(target=self._run, name="direct-write", daemon=True)
        self.writer.start()

    def write(self, data) -> None:
        """Appends `data` (bytes-like)."""
        try:
            # mmap.write copies and advances in C, with no Python slicing or bookkeeping per
            # piece (three pieces a record, 277k records a conversion)
            self.buffer.write(data)
        except ValueError:  # past the buffer's end: nothing was copied
            if self.fd is None:
                raise
            self._write_blocks()
            view = memoryview(data).cast("B")
            if len(view) <= len(self.buffer) - self.buffer.tell():
                self.buffer.write(view)
            else:  # larger than a chunk: passed on in chunk-sized pieces
                for start in range(0, len(view), self.chunk):
                    self.write(view[start:start + self.chunk])

    def _write_blocks(self) -> None:
        """Hands the whole blocks gathered to the writer thread and goes on in the other buffer,
        starting with the bytes of the partial block."""
        used = self.buffer.tell()
        whole = used - used % BLOCK
        if not whole:
            return
        self._wait()
        full, self.buffer = self.buffer, self.buffers[self.buffers[0] is self.buffer]
        self.buffer.seek(0)
        self.buffer.write(full[whole:used])
        self.job, self.busy = memoryview(full)[:whole], True
        self.go.release()
        self.size += whole

    def _run(self) -> None:
        """The writer thread: each job written, until a job of None."""
        while True:
            self.go.acquire()
            if self.job is None:
                return
            try:
                self._write(self.job)
            except BaseException as e:  # noqa: BLE001 -- raised in the caller by _wait
                self.error = e
            self.done.release()

    def _wait(self) -> None:
        """Waits for the write in flight, and raises its error."""
        if self.busy:
            self.done.acquire()
            self.busy = False
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self, view: memoryview) -> None:
        try:
            try:
                written = os.write(self.fd, view)
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                # O_DIRECT accepted at open but refused at write (some FUSE and network
                # filesystems): on through the page cache.
                fcntl.fcntl(self.fd, fcntl.F_SETFL,
                            fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
                written = os.write(self.fd, view)
            if written != len(view):  # a regular file writes all or raises, but when full
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(view)} bytes)",
                              self.path)
        finally:
            view.release()

    def close(self) -> None:
        """Writes what is gathered, waits for it, and sets the file's true size."""
        if self.fd is None:
            return
        try:
            self._write_blocks()
            self._wait()
            used = self.buffer.tell()
            if used:
                padded = -(-used // BLOCK) * BLOCK
                self.buffer[used:padded] = bytes(padded - used)
                self._write(memoryview(self.buffer)[:padded])
                self.size += used
                os.ftruncate(self.fd, self.size)
        finally:
            if self.busy:  # an error above: the write in flight still owns its buffer
                self.done.acquire()
                self.busy = False
            self.job = None
            self.go.release()
            self.writer.join()
            os.close(self.fd)
            self.fd = None
            for buffer in self.buffers:
                _give_back(buffer)

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
