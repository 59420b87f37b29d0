"""`tuner dashboard`: loopback only unless --allow-remote (which warns that there is no authentication); a bad port
or one in use is one line before anything claims to listen; the server answers optuna-dashboard's API."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.tuner.commands.test_cli_errors import cli, one_line
from tests.tuner.tiny import REPO
from tuner.commands.dashboard import is_loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com", ""))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_non_loopback_host_is_refused_without_allow_remote(tmp_path, host):
    db = tmp_path / "d.db"
    line = one_line(cli("dashboard", "--host", host, "--port", str(_free_port()), "--storage", f"sqlite:///{db}"))
    assert "no authentication" in line and "ssh -L" in line and "--allow-remote" in line
    assert not db.exists()  # refused before the storage is opened


@pytest.mark.parametrize("port", ["80000", "0", "-1", "http"])
def test_bad_port_is_one_line(port):
    line = one_line(cli("dashboard", "--port", port))
    assert line.startswith("error: tuner dashboard: argument --port:") and "1-65535" in line


def test_port_in_use_fails_before_it_claims_to_listen(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("dashboard", "--port", str(port), "--storage", f"sqlite:///{tmp_path / 'd.db'}")
    line = one_line(r)
    assert f"cannot listen on 127.0.0.1:{port} (address already in use); pick a free port" in line
    assert "http://" not in r.stdout


def _serve(tmp_path, *args: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "dashboard", "--port", str(port), "--storage",
         f"sqlite:///{tmp_path / 'd.db'}", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return p, port


def _wait_answer(url: str, p: subprocess.Popen[str]) -> bytes:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bytes(resp.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no answer from {url}")


def test_loopback_serves_the_api(tmp_path):
    p, port = _serve(tmp_path)
    try:
        assert b"study_summaries" in _wait_answer(f"http://127.0.0.1:{port}/api/studies", p)
    finally:
        p.terminate()
        out, err = p.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in out and "warning" not in err


def test_allow_remote_binds_and_warns(tmp_path):
    p, port = _serve(tmp_path, "--host", "0.0.0.0", "--allow-remote")
    try:
        _wait_answer(f"http://127.0.0.1:{port}/api/studies", p)
    finally:
        p.terminate()
        _out, err = p.communicate(timeout=30)
    assert "has no authentication" in err


def test_ipv6_loopback_serves(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    p, port = _serve(tmp_path, "--host", "::1")
    try:
        _wait_answer(f"http://[::1]:{port}/api/studies", p)
    finally:
        p.terminate()
        out, _err = p.communicate(timeout=30)
    assert f"on http://[::1]:{port}/" in out
