"""A study on the real Postgres: two concurrent `tuner create` processes make one study with its presets queued
once; then status, pareto, export and report read back trials recorded through Optuna's own API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from tests.tuner.tiny import BASE
from tuner.cli import main
from tuner.storage.constraints import set_trial_constraint
from tuner.study.loader import load_spec
from tuner.study.preset import load_preset
from tuner.storage.trial_attrs import trial_attr

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_two_concurrent_creates_make_one_study(tmp_path, pg_url):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({**BASE, "enqueue_presets": ["8gb"]}))
    procs = [subprocess.Popen([sys.executable, "-m", "tuner.cli", "create", str(study_file), "--storage", pg_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    summaries = optuna.get_all_study_summaries(pg_url, include_best_trial=False)
    assert [s.study_name for s in summaries] == ["unit"]
    trials = optuna.load_study(study_name="unit", storage=pg_url).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "WAITING" and trials[0].user_attrs["preset"] == "8gb"


def _record(study, spec, ppl, vram, reason="complete", worker="host:1"):
    t = study.ask()
    params = spec.space.suggest(t)
    t.set_user_attr("config", spec.build_config(params).to_dict())
    t.set_user_attr("end_reason", reason)
    t.set_user_attr("worker", worker)
    t.set_user_attr("device", "cpu")
    t.set_user_attr("curve", [{"tokens": 100, "val_ppl": 2 * ppl}, {"tokens": 200, "val_ppl": ppl}])
    set_trial_constraint(t, vram - spec.vram_ceiling_gib)
    study.tell(t, [ppl, vram])
    return t.number


def test_status_pareto_export_report(tmp_path, pg_url, capsys):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    spec = load_spec(study_file)
    assert main(["create", str(study_file), "--storage", pg_url]) == 0
    study = optuna.load_study(study_name="unit", storage=pg_url)
    numbers = [_record(study, spec, p, v) for p, v in [(50.0, 1.0), (40.0, 3.0), (35.0, 6.0), (30.0, 7.0)]]
    over = _record(study, spec, 10.0, 9.5, reason="vram_ceiling", worker="host:2")
    pruned = study.ask()
    spec.space.suggest(pruned)
    pruned.set_user_attr("end_reason", "numerical_instability")
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    capsys.readouterr()

    assert main(["status", "--study", "unit", "--storage", pg_url, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["by_state"] == {"COMPLETE": 5, "PRUNED": 1}
    assert s["by_end_reason"] == {"complete": 4, "numerical_instability": 1, "vram_ceiling": 1}
    assert s["best_feasible"]["val_ppl"] == {"trial": numbers[3], "value": 30.0}  # not the infeasible 10.0
    assert s["infeasible"] == 1 and s["pareto_size"] == 4 and s["hypervolume"] > 0
    assert [w["worker"] for w in s["workers"]] == ["host:1", "host:2"] and all(w["alive"] for w in s["workers"])

    assert main(["status", "--study", "unit", "--storage", pg_url]) == 0
    text = capsys.readouterr().out
    assert "vram_ceiling 1" in text and "workers: 2 seen, 2 alive, 0 stale, 0 stopped" in text and "***" not in text

    assert main(["pareto", "--study", "unit", "--storage", pg_url, "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in front] == numbers and over not in [r["number"] for r in front]
    assert all(r["constraint_gib"] <= 0 for r in front)

    out = tmp_path / "best.yaml"
    assert main(["export", "--study", "unit", "--storage", pg_url, "--max-vram-gib", "5", "--out", str(out)]) == 0
    preset = load_preset(out)
    assert preset.provenance["trial"] == numbers[1] and preset.provenance["val_ppl"] == 40.0
    assert preset.provenance["peak_vram_gib"] == 3.0 and preset.provenance["study"] == "unit"
    trial = study.get_trials()[numbers[1]]
    assert preset.config.to_dict() == {**trial_attr(trial, "config"), "target_vram_gb": 5.0}
    capsys.readouterr()
    assert main(["export", "--study", "unit", "--storage", pg_url, "--max-vram-gib", "0.5", "--out",
                 str(out)]) == 2
    assert "smallest peak is 1.000 GiB" in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["report", "--study", "unit", "--storage", pg_url, "--out", str(report)]) == 0
    names = {p.name for p in report.iterdir()}
    assert {"pareto_front.png", "pareto_front.html", "importances.json", "summary.md", "pareto.json",
            "learning_curves.png"} <= names
    assert (report / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    imp = json.loads((report / "importances.json").read_text())
    assert set(imp) == {"val_ppl", "peak_vram_gib"}
    md = (report / "summary.md").read_text()
    assert "| vram_ceiling | 1 |" in md and "pareto_front.png" in md and "hypervolume" in md
    assert "learning_curves.png" in md
