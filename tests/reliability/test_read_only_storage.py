"""Issue 17 item 7: a read-only SQLite file (immutable: `chattr +i`, read-only even for root) is a permanent error,
not an outage: the worker fails at once with one line naming it, instead of 600 s of retries."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from testing.scenarios import measure_read_only_sqlite

pytestmark = pytest.mark.slow  # real worker processes


def _chattr_works(tmp_path) -> bool:
    f = tmp_path / "probe"
    f.write_text("x")
    ok = shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(f)]).returncode == 0
    subprocess.run(["chattr", "-i", str(f)], check=False)
    return ok


def test_a_read_only_sqlite_file_fails_at_once(tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("chattr +i is not available on this file system")
    r = measure_read_only_sqlite(tmp_path)
    out = r["output"].strip()
    assert r["exit_code"] == 2 and r["exit_s"] < 20.0, (r["exit_code"], r["exit_s"], out)
    assert out.count("error:") == 1 and "read-only" in out and "Traceback" not in out, out
