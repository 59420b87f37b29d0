"""Issue 17 item 2: a study whose stored spec has `model.vocab_size: 1e9` (stored before sizes were validated) must
not hang a worker in the estimator. `tuner worker` refuses it with one line, exit 2, within seconds, and takes no
trial (nothing left RUNNING, the budget untouched)."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import yaml

from testing.harness import REPO, child_env
from tests.tuner.tiny import BASE


def _store_unvalidated_study(url: str, name: str, model: dict) -> None:
    """A study as an older tuner stored it: the spec attribute written as is (no loader in between)."""
    from tuner.storage._optuna_compat import study_id
    from tuner.storage.studies import INIT_ATTR, SPEC_ATTR

    spec = {**BASE, "name": name, "model": {**BASE["model"], **model}}
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"])
    study.set_metric_names(["val_ppl", "peak_vram_gib"])
    study.set_user_attr(SPEC_ATTR, yaml.safe_dump(spec, sort_keys=False))
    storage.set_study_system_attr(study_id(study), INIT_ATTR, True)


def test_worker_refuses_a_stored_huge_vocab_at_once(pg_url):
    _store_unvalidated_study(pg_url, "huge_vocab", {"vocab_size": 10**9})
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "worker", "--study", "huge_vocab", "--storage", pg_url, "--quiet"],
        cwd=REPO, env=child_env(pg_url), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "model.vocab_size: 1000000000 is out of range" in lines[0]
    assert took < 30, f"worker took {took:.1f} s to refuse"  # was: the estimator ran for minutes, SIGTERM ignored
    assert optuna.load_study(study_name="huge_vocab", storage=pg_url).get_trials() == []  # no trial taken
