"""--stop-after DURATION (tuner.commands.duration_s, shared by run, worker and launch): the accepted forms, one-line
refusals naming the flag before storage is touched, and a real CPU `tuner launch --workers 2 --stop-after` that
ends its window with every trial it took finished and recorded, none interrupted, the budget left for later."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import optuna
import pytest
import yaml

from tests.tuner.commands.test_cli_errors import bad_flag_error
from tests.tuner.tiny import REPO, trial_study
from tuner.commands import duration_s


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90.0),
        ("90.5", 90.5),
        ("45s", 45.0),
        ("8m", 480.0),
        ("1.5h", 5400.0),
        (" 2M ", 120.0),  # case and surrounding blanks do not matter
        ("0.25", 0.25),
        ("1e3", 1000.0),
    ],
)
def test_accepted_durations(text, seconds):
    assert duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "is not a duration"),
        ("s", "is not a duration"),
        ("8x", "is not a duration"),
        ("8d", "is not a duration"),  # days are not offered: a window is minutes or hours
        ("5ms", "is not a duration"),
        ("eight", "is not a duration"),
        ("inf", "is not a duration"),
        ("nan", "is not a duration"),
        ("0", "is out of range"),
        ("0m", "is out of range"),
        ("-5", "is out of range"),
        ("-1.5h", "is out of range"),
    ],
)
def test_refused_durations_name_the_accepted_forms(text, problem):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        duration_s(text)
    msg = str(info.value)
    assert msg.startswith(f"{text!r} {problem}") and "\n" not in msg
    assert "90.5" in msg and "45s, 8m, 1.5h" in msg


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "S", "--stop-after", "0"],
        ["run", "S", "--stop-after", "10x"],
        ["worker", "--study", "unit", "--stop-after", "-3"],
        ["worker", "--study", "unit", "--stop-after", ""],
        ["launch", "S", "--workers", "1", "--stop-after", "1.5d"],
    ],
)
def test_a_bad_stop_after_is_one_line_before_storage(tmp_path, capsys, argv):
    err = bad_flag_error(tmp_path, capsys, argv)
    assert err.startswith(f"error: tuner {argv[0]}: argument --stop-after:") and "45s, 8m, 1.5h" in err


LAUNCH_STUDY = {
    **trial_study(),
    "name": "window_cpu",
    "n_trials": 200,  # far more than the window holds: the window, not the budget, ends the launch
    "budget": {"train_tokens": 2048, "eval_tokens": 1024, "trial_timeout_s": 120},
}


@pytest.mark.slow
def test_launch_with_a_window_stops_its_workers_without_losing_trials(tmp_path):
    """Two real CPU workers, a 12 s window: launch exits 0 and says the window ended; every trial taken finished
    COMPLETE (none FAIL, none interrupted and re-queued, none left RUNNING), fewer than n_trials, and both workers
    recorded the exit reason stop_after."""
    from tuner.storage.connect import open_storage
    from tuner.storage.workers import worker_exits

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(LAUNCH_STUDY))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "launch", str(study), "--workers", "2", "--storage", url]
        + ["--cache-dir", str(tmp_path / "cache"), "--stop-after", "12s"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "launch: window 12 s (--stop-after): no new trial after " in out
    assert out.count("--stop-after reached;") == 2, out[-3000:]  # one line per worker
    total = [line for line in out.splitlines() if "trained trials per hour" in line]
    assert len(total) == 1 and total[0].endswith(
        "--stop-after window ended (the rest of the budget is left for the next launch)"
    )
    study_obj = optuna.load_study(study_name="window_cpu", storage=url)
    trials = study_obj.trials
    assert 1 <= len(trials) < LAUNCH_STUDY["n_trials"], len(trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    assert all(t.user_attrs["end_reason"] == "complete" for t in trials)
    assert not any("retry_history" in t.system_attrs for t in trials)  # nothing re-queued
    exits = worker_exits(open_storage(url), study_obj)
    assert len(exits) == 2 and {e["reason"] for e in exits.values()} == {"stop_after"}, exits
