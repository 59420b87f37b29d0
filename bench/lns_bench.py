"""LNS matmul benchmark: the Triton `lns_matmul` against `torch.matmul` in fp16 on a pre-decoded weight.

For each shape (M, K, N), code width and tile config it first checks the kernel against `lns_matmul_ref` and
raises if they disagree (nothing is reported for a wrong kernel), then times both with `triton.testing.do_bench`
(median and 20/80% quantiles, ms; L2 flushed before every run), and reports TFLOP/s, weight bytes, and the
relative error of both against exact products of (a) the decoded weights and (b) the original fp32 weights (fp32
operands, float64 sums). Every M, small ones included, runs the one tiled kernel with the row's tiles.

With `--baseline PATH` (a copy of an older kernels/lns.py) the same shapes and tiles also run that module's
`lns_matmul`, checked the same way, as rows with "impl": "old" ("impl": "new" for this tree's kernel), each with
its own torch fp16 timing from the same run.

Usage: python bench/lns_bench.py --out DIR [--baseline PATH]          (GPU; writes DIR/lns_bench.json, prints it)
       python bench/lns_bench.py --quick --out DIR [--baseline PATH]  (GPU, < 1 min: 8-bit codes, default tiles,
                                                                       M = 4096 / 8192 and M = 1, 16, 64)
       python bench/lns_bench.py --tiny [--out DIR]   (smoke check; on CPU it runs the Triton interpreter and its
                                                       timings are perf_counter medians, not performance figures)
       python bench/lns_bench.py --small-m --out DIR   (GPU, < 3 min: every `lns_matmul` variant against torch fp16
                                                       at M = 1, 16, 64 and 4096, K = N = 4096, 8-bit codes; writes
                                                       DIR/lns_small_m.json; with --tiny it runs on CPU through the
                                                       interpreter: a check of the script, no timings)
`lns_rows` is also imported by bench/kernel_bench.py, which files the list under "lns" of kernels.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# `python bench/lns_bench.py` puts bench/ first on sys.path, where a bench script named after a package would shadow
# it: the repo root goes first (bench/ stays, after it, for scripts that import this one by name).
if sys.path[:1] != [os.path.dirname(_BENCH_DIR)]:
    sys.path.insert(0, os.path.dirname(_BENCH_DIR))

# (M, K, N): the brief's three compute-bound shapes, plus small-M (decode-like) ones, where moving 1-2 bytes per
# weight instead of 2 would matter most if the decode were free (it is not: docs/lns_kernel.md).
SMALL_M_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (64, 4096, 4096)]
SHAPES = [(4096, 4096, 4096), (8192, 1024, 4096), (2048 * 8, 1024, 64), *SMALL_M_SHAPES]
QUICK_SHAPES = [(4096, 4096, 4096), (8192, 1024, 4096), *SMALL_M_SHAPES]
TINY_SHAPES = [(33, 65, 47), (64, 32, 16), (3, 65, 47)]
# Tiles: the guide's Ampere default, a deeper K tile, a narrow-N tile for the N = 64 shape, a small tile for
# small M, the guide's Ada preset.
BLOCKS = [(128, 128, 32), (128, 128, 64), (128, 64, 64), (64, 64, 128), (256, 256, 64)]
QUICK_BLOCKS = [(128, 128, 32)]  # lns_matmul's and the model config's default tiles
TINY_BLOCKS = [(16, 16, 16), (32, 64, 32)]
CHECK_TOL = 2e-3  # normwise relative error, Triton vs reference, fp16 input (see tests/kernels/test_lns.py)
REPEAT_CHECK = 5  # calls after timing whose outputs must equal the checked output bit for bit


def _rel(y, ref) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def _time_ms(fn, device, quick: bool = False) -> tuple[float, float, float, str]:
    """(median, p20, p80) in ms and the timer used."""
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, quantiles=[0.5, 0.2, 0.8])
        return med, p20, p80, "triton.testing.do_bench (CUDA events)"
    times = []
    fn()  # warm-up
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5)
    return statistics.median(times), q[0], q[3], "time.perf_counter on CPU (Triton interpreter: not a speed figure)"


def _time_graph_ms(fn, expect=None, reps: int = 50) -> float | None:
    """Median ms of `fn` replayed from a CUDA graph, L2 flushed before each replay (CUDA only; None elsewhere).

    Why beside do_bench: do_bench times fn from its Python call, and the GPU idles inside the timed interval when
    fn's host work (lns_matmul's checks, one or two Triton launches, an allocation) outlasts the L2-flush kernel
    queued before it. A graph replay costs the host a few microseconds, so this is the kernels' own time.
    expect: fn's checked output; the replayed graph's output must equal it bit for bit (RuntimeError otherwise).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    import triton

    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm the allocator on the side stream, as torch.cuda.graphs asks
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    driver = triton.runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for _ in range(3):
        graph.replay()
    for start, end in events:
        driver.clear_cache(cache)
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    if expect is not None and not torch.equal(out, expect):
        raise RuntimeError("the CUDA-graph replay's output differs from the checked output; not reporting")
    return statistics.median(s.elapsed_time(e) for s, e in events)


