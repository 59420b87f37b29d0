"""`tuner report --study NAME --out DIR`: Pareto front (PNG + interactive HTML with plotly.min.js beside it), the
memory breakdown (estimated parts beside the measured peak), parameter importances per objective (JSON + chart),
learning curves of the Pareto and pruned trials with their power-law fits (tuner.analysis.report) and a markdown
summary tying them together (tuner.analysis.plots draws the figures)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser("report", help="write plots, importances and a markdown summary of a study")
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write into (created; an existing one must be empty)"
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR, replacing files of the same name")
    return p


def _phase1_only(study: Any) -> Any:
    """An in-memory copy of `study` without its reference trials, for Optuna's own plots (which would otherwise
    draw the reference as a Pareto trial)."""
    import optuna

    from tuner.storage.trial_attrs import is_reference

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the copy's "new study created" line is noise here
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if not is_reference(t)])
    return copy


def _importances(study: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Optuna's default evaluator (PED-ANOVA in Optuna 5), which ranks parameters for LOW target values: a
    maximised objective is negated."""
    import warnings

    import optuna

    out: dict[str, dict[str, Any]] = {}
    for i, (name, d) in enumerate(zip(names, study.directions)):
        sign = -1.0 if d.name == "MAXIMIZE" else 1.0
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                imp = optuna.importance.get_param_importances(study, target=_signed_value(i, sign))
        except (ValueError, RuntimeError) as exc:  # too few trials or no shared parameter: say so in the report
            out[name] = {"_unavailable": " ".join(str(exc).split())}
            continue
        too_few = [str(w.message) for w in caught if "too small" in str(w.message)]
        if not imp or too_few:  # equal or absent importances carry no information; say why instead
            out[name] = {"_unavailable": too_few[0] if too_few else "no completed trials yet"}
        else:
            out[name] = {k: float(v) for k, v in imp.items()}
    return out


def _signed_value(i: int, sign: float) -> Callable[[Any], float]:
    """Objective i of a trial, negated for a maximised objective (the evaluator ranks low values)."""
    return lambda t: sign * float(t.values[i])


def _pareto_html(study: Any, names: list[str], ceiling: float | None, out: Path) -> Path:
    """Optuna's interactive front of the Phase 1 trials, infeasible ones marked by their constraint, with the
    ceiling line. plotly.js (3.5 MB) is written once beside it as plotly.min.js (include_plotlyjs="directory"):
    the HTML stays small and still opens offline, with no CDN."""
    import optuna

    # Optuna 5 reads each trial's `constraints` system attr (tuner.storage.constraints) and draws the infeasible
    # ones apart, in grey; the copy keeps the system attrs.
    fig = optuna.visualization.plot_pareto_front(_phase1_only(study), target_names=names)
    if ceiling is not None and len(names) == 2 and "peak_vram_gib" in names:
        line = {"line_dash": "dash", "line_color": "red", "annotation_text": f"VRAM ceiling {ceiling:g} GiB"}
        if names[1] == "peak_vram_gib":
            fig.add_hline(y=float(ceiling), **line)
        else:
            fig.add_vline(x=float(ceiling), **line)
    path = out / "pareto_front.html"
    fig.write_html(path, include_plotlyjs="directory")
    return path


