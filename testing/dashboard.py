"""optuna-dashboard as a user sees it: a study with feasible, infeasible and pruned trials written the way the
tuner writes them, `tuner dashboard` started as a real process, and the rendered pages (JavaScript executed in
headless Chromium, testing/browser.py) read back into a typed `DashboardView`.

Shared by tests/integration/test_dashboard_browser.py (which compares the view with the seeded study) and
bench/dashboard_shot.py (which keeps a screenshot under bench/results/).

The seeded objective values are synthetic (chosen to give a known Pareto front), not measurements; the study
carries a user attribute saying so, visible on the dashboard.

What optuna-dashboard 0.21 draws (read in its bundle, optuna_dashboard/public/bundle.js):
- the Pareto-front plot (`#graph-pareto-front`) splits COMPLETE trials into traces by hover label: "Infeasible
  Trial" (any constraint > 0, the `constraints` system attr), "Best Trial" (feasible and non-dominated),
  "Feasible Trial" (feasible, dominated) and "Unselected Trial" (no values: pruned, failed);
- the timeline (`#graph-timeline`) has one legend entry per kind: Complete, Infeasible, Pruned, ...;
- intermediate values are drawn as a curve plot only for single-objective studies
  (`1===directions.length && has_intermediate_values`); for our two objectives the dashboard lists each trial's
  (step, value) pairs on the Trials (List) page, which is what `read_dashboard` reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.browser import Browser, free_port

REPO = Path(__file__).resolve().parents[1]

STUDY = {
    "name": "dashboard_demo",
    "objectives": [
        {"metric": "val_ppl", "direction": "minimize"},
        {"metric": "peak_vram_gib", "direction": "minimize"},
    ],
    "vram_ceiling_gib": 8,
    "sampler": {"name": "tpe", "seed": 0},
    "n_trials": 8,
    "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_seq": 64},
    "search_space": {
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True},
        "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "step": 8},
        "use_gradient_checkpointing": {"type": "categorical", "choices": [True, False]},
    },
    "data": {"source": "stdlib"},
    "budget": {"train_tokens": 1000, "eval_tokens": 500, "trial_timeout_s": 60},
}
NOTE = "synthetic trial values written by testing/dashboard.py to check the dashboard; not measurements"


@dataclass(frozen=True)
class SeedTrial:
    """One seeded trial: final (val_ppl, peak_vram_gib), or `pruned` (no values); `curve`: (step, val_ppl) with
    step = training tokens seen, as tuner/trial/recording.py stores a learning curve."""

    val_ppl: float
    peak_vram_gib: float
    curve: tuple[tuple[int, float], ...]
    pruned: bool = False


# Ceiling 8 GiB. Feasible front: trials 0, 1, 5; trial 2 is dominated by trial 1; trials 3 and 4 are over the
# ceiling (and would dominate the front if the constraint were ignored); trial 6 is pruned after two steps.
SEED: tuple[SeedTrial, ...] = (
    SeedTrial(40.0, 2.0, ((4096, 400.0), (8192, 90.0), (16384, 40.0))),
    SeedTrial(30.0, 4.0, ((4096, 380.0), (8192, 70.0), (16384, 30.0))),
    SeedTrial(35.0, 5.0, ((4096, 390.0), (8192, 80.0), (16384, 35.0))),
    SeedTrial(20.0, 10.0, ((4096, 350.0), (8192, 50.0), (16384, 20.0))),
    SeedTrial(18.0, 12.0, ((4096, 340.0), (8192, 45.0), (16384, 18.0))),
    SeedTrial(25.0, 6.0, ((4096, 360.0), (8192, 60.0), (16384, 25.0))),
    SeedTrial(0.0, 0.0, ((4096, 900.0), (8192, 600.0)), pruned=True),
)


@dataclass(frozen=True)
class SeededStudy:
    """What was written: the study's name and objective names, and trial numbers by kind."""

    name: str
    objective_names: tuple[str, ...]
    values: dict[int, tuple[float, float]]  # trial number -> (val_ppl, peak_vram_gib), COMPLETE trials
    front: frozenset[int]  # feasible and not dominated by another feasible trial
    dominated: frozenset[int]  # feasible, dominated
    infeasible: frozenset[int]  # peak_vram_gib over the ceiling (constraint > 0)
    pruned: frozenset[int]
    curves: dict[int, tuple[tuple[int, float], ...]]  # trial number -> reported (step, val_ppl)


