"""`tuner worker` (tuner.commands.worker) end to end in-process on SQLite, without training: a worker whose
environment is broken stops before taking a trial with one line and exit 2; an unknown study is one line, exit 2;
the signal handlers the command installs are restored when it ends; a worker whose --stop-after window is already
over takes no trial and exits 0."""

from __future__ import annotations

import copy
import signal

import optuna

from tests.tuner.tiny import BASE, write
from tuner.cli import main


def _create(tmp_path, url):
    d = copy.deepcopy(BASE)
    d["name"] = "w"
    assert main(["create", str(write(tmp_path, d)), "--storage", url]) == 0


def test_a_cache_dir_that_is_a_file_stops_the_worker_before_any_trial(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 't.db'}"
    _create(tmp_path, url)
    (tmp_path / "f").write_text("x")
    before = signal.getsignal(signal.SIGTERM)
    code = main(["worker", "--study", "w", "--storage", url, "--quiet", "--cache-dir", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --cache-dir") and "not a folder" in err[0]
    assert optuna.load_study(study_name="w", storage=url).trials == []  # nothing taken, nothing counted
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_unknown_study_is_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 't.db'}"
    _create(tmp_path, url)
    assert main(["worker", "--study", "nope", "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study 'nope' not found" in err[0] and "w" in err[0]


def test_a_worker_whose_window_is_over_takes_no_trial_and_exits_0(tmp_path, caplog):
    from tuner.storage.connect import open_storage
    from tuner.storage.workers import worker_exits

    url = f"sqlite:///{tmp_path / 't.db'}"
    _create(tmp_path, url)
    with caplog.at_level("WARNING", logger="tuner.trial.worker"):
        code = main(
            ["worker", "--study", "w", "--storage", url, "--quiet", "--cache-dir", str(tmp_path / "c")]
            + ["--stop-after", "0.001"]
        )
    assert code == 0
    assert any("--stop-after reached; 0 trial(s) this worker" in r.getMessage() for r in caplog.records)
    study = optuna.load_study(study_name="w", storage=url)
    assert study.trials == []
    assert [e["reason"] for e in worker_exits(open_storage(url), study).values()] == ["stop_after"]
