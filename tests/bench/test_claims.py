"""bench/claims.py: a real tiny CPU run end to end (tiny shapes, stdlib tokens, every run of the plan), the plan
covers every claim, verdicts follow the figures, missing runs are reported, and probe jobs run through the pool."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import claims  # noqa: E402
import claims_plan  # noqa: E402
import claims_rules  # noqa: E402
import lm_runs  # noqa: E402
from claims_doc import render  # noqa: E402
from claims_summary import summarize  # noqa: E402

# Its module-scoped fixture runs once per pytest-xdist process: keep the module's tests on one (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("claims")

FIDELITY = BENCH / "results" / "fidelity.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny serial run of the whole plan: (out dir, claims.json dict)."""
    out = tmp_path_factory.mktemp("claims")
    argv = ["--out", str(out), "--tiny", "--serial", "--cache-dir", str(out / "cache"), "--fidelity", str(FIDELITY),
            "--write-doc", str(out / "claims.md")]  # fmt: skip
    assert claims.main(argv) == 0
    return out, json.loads((out / "claims.json").read_text())


def lines(out: Path) -> tuple[dict, list[dict]]:
    metas, runs = claims.read_lines([out / "claims_runs.jsonl"])
    return metas[0], runs


def test_tiny_run_end_to_end(tiny):
    out, result = tiny
    meta, runs = lines(out)
    plan_ids = {p["id"] for p in meta["plan"]}
    assert plan_ids == {r["id"] for r in runs} and result["missing"] == [] and result["failed"] == []
    by_id = {r["id"]: r for r in runs}
    assert by_id["q-base"]["val_ppl"] > 1 and by_id["q-dense"]["model"] == "dense"
    assert by_id["k-scan"]["skipped"].startswith("the fused scan is a CUDA kernel")  # no GPU: said, not faked
    assert [s["batch_size"] for s in by_id["i-base"]["stages"]] == [1, 2]
    assert all(s["peak_torch_gib"] > 0 for s in by_id["i-dense"]["stages"])
    assert result["memory_kind"].startswith("peak tensor bytes on CPU")
    assert len(result["commands"]) == 1 and result["commands"][0].startswith("python bench/claims.py --out ")
    doc = (out / "claims.md").read_text()
    assert f"- Commands: `{result['commands'][0]}`." in doc
    for c in result["claims"]:
        assert f"## {c['title']}" in doc and c["where"] in doc
    assert "1M -> 8M: 0.41" in doc  # the budget's fidelity caveat, read from bench/results/fidelity.json


def test_plan_covers_every_claim():
    jobs = claims_plan.make_jobs(claims_plan.FULL, "cache")
    plan = [{"id": j["id"], "alone": True} for j in jobs]
    meta = {"settings": claims_plan.FULL, "plan": plan, "header": {"device": "none"}}
    result = summarize([meta], [], fidelity=None, commands=[], sources=[])
    used = {rid for c in result["claims"] for r in c["rows"] for rid in r["runs"]}
    assert used | {"q-seed1"} == {j["id"] for j in jobs}  # every run feeds a claim; seed1 gives the PPL spread
    assert {c["id"] for c in result["claims"]} == {"max_rank", "l1", "htt_rank", "phase_encoding", "checkpointing",
                                                   "fused_scan", "final_report"}  # fmt: skip
    settings = {c["id"]: {r["setting"] for r in c["rows"]} for c in result["claims"]}
    assert {"max_rank=32", "max_rank=48", "max_rank=64"} <= settings["max_rank"]
    assert {"l1=0.0001", "l1=0.001", "l1=0.01"} <= settings["l1"]
    assert {"htt_rank=8", "htt_rank=16", "htt_rank=32", "htt_rank=64"} <= settings["htt_rank"]
    # with no runs every measured row is "not measured" and every planned run is missing
    assert {r["verdict"] for c in result["claims"] for r in c["rows"]} == {"not measured", "not comparable"}
    assert result["missing"] == [j["id"] for j in jobs]
    configs = {j["id"]: j.get("config", {}) for j in jobs}
    assert configs["q-max_rank64"]["ar_ssm_max_rank"] == 64 and configs["q-base"]["ar_ssm_max_rank"] == 16
    assert configs["s-ckpt_off"]["use_gradient_checkpointing"] is False
    assert configs["q-dense"]["d_model"] == configs["q-base"]["d_model"] == 1024
    assert configs["q-dense"]["vocab_size"] == configs["q-base"]["vocab_size"]


def test_judge_rules():
    assert claims_rules.judge(-30.0, -40.0, "change") == ("holds", 10.0)  # within min(10, 20) points
    assert claims_rules.judge(-29.0, -40.0, "change")[0] == "does not hold"
    assert claims_rules.judge(4.0, 2.2, "change", spread=3.0) == ("holds", 3.0)  # the seed spread widens it
    assert claims_rules.judge(2.6, 1.5, "change", half_range=0.5)[0] == "does not hold"
    assert claims_rules.judge(2.4, 3.0, "factor")[0] == "does not hold"
    assert claims_rules.judge(3.4, 3.0, "factor")[0] == "holds"
    assert claims_rules.judge(0.12, 0.4, "count")[0] == "does not hold"
    assert claims_rules.judge(None, 0.4, "count") == ("not measured", None)