def seed_study(storage_url: str, seed: tuple[SeedTrial, ...] = SEED) -> SeededStudy:
    """Create `STUDY` in `storage_url` through the tuner and write `seed`'s trials in order (trial i = seed[i]).

    Constraints go through tuner.storage.constraints (the `constraints` list the dashboard reads); curves through
    the storage's intermediate values. Optuna 5.0's `Trial.report` raises NotImplementedError for multi-objective
    studies (optuna/trial/_trial.py), so they are written with `storage.set_trial_intermediate_value`, the call
    `report` itself makes.
    """
    import warnings

    import optuna

    from tuner.storage._optuna_compat import trial_id
    from tuner.storage.connect import open_storage
    from tuner.storage.constraints import set_trial_constraint
    from tuner.storage.studies import create_or_load_study
    from tuner.study.loader import spec_from_dict

    spec = spec_from_dict(json.loads(json.dumps(STUDY)))
    study = create_or_load_study(spec, open_storage(storage_url))
    study.set_user_attr("note", NOTE)
    values: dict[int, tuple[float, float]] = {}
    pruned: set[int] = set()
    infeasible: set[int] = set()
    with warnings.catch_warnings():  # ask/tell here stands in for a worker's optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        for s in seed:
            trial = study.ask()
            spec.space.suggest(trial)
            for step, value in s.curve:
                trial.storage.set_trial_intermediate_value(trial_id(trial), step, value)
            if s.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned.add(trial.number)
                continue
            constraint = s.peak_vram_gib - spec.vram_ceiling_gib
            set_trial_constraint(trial, constraint)
            study.tell(trial, [s.val_ppl, s.peak_vram_gib])
            values[trial.number] = (s.val_ppl, s.peak_vram_gib)
            if constraint > 0:
                infeasible.add(trial.number)
    feasible = {n: v for n, v in values.items() if n not in infeasible}

    def dominated_by_any(n: int) -> bool:
        a = feasible[n]
        return any(m != n and b[0] <= a[0] and b[1] <= a[1] and b != a for m, b in feasible.items())

    front = {n for n in feasible if not dominated_by_any(n)}
    return SeededStudy(
        name=spec.name,
        objective_names=tuple(o.metric for o in spec.objectives),
        values=values,
        front=frozenset(front),
        dominated=frozenset(set(feasible) - front),
        infeasible=frozenset(infeasible),
        pruned=frozenset(pruned),
        curves={i: s.curve for i, s in enumerate(seed)},
    )


@contextmanager
def serve_dashboard(storage_url: str, timeout_s: float = 60.0) -> Iterator[str]:
    """Run `tuner dashboard --port P --storage URL` as a real process on a free loopback port; yield its base
    URL once it answers. Stopped with SIGINT (Ctrl-C), killed if it does not exit within 10 s."""
    port = free_port()
    cmd = [sys.executable, "-m", "tuner.cli", "dashboard", "--port", str(port), "--storage", storage_url]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"tuner dashboard exited with {proc.returncode} before serving:\n{out}")
            try:
                with urllib.request.urlopen(f"{base}/api/meta", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"tuner dashboard did not answer on {base} within {timeout_s:.0f} s") from None
                time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ParetoTrace:
    """One trace of the rendered Pareto-front plot: its hover label, the trial numbers and (x, y) values in it,
    and how many markers Plotly drew for it in the SVG."""

    label: str
    numbers: list[int]
    points: list[tuple[float, float]]
    drawn: int


@dataclass
class DashboardView:
    """What the rendered pages showed (all read from the DOM after the page's JavaScript ran)."""

    study_id: int
    listed: str  # the study's entry on the study list page
    header: str  # the app bar of the study page
    objective_x: str  # the Pareto plot's axis selects, showing the objective names
    objective_y: str
    pareto: dict[str, ParetoTrace]  # by hover label
    timeline_legend: list[str]
    trial_states: dict[int, list[str]] = field(default_factory=dict)  # Trials (List): number -> chips
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # number -> listed (step, value)


_LIST = """
const name = arguments[0];
for (const a of document.querySelectorAll('a[href*="/dashboard/studies/"]')) {
  const t = a.innerText.split('\\n');
  if (t.length && t[0].replace(/^\\d+\\.\\s*/, '') === name) return [a.getAttribute('href'), a.innerText];
}
return null;"""

_PARETO = """
const g = document.getElementById('graph-pareto-front');
if (!g || !g._fullData || !g._fullData.length || !g.querySelector('.scatterlayer .trace path.point')) return null;
if (!document.querySelector('#graph-timeline .legendtext')) return null;  // drawn after the Pareto plot
const selects = Array.from(document.querySelectorAll('fieldset')).map(f => f.innerText.trim());
return {
  traces: g._fullData.map(t => ({
    label: (/<extra>(.*)<\\/extra>/.exec(t.hovertemplate || '') || [null, t.name])[1],
    numbers: (t.text || []).map(s => JSON.parse(s.split('<br>').join('\\n')).number),
    x: t.x, y: t.y,
    drawn: (g.querySelector('.scatterlayer .trace' + t.uid) || {querySelectorAll: () => []})
      .querySelectorAll('path.point').length})),
  header: (document.querySelector('header') || document.body).innerText,
  selects: selects,
  timeline: Array.from(document.querySelectorAll('#graph-timeline .legendtext')).map(e => e.textContent)};"""

_TRIAL_LIST = """
const byNumber = {};  // the <li> and the button inside it read the same; keep one per trial number
for (const e of document.querySelectorAll('li, [role="button"]')) {
  const t = e.innerText.trim().split('\\n').map(s => s.trim()).filter(s => s);
  if (t.length >= 2 && /^Trial \\d+$/.test(t[0])) byNumber[t[0]] = t;
}
const items = Object.values(byNumber);
return items.length >= arguments[0] ? items : null;"""

