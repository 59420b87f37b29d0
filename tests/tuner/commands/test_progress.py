"""tuner.commands._progress and `tuner run`'s resume: a finished study says so in one line (exit 0, no trial
started), queued trials still run, and the progress bar starts at the trials already done."""

from __future__ import annotations

import time

import optuna
import pytest
import yaml

from tests.tuner.tiny import BASE, mutate
from tuner.cli import main
from tuner.commands._progress import Resume, resume_state
from tuner.commands.worker import ProgressDisplay
from tuner.storage.connect import open_storage
from tuner.storage.constraints import set_trial_constraint
from tuner.study.loader import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_with(tmp_path, n_complete, n_waiting=0, spec=BASE):
    url = f"sqlite:///{tmp_path}/s.db"
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(spec))  # n_trials: 4
    assert main(["create", str(study_file), "--storage", url]) == 0
    spec = load_spec(study_file)
    study = optuna.load_study(study_name="unit", storage=url)
    for i in range(n_complete):
        t = study.ask()
        spec.space.suggest(t)
        set_trial_constraint(t, -1.0)
        study.tell(t, [100.0 + i, 1.0])
    for _ in range(n_waiting):
        study.enqueue_trial({"ar_ssm_max_rank": 8})
    return url, study_file


def test_resume_state_counts_done_and_waiting(tmp_path):
    assert resume_state(open_storage(f"sqlite:///{tmp_path}/none.db"), "unit") == Resume(False, 0, 0)
    url, _ = _study_with(tmp_path, 3, n_waiting=1)
    state = resume_state(open_storage(url), "unit")
    assert state == Resume(True, 3, 1)
    assert not state.finished(3)  # a queued trial is still to run
    assert Resume(True, 4, 0).finished(4) and not Resume(True, 3, 0).finished(4) and not Resume(False, 0, 0).finished(0)


def test_run_on_a_finished_study_says_so_in_one_line(tmp_path, capsys):
    url, study_file = _study_with(tmp_path, 4)
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["run", str(study_file), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "study unit is finished: 4 of 4 trials done" in out and "--n-trials" in out
    assert time.monotonic() - t0 < 20  # no trial child was started
    assert len(optuna.load_study(study_name="unit", storage=url).trials) == 4


@pytest.mark.slow
def test_run_resumes_with_the_bar_at_the_trials_done(tmp_path, capsys, monkeypatch):
    import tuner.commands.worker as worker_cmd

    starts = []

    class Spy(ProgressDisplay):
        def __enter__(self):
            starts.append(self.progress_bar.tasks[self.trials_task].completed)
            return super().__enter__()

    monkeypatch.setattr(worker_cmd, "ProgressDisplay", Spy)
    small = mutate(data={"source": "stdlib", "max_bytes": 262144}, budget__train_tokens=512, budget__eval_tokens=128)
    url, study_file = _study_with(tmp_path, 3, spec=small)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the tokenized-data cache goes under tmp_path
    assert main(["run", str(study_file), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert starts == [3] and "4 trials (3 done, resuming)" in out
    assert len(optuna.load_study(study_name="unit", storage=url).trials) == 4  # exactly the one missing trial