def test_verdicts_follow_the_figures_of_a_real_tiny_run(tiny, tmp_path):
    out, _ = tiny
    meta, runs = lines(out)
    by_id = {r["id"]: r for r in runs}
    base = by_id["s-base"]["tokens_per_s"]
    for tps, verdict in ((base / 0.8, "holds"), (base / 0.5, "does not hold")):  # on is 20% / 50% slower than off
        changed = [dict(r, tokens_per_s=tps) if r["id"] == "s-ckpt_off" else r for r in runs]
        result = summarize([meta], changed, fidelity=None, commands=[], sources=[])
        ckpt = next(c for c in result["claims"] if c["id"] == "checkpointing")
        speed = next(r for r in ckpt["rows"] if r["quantity"] == "tokens/s change")
        assert speed["ours"] == pytest.approx(-20.0 if verdict == "holds" else -50.0)
        assert speed["verdict"] == verdict
        doc = render(result)
        line = next(x for x in doc.splitlines() if x.startswith("| checkpointing on vs off | tokens/s change"))
        assert f"**{verdict}" in line
    result = summarize([meta], runs, fidelity=None, commands=[], sources=[])
    for c in result["claims"]:  # every row's verdict is the rule applied to its own figures
        for r in c["rows"]:
            if r["kind"] != "none":
                spread = result["seed_spread_ppl_pct"] if "PPL" in r["quantity"] else None
                half = {1.5: 0.5, 7.5: 2.5}.get(r["guide"], 0.0) if r["quantity"] == "PPL change" else 0.0
                assert r["verdict"] == claims_rules.judge(r["ours"], r["guide"], r["kind"], spread, half)[0], r


def test_missing_and_killed_runs_are_reported(tiny, tmp_path):
    out, _ = tiny
    records = [json.loads(x) for x in (out / "claims_runs.jsonl").read_text().splitlines()]
    gone = {"q-htt64", "i-dense", "s-dense"}
    kept = [r for r in records if r.get("id") not in gone]  # the meta line has no id: kept
    killed = {"id": "s-dense", "model": "dense", "killed": True, "failed": True}
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in [*kept, killed]))
    assert claims.main(["--collect", str(partial), "--out", str(tmp_path), "--write-doc", str(tmp_path / "c.md")]) == 0
    result = json.loads((tmp_path / "claims.json").read_text())
    assert set(result["missing"]) == gone and result["failed"] == ["s-dense"]
    report = next(c for c in result["claims"] if c["id"] == "final_report")
    assert {r["verdict"] for r in report["rows"] if "s-dense" in r["runs"]} == {"not measured"}
    assert "**Runs missing:** " in (tmp_path / "c.md").read_text()
    # a later --only run's lines finish the measurement: collected together, nothing is missing
    done = tmp_path / "done.jsonl"
    done.write_text("".join(json.dumps(r) + "\n" for r in records if r.get("id") in gone))
    assert claims.main(["--collect", str(partial), str(done), "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "claims.json").read_text())["missing"] == []


def test_only_refuses_unknown_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"--only names runs this measurement does not have: \['q-nope'\]"):
        claims.main(["--out", str(tmp_path), "--tiny", "--only", "q-nope", "--cache-dir", str(tmp_path / "c")])


def test_gpu_layout_keeps_speed_runs_alone():
    jobs, per_gpu = claims_plan.place(claims_plan.make_jobs(claims_plan.FULL, "cache"), [0, 1, 2, 3], None)
    assert per_gpu[0] == 1 and sum(per_gpu[1:]) == len(claims_plan.QUALITY)
    for j in jobs:
        assert (j["gpus"] == [0]) == (j["kind"] != "quality") and j["alone"] == (j["kind"] != "quality")
    assert max(per_gpu[1:]) - min(per_gpu[1:]) <= 2
    queue = [j["id"] for j in sorted(jobs, key=lambda j: -j["cost"]) if j["gpus"] == [0]]
    assert queue[:2] == ["s-base", "s-ckpt_off"] and queue[-1] == "k-scan"


def test_probe_jobs_run_through_the_pool(tmp_path):
    """The inference and scan jobs start bench/claims_probe.py as the pool's child (not lm_runs.py)."""
    s = claims_plan.TINY
    jobs = [j for j in claims_plan.make_jobs(s, str(tmp_path / "cache")) if j["id"] in ("i-base", "k-scan")]
    from model.data import DataSource, prepare_data

    prepare_data(DataSource(**s["data"]), s["shape"]["vocab_size"], tmp_path / "cache")
    runs = lm_runs.run_pool(jobs, gpus=[None], per_gpu=2, jsonl=tmp_path / "r.jsonl", work=tmp_path / "w",
                            log=lambda m: None)  # fmt: skip
    by_id = {r["id"]: r for r in runs}
    assert not by_id["i-base"].get("failed"), by_id["i-base"]
    assert [st["batch_size"] for st in by_id["i-base"]["stages"]] == [1, 2] and "skipped" in by_id["k-scan"]


def test_step_applies_to_the_phase1_quality_runs_only(tiny):
    jobs = claims_plan.make_jobs(claims_plan.FULL, "cache")
    claims.set_quality_step(jobs, "compile_graphs")
    stepped = {j["id"] for j in jobs if j.get("step") == "compile_graphs"}
    quality = {j["id"] for j in jobs if j["id"].startswith("q-")}
    assert stepped == quality - {"q-dense"} and "q-base" in stepped  # speed, inference, scan and dense stay eager
    _, result = tiny  # the tiny run's records carry their step, and the summary names the quality runs' step
    _, runs = lines(tiny[0])
    assert {r["step"] for r in runs if r["id"].startswith("q-")} == {"eager"}
    assert result["quality_steps"] == ["eager"]
    doc = (tiny[0] / "claims.md").read_text()
    assert "Quality runs' training step: eager" in doc
