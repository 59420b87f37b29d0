"""LNS matmul benchmark: the Triton `lns_matmul` against `torch.matmul` in fp16 on a pre-decoded weight.

For each shape (M, K, N), code width and tile config it first checks the kernel against `lns_matmul_ref` and
raises if they disagree (nothing is reported for a wrong kernel), then times both with `triton.testing.do_bench`
(median and 20/80% quantiles, ms), and reports TFLOP/s, weight bytes, and the relative error of both against
exact products of (a) the decoded weights and (b) the original fp32 weights (fp32 operands, float64 sums).

Usage: python bench/lns_bench.py --out DIR            (GPU; writes DIR/lns_bench.json and prints it)
       python bench/lns_bench.py --tiny [--out DIR]   (smoke check; on CPU it runs the Triton interpreter and its
                                                       timings are perf_counter medians, not performance figures)
`bench_lns(device)` is also imported by bench/kernels.py, which files the list under "lns" of kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# `python bench/lns_bench.py` puts bench/ first on sys.path, where bench/kernels.py would shadow the `kernels`
# package: the repo root goes first (bench/ stays, after it, for scripts that import this one by name).
if sys.path[:1] != [os.path.dirname(_BENCH_DIR)]:
    sys.path.insert(0, os.path.dirname(_BENCH_DIR))

# (M, K, N): the brief's three compute-bound shapes, plus a small-M (memory-bound, decode-like) one where moving
# 1-2 bytes per weight instead of 2 should matter most.
SHAPES = [(4096, 4096, 4096), (8192, 1024, 4096), (2048 * 8, 1024, 64), (16, 4096, 4096)]
TINY_SHAPES = [(33, 65, 47), (64, 32, 16)]
# Tiles: the guide's Ampere default, a deeper K tile, a narrow-N tile for the N = 64 shape, a small tile for
# small M, the guide's Ada preset.
BLOCKS = [(128, 128, 32), (128, 128, 64), (128, 64, 64), (64, 64, 128), (256, 256, 64)]
TINY_BLOCKS = [(16, 16, 16), (32, 64, 32)]
CHECK_TOL = 2e-3  # normwise relative error, Triton vs reference, fp16 input (see tests/kernels/test_lns.py)


def _rel(y, ref) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def _time_ms(fn, device) -> tuple[float, float, float, str]:
    """(median, p20, p80) in ms and the timer used."""
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return med, p20, p80, "triton.testing.do_bench (CUDA events)"
    times = []
    fn()  # warm-up
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5)
    return statistics.median(times), q[0], q[3], "time.perf_counter on CPU (Triton interpreter: not a speed figure)"


def bench_lns(device, *, shapes=None, blocks=None, bits_list=(8, 16), seed: int = 0) -> list[dict]:
    """Benchmark rows, one per (shape, bits, tiles). Raises RuntimeError if the kernel disagrees with the reference."""
    import torch

    from kernels.lns import flops, lns_decode, lns_encode, lns_matmul, lns_matmul_ref

    device = torch.device(device)
    shapes = shapes or (SHAPES if device.type == "cuda" else TINY_SHAPES)
    blocks = blocks or (BLOCKS if device.type == "cuda" else TINY_BLOCKS)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    gen = torch.Generator(device="cpu").manual_seed(seed)
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
            torch_ms = _time_ms(lambda: torch.matmul(x, w16.t()), device)
            ref = lns_matmul_ref(x, lw)
            for bm, bn, bk in blocks:
                row = {
                    "device": dev_name, "M": M, "K": K, "N": N, "bits": bits, "frac_bits": lw.frac_bits,
                    "block_m": bm, "block_n": bn, "block_k": bk, "x_dtype": "float16",
                    "weight_bytes_lns": lw.nbytes(), "weight_bytes_fp16": N * K * 2, "weight_bytes_fp32": N * K * 4,
                }
                try:
                    y = lns_matmul(x, lw, bm, bn, bk, backend="triton")
                except ValueError as e:  # tiles that do not fit this GPU: recorded, never silently replaced
                    row["error"] = str(e)
                    rows.append(row)
                    continue
                check = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
                if not check <= CHECK_TOL:
                    raise RuntimeError(
                        f"lns_matmul disagrees with lns_matmul_ref at M={M} K={K} N={N} bits={bits} "
                        f"blocks=({bm}, {bn}, {bk}): relative error {check:.3e} > {CHECK_TOL:.0e}; not reporting"
                    )
                lns_ms = _time_ms(lambda: lns_matmul(x, lw, bm, bn, bk, backend="triton"), device)
                fl = flops(M, N, K)
                row.update({
                    "check_rel_err_vs_ref": check, "check_tol": CHECK_TOL,
                    "lns_ms": lns_ms[0], "lns_ms_p20": lns_ms[1], "lns_ms_p80": lns_ms[2],
                    "torch_fp16_ms": torch_ms[0], "torch_fp16_ms_p20": torch_ms[1], "torch_fp16_ms_p80": torch_ms[2],
                    "lns_tflops": fl / (lns_ms[0] * 1e-3) / 1e12, "torch_fp16_tflops": fl / (torch_ms[0] * 1e-3) / 1e12,
                    "speedup_vs_torch_fp16": torch_ms[0] / lns_ms[0],
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder to write lns_bench.json into")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and tiles: a smoke check (runs on CPU)")
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        p.error("no CUDA GPU: the full benchmark needs one; use --tiny for a CPU smoke check")
    if not cuda:
        # The Triton interpreter must be chosen before triton is first imported (kernels.lns imports it).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton

    device = torch.device("cuda" if cuda else "cpu")
    rows = bench_lns(device, shapes=TINY_SHAPES if args.tiny else None, blocks=TINY_BLOCKS if args.tiny else None)
    result = {
        "device": rows[0]["device"] if rows else str(device), "torch": torch.__version__,
        "triton": triton.__version__, "python": platform.python_version(), "tiny": args.tiny, "lns": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "lns_bench.json"), "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