def load_baseline(path: str):
    """Import an older kernels/lns.py from `path` as a module of its own (it must not shadow kernels.lns)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lns_baseline", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--baseline: cannot import {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_lns(device, *, shapes=None, blocks=None, bits_list=(8, 16), seed: int = 0, baseline=None,
              quick: bool = False) -> list[dict]:
    """Benchmark rows, one per (impl, shape, bits, kernel tiles). Raises RuntimeError if a kernel disagrees with
    the reference. baseline: a module with an older `lns_matmul` / `LNSWeight` (see `load_baseline`) or None."""
    import torch

    from kernels.lns import flops, lns_decode, lns_encode, lns_matmul, lns_matmul_ref
    from kernels.lns_small import small_m_tiles
    from kernels.lns_variants import SMALL_M_VARIANTS, auto_variant

    device = torch.device(device)
    shapes = shapes or (SHAPES if device.type == "cuda" else TINY_SHAPES)
    blocks = blocks or (BLOCKS if device.type == "cuda" else TINY_BLOCKS)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    impls = [("new", lns_matmul, None)]
    if baseline is not None:
        impls.append(("old", baseline.lns_matmul, baseline.LNSWeight))
    rows = []
    for M, K, N in shapes:
        x = torch.randn(M, K, generator=gen).to(device=device, dtype=torch.float16)
        w = (torch.randn(N, K, generator=gen) * 0.02).to(device)  # the scale of trained LM weights
        x64 = x.double()
        exact_orig = x64 @ w.double().t()
        for bits in bits_list:
            lw = lns_encode(w, bits)
            w_dec = lns_decode(lw, torch.float32)
            exact_dec = x64 @ w_dec.double().t()
            w16 = w_dec.to(torch.float16)  # torch baseline: the same decoded weight, pre-converted to fp16
            y_torch = torch.matmul(x, w16.t())
            ref = lns_matmul_ref(x, lw)
            for impl, matmul, weight_cls in impls:
                weight = lw if weight_cls is None else weight_cls(lw.codes, lw.offsets, lw.bits, lw.frac_bits)
                # torch is timed beside each impl, so a row's speedup compares timings taken back to back
                torch_ms = _time_ms(functools.partial(torch.matmul, x, w16.t()), device, quick)
                for bm, bn, bk in blocks:
                    row = {
                        "impl": impl, "device": dev_name, "M": M, "K": K, "N": N, "bits": bits,
                        "frac_bits": lw.frac_bits, "x_dtype": "float16", "block_m": bm, "block_n": bn, "block_k": bk,
                        "weight_bytes_lns": lw.nbytes(), "weight_bytes_fp16": N * K * 2,
                        "weight_bytes_fp32": N * K * 4,
                    }
                    if impl == "new":  # lns_matmul's default variant="auto": record the kernel and tiles it runs
                        variant, auto_n, auto_k = auto_variant(M)
                        row["variant"] = variant
                        if variant in SMALL_M_VARIANTS:
                            row["block_m"], row["block_n"], row["block_k"], row["k_slices"] = small_m_tiles(
                                variant, M, N, K, auto_n, auto_k)
                    fn = functools.partial(matmul, x, weight, bm, bn, bk, backend="triton")
                    try:
                        y = fn()
                    except ValueError as e:  # tiles that do not fit this GPU: recorded, never silently replaced
                        row["error"] = str(e)
                        rows.append(row)
                        continue
                    check = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
                    if not check <= CHECK_TOL:
                        raise RuntimeError(
                            f"{impl} lns_matmul disagrees with lns_matmul_ref at M={M} K={K} N={N} bits={bits} "
                            f"blocks=({bm}, {bn}, {bk}): relative error {check:.3e} > {CHECK_TOL:.0e}; not reporting"
                        )
                    lns_ms = _time_ms(fn, device, quick)
                    # After hundreds of timed calls the output must still be bit-identical: a kernel with state
                    # between calls (a baseline's split-K tile counters, say) that drifted would show here.
                    repeats = [fn() for _ in range(REPEAT_CHECK)]
                    if not all(torch.equal(r, y) for r in repeats):
                        raise RuntimeError(
                            f"{impl} lns_matmul is not repeatable at M={M} K={K} N={N} bits={bits} "
                            f"blocks=({bm}, {bn}, {bk}): outputs after timing differ from the checked one; "
                            "not reporting"
                        )
                    fl = flops(M, N, K)
                    row.update({
                        "check_rel_err_vs_ref": check, "check_tol": CHECK_TOL, "check_repeats_identical": REPEAT_CHECK,
                        "lns_ms": lns_ms[0], "lns_ms_p20": lns_ms[1], "lns_ms_p80": lns_ms[2],
                        "torch_fp16_ms": torch_ms[0], "torch_fp16_ms_p20": torch_ms[1],
                        "torch_fp16_ms_p80": torch_ms[2],
                        "lns_tflops": fl / (lns_ms[0] * 1e-3) / 1e12,
                        "torch_fp16_tflops": fl / (torch_ms[0] * 1e-3) / 1e12,
                        "speedup_vs_torch_fp16": torch_ms[0] / lns_ms[0],
                        # weight bytes streamed per second by the LNS kernel (codes + offsets), GB/s
                        "lns_weight_gbps": lw.nbytes() / (lns_ms[0] * 1e-3) / 1e9,
                        "rel_err_lns_vs_decoded": _rel(y, exact_dec),
                        "rel_err_torch_fp16_vs_decoded": _rel(y_torch, exact_dec),
                        "rel_err_lns_vs_original": _rel(y, exact_orig),
                        "rel_err_torch_fp16_vs_original": _rel(y_torch, exact_orig),
                        "timer": lns_ms[3],
                    })
                    rows.append(row)
            del w_dec, exact_dec, w16, y_torch, ref
        del x, w, x64, exact_orig
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --small-m: (M, K, N) and which variants run where (gemv decodes the codes once per row: M <= 64 only).
SMALL_M_BENCH_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (64, 4096, 4096), (4096, 4096, 4096)]
SMALL_M_TINY_SHAPES = [(1, 160, 40), (16, 160, 40), (33, 96, 24)]
GEMV_MAX_M = 16


def small_m_configs(m: int) -> list[tuple[str, tuple[int | None, int | None, int | None]]]:
    """(variant, (block_m, block_n, block_k)) rows for M; None: the variant's default (the tiled kernels: 128, 128,
    32; the small-M ones: kernels/lns_small.py, whose row tile follows M)."""
    default = (None, None, None)
    rows: list[tuple[str, tuple[int | None, int | None, int | None]]] = [("tiled", default), ("tiled_bits", default)]
    if m <= 64:
        rows += [
            ("skinny", default), ("skinny", (None, 16, 256)), ("skinny_splitk", default),
            ("skinny_splitk", (None, 32, 128)), ("swap", default), ("swap", (None, 128, 128)), ("swap_bits", default),
        ]
    if m <= GEMV_MAX_M:
        rows += [("gemv", default), ("gemv_bits", default)]
    return rows


def bench_small_m(device, *, tiny: bool = False, seed: int = 0, keep_going: bool = False) -> list[dict]:
    """One row per (shape, variant, tiles): checked against `lns_matmul_ref`, then timed beside `torch.matmul` fp16
    on the pre-decoded weight. A variant that disagrees, is not repeatable or fails raises RuntimeError; with
    keep_going its row carries "error" and no figure instead, and the others still run."""
    import torch

    from kernels.lns import TILED_DEFAULT_BLOCKS, lns_decode, lns_encode, lns_matmul, lns_matmul_ref
    from kernels.lns_small import small_m_tiles
    from kernels.lns_variants import SMALL_M_VARIANTS

    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for M, K, N in SMALL_M_TINY_SHAPES if tiny else SMALL_M_BENCH_SHAPES:
        x = torch.randn(M, K, generator=gen).to(device=device, dtype=torch.float16)
        lw = lns_encode((torch.randn(N, K, generator=gen) * 0.02).to(device), 8)
        w16 = lns_decode(lw, torch.float16)
        ref = lns_matmul_ref(x, lw).double()
        torch_ms = _time_ms(functools.partial(torch.matmul, x, w16.t()), device, quick=True)
        try:
            torch_graph_ms = _time_graph_ms(functools.partial(torch.matmul, x, w16.t()))
        except Exception as e:  # noqa: BLE001 - the do_bench figures stand; graph speedups are then left out
            torch_graph_ms = None
            print(f"M={M:5d} torch.matmul in a CUDA graph FAILED: {e}", file=sys.stderr, flush=True)
        moved = lw.nbytes() + x.numel() * 2 + M * N * 2  # bytes the LNS kernel must read and write at least
        for variant, (bm, bn, bk) in small_m_configs(M):
            fn = functools.partial(lns_matmul, x, lw, bm, bn, bk, backend="triton", variant=variant)
            slices = 1
            if variant in SMALL_M_VARIANTS:  # record the tiles it really launches with
                bm, bn, bk, slices = small_m_tiles(variant, M, N, K, bn, bk)
            else:
                bm, bn, bk = (d if b is None else b for b, d in zip((bm, bn, bk), TILED_DEFAULT_BLOCKS))
            try:
                y = fn()
                check = ((y.double() - ref).norm() / ref.norm()).item()
                if not check <= CHECK_TOL:
                    raise RuntimeError(
                        f"variant {variant} tiles ({bm}, {bn}, {bk}) disagrees with lns_matmul_ref at M={M} K={K} "
                        f"N={N}: relative error {check:.3e} > {CHECK_TOL:.0e}; not reporting"
                    )
                ms = _time_ms(fn, device, quick=True)
                try:
                    graph_ms, graph_error = _time_graph_ms(fn, expect=y), None
                except Exception as e:  # noqa: BLE001 - the do_bench figure stands; the graph one is left out, with why
                    graph_ms, graph_error = None, f"{type(e).__name__}: {e}"
                if not all(torch.equal(fn(), y) for _ in range(REPEAT_CHECK)):
                    raise RuntimeError(f"variant {variant} is not repeatable at M={M} K={K} N={N}; not reporting")
            except Exception as e:  # one broken variant must not cost the others' figures: a row without timings
                if not keep_going:
                    raise
                rows.append({"variant": variant, "M": M, "K": K, "N": N, "block_m": bm, "block_n": bn,
                             "block_k": bk, "k_slices": slices, "error": f"{type(e).__name__}: {e}"})
                print(f"M={M:5d} {variant:18s} FAILED: {e}", file=sys.stderr, flush=True)
                continue
            rows.append({
                "variant": variant, "M": M, "K": K, "N": N, "ms": ms[0], "torch_fp16_ms": torch_ms[0],
                "speedup_vs_torch_fp16": torch_ms[0] / ms[0], "gbps": moved / (ms[0] * 1e-3) / 1e9,
                # the same, replayed from CUDA graphs (no host time inside the interval); None on CPU
                "graph_ms": graph_ms, "torch_fp16_graph_ms": torch_graph_ms, "graph_error": graph_error,
                "graph_speedup_vs_torch_fp16": torch_graph_ms / graph_ms if graph_ms and torch_graph_ms else None,
                "block_m": bm, "block_n": bn, "block_k": bk, "k_slices": slices, "ms_p20": ms[1], "ms_p80": ms[2],
                "bits": 8, "x_dtype": "float16", "check_rel_err_vs_ref": check, "timer": ms[3],
            })
            print(f"M={M:5d} {variant:18s} tiles {bm:3d}/{bn:3d}/{bk:3d} x{slices}: {ms[0] * 1e3:9.1f} us, torch "
                  f"{torch_ms[0] * 1e3:9.1f} us, x{torch_ms[0] / ms[0]:.3f}", file=sys.stderr, flush=True)
        del x, lw, w16, ref
    return rows


def lns_rows(device, *, tiny: bool = False, quick: bool = False, baseline_path: str | None = None) -> list[dict]:
    """The rows of one mode (tiny, quick or full), with an older module's rows when `baseline_path` is given."""
    baseline = load_baseline(baseline_path) if baseline_path else None
    if tiny:
        return bench_lns(device, shapes=TINY_SHAPES, blocks=TINY_BLOCKS, baseline=baseline)
    if quick:
        return bench_lns(device, shapes=QUICK_SHAPES, blocks=QUICK_BLOCKS, bits_list=(8,), baseline=baseline,
                         quick=True)
    return bench_lns(device, baseline=baseline)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder to write lns_bench.json into")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and tiles: a smoke check (runs on CPU)")
    p.add_argument("--quick", action="store_true",
                   help="8-bit codes, default tiles, shapes M = 4096, 8192 and 1, 16, 64; fewer repetitions")
    p.add_argument("--small-m", action="store_true",
                   help="every lns_matmul variant at M = 1, 16, 64 (and 4096), K = N = 4096: DIR/lns_small_m.json")
    p.add_argument("--baseline", metavar="PATH",
                   help="an older kernels/lns.py to run beside this one (rows with impl 'old')")
    args = p.parse_args(argv)
    if args.tiny and args.quick:
        p.error("--tiny and --quick exclude each other")
    if args.small_m and (args.quick or args.baseline):
        p.error("--small-m runs its own shapes and this tree's variants: leave out --quick and --baseline")
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        p.error("no CUDA GPU: the full benchmark needs one; use --tiny for a CPU smoke check")
    if not cuda:
        # The Triton interpreter must be chosen before triton is first imported (kernels.lns imports it).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton

    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    if args.small_m:
        return _small_m_main(args, device, cuda, t0)
    rows = lns_rows(device, tiny=args.tiny, quick=args.quick, baseline_path=args.baseline)
    result = {
        "device": rows[0]["device"] if rows else str(device), "torch": torch.__version__,
        "triton": triton.__version__, "python": platform.python_version(), "tiny": args.tiny, "quick": args.quick,
        "baseline": args.baseline, "bench_wall_s": time.perf_counter() - t0, "lns": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "lns_bench.json"), "w") as fh:
            fh.write(text + "\n")
    return 0


def _small_m_main(args, device, cuda: bool, t0: float) -> int:
    import triton

    from bench._common import device_header, write_json

    rows = bench_small_m(device, tiny=args.tiny, keep_going=True)
    result = {
        **device_header(), "triton": triton.__version__, "tiny": args.tiny, "interpreter": not cuda,
        "note": "CPU Triton interpreter: a check of the script, the figures are not timings" if not cuda else
        "ms: triton.testing.do_bench median (L2 flushed); graph_ms: CUDA-graph replay median (L2 flushed, no host "
        "time inside); gbps: (codes + offsets + x + y bytes) / ms",
        "bench_wall_s": time.perf_counter() - t0, "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from pathlib import Path

        write_json(Path(args.out) / "lns_small_m.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
