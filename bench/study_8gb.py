"""The 8 GiB study on the H100, exported and analysed from its storage: every trial in compact form plus a summary
(counts, the feasible front beside the dense reference and the guide's presets, ceiling enforcement, the memory
estimate against NVML under the step the study trained with, and the exported presets' reproduction). No GPU.

    python bench/study_8gb.py --storage sqlite:///bench/results/study_8gb/study_8gb.db --study phase1_8gb \\
        --out bench/results --presets bench/results/study_8gb/presets/train_*.json \\
        --preset-files bench/results/study_8gb/presets/preset_*.yaml \\
        --logs bench/results/study_8gb/launch.log bench/results/study_8gb/launch2.log

Memory is in GiB (2^30 bytes); relative errors are measured / predicted - 1 (positive: measured above)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages before anything in bench/

from bench._common import write_json  # noqa: E402
from bench.study_8gb_memory import (  # noqa: E402
    ceiling_enforcement,
    estimator_errors,
    finding,
    refusals,
    rel_diff,
    trained_phase1,
    window_of,
)
from tuner.analysis.pareto import pareto_front  # noqa: E402
from tuner.storage.trial_attrs import is_reference, trial_attr  # noqa: E402

PPL_TARGET = 0.03  # a preset reproduces when its PPL is within 3% of the study's ...
NVML_TARGET = 0.05  # ... and its NVML peak within 5%
_WORKER = re.compile(r"\bvm:\d+:gpu\d+\b")
_FINISHED = re.compile(r"launch: (\d+) trials finished in (\d+) s by (\d+) worker")


# --- logs: which launch window each trial ran in ---------------------------------------------------------------------
def parse_logs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """One entry per launch log, in the order given (window 1, 2, ...): {"window", "log", "workers" (the
    vm:PID:gpuN ids that ran there), "n_workers", "finished", "wall_s"} (the last two from launch's closing line,
    None when the log has none)."""
    out = []
    for i, p in enumerate(paths, 1):
        text = Path(p).read_text(errors="replace")
        m = _FINISHED.search(text)
        out.append(
            {
                "window": i,
                "log": Path(p).name,
                "workers": sorted(set(_WORKER.findall(text))),
                "n_workers": int(m.group(3)) if m else None,
                "finished": int(m.group(1)) if m else None,
                "wall_s": int(m.group(2)) if m else None,
            }
        )
    return out


# --- every trial -----------------------------------------------------------------------------------------------------
def trial_record(t: Any, windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A trial as stored, compactly: the summary's inputs and the learning curve as [[tokens, val_ppl], ...]."""
    u = t.user_attrs
    curve = [[int(p["tokens"]), float(p["val_ppl"])] for p in (trial_attr(t, "curve") or []) if "val_ppl" in p]
    return {
        "number": t.number,
        "state": t.state.name,
        "window": window_of(t, windows),
        "reference": u.get("reference"),
        "preset": u.get("preset"),
        "params": dict(t.params),
        "values": list(t.values) if t.values is not None else None,
        **{
            k: u.get(k)
            for k in (
                "end_reason",
                "nvml_peak_gib",
                "predicted_peak_gib",
                "gpu_busy_frac",
                "trial_wall_s",
                "step_mode",
                "estimate_kind",
                "ceiling_detected",
                "ceiling_stop_s",
            )
        },
        "curve": curve,
    }


def counts(trials: Sequence[Any], need_trained: int = 60) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    by_state: dict[str, int] = {}
    for t in trials:
        r = str(t.user_attrs.get("end_reason"))
        by_reason[r] = by_reason.get(r, 0) + 1
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    phase1 = trained_phase1(trials)
    n = len(phase1)
    return {
        "trials": len(trials),
        "by_state": by_state,
        "by_end_reason": by_reason,
        "reference_trials": sum(1 for t in trials if is_reference(t)),
        "trained_phase1": n,
        "trained_phase1_complete": sum(1 for t in phase1 if t.user_attrs.get("end_reason") == "complete"),
        "trained_phase1_ceiling_stopped": sum(1 for t in phase1 if t.user_attrs.get("end_reason") == "vram_ceiling"),
        "refused_by_estimate": by_reason.get("predicted_over_ceiling", 0),
        "interrupted": by_reason.get("interrupted", 0),
        "waiting": by_state.get("WAITING", 0),
        "need_trained": need_trained,
        "trained_check": n >= need_trained,
    }


