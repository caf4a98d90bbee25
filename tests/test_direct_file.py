"""DirectFile: the bytes written are the file's, whichever way they reach the disk."""

import os

import numpy as np
import pytest

from idc_engine.data import direct_file


@pytest.mark.parametrize("direct", [True, False])
def test_the_file_holds_exactly_the_bytes_written(tmp_path, direct):
    rng = np.random.default_rng(0)
    chunk = 4 * direct_file.BLOCK  # small, so that many chunks, and pieces larger than one, occur
    sizes = [0, 1, 7, 4096, 4095, 7621, 3 * chunk + 5, 16384, 1, 9000] * 3
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    path = tmp_path / "shard.tfrecord"
    with direct_file.DirectFile(str(path), chunk=chunk, direct=direct) as out:
        for piece in pieces:
            out.write(piece)
        assert direct or not out.direct
    assert path.read_bytes() == b"".join(pieces)
    assert not out.writer.is_alive()  # close() stops the writer thread


@pytest.mark.parametrize("total", [0, direct_file.BLOCK, direct_file.CHUNK + 1,
                                   direct_file.CHUNK + direct_file.BLOCK,
                                   2 * (direct_file.CHUNK + direct_file.BLOCK) + 1])
def test_sizes_at_block_and_chunk_edges(tmp_path, total):
    data = os.urandom(total)
    path = tmp_path / "f"
    with direct_file.DirectFile(str(path)) as out:
        out.write(data)
    assert os.path.getsize(path) == total and path.read_bytes() == data


def test_a_new_file_replaces_an_older_one(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    with direct_file.DirectFile(str(path)) as out:
        out.write(b"short")
    assert path.read_bytes() == b"short"


def test_a_failing_disk_raises_instead_of_losing_data(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    out = direct_file.DirectFile("/dev/full", chunk=direct_file.BLOCK)
    with pytest.raises(OSError):  # from a write of the thread, or from close
        try:
            for _ in range(4):
                out.write(b"y" * direct_file.BLOCK)
        finally:
            out.close()
    assert out.fd is None and not out.writer.is_alive()  # closed all the same, thread stopped


def test_chunk_must_be_whole_blocks(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        direct_file.DirectFile(str(tmp_path / "f"), chunk=1000)
    assert not (tmp_path / "f").exists()
