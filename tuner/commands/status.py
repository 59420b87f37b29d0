"""`tuner status --study NAME [--json | --watch]`: trials by state and end reason, workers (alive, stale or
stopped, with their running trial and step), best feasible, hypervolume, and the reference (baseline) trial beside
the best feasible Phase 1 trial (key `reference`, null without one).

    tuner status --study quickstart              # one snapshot
    tuner status --study quickstart --watch      # a table refreshed every 2 s until Ctrl-C (exit 130)

Workers: `alive` when seen within --alive-within-s (a heartbeat of its running trial, or a trial it started or
finished), `stopped` when it recorded a clean exit (budget spent, or SIGTERM/Ctrl-C) and runs nothing, else `stale`
(killed or lost, or waiting that long on the other workers' trials).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_ALIVE_WITHIN_S = 120.0  # the default heartbeat grace period: after it a silent trial is failed as stale


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "status",
        help="a study's progress: states, end reasons, workers, best, hypervolume (--watch: live)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", action="store_true", help="a live table, refreshed every --interval s; Ctrl-C exits")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="--watch refresh period, s (default 2)")
    p.add_argument(
        "--alive-within-s",
        type=float,
        default=DEFAULT_ALIVE_WITHIN_S,
        metavar="S",
        help="a worker seen (heartbeat, trial start or end) within S seconds is alive (default 120)",
    )
    return p


def summarize(study: Any, storage: Any, alive_within_s: float = DEFAULT_ALIVE_WITHIN_S) -> dict[str, Any]:
    from tuner.analysis.pareto import status_summary
    from tuner.analysis.reference import reference_summary
    from tuner.storage.studies import heartbeat_ages_s, study_spec
    from tuner.storage.workers import worker_exits

    spec = study_spec(study)
    trials = study.get_trials(deepcopy=False)
    model = spec.build_config({}) if spec is not None else None
    summary = status_summary(
        trials,
        study.metric_names or [f"objective{i}" for i in range(len(study.directions))],
        [d.name.lower() for d in study.directions],
        vocab_size=model.vocab_size if model else None,
        ceiling_gib=spec.vram_ceiling_gib if spec else None,
        heartbeat_age_s=heartbeat_ages_s(storage, study),
        alive_within_s=alive_within_s,
        exits=worker_exits(storage, study),
    )
    summary["reference"] = reference_summary(trials, study.metric_names or [])
    summary["study"] = study.study_name
    summary["vram_ceiling_gib"] = spec.vram_ceiling_gib if spec else None
    summary["metric_names"] = study.metric_names
    return summary


def run(args: argparse.Namespace) -> int:
    from tuner.errors import TunerError
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import load_study
    from tuner.storage.urls import mask_url

    if args.watch and args.json:
        raise TunerError("status: --watch and --json: choose one (--json prints one snapshot)")
    if not args.interval > 0:
        raise TunerError(f"--interval: {args.interval} must be > 0 seconds")
    url, storage = storage_from_flag(args.storage, must_exist=True)
    study = load_study(args.study, storage)
    if args.watch:
        return watch(study, storage, mask_url(url), args.interval, args.alive_within_s)
    s = summarize(study, storage, args.alive_within_s)
    if args.json:
        print(json.dumps(s, sort_keys=True, default=str))
        return 0
    for line in text_lines(s, mask_url(url)):
        print(line)
    return 0


def text_lines(s: dict[str, Any], url: str) -> list[str]:
    """The plain-text status (one snapshot)."""
    from tuner.analysis.reference import describe_reference

    lines = [f"study {s['study']} in {url}  (ceiling {s['vram_ceiling_gib']} GiB)"]
    lines.append(f"trials: {s['n_trials']}  " + "  ".join(f"{k.lower()} {v}" for k, v in s["by_state"].items()))
    if s["by_end_reason"]:
        lines.append("end reasons: " + "  ".join(f"{k} {v}" for k, v in s["by_end_reason"].items()))
    lines.append(
        f"feasible {s['feasible']}  infeasible (over the ceiling) {s['infeasible']}  "
        f"pareto front {s['pareto_size']}  hypervolume {_fmt(s['hypervolume'])}"
    )
    for metric, best in s["best_feasible"].items():
        lines.append(
            f"best feasible {metric}: " + (f"{best['value']:.4g} (trial {best['trial']})" if best else "none yet")
        )
    lines += describe_reference(s["reference"])
    counts = {state: sum(1 for w in s["workers"] if w["state"] == state) for state in ("alive", "stale", "stopped")}
    lines.append(f"workers: {len(s['workers'])} seen, " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for w in s["workers"]:
        lines.append(f"  {w['worker']}: {w['state']}, last seen {_fmt(w['last_seen_s'])} s ago, {w['trials']} trials"
                     + _running(w) + _exit(w))  # fmt: skip
    return lines


def _running(w: dict[str, Any]) -> str:
    if not w["running"]:
        return ""
    parts = []
    for number in w["running"]:
        p = w["progress"].get(number) or {}
        parts.append(f"trial {number}" + (f" step {p['step']} ({p['tokens']} tokens)" if p.get("step") else ""))
    return ", running " + ", ".join(parts)


def _exit(w: dict[str, Any]) -> str:
    e = w.get("exit")
    return f", exited ({e['reason']}) at {e['at']}" if e and w["state"] == "stopped" else ""


def table(s: dict[str, Any], url: str) -> Any:
    """The --watch renderable: a summary grid over a workers table."""
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]study[/]", f"{s['study']} in {url} (ceiling {s['vram_ceiling_gib']} GiB)")
    head.add_row(
        "[bold]trials[/]", f"{s['n_trials']}: " + ", ".join(f"{k.lower()} {v}" for k, v in s["by_state"].items())
    )
    if s["by_end_reason"]:
        head.add_row("[bold]end reasons[/]", ", ".join(f"{k} {v}" for k, v in s["by_end_reason"].items()))
    head.add_row(
        "[bold]front[/]",
        f"feasible {s['feasible']}, infeasible {s['infeasible']}, pareto {s['pareto_size']}, "
        f"hypervolume {_fmt(s['hypervolume'])}",
    )
    for metric, best in s["best_feasible"].items():
        head.add_row(f"[bold]best {metric}[/]", f"{best['value']:.4g} (trial {best['trial']})" if best else "none yet")
    workers = Table(title="workers", expand=False)
    for col in ("worker", "state", "trial", "step", "tokens", "loss", "last seen (s)", "trials"):
        workers.add_column(col)
    colour = {"alive": "green", "stale": "yellow", "stopped": "dim"}
    for w in s["workers"]:
        number = w["running"][0] if w["running"] else None
        p = w["progress"].get(number) or {} if number is not None else {}
        loss = p.get("loss")
        workers.add_row(
            w["worker"],
            f"[{colour[w['state']]}]{w['state']}[/]",
            "-" if number is None else str(number),
            str(p.get("step", "-")),
            str(p.get("tokens", "-")),
            "-" if loss is None else f"{loss:.3f}",
            _fmt(w["last_seen_s"]),
            str(w["trials"]),
        )
    return Group(head, workers)


def watch(study: Any, storage: Any, url: str, interval_s: float, alive_within_s: float) -> int:
    """Refresh the table every `interval_s` until Ctrl-C; returns 130 then (the live display closed cleanly)."""
    import time

    from rich.console import Console
    from rich.live import Live

    console = Console(soft_wrap=True)
    try:
        with Live(table(summarize(study, storage, alive_within_s), url), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(table(summarize(study, storage, alive_within_s), url), refresh=True)
    except KeyboardInterrupt:
        return 130


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