# --- the front -------------------------------------------------------------------------------------------------------
def front(trials: Sequence[Any], directions: Sequence[Any], builtin_runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pareto trials of (val_ppl, peak GiB) among feasible Phase 1 trials (tuner.analysis.pareto), with the labelled
    points beside it: the dense reference, the 8gb preset (the study's enqueued trial, user attr preset) and the
    built-in presets trained outside the study (`builtin_runs`: name -> `tuner train --json` line)."""
    pts = [
        {"label": f"trial {t.number}", "trial": t.number, "val_ppl": t.values[0], "nvml_peak_gib": t.values[1]}
        for t in pareto_front(trials, directions)
    ]
    others: list[dict[str, Any]] = []
    for t in trials:
        if t.values is None or t.state.name != "COMPLETE":
            continue
        if is_reference(t):
            label = f"dense reference ({t.user_attrs['reference']})"
        elif t.user_attrs.get("preset"):
            label = f"{t.user_attrs['preset']} preset (in the study)"
        else:
            continue
        others.append(
            {
                "label": label,
                "trial": t.number,
                "val_ppl": t.values[0],
                "nvml_peak_gib": t.values[1],
                "end_reason": t.user_attrs.get("end_reason"),
            }
        )
    for name, run in sorted(builtin_runs.items()):
        others.append(
            {
                "label": f"{name} preset (tuner train, outside the study)",
                "trial": None,
                "val_ppl": run["val_ppl"],
                "nvml_peak_gib": run["peak_vram_gib"],
                "step_mode": run.get("step_mode"),
                "tokens_per_s_note": "trained 3 at once on one GPU: shared-GPU tokens_per_s",
            }
        )
    best = min(pts, key=lambda p: p["val_ppl"]) if pts else None
    return {"pareto": pts, "points": others, "best_val_ppl": best}


# --- the presets -----------------------------------------------------------------------------------------------------
def reproduction(runs: dict[str, dict[str, Any]], preset_files: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each exported preset's study figures (its provenance) against `tuner train --preset` of it: relative
    differences and whether the targets held. `runs` and `preset_files` are keyed by the preset file's name."""
    out = []
    for name, run in sorted(runs.items()):
        prov = (preset_files.get(name) or {}).get("provenance")
        if not prov:
            continue
        ppl = rel_diff(run["val_ppl"], prov["val_ppl"])
        gib = rel_diff(run["peak_vram_gib"], prov["peak_vram_gib"])
        out.append(
            {
                "preset": name,
                "study": prov.get("study"),
                "trial": prov.get("trial"),
                "budget_gib": run.get("ceiling_gib"),
                "study_val_ppl": prov["val_ppl"],
                "study_nvml_gib": prov["peak_vram_gib"],
                "reproduced_val_ppl": run["val_ppl"],
                "reproduced_nvml_gib": run["peak_vram_gib"],
                "ppl_rel_diff": ppl,
                "nvml_rel_diff": gib,
                "ppl_target": PPL_TARGET,
                "nvml_target": NVML_TARGET,
                "ppl_held": abs(ppl) <= PPL_TARGET,
                "nvml_held": abs(gib) <= NVML_TARGET,
                "step_mode": run.get("step_mode"),
            }
        )
    return out


def load_runs(paths: Sequence[Path]) -> tuple[dict[str, dict], dict[str, dict]]:
    """`tuner train --json` files (last JSON line each) split into built-in presets (name -> run) and exported
    preset files (file name -> run)."""
    builtin, exported = {}, {}
    for p in paths:
        run = json.loads(Path(p).read_text().strip().splitlines()[-1])
        preset = str(run.get("preset", ""))
        if preset.startswith("built-in "):
            builtin[preset.removeprefix("built-in ")] = run
        else:
            exported[Path(preset).name] = run
    return builtin, exported


def summarise(study: Any, runs: Sequence[Path], preset_files: Sequence[Path], logs: Sequence[Path]) -> dict:
    import yaml

    trials = study.get_trials(deepcopy=False)
    ceiling = float(study.user_attrs["vram_ceiling_gib"])
    windows = parse_logs(logs)
    builtin, exported = load_runs(runs)
    presets = {Path(p).name: yaml.safe_load(Path(p).read_text()) for p in preset_files}
    est = estimator_errors(trials)
    summary = {
        "study": study.study_name,
        "ceiling_gib": ceiling,
        "windows": [{k: v for k, v in w.items() if k != "workers"} for w in windows],
        "counts": counts(trials),
        "front": front(trials, study.directions, builtin),
        "ceiling": ceiling_enforcement(trials, ceiling, windows),
        "refusals": refusals(trials, ceiling),
        "estimator": est,
        "estimator_finding": finding(est["by_param"]),
        "reproduction": reproduction(exported, presets),
    }
    return {"summary": summary, "trials": [trial_record(t, windows) for t in sorted(trials, key=lambda t: t.number)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", default="phase1_8gb")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--presets", type=Path, nargs="*", default=[], help="`tuner train --json` outputs")
    ap.add_argument("--preset-files", type=Path, nargs="*", default=[], help="preset YAMLs written by tuner export")
    ap.add_argument("--logs", type=Path, nargs="*", default=[], help="launch logs, window 1 first")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    data = summarise(study, args.presets, args.preset_files, args.logs)
    path = write_json(args.out / "study_8gb.json", data)
    print(json.dumps({k: data["summary"][k] for k in ("counts", "reproduction")}, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