_CLICK_TRIAL = """
// the list item's button (a click on the <li> around it would not reach the button's handler)
for (const sel of ['[role="button"]', 'li'])
  for (const e of document.querySelectorAll(sel))
    if (e.innerText.trim().split('\\n')[0].trim() === 'Trial ' + arguments[0]) { e.click(); return true; }
return false;"""

_SELECTED_TRIAL = """
const h = Array.from(document.querySelectorAll('h1, h2, h3, h4, h5, h6'))
  .find(e => /^Trial \\d+ \\(trial_id=\\d+\\)$/.test(e.innerText.trim()));
if (!h || !h.innerText.startsWith('Trial ' + arguments[0] + ' ')) return null;
const text = document.body.innerText;
const m = /Intermediate Values\\s*\\n([\\s\\S]*?)\\n\\s*Parameter/.exec(text);
return m ? {lines: m[1].split('\\n').map(s => s.trim()).filter(s => s)} : null;"""


def _objective(selects: list[str], label: str) -> str:
    for s in selects:
        lines = [x.strip() for x in s.split("\n") if x.strip() and x.strip() != "\u200b"]
        if lines and lines[0] == label and len(lines) > 1:
            return lines[1]
    return ""


def read_dashboard(
    browser: Browser,
    base: str,
    study_name: str,
    curve_trials: tuple[int, ...] = (),
    timeout_s: float = 60.0,
    screenshot: Path | None = None,
) -> DashboardView:
    """Open the study list, follow the link named `study_name`, wait for the Pareto plot and the timeline to be
    drawn and read them (saving the study page as PNG to `screenshot` if given), then open Trials (List) and read
    each trial's state chips and the listed intermediate values of `curve_trials`. Raises
    testing.browser.BrowserError when something does not render within `timeout_s`."""
    browser.get(f"{base}/dashboard")
    href, listed = browser.wait_for(_LIST, study_name, timeout_s=timeout_s, what=f"study {study_name!r} listed")
    study_id = int(str(href).rstrip("/").rsplit("/", 1)[1])
    browser.get(base + str(href))
    page: dict[str, Any] = browser.wait_for(_PARETO, timeout_s=timeout_s, what="the Pareto-front plot drawn")
    if screenshot is not None:
        browser.screenshot(screenshot)
    pareto = {
        t["label"]: ParetoTrace(
            label=t["label"],
            numbers=[int(n) for n in t["numbers"]],
            points=[(float(x), float(y)) for x, y in zip(t["x"], t["y"], strict=True) if x is not None],
            drawn=int(t["drawn"]),
        )
        for t in page["traces"]
    }
    view = DashboardView(
        study_id=study_id,
        listed=str(listed),
        header=str(page["header"]).strip(),
        objective_x=_objective(page["selects"], "Objective X:"),
        objective_y=_objective(page["selects"], "Objective Y:"),
        pareto=pareto,
        timeline_legend=[str(s) for s in page["timeline"]],
    )
    n_trials = sum(len(t.numbers) for t in pareto.values())
    browser.get(f"{base}/dashboard/studies/{study_id}/trials")
    items = browser.wait_for(_TRIAL_LIST, n_trials, timeout_s=timeout_s, what="the trial list")
    view.trial_states = {int(t[0].split()[1]): list(t[1:]) for t in items}
    for number in curve_trials:
        browser.execute(_CLICK_TRIAL, number)
        shown = browser.wait_for(_SELECTED_TRIAL, number, timeout_s=timeout_s, what=f"trial {number} selected")
        view.curves[number] = [(int(a), float(b)) for a, b in (line.split() for line in shown["lines"])]
    return view


def mismatches(view: DashboardView, seeded: SeededStudy) -> list[str]:
    """Where the rendered dashboard differs from the seeded study (empty when it shows what was written): the
    name, the objective names, the front / dominated / infeasible traces (numbers and drawn markers), the pruned
    trials' state."""
    found: list[str] = []
    if not view.listed.splitlines()[0].endswith(seeded.name) or not view.header.startswith(seeded.name + " "):
        found.append(f"study name: listed {view.listed!r}, header {view.header!r}, wrote {seeded.name!r}")
    if (view.objective_x, view.objective_y) != seeded.objective_names:
        found.append(f"objectives: shown {(view.objective_x, view.objective_y)}, wrote {seeded.objective_names}")
    for label, want in (("Best Trial", seeded.front), ("Feasible Trial", seeded.dominated)):
        trace = view.pareto.get(label)
        if trace is None or sorted(trace.numbers) != sorted(want) or trace.drawn != len(want):
            found.append(f"Pareto plot {label!r}: shown {trace}, want trials {sorted(want)}")
    trace = view.pareto.get("Infeasible Trial")
    if trace is None or sorted(trace.numbers) != sorted(seeded.infeasible) or trace.drawn != len(seeded.infeasible):
        found.append(f"infeasible: shown {trace}, want trials {sorted(seeded.infeasible)}")
    for n in seeded.pruned:
        if view.trial_states.get(n) != ["Pruned"]:
            found.append(f"trial {n}: shown {view.trial_states.get(n)}, want ['Pruned']")
    return found
