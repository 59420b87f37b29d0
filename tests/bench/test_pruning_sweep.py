"""bench/pruning_sweep.py: every (min_fraction, confidence, order) row is bench/search_efficiency.py's replay with
those settings, on small in-memory studies (the replay's own tests build them) and on the committed H100 study."""

from __future__ import annotations

import dataclasses
import json

from bench import pruning_sweep as ps
from bench import search_efficiency as se
from tests.bench.test_search_efficiency import BUDGET, CEILING, SETTINGS, VOCAB, _refs, _study, _trained


def test_each_row_is_the_replay_with_its_settings():
    trials = _study([*_refs(), _trained(4000.0, 5.0, start_s=20, end_s=30)])  # 4x worse all along: dominated
    base = SETTINGS
    rows = ps.sweep(trials, base, BUDGET, VOCAB, CEILING, min_fractions=(0.125, 0.25), confidences=(0.5, 0.9))
    assert len(rows) == 2 * 2 * len(ps.ORDERS)
    for r in rows:
        settings = dataclasses.replace(base, min_fraction=r["min_fraction"], confidence=r["confidence"])
        one = se.replay_summary(trials, settings, BUDGET, VOCAB, CEILING, r["order"])
        assert r["n_pruned"] == one["n_pruned"] and r["meets_goal"] == one["meets_goal"]
        assert r["train_tokens_saved_frac"] == one["train_tokens_saved_frac"]
    assert any(r["n_pruned"] > 0 for r in rows)  # the dominated curve is pruned under some settings


def test_sweep_on_the_committed_h100_study(tmp_path):
    out = tmp_path / "sweep.json"
    assert ps.main(["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["min_fraction"], r["confidence"], r["order"]): r for r in res["rows"]}
    assert len(rows) == len(ps.MIN_FRACTIONS) * len(ps.CONFIDENCES) * len(ps.ORDERS)
    shipped = rows[(0.25, 0.9, "start")]  # the shipped settings: what search_efficiency.json reports
    replay = json.loads((se.REPO / "bench" / "results" / "search_efficiency.json").read_text())["pruning_replay"]
    assert shipped["n_pruned"] == replay["as_worker"]["n_pruned"] and not shipped["meets_goal"]
