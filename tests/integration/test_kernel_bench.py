"""bench/kernel_bench.py's scan part on CPU (Triton's interpreter, a stand-in timer): every implementation and path is
checked before anything is timed, a wrong kernel stops the run, and the rows carry the fields the results contract
names. No timing here is a performance figure."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

from kernels import scan

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kernel_bench", REPO / "bench" / "kernel_bench.py")
kb = importlib.util.module_from_spec(_spec)  # loaded from its file: bench/ stays off this process's sys.path
_spec.loader.exec_module(kb)

SHAPE = [(1, 70, 5)]  # two sub-tiles of 64 (one partial): the state passing and the masks run


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(kb, "DEVICE", "cpu")


def fake_do_bench(calls):
    """Every path times its forward first, then forward+backward (public) or backward (bare): 1 ms, then 3 ms."""
    def do_bench(fn, warmup=0, rep=0, quantiles=None, return_mode=None):
        fn()  # runs the timed function once: a broken path would raise here
        calls.append(fn)
        ms = 1.0 if len(calls) % 2 else 3.0
        return [ms, ms - 0.1, ms + 0.1] if quantiles else ms
    return do_bench


def fake_timer(calls, first, second):
    """A graph or host timer like fake_do_bench: runs fn once, then `first` ms for a path's forward, `second` after."""
    def timer(fn, *_reps):
        fn()
        calls.append(fn)
        ms = first if len(calls) % 2 else second
        return [ms, ms - 0.01, ms + 0.01]
    return timer


def fake_timers(calls, graph_calls, host_calls):
    return fake_do_bench(calls), fake_timer(graph_calls, 0.5, 1.25), fake_timer(host_calls, 0.2, 0.7)


def test_rows_for_both_paths_and_the_baseline(cpu):
    calls, graph_calls, host_calls = [], [], []
    old = kb.load_impl(str(REPO / "kernels" / "scan.py"))  # stands in for a previous version's file
    out = kb.bench_scan(fake_timers(calls, graph_calls, host_calls), 3000.0, [(scan, ""), (old, "_old")],
                        quick=True, shapes=SHAPE, check_only=[])
    assert [r["path"] for r in out["scan"]] == ["public", "bare", "public_old", "bare_old"] * 2
    assert {r["dtype"] for r in out["scan"]} == {"fp32", "bf16"}
    for r in out["scan"]:
        public = r["path"].startswith("public")
        assert r["fwd_ms"] == 1.0 and r["fwd_ms_p20_p80"] == [0.9, 1.1]
        # public: forward+backward (3 ms) minus the forward (1 ms); bare: the backward itself.
        assert r["bwd_ms"] == pytest.approx(2.0 if public else 3.0)
        # The graph and host figures follow the same definitions, from their own timers.
        assert r["fwd_ms_graph"] == 0.5 and r["bwd_ms_graph"] == pytest.approx(0.75 if public else 1.25)
        assert r["bwd_ms_graph_p20_p80"] == pytest.approx([0.74, 0.76] if public else [1.24, 1.26])
        assert r["fwd_host_ms"] == 0.2 and r["bwd_host_ms"] == pytest.approx(0.5 if public else 0.7)
        assert r["bwd_frac_copy_graph"] == pytest.approx(r["bwd_frac_copy"] * r["bwd_ms"] / r["bwd_ms_graph"])
        assert set(r["rel_err"]) == {"y", "du", "dg", "dv", "da"}
        assert r["fwd_frac_copy"] == pytest.approx(4 * 70 * 5 * (4 if r["dtype"] == "fp32" else 2) / 1e-3 / 1e9 / 3000)
    # 16 scan timings each (two per row) and the autograd floor's two, on the eager and host timers
    assert len(out["checked"]) == 8 and len(calls) == 18 and len(graph_calls) == 16 and len(host_calls) == 18
    floor = out["autograd_floor"]
    assert (floor["fwd_ms"], floor["bwd_ms"], floor["fwd_host_ms"], floor["bwd_host_ms"]) == pytest.approx(
        (1.0, 2.0, 0.2, 0.5))


def test_a_path_that_cannot_be_captured_says_why(cpu):
    def no_graph(fn, *_reps):
        raise RuntimeError("operation not permitted when stream is capturing")

    calls, host_calls = [], []
    timers = (fake_do_bench(calls), no_graph, fake_timer(host_calls, 0.2, 0.7))
    out = kb.bench_scan(timers, 3000.0, [(scan, "")], quick=True, shapes=SHAPE, check_only=[])
    for r in out["scan"]:
        assert "fwd_ms_graph" not in r and r["graph_error"] == (
            "RuntimeError: operation not permitted when stream is capturing")
        assert r["fwd_ms"] == 1.0 and r["fwd_host_ms"] == 0.2


def test_a_wrong_kernel_is_refused_before_any_timing(cpu):
    def wrong_fwd(u, g, v, a, save_carry, tiles=None):
        y, carry, t = scan._scan_fwd(u, g, v, a, save_carry, tiles)
        y[:, -1] += 1  # one wrong time step
        return y, carry, t

    broken = types.SimpleNamespace(__name__="broken", gated_scan=scan.gated_scan, _scan_fwd=wrong_fwd,
                                   _scan_bwd=scan._scan_bwd)
    calls, graph_calls, host_calls = [], [], []
    with pytest.raises(kb.KernelMismatch, match=r"broken bare B=1 L=70 R=5 torch.float32: rel err \{'y'"):
        kb.bench_scan(fake_timers(calls, graph_calls, host_calls), 3000.0, [(scan, ""), (broken, "_old")],
                      quick=True, shapes=SHAPE, check_only=[])
    assert calls == graph_calls == host_calls == []
