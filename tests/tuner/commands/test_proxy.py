"""`tuner proxy`: a real process serves the database (says where, and how workers connect), a `tuner create` and
`tuner status` through it work, a second proxy on the same port and a proxy in front of a proxy fail with one line
(exit 2), SIGTERM stops it cleanly (exit 0), and a grpc:// worker's --grace-s is refused (the proxy's applies)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from testing.harness import REPO, child_env
from testing.storage_load import ProxyProcess
from tests.tuner.tiny import BASE
from tuner.commands import open_worker_storage
from tuner.errors import StorageError


def _tuner(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args],
        cwd=str(REPO),
        env=child_env(url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_proxy_serves_create_and_status_then_stops_on_sigterm(pg_url, tmp_path):
    with ProxyProcess(pg_url, tmp_path / "proxy.log", threads=2) as proxy:
        text = proxy.log.read_text()
        assert f"on {proxy.grpc_url} (at most 2 database connections); workers: --storage {proxy.grpc_url}" in text
        assert "stale trials (no heartbeat for 120 s) are failed and re-queued here, checked every 30 s" in text
        study = tmp_path / "s.yaml"
        study.write_text(yaml.safe_dump({**BASE, "name": "via_proxy"}, sort_keys=False))
        made = _tuner("create", str(study), "--storage", proxy.grpc_url)
        assert made.returncode == 0 and f"created in {proxy.grpc_url}" in made.stdout, made.stderr
        status = _tuner("status", "--study", "via_proxy", "--storage", proxy.grpc_url)
        assert status.returncode == 0 and "via_proxy" in status.stdout, status.stderr

        again = _tuner("proxy", "--storage", pg_url, "--port", str(proxy.port))
        assert again.returncode == 2
        assert again.stderr.strip().splitlines() == [
            f"error: cannot listen on 127.0.0.1:{proxy.port} (Failed to bind to address 127.0.0.1:{proxy.port}; "
            "set GRPC_VERBOSITY=debug environment variable to see detailed error message.); choose another --port "
            "or stop what holds it"
        ]
        chained = _tuner("proxy", "--storage", proxy.grpc_url, "--port", "1")
        assert chained.returncode == 2 and chained.stderr.startswith("error: tuner proxy needs the database URL")
    assert proxy.exit_code == 0 and proxy.log.read_text().rstrip().endswith("storage proxy stopped")


@pytest.mark.parametrize("heartbeat_s", [None, 5])
def test_a_workers_grace_is_refused_through_a_proxy(heartbeat_s):
    refused = r"--grace-s does nothing on a worker of the storage proxy .* `tuner proxy --grace-s`"
    with pytest.raises(StorageError, match=refused):
        open_worker_storage("grpc://127.0.0.1:13000", argparse.Namespace(heartbeat_s=heartbeat_s, grace_s=60))


def test_bad_threads_is_a_user_error(pg_url):
    r = _tuner("proxy", "--storage", pg_url, "--threads", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: --threads 0: give 1 to 64")