def run(args: argparse.Namespace) -> int:
    from tuner.analysis import plots
    from tuner.analysis.pareto import pareto_front, trial_row
    from tuner.commands.status import summarize
    from tuner.fileio import output_dir
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import load_study
    from tuner.storage.urls import mask_url

    out = Path(args.out)
    output_dir(out, force=args.force)  # before storage: a refused --out costs nothing
    url, storage = storage_from_flag(args.storage, must_exist=True)
    study = load_study(args.study, storage)
    trials = study.get_trials(deepcopy=False)
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    directions = [d.name.lower() for d in study.directions]
    front = pareto_front(trials, directions)
    summary = summarize(study, storage)
    ceiling = summary["vram_ceiling_gib"]
    files = {
        "pareto_png": plots.save(
            plots.pareto_figure(trials, names, directions, front, ceiling), out / "pareto_front.png"
        )
    }
    if len(names) > 1 and any(t.state.name == "COMPLETE" for t in trials):
        files["pareto_html"] = _pareto_html(study, names, ceiling, out)
    memory = plots.memory_figure([t for t in trials if t.state.name == "COMPLETE"], names)
    if memory is not None:  # None: no trial recorded an estimate (a dense-only study, or an old one)
        files["memory_png"] = plots.save(memory, out / "memory_breakdown.png")
    importances = _importances(_phase1_only(study), names)  # the reference has no params to rank
    files["importances"] = out / "importances.json"
    files["importances"].write_text(json.dumps(importances, indent=2, sort_keys=True))
    files["importances_png"] = plots.save(plots.importance_figure(importances), out / "importances.png")
    from tuner.analysis.report import write_learning_curves

    # The feasible front (tuner.analysis.pareto), not the report's own unconstrained default: an over-ceiling trial
    # is never drawn as a Pareto trial.
    curves = write_learning_curves(study.get_trials(), out, pareto_numbers={t.number for t in front})
    if curves is not None:  # None: no trial recorded a curve (all pruned before training, or an old study)
        files["learning_curves"] = Path(curves)
    from tuner.analysis.dashboard_curves import publish_learning_curves

    publish_learning_curves(study)  # the same curves, for optuna-dashboard's study page
    (out / "pareto.json").write_text(json.dumps([trial_row(t, names) for t in front], indent=2, sort_keys=True))
    files["pareto_json"] = out / "pareto.json"
    md = _markdown(study.study_name, mask_url(url), summary, names, front, importances, files, out)
    files["summary"] = out / "summary.md"
    files["summary"].write_text(md)
    print(f"wrote {len(files)} files to {out}: " + ", ".join(sorted(p.name for p in files.values())))
    return 0


def _markdown(name: str, url: str, s: Any, names: Any, front: Any, importances: Any, files: Any, out: Path) -> str:
    from tuner.analysis.formatting import params_text
    from tuner.analysis.reference import describe_reference

    lines = [
        f"# Study `{name}`",
        "",
        f"Storage: `{url}`. VRAM ceiling: {s['vram_ceiling_gib']} GiB (2^30 bytes).",
        "",
        "## Trials",
        "",
        "| state | count |",
        "| --- | --- |",
    ]
    lines += [f"| {k.lower()} | {v} |" for k, v in s["by_state"].items()]
    lines += ["", "| end reason | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in s["by_end_reason"].items()]
    hv = s["hypervolume"]
    lines += [
        "",
        f"Feasible: {s['feasible']}; over the ceiling (infeasible): {s['infeasible']}; "
        f"hypervolume: {'n/a' if hv is None else f'{hv:.6g}'} (reference point {s['reference_point']}).",
        "",
    ]
    if s["reference"] is not None:
        lines += ["## Reference trial", "", *("- " + line.strip() for line in describe_reference(s["reference"])), ""]
        lines += ["Ratios are Phase 1 / reference; the reference is not part of the front or the hypervolume.", ""]
    lines += ["## Pareto front (feasible Phase 1 trials)", "", f"![Pareto front]({files['pareto_png'].name})", ""]
    if "pareto_html" in files:
        name = files["pareto_html"].name
        lines += [f"Interactive: [{name}]({name}) (needs plotly.min.js beside it)", ""]
    if front:
        lines += ["| trial | " + " | ".join(names) + " | params |", "| --- " * (len(names) + 2) + "|"]
        for t in front:
            lines.append(
                f"| {t.number} | " + " | ".join(f"{v:.4g}" for v in t.values) + f" | {params_text(t.params)} |"
            )
    else:
        lines.append("No feasible completed trial yet.")
    if "memory_png" in files:
        lines += ["", "## Memory", "", f"![memory breakdown]({files['memory_png'].name})"]
    lines += ["", "## Parameter importances (Optuna's default evaluator, PED-ANOVA, per objective)", ""]
    lines += [f"![importances]({files['importances_png'].name})", ""]
    for metric, imp in importances.items():
        if "_unavailable" in imp:
            lines.append(f"- {metric}: unavailable ({imp['_unavailable']})")
        else:
            lines.append(f"- {metric}: " + ", ".join(f"{k} {v:.3f}" for k, v in imp.items()))
    if "learning_curves" in files:
        rel = files["learning_curves"]
        rel = rel.relative_to(out) if rel.is_absolute() and out.resolve() in rel.resolve().parents else rel
        lines += ["", "## Learning curves", "", f"![learning curves]({rel})"]
    return "\n".join(lines) + "\n"
