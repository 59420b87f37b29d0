"""Can this worker run trials at all? Checked before it takes any, so a misconfigured worker cannot spend the study.

A worker whose data folder is missing, or whose `--cache-dir` is a file or not writable, would fail every trial the
same way in seconds and spend the whole shared budget. `check_environment` finds that first and raises
WorkerEnvironmentError (one line, exit 2) before the study is touched. What it cannot foresee (the data going away
mid-study, the trial child failing to start) ends the trial with end_reason `environment_error`; the worker then
re-queues that trial (so it does not count against n_trials) and stops with the same kind of error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tuner.errors import WorkerEnvironmentError
from tuner.study.spec import StudySpec


def check_environment(spec: StudySpec, cache_dir: Path) -> None:
    """Raise WorkerEnvironmentError naming the problem and the fix when `spec`'s data cannot be read here or
    `cache_dir` (the tokenized-data cache) cannot be used. Cheap: no text is read, torch is not imported."""
    from model.corpus import DataError

    check_cache_dir(cache_dir)
    try:
        spec.data.check()
    except DataError as e:
        raise WorkerEnvironmentError(f"study {spec.name}: {e} (on this worker's machine)") from None


def check_cache_dir(cache_dir: Path) -> None:
    """The cache dir exists or can be made, is a folder, and takes a new file."""
    path = Path(cache_dir).expanduser()
    fix = "pass --cache-dir a writable folder (it is created if missing)"
    if path.exists() and not path.is_dir():
        raise WorkerEnvironmentError(f"--cache-dir {path} is not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WorkerEnvironmentError(f"--cache-dir {path}: {e.strerror or e}; {fix}") from None
