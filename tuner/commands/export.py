"""`tuner export --study NAME --max-vram-gib X --out FILE`: the lowest-PPL feasible Pareto trial within X GiB,
written as a preset (full Phase1Config + provenance) that `tuner train --preset FILE` rebuilds. The provenance
carries the study's data source (`data`, model.data.DataSource.to_dict()), budget (`train_tokens`,
`eval_tokens`) and training step (`step_mode`: the trial's recorded one, else the study's `training.step`), so
training the preset with no other flag repeats the trial's run."""

from __future__ import annotations

import argparse
from typing import Any

from tuner.commands import float_above


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser("export", help="write the best feasible Pareto trial under a VRAM budget as a preset")
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument(
        "--max-vram-gib", required=True, type=float_above(0), metavar="X", help="VRAM budget in GiB (2^30 bytes)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="preset YAML to write (never a folder or device; a symlink is followed and its target replaced)",
    )
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    return p


def run(args: argparse.Namespace) -> int:
    from model.config import Phase1Config
    from tuner.analysis.pareto import export_choice, metric_value, pareto_front
    from tuner.errors import TunerError
    from tuner.fileio import output_file
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import load_study, study_spec
    from tuner.storage.trial_attrs import trial_attr
    from tuner.study.preset import write_preset

    if not args.max_vram_gib > 0:
        raise TunerError(f"--max-vram-gib: {args.max_vram_gib} must be > 0 (GiB)")
    # a folder or device is refused before storage is read; an existing file when writing (no --force), so that a
    # budget nothing fits is reported as such even when the file of an earlier export is there
    output_file(args.out, force=True)
    _, storage = storage_from_flag(args.storage, must_exist=True)
    study = load_study(args.study, storage)
    names = study.metric_names or []
    if "val_ppl" not in names:
        raise TunerError(
            f"study {args.study}: val_ppl is not an objective (objectives: {names}); export picks the "
            "lowest val_ppl, so it needs a study with that objective"
        )
    trials = study.get_trials(deepcopy=False)
    directions = [d.name.lower() for d in study.directions]
    trial = export_choice(trials, names, directions, args.max_vram_gib)
    if trial is None:
        front = pareto_front(trials, directions)
        vrams = [(metric_value(t, "peak_vram_gib", names), t.number) for t in front]
        vrams = [v for v in vrams if v[0] is not None]
        hint = (
            f"the front's smallest peak is {min(vrams)[0]:.3f} GiB (trial {min(vrams)[1]}); raise --max-vram-gib"
            if vrams
            else "no feasible trial has completed yet; run more trials"
        )
        raise TunerError(
            f"study {args.study}: no feasible Pareto trial with peak_vram_gib <= {args.max_vram_gib} GiB; {hint}"
        )
    spec = study_spec(study)
    stored = trial_attr(trial, "config")
    if isinstance(stored, dict):
        config = Phase1Config.from_dict(stored, where=f"trial {trial.number} config")
    else:
        if spec is None:
            raise TunerError(
                f"trial {trial.number} has no `config` user attr and the study no stored spec; "
                "it was not made by tuner and cannot be exported"
            )
        config = spec.build_config(trial.params)
    config = config.replace(target_vram_gb=float(args.max_vram_gib))  # the budget this preset is promised to fit
    ppl = metric_value(trial, "val_ppl", names)
    vram = metric_value(trial, "peak_vram_gib", names)
    if ppl is None or vram is None:  # export_choice only returns trials with both
        raise TunerError(f"trial {trial.number} lacks val_ppl or peak_vram_gib; it cannot be exported")
    # What the trial was trained on, so `tuner train --preset FILE` reproduces it with no other flag.
    reproduce: dict[str, Any] = {}
    if spec is not None:
        reproduce = {
            "data": spec.data.to_dict(),
            "train_tokens": int(spec.budget.train_tokens),
            "eval_tokens": int(spec.budget.eval_tokens),
        }
    step = trial.user_attrs.get("step_mode") or (spec.training.step.value if spec is not None else None)
    if step is not None:  # a trial from before step modes, with no stored spec, says nothing: train's default
        reproduce["step_mode"] = step
    path = write_preset(
        args.out,
        config,
        study=args.study,
        trial=trial.number,
        val_ppl=ppl,
        peak_vram_gib=vram,
        device=trial.user_attrs.get("device"),
        peak_vram_kind=trial.user_attrs.get("peak_vram_kind"),
        force=args.force,
        **reproduce,
    )
    print(
        f"wrote {path}: trial {trial.number}, val_ppl {ppl:.4g}, peak_vram_gib {vram:.3f} "
        f"(budget {args.max_vram_gib} GiB)"
    )
    return 0
