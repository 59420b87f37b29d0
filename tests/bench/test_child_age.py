"""bench/child_age.py: a trial's place in its child process, from the workers' own order of trials, and the table
over the committed H100 study. The FrozenTrials built here are test inputs, not measurements."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import child_age  # noqa: E402

T0 = datetime.datetime(2026, 11, 1)


def _trial(number, worker, reason, *, nvml=1.0, torch_peak=0.5, pred=1.0):
    attrs = {"worker": worker, "end_reason": reason, "predicted_peak_gib": pred}
    if reason != "predicted_over_ceiling":
        attrs.update(nvml_peak_gib=nvml, torch_peak_gib=torch_peak)
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=optuna.trial.TrialState.COMPLETE, value=None, values=[1.0, nvml],
        datetime_start=T0 + datetime.timedelta(seconds=number), datetime_complete=T0, params={}, distributions={},
        user_attrs=attrs, system_attrs={}, intermediate_values={},
    )


def test_age_counts_a_workers_trained_trials_and_restarts_after_a_replaced_child():
    trials = [
        _trial(0, "a", "complete"),
        _trial(1, "b", "complete"),
        _trial(2, "a", "predicted_over_ceiling"),  # never reached the child: the age does not move
        _trial(3, "a", "complete"),
        _trial(4, "a", "vram_ceiling"),  # trained, then the child was replaced
        _trial(5, "a", "complete"),
        _trial(6, "b", "complete"),
    ]
    ages = {t.number: age for age, t in child_age.ages_of(trials)}
    assert ages == {0: 0, 1: 0, 3: 1, 5: 0, 6: 1}


def test_the_table_divides_each_trials_peak_by_its_own_estimate():
    trials = [
        _trial(0, "a", "complete", nvml=2.0, torch_peak=1.0, pred=2.0),
        _trial(1, "a", "complete", nvml=3.0, torch_peak=1.5, pred=2.0),
    ]
    rows = child_age.table(trials)
    assert [(r["age"], r["n"]) for r in rows] == [(0, 1), (1, 1)]
    assert rows[0]["median_nvml_over_predicted"] == 1.0 and rows[1]["median_nvml_over_predicted"] == 1.5
    assert rows[1]["median_torch_over_predicted"] == 0.75 and rows[1]["median_outside_allocator_gib"] == 1.5


def test_the_committed_8gb_study_shows_the_compiled_childs_growth(tmp_path):
    """The figure bench/results/child_age.json holds, recomputed from the committed databases: in the compiled
    8 GiB study NVML / estimate rises with the child's age; the eager TPE study's stays within 2%."""
    out = tmp_path / "child_age.json"
    subprocess.run([sys.executable, "bench/child_age.py", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    fresh = json.loads(out.read_text())
    committed = json.loads((ROOT / "bench/results/child_age.json").read_text())
    assert fresh == committed
    by_study = {s["study"]: s["rows"] for s in fresh["studies"]}
    compiled = [r["median_nvml_over_predicted"] for r in by_study["phase1_8gb"]]
    assert compiled == sorted(compiled) and compiled[-1] / compiled[0] > 1.1
    eager = [r["median_nvml_over_predicted"] for r in by_study["s_tpe30"]]
    assert max(eager) / min(eager) < 1.02
