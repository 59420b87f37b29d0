"""`tuner run` (tuner.commands.run) in-process on SQLite, without training: a broken environment is one line and
exit 2 before any trial; each run of a study claims its own sampler seed (the study's on the first run, a distinct
one on every re-run), so a re-run continues the configuration sequence instead of replaying it; a run whose
--stop-after window is already over takes no trial and exits 0."""

from __future__ import annotations

import copy

import optuna

from tests.tuner.tiny import BASE, write
from tuner.cli import main
from tuner.storage.samplers import RUN_SEED_PREFIX


def test_reruns_claim_distinct_seeds_and_a_broken_cache_dir_takes_no_trial(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    d["sampler"] = {"name": "random", "seed": 3}
    study = write(tmp_path, d)
    url = f"sqlite:///{tmp_path / 't.db'}"
    (tmp_path / "f").write_text("x")
    for _ in range(3):
        assert main(["run", str(study), "--storage", url, "--cache-dir", str(tmp_path / "f")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --cache-dir"), err
    storage = optuna.storages.RDBStorage(url)
    sid = storage.get_study_id_from_name(d["name"])
    assert storage.get_all_trials(sid) == []
    seeds = [v for k, v in storage.get_study_system_attrs(sid).items() if k.startswith(RUN_SEED_PREFIX)]
    assert len(seeds) == 3 and len(set(seeds)) == 3 and 3 in seeds  # the first run kept the study's seed


def test_a_run_whose_window_is_over_takes_no_trial_and_exits_0(tmp_path, capsys, caplog):
    """`tuner run --stop-after 0.001`: the window is over before the worker's first turn, so the run takes no trial,
    says so in one line and exits 0; the study is created and its budget untouched (the next run resumes it)."""
    from tuner.storage.connect import open_storage
    from tuner.storage.workers import worker_exits

    study = write(tmp_path, BASE)
    url = f"sqlite:///{tmp_path / 't.db'}"
    with caplog.at_level("WARNING", logger="tuner.trial.worker"):
        code = main(["run", str(study), "--storage", url, "--cache-dir", str(tmp_path / "c"), "--stop-after", "0.001"])
    assert code == 0
    assert any(
        "--stop-after reached; 0 trial(s) this worker, study holds 0 of 4" in r.getMessage() for r in caplog.records
    )
    opt = optuna.load_study(study_name=BASE["name"], storage=url)
    assert opt.trials == []
    assert [e["reason"] for e in worker_exits(open_storage(url), opt).values()] == ["stop_after"]
