"""bench/lm_runs.py, bench/quality.py, bench/fidelity.py: rank statistics, and no figure from a diverged run
(a real tiny run on CPU, through the same process pool the GPU benches use)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import fidelity  # noqa: E402
import lm_runs  # noqa: E402
import quality  # noqa: E402

TINY_PHASE1 = dict(vocab_size=300, d_model=32, n_layers=1, n_seq=32, batch_size=2, dtype="float32", ffn_rank=4,
                   ar_ssm_max_rank=4, ar_ssm_min_rank=1, htt_rank=4, ar_ssm_use_fused_scan=False,
                   use_gradient_checkpointing=False, loss_chunk_size=0)


def test_average_ranks_share_ties_and_put_inf_last():
    assert lm_runs.average_ranks([3.0, 1.0, math.inf, 1.0]) == [3.0, 1.5, 4.0, 1.5]


def test_spearman_known_values():
    assert lm_runs.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert lm_runs.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # one swap among 5: 1 - 6 * 2 / (5 * 24) = 0.9
    assert lm_runs.spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no spread"):
        lm_runs.spearman([1, 1, 1], [1, 2, 3])


def test_fidelity_ranks_a_diverged_run_last_and_reports_finished_pairs():
    pairs = [{"s": 10, "l": 5}, {"s": 12, "l": 6}, {"s": None, "l": 7}, {"s": 11, "l": None}, {"s": 9, "l": 4}]
    c = fidelity.correlations(pairs, "s", "l")
    assert c["n_both_finished"] == 3 and c["spearman_finished_only"] == pytest.approx(1.0)
    assert c["spearman"] == pytest.approx(0.7)


def test_a_diverged_run_supplies_no_figure(tmp_path):
    cache = tmp_path / "cache"
    data = {"kind": "stdlib", "max_bytes": 100_000}
    from model.data import DataSource, prepare_data

    prepare_data(DataSource(**data), 300, cache)
    jobs = [{"id": f"{name}-lr{lr:g}", "model": "phase1", "config": {**TINY_PHASE1, "learning_rate": lr},
             "train_tokens": 6 * 64, "eval_tokens": 64, "data": data, "cache_dir": str(cache), "group": name,
             "lr": lr} for name, lr in (("blowup", 1e35), ("ok", 3e-3))]
    runs = lm_runs.run_pool(jobs, gpus=[None], per_gpu=1, jsonl=tmp_path / "runs.jsonl", work=tmp_path / "w",
                            log=lambda m: None)
    by_id = {r["id"]: r for r in runs}
    bad, good = by_id["blowup-lr1e+35"], by_id["ok-lr0.003"]
    assert bad["diverged"] is True and "val_ppl" not in bad, bad
    assert good["diverged"] is False and math.isfinite(good["val_ppl"])
    for r in runs:
        r["group"] = next(j["group"] for j in jobs if j["id"] == r["id"])
    assert quality.best_run(runs, "ok")["id"] == "ok-lr0.003"
    with pytest.raises(SystemExit, match="no run of 'blowup' finished without diverging"):
        quality.best_run(runs, "blowup")
    assert (tmp_path / "runs.jsonl").read_text().count("\n") == 2


def test_fidelity_only_refuses_unknown_runs(tmp_path):
    study = Path(__file__).resolve().parents[2] / "studies" / "phase1_8gb.yaml"
    with pytest.raises(SystemExit, match=r"--only names runs this measurement does not have: \['c99-t1'\]"):
        fidelity.main(["--study", str(study), "--out", str(tmp_path), "--n", "2", "--budget-tokens", "1000",
                       "--only", "c99-t1"])


def test_fidelity_collect_takes_a_later_finished_run_over_an_earlier_killed_one(tmp_path):
    """An interrupted measurement finished by a later `--only` call: the runs' lines are concatenated, the last line
    of each run id wins, and the summary is complete only once every short and long run has a finished line."""
    import json

    study = Path(__file__).resolve().parents[2] / "studies" / "phase1_8gb.yaml"
    ppl = {"c00": (900.0, 150.0), "c01": (800.0, 160.0), "c02": (700.0, 170.0)}
    lines = [{"id": f"{c}-t{t}", "val_ppl": p} for c, (s, lng) in ppl.items() for t, p in ((1000, s), (8000, lng))]
    lines[1] = {"id": "c00-t8000", "killed": True, "failed": True}  # stopped at the first call's time limit
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    args = ["--study", str(study), "--out", str(tmp_path), "--n", "3", "--budget-tokens", "1000", "--collect", str(runs)]
    assert fidelity.main(args) == 1  # incomplete: no figures without --partial
    with runs.open("a") as fh:
        fh.write(json.dumps({"id": "c00-t8000", "val_ppl": 150.0}) + "\n")  # the later --only call
    assert fidelity.main(args) == 0
    out = json.loads((tmp_path / "fidelity.json").read_text())
    assert out["complete"] is True and out["n"] == 3
    assert out["spearman"] == pytest.approx(-1.0)  # short PPL falls as long PPL rises: ranks exactly reversed


@pytest.mark.parametrize("step, compiled, graphs", [(None, False, False), ("compile", True, False),
                                                    ("compile_graphs", True, True)])  # fmt: skip
def test_a_jobs_step_reaches_the_trainer_and_its_record(tmp_path, monkeypatch, step, compiled, graphs):
    """bench/claims.py --step sets `step` on a job: the trainer gets the StepMode's switches and the run records it.
    The trainer is replaced by one that records its arguments and stops at once (no compiling on this CPU)."""
    import model.train
    from model.data import DataSource, prepare_data
    from model.errors import NumericalInstabilityError

    seen = {}

    def trainer(*args, **kwargs):
        seen.update(kwargs)
        raise NumericalInstabilityError("stopped by the test", {})

    monkeypatch.setattr(model.train, "train_and_evaluate", trainer)
    data = {"kind": "stdlib", "max_bytes": 100_000}
    prepare_data(DataSource(**data), 300, tmp_path / "cache")
    job = {"id": "j", "model": "phase1", "config": TINY_PHASE1, "train_tokens": 64, "eval_tokens": 64, "data": data,
           "cache_dir": str(tmp_path / "cache")} | ({"step": step} if step else {})  # fmt: skip
    out = lm_runs.run_one(job)
    assert (seen["compile_step"], seen["cuda_graph_step"]) == (compiled, graphs)
    assert out["step"] == (step or "eager") and out["diverged"] is True
    with pytest.raises(ValueError):
        lm_runs.run_one({**job, "step": "compiled"})  # not a StepMode
