"""`tuner export --study NAME --max-vram-gib X --out FILE`: the lowest-PPL feasible Pareto trial within X GiB,
written as a preset that rebuilds the trial's config and names the study's data and budget."""

from __future__ import annotations

import pytest

from tuner.cli import main
from tuner.study.preset import load_preset


def _export(results_study, tmp_path, max_vram):
    out = tmp_path / "presets" / "best.yaml"
    argv = ["export", "--study", "results", "--storage", results_study.url, "--max-vram-gib", str(max_vram)]
    return main([*argv, "--out", str(out)]), out


@pytest.mark.parametrize("max_vram, trial", [(8.0, 1), (5.0, 0), (100.0, 1)])  # trial 3 (PPL 150) is infeasible
def test_the_lowest_ppl_front_trial_within_the_budget(results_study, tmp_path, capsys, max_vram, trial):
    code, out = _export(results_study, tmp_path, max_vram)
    assert code == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: trial {trial}, val_ppl ")
    preset = load_preset(out)
    stored = results_study.study.trials[trial].user_attrs["config"]
    assert preset.config.to_dict() == {**stored, "target_vram_gb": max_vram}  # the budget it is promised to fit
    prov = preset.provenance
    assert (prov["study"], prov["trial"], prov["device"]) == ("results", trial, "cpu")
    assert prov["data"]["kind"] == "stdlib" and prov["train_tokens"] == 1000 and prov["eval_tokens"] == 500
    assert prov["step_mode"] == "eager"  # the study's default step: its trials recorded none


def test_a_budget_below_the_front_names_the_smallest_peak(results_study, tmp_path, capsys):
    code, out = _export(results_study, tmp_path, 1.5)
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "no feasible Pareto trial with peak_vram_gib <= 1.5 GiB" in err
    assert "the front's smallest peak is 2.000 GiB (trial 0); raise --max-vram-gib" in err


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_a_non_positive_budget_is_refused(results_study, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as info:  # refused by the parser, before the storage is opened
        _export(results_study, tmp_path, bad)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument --max-vram-gib: {bad} is out of range (give a number > 0)" in err, err


def test_a_study_without_val_ppl_cannot_export(tmp_path, capsys):
    from tests.tuner.tiny import mutate, write

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_file = write(tmp_path, mutate(objectives=[{"metric": "peak_vram_gib", "direction": "minimize"}]))
    assert main(["create", str(study_file), "--storage", url]) == 0
    argv = ["export", "--study", "unit", "--storage", url, "--max-vram-gib", "8", "--out", str(tmp_path / "p.yaml")]
    assert main(argv) == 2
    assert "val_ppl is not an objective" in capsys.readouterr().err


@pytest.mark.parametrize("recorded, exported", [("compile_graphs", "compile_graphs"), (None, "compile")])
def test_the_step_is_the_trials_recorded_one_else_the_studys_and_train_reads_it_back(
    tmp_path, capsys, recorded, exported
):
    import argparse

    import optuna

    from tests.tuner.tiny import mutate, write
    from tuner.commands.train import _settings
    from tuner.storage.connect import open_storage
    from tuner.storage.constraints import set_trial_constraint
    from tuner.storage.studies import create_or_load_study
    from tuner.study.loader import load_spec
    from tuner.study.spec import StepMode

    spec = load_spec(write(tmp_path, mutate(name="stepped", training={"step": "compile"})))
    url = f"sqlite:///{tmp_path / 'stepped.db'}"
    study = create_or_load_study(spec, open_storage(url))
    params = {"ar_ssm_max_rank": 16, "ar_ssm_min_rank": 4, "ar_ssm_l1_regularization": 1e-3,
              "use_gradient_checkpointing": True}  # fmt: skip
    attrs = {"end_reason": "complete", "config": spec.build_config(params).to_dict(), "device": "cuda"}
    if recorded is not None:
        attrs["step_mode"] = recorded
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE,
        values=[200.0, 3.0],
        params=params,
        distributions={p.name: p.distribution() for p in spec.space.params if p.name in params},
        user_attrs=attrs,
    )
    set_trial_constraint(trial, 3.0 - spec.vram_ceiling_gib)
    study.add_trial(trial)
    out = tmp_path / "best.yaml"
    assert main(["export", "--study", "stepped", "--storage", url, "--max-vram-gib", "8", "--out", str(out)]) == 0
    preset = load_preset(out)
    assert preset.provenance["step_mode"] == exported
    args = argparse.Namespace(data=None, train_tokens=None, eval_tokens=None, study=None, step=None)
    assert _settings(args, preset)[4] is StepMode(exported)
