"""bench/study_8gb.py and bench/study_8gb_memory.py on a tiny real study (SQLite, Optuna's public API): the trial
records, the counts, the front with its labelled points, the ceiling quarters, the refusals, the estimate's errors
and the presets' reproduction. The trial records below are test inputs written to look like a worker's, not
measurements."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import study_8gb, study_8gb_memory  # noqa: E402

CEILING = 8.0
W1, W2 = "vm:1:gpu0", "vm:2:gpu0"  # one worker per launch window


def _trial(number_hint, reason, *, ppl=None, nvml=None, pred=None, worker=W1, ckpt=True, state="COMPLETE", **extra):
    """A FrozenTrial as a worker leaves one: values (val_ppl, peak GiB), its constraint (peak - ceiling), the user
    attrs the summary reads, and a two-point curve."""
    attrs = {"end_reason": reason, "worker": worker, "step_mode": "compile_graphs", **extra}
    if nvml is not None:
        attrs["nvml_peak_gib"] = nvml
    if pred is not None:
        attrs["predicted_peak_gib"] = pred
    if ppl is not None and reason == "complete":
        attrs["curve"] = [{"tokens": 100, "val_ppl": 2 * ppl}, {"tokens": 200, "val_ppl": ppl}]
    peak = nvml if nvml is not None else pred
    done = state == "COMPLETE"
    return optuna.trial.create_trial(
        state=getattr(optuna.trial.TrialState, state),
        values=[ppl if ppl is not None else 512.0, peak] if done else None,
        params={"use_gradient_checkpointing": ckpt},
        distributions={"use_gradient_checkpointing": optuna.distributions.CategoricalDistribution([True, False])},
        user_attrs=attrs,
        system_attrs={"constraints": [peak - CEILING]} if done else {},
    )


@pytest.fixture
def study(tmp_path):
    s = optuna.create_study(
        study_name="unit8", storage=f"sqlite:///{tmp_path / 's.db'}", directions=["minimize", "minimize"]
    )
    s.set_user_attr("vram_ceiling_gib", CEILING)
    rows = [
        _trial(0, "complete", ppl=300.0, nvml=3.0, pred=4.0, preset="8gb", trial_wall_s=100.0),  # on the front
        _trial(1, "vram_ceiling", ppl=150.0, nvml=12.0, reference="dense", ceiling_enforced=False, trial_wall_s=90.0),
        _trial(2, "complete", ppl=200.0, nvml=5.0, pred=4.0, trial_wall_s=80.0),  # on the front; measured +25%
        _trial(3, "complete", ppl=250.0, nvml=6.0, pred=7.5, ckpt=False, trial_wall_s=70.0),  # dominated; -20%
        _trial(4, "predicted_over_ceiling", pred=9.0, ckpt=False, phase_s={"estimate": 0.25}),
        _trial(5, "predicted_over_ceiling", pred=12.0, ckpt=False, phase_s={"estimate": 0.25}),
        _trial(6, "complete", ppl=220.0, nvml=4.0, pred=4.0, worker=W2, trial_wall_s=60.0),  # on the front
        _trial(7, "vram_ceiling", ppl=512.0, nvml=8.5, pred=8.2, worker=W2, ceiling_stop_s=0.5, trial_wall_s=20.0),
        _trial(8, "interrupted", nvml=5.0, pred=4.0, worker=W2, state="FAIL"),
    ]
    for t in rows:
        s.add_trial(t)
    return s


@pytest.fixture
def logs(tmp_path):
    a, b = tmp_path / "launch.log", tmp_path / "launch2.log"
    a.write_text(f"status w0 gpu0  {W1}  trial 0\nlaunch: 6 trials finished in 500 s by 1 worker(s); 4 trained\n")
    b.write_text(f"status w0 gpu0  {W2}  trial 6\n")
    return [a, b]


def test_counts_trained_and_refused(study):
    c = study_8gb.counts(study.get_trials(), need_trained=5)
    assert c["trained_phase1"] == 5  # 0, 2, 3, 6 complete + 7 stopped at the ceiling; the reference is not Phase 1
    assert (c["trained_phase1_complete"], c["trained_phase1_ceiling_stopped"]) == (4, 1)
    assert (c["refused_by_estimate"], c["interrupted"], c["reference_trials"]) == (2, 1, 1)
    assert c["trained_check"] is True
    assert study_8gb.counts(study.get_trials(), need_trained=6)["trained_check"] is False


def test_logs_place_each_trial_in_its_window(study, logs):
    windows = study_8gb.parse_logs(logs)
    assert [(w["window"], w["workers"], w["finished"], w["wall_s"]) for w in windows] == [
        (1, [W1], 6, 500),
        (2, [W2], None, None),
    ]
    trials = study.get_trials()
    assert [study_8gb_memory.window_of(t, windows) for t in trials] == [1, 1, 1, 1, 1, 1, 2, 2, 2]


def test_front_has_the_pareto_trials_and_labelled_points(study):
    builtin = {"24gb": {"val_ppl": 170.0, "peak_vram_gib": 8.4, "step_mode": "compile_graphs"}}
    f = study_8gb.front(study.get_trials(), study.directions, builtin)
    # (300, 3.0), (200, 5.0) and (220, 4.0) are mutually non-dominated; (250, 6.0) is dominated by (200, 5.0).
    assert [p["trial"] for p in f["pareto"]] == [0, 2, 6]
    assert f["best_val_ppl"]["trial"] == 2
    labels = {p["label"]: (p["val_ppl"], p["nvml_peak_gib"]) for p in f["points"]}
    assert labels["dense reference (dense)"] == (150.0, 12.0)
    assert labels["8gb preset (in the study)"] == (300.0, 3.0)
    assert labels["24gb preset (tuner train, outside the study)"] == (170.0, 8.4)


def test_ceiling_crossings_and_quarters(study, logs):
    c = study_8gb_memory.ceiling_enforcement(study.get_trials(), CEILING, study_8gb.parse_logs(logs))
    crossed = {r["trial"]: r for r in c["crossed"]}
    assert set(crossed) == {1, 7}
    assert crossed[7]["ceiling_stop_s"] == 0.5 and "no_stop_s_because" not in crossed[7]
    assert "reference runs to its end" in crossed[1]["no_stop_s_because"]
    assert "window 1" in crossed[1]["no_stop_s_because"]  # the attr first appears in window 2
    # Trained Phase 1 trials 0, 2, 3, 6, 7 in quarters of 5 // 4: [0], [2], [3], [6, 7]; only 7 is over.
    assert [q["n"] for q in c["quarters_of_trained"]] == [1, 1, 1, 2]
    assert [q["over"] for q in c["quarters_of_trained"]] == [0, 0, 0, 1]
    assert c["quarters_of_trained"][3]["share_over"] == pytest.approx(0.5)


def test_refusals_saved_time_is_the_median_trained_wall(study):
    r = study_8gb_memory.refusals(study.get_trials(), CEILING)
    assert [x["trial"] for x in r["refused"]] == [4, 5]
    assert r["median_trained_wall_s"] == pytest.approx(70.0)  # median of 100, 80, 70, 60, 20
    assert r["saved_worker_s"] == pytest.approx(140.0)
    assert r["refusal_cost_s"] == pytest.approx(0.5)
    m = r["maybe_needless"]  # basis: trial 3 alone (6.0 / 7.5 = 0.8); 9.0 x 0.8 = 7.2 fits, 12.0 x 0.8 does not
    assert m["ratio_min"] == pytest.approx(0.8) and m["n_basis"] == 1
    assert m["refused_under_ceiling_at_min_ratio"] == [4]


def test_estimator_errors_over_completed_phase1_trials(study):
    e = study_8gb_memory.estimator_errors(study.get_trials())
    assert e["n"] == 4  # 0, 2, 3, 6: relative errors -0.25, +0.25, -0.2, 0.0
    assert e["rel_median"] == pytest.approx(-0.1)
    assert e["rel_p90"] == pytest.approx(0.175)  # sorted -0.25, -0.2, 0.0, 0.25: 0.7 of the way from 0.0 to 0.25
    assert e["n_measured_above"] == 1 and e["measured_above"][0]["trial"] == 2
    assert [x["trial"] for x in e["other_trials_measured_above"]] == [8, 7]  # by relative error: +25%, +3.7%
    rows = {r["value"]: r for r in e["by_param"]["use_gradient_checkpointing"]}
    assert (rows[True]["n"], rows[True]["above"], rows[False]["above"]) == (3, 1, 0)
    text = study_8gb_memory.finding(e["by_param"], min_n=1)
    assert text[0].startswith("use_gradient_checkpointing=True: 1 of 3 measured above")
    assert text[1].startswith("use_gradient_checkpointing=False: 0 of 1")


def test_reproduction_targets():
    prov = {"provenance": {"study": "s", "trial": 3, "val_ppl": 100.0, "peak_vram_gib": 4.0}}
    runs = {"p.yaml": {"val_ppl": 102.0, "peak_vram_gib": 3.6, "ceiling_gib": 8.0}}
    (r,) = study_8gb.reproduction(runs, {"p.yaml": prov})
    assert r["ppl_rel_diff"] == pytest.approx(0.02) and r["ppl_held"] is True
    assert r["nvml_rel_diff"] == pytest.approx(-0.1) and r["nvml_held"] is False


def test_main_writes_every_trial_and_the_summary(study, logs, tmp_path):
    preset = tmp_path / "preset_8gib.yaml"
    preset.write_text(yaml.safe_dump({"provenance": {"study": "unit8", "trial": 2, "val_ppl": 200.0,
                                                     "peak_vram_gib": 5.0}}))  # fmt: skip
    runs = tmp_path / "train_preset.json"
    runs.write_text(json.dumps({"preset": f"gpu_in/{preset.name}", "val_ppl": 210.0, "peak_vram_gib": 5.1}) + "\n")
    builtin = tmp_path / "train_10gb.json"
    builtin.write_text(json.dumps({"preset": "built-in 10gb", "val_ppl": 190.0, "peak_vram_gib": 3.4}) + "\n")
    storage = f"sqlite:///{tmp_path / 's.db'}"  # the fixture's study
    out = tmp_path / "out"
    argv = ["--storage", storage, "--study", "unit8", "--out", str(out), "--presets", str(runs), str(builtin),
            "--preset-files", str(preset), "--logs", *map(str, logs)]  # fmt: skip
    assert study_8gb.main(argv) == 0
    data = json.loads((out / "study_8gb.json").read_text())
    assert [t["number"] for t in data["trials"]] == list(range(9))
    assert data["trials"][2]["curve"] == [[100, 400.0], [200, 200.0]]
    assert data["trials"][1]["reference"] == "dense"
    (rep,) = data["summary"]["reproduction"]
    assert rep["ppl_rel_diff"] == pytest.approx(0.05) and rep["ppl_held"] is False
    assert any(p["label"].startswith("10gb preset") for p in data["summary"]["front"]["points"])
