"""Storage round trips per trial: one real `tuner worker` (in this process, its trial child a real process) runs the
tiny study of bench/storage_load.py on a fresh local Postgres database while every SQL statement, commit and pool
checkout (each one also a pre-ping) of its engine, and every storage call, is counted.

    python bench/storage_calls.py [--out bench/results] [--trials 8] [--label NAME]

Writes OUT/storage_calls.json (one entry per --label, so two code versions run from two trees can share the file):
per trial, the statements, commits, checkouts, each storage method's calls, and the median storage overhead
(start -> complete in storage, minus the trial's own work, as bench/storage_load.py reports it; one worker, so
this is the floor that 8 contending workers start from). Runs on CPU against $TUNER_TEST_PG in about a minute.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRITON_INTERPRET", "1")

from bench._common import RESULTS, device_header, write_json  # noqa: E402


def count_one_worker(n_trials: int) -> dict:
    """Run `n_trials` trials of the tiny study in one worker, counting what its storage does."""
    import optuna
    import sqlalchemy as sa

    from testing import harness as h
    from testing import storage_load as sl
    from tuner.storage.connect import open_storage
    from tuner.study.loader import spec_from_dict
    from tuner.trial.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with sl.fresh_database() as url, tempfile.TemporaryDirectory() as tmp:
        name = f"calls_{uuid.uuid4().hex[:6]}"
        spec_d = h.tiny_spec(name, n_trials, train_tokens=128, eval_tokens=64)
        h.create_study(h.write_study(Path(tmp), spec_d), url)
        storage = open_storage(url)
        engine: dict[str, int] = collections.Counter()
        for event, key in (("before_cursor_execute", "statements"), ("commit", "commits"), ("checkout", "checkouts")):
            sa.event.listen(storage.engine, event, lambda *_, k=key: engine.update([k]))
        calls: dict[str, int] = collections.Counter()
        extra = {"record_heartbeat", "get_trial_user_attrs", "get_trial_system_attrs"}  # not abstract, still reads
        for method in sorted(optuna.storages.BaseStorage.__abstractmethods__ | extra):
            real = getattr(storage, method)

            def counted(*args, _real=real, _name=method, **kwargs):  # instance attribute: the class is untouched
                calls[_name] += 1
                return _real(*args, **kwargs)

            setattr(storage, method, counted)
        spec = spec_from_dict(spec_d, where=name)
        code = run_worker(spec, storage=storage, seed=0, cache_dir=h.CACHE_DIR, install_signal_handlers=False)
        trials = optuna.load_study(study_name=name, storage=url).trials
    overheads = sl.overheads_ms(trials)
    n = len(trials)
    return {
        "exit_code": code,
        "trials": n,
        "states": dict(collections.Counter(t.state.name for t in trials)),
        "per_trial": {k: round(v / n, 1) for k, v in sorted(engine.items())},
        "storage_calls_per_trial": {k: round(v / n, 1) for k, v in calls.most_common()},
        "overhead_ms_median": round(sl.summary(overheads)["median"] or 0.0, 1),
        "overheads_ms": [round(v, 1) for v in overheads],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--label", default=None, help="the key of this run in the file (default: the git commit)")
    args = ap.parse_args(argv)
    from model.data import DataSource, prepare_data
    from testing import harness as h

    h.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prepare_data(DataSource(kind="stdlib", max_bytes=262144), 512, h.CACHE_DIR)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    label = args.label or rev.strip() or "unknown"
    path = args.out / "storage_calls.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(device_header())
    result.setdefault("runs", {})[label] = count_one_worker(args.trials)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    print(json.dumps({label: {k: v for k, v in result["runs"][label].items() if k != "overheads_ms"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
