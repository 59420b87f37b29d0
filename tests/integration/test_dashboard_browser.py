"""`tuner dashboard` in a real browser: a study on Postgres with feasible, infeasible (over the VRAM ceiling,
constraint written by tuner.storage.constraints) and pruned trials, the dashboard started as a real process, and
its pages loaded in headless Chromium (Debian's `chromium` + `chromium-driver`) with their JavaScript executed.
Everything checked is read from the rendered DOM (testing/dashboard.py), not from the dashboard's JSON API
(tests/integration/test_dashboard.py covers that).

Without Chromium the browser test is skipped with the install command, except under CI=true, where it fails:
.ci/run installs Chromium, so a missing browser there is a broken CI, not an optional extra.
"""

from __future__ import annotations

import os

import pytest

from testing.browser import HEIGHT, WIDTH, Browser, BrowserError, missing_browser
from testing.dashboard import mismatches, read_dashboard, seed_study, serve_dashboard


def require_browser() -> None:
    """Skip (outside CI) or fail (CI=true) when headless Chromium or its driver is not installed."""
    problem = missing_browser()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the dashboard browser test cannot run: {problem}")
    pytest.skip(problem)


@pytest.mark.slow
def test_dashboard_renders_study_front_infeasible_and_pruned(pg_url, tmp_path):
    require_browser()
    seeded = seed_study(pg_url)
    assert seeded.front and seeded.dominated and seeded.infeasible and seeded.pruned  # every kind is present
    shot = tmp_path / "dashboard.png"
    pruned = min(seeded.pruned)
    with serve_dashboard(pg_url) as base, Browser() as browser:
        view = read_dashboard(browser, base, seeded.name, curve_trials=(0, pruned), screenshot=shot)
        # The reader can fail: the same pages asked for a study that is not there time out, naming it.
        with pytest.raises(BrowserError, match=f"study 'no_{seeded.name}' listed"):
            read_dashboard(browser, base, f"no_{seeded.name}", timeout_s=5)

    # the study, on the study list and in the study page's app bar
    assert view.listed.splitlines()[0].endswith(seeded.name)
    assert "MINIMIZE, MINIMIZE" in view.listed
    assert view.header == f"{seeded.name} (id={view.study_id})"
    # both objective names, as the Pareto plot's axis choices
    assert (view.objective_x, view.objective_y) == seeded.objective_names == ("val_ppl", "peak_vram_gib")

    # the Pareto front: exactly the feasible non-dominated trials, with their values, each drawn as a marker
    front = view.pareto["Best Trial"]
    assert sorted(front.numbers) == sorted(seeded.front)
    assert sorted(front.points) == sorted(seeded.values[n] for n in seeded.front)
    assert front.drawn == len(seeded.front)
    dominated = view.pareto["Feasible Trial"]
    assert sorted(dominated.numbers) == sorted(seeded.dominated) and dominated.drawn == len(seeded.dominated)
    # the infeasible trials: their own trace (they would dominate the front if the constraint were lost)
    infeasible = view.pareto["Infeasible Trial"]
    assert sorted(infeasible.numbers) == sorted(seeded.infeasible)
    assert sorted(infeasible.points) == sorted(seeded.values[n] for n in seeded.infeasible)
    assert infeasible.drawn == len(seeded.infeasible)
    # a pruned trial has no values: listed among the plot's trials, no marker
    assert view.pareto["Unselected Trial"].numbers == [pruned] and view.pareto["Unselected Trial"].drawn == 0
    assert view.timeline_legend == ["Complete", "Infeasible", "Pruned"]

    assert mismatches(view, seeded) == []  # the bench script's check (bench/dashboard_shot.py) agrees

    # Trials (List): every trial with its state; pruned ones say so
    assert sorted(view.trial_states) == sorted([*seeded.values, *seeded.pruned])
    assert view.trial_states[pruned] == ["Pruned"]
    assert all(view.trial_states[n][0] == "Complete" for n in seeded.values)
    # the curves: a two-objective study gets no curve plot in optuna-dashboard 0.21, but each trial lists its
    # intermediate values (step, value), the pruned one's up to where it stopped
    assert view.curves[0] == list(seeded.curves[0])
    assert view.curves[pruned] == list(seeded.curves[pruned])

    from PIL import Image

    with Image.open(shot) as im:
        # headless Chromium keeps the window's width; its height loses some pixels to the (invisible) toolbar
        assert im.format == "PNG" and im.size[0] == WIDTH and im.size[1] > HEIGHT // 2
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 50  # a drawn page, not a blank one


def test_missing_browser_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    problem = missing_browser()
    assert problem is not None
    assert "chromium and chromedriver not found" in problem and "apt-get install -y chromium chromium-driver" in problem
    with pytest.raises(BrowserError, match="chromium and chromedriver not found"):
        Browser()


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_no_browser_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y chromium chromium-driver"):
        require_browser()
