"""python -m idc_engine.view as a real subprocess: it serves OUT on a free localhost port and
prints where; a missing or empty OUT_DIR, a port in use and a --host other than localhost
without --allow_remote are an `error:` line naming the flag or folder and exit code 2."""

import json
import re
import socket
import subprocess
import sys
import urllib.request

import pytest
import view_files
from cli_flags import check_every_flag_is_documented

from idc_engine.view.__main__ import ViewConfig, ViewError, check_address


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return view_files.write_out(tmp_path_factory.mktemp("view_cli"))["out"]


def view(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idc_engine.view", *args], capture_output=True,
                          text=True, timeout=timeout)


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for word in words:
        assert word in line, line


def test_it_serves_out_on_a_free_localhost_port_and_says_where(out):
    process = subprocess.Popen([sys.executable, "-m", "idc_engine.view", out, "--port=0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert "serving 4 slides" in line and "(2 viewable)" in line
        with urllib.request.urlopen(url + "api/slides", timeout=30) as response:
            names = [s["name"] for s in json.load(response)]
        assert names == ["labelled", "moved", "ok", view_files.REPLACED]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_missing_or_empty_out_dir_is_refused(tmp_path):
    refused(view(str(tmp_path / "nowhere")), str(tmp_path / "nowhere"), "no such directory")
    refused(view(str(tmp_path)), str(tmp_path), "no slide outputs")


def test_a_port_in_use_is_refused(out):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused(view(out, f"--port={port}"), f"--port={port}", "in use")


def test_a_host_other_than_localhost_is_refused_unless_allowed(out):
    refused(view(out, "--host=0.0.0.0"), "--host=0.0.0.0", "ssh -L", "--allow_remote")
    # the rule itself; binding every interface in a test is left out
    for host in ("127.0.0.1", "localhost", "::1"):
        check_address(ViewConfig(host=host))
    check_address(ViewConfig(host="0.0.0.0", allow_remote=True))
    with pytest.raises(ViewError, match="--host=192.168.1.5"):
        check_address(ViewConfig(host="192.168.1.5"))


def test_every_flag_is_in_helpfull():
    result = view("--helpfull")
    checked = check_every_flag_is_documented("idc_engine.view.__main__", result.stdout)
    assert {"port", "host", "allow_remote", "cache_mb"} <= set(checked)
