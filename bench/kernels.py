"""GPU benchmark of the fused gated scan (kernels/scan.py) against plain torch, plus the LNS matmul bench.

Usage: python bench/kernels.py --out DIR [--skip-lns] [--quick]   (development: --sweep, --diag write their own file)
Writes DIR/kernels.json. Every kernel is checked against a float64 reference on fresh random inputs
before it is timed; a kernel that disagrees is not reported and the script exits non-zero.
Bandwidth figures count bytes read + written; the device-to-device copy is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# `python bench/kernels.py` puts bench/ first on sys.path, where this very file would shadow the `kernels` package:
# the repo root goes first, bench/ right after it (for `from lns_bench import bench_lns`).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path[:0] = [os.path.dirname(BENCH_DIR), BENCH_DIR]

import torch  # noqa: E402
SHAPES = [(8, 2048, 64), (16, 4096, 64), (8, 16384, 64)]
# Checked (not timed) before anything is timed: odd lengths and channel counts exercise the masks, several
# channel blocks and many chunks exercise the look-back under real concurrency.
ODD_SHAPES = [(1, 130, 5), (3, 1000, 24), (2, 4097, 48), (4, 8192, 96)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative error ||out - ref|| / ||ref|| allowed against the float64 reference, per input dtype:
# fp32 accumulates in fp32 (~1e-6 observed); bf16 rounds every input and output (2^-8 relative).
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2, torch.float16: 5e-3}


# (BLOCK_T, BLOCK_R, num_warps, WINDOW) candidates for --sweep.
SWEEP_TILES = [(64, 32, 2, 4), (64, 32, 2, 8), (64, 32, 4, 4), (128, 32, 4, 4), (64, 16, 1, 8), (64, 64, 4, 8)]


class KernelMismatch(RuntimeError):
    pass


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(B, L, R, dtype, a_is_one, device="cuda", seed=0):
    """Random inputs shaped like the model's: u, v ~ N(0, 1), g = sigmoid(N(0, 1)), a = 1 or U(0.9, 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    u = torch.randn(B, L, R, device=device, generator=gen).to(dtype)
    g = torch.sigmoid(torch.randn(B, L, R, device=device, generator=gen)).to(dtype)
    v = torch.randn(B, L, R, device=device, generator=gen).to(dtype)
    a = torch.ones(R, device=device) if a_is_one else 0.9 + 0.1 * torch.rand(R, device=device, generator=gen)
    return u, g, v, a


def verify_scan(B, L, R, dtype, a_is_one, tiles=None, seed=1) -> dict:
    """Fused forward and all four gradients against the chunked torch scan in float64, on fresh inputs.
    Raises KernelMismatch on disagreement (NaN included)."""
    from kernels.scan import _GatedScanFn, _gated_scan_torch

    u, g, v, a = make_inputs(B, L, R, dtype, a_is_one, seed=seed)
    # Poison: fill and free a NaN block so the kernels' torch.empty outputs likely reuse NaN memory;
    # an element a kernel forgets to write then fails the check instead of passing on stale data.
    poison = torch.full((8 * u.numel(),), float("nan"), dtype=dtype, device="cuda")
    del poison
    dy = torch.randn(B, L, R, device="cuda", generator=torch.Generator("cuda").manual_seed(seed + 7)).to(dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
    y = _GatedScanFn.apply(*leaves, tiles)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (u, g, v, a)]
    y_ref = _gated_scan_torch(*ref_leaves)
    ref_grads = torch.autograd.grad(y_ref, ref_leaves, dy.double())
    errs = {"y": _rel(y, y_ref)}
    for name, gr, rg in zip(("du", "dg", "dv", "da"), grads, ref_grads):
        errs[name] = _rel(gr, rg)
    tol = REL_TOL[dtype]
    bad = {k: e for k, e in errs.items() if not e <= tol}
    if bad:
        raise KernelMismatch(f"scan B={B} L={L} R={R} {dtype} a_is_one={a_is_one} tiles={tiles}: rel err {bad} > {tol}")
    return errs


def copy_gbps(do_bench) -> float:
    """Device-to-device copy of 1 GiB: GB/s counting bytes read + written (10^9 bytes)."""
    n = 2**28
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def _bench(do_bench, fn, quick):
    q = do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 500, quantiles=[0.5, 0.2, 0.8])
    return q[0], q[1], q[2]


def bench_scan_row(do_bench, B, L, R, dname, a_is_one, copy, quick, tiles=None, with_ref=True) -> dict:
    from kernels.scan import _scan_bwd, _scan_fwd

    dtype = DTYPES[dname]
    errs = verify_scan(B, L, R, dtype, a_is_one, tiles)
    u, g, v, a = make_inputs(B, L, R, dtype, a_is_one, seed=3)
    dy = torch.randn_like(u)
    _, carry, used = _scan_fwd(u, g, v, a, save_carry=True, tiles=tiles)
    # Forward as training runs it (saving the per-chunk carry for the backward).
    fwd = _bench(do_bench, lambda: _scan_fwd(u, g, v, a, save_carry=True, tiles=tiles), quick)
    bwd = _bench(do_bench, lambda: _scan_bwd(dy, u, g, v, a, carry, used), quick)
    # Plain torch with a = 1 (the guide's formulation), autograd for the backward.
    leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v)]
    ru, rg, rv = leaves

    def ref_fwd():
        return rg * rv * torch.cumsum(rg * ru, dim=1)

    ref_f = ref_b = (float("nan"),) * 3
    if with_ref:
        y_ref = ref_fwd()
        ref_f = _bench(do_bench, ref_fwd, quick)
        ref_b = _bench(do_bench, lambda: torch.autograd.backward(y_ref, dy, retain_graph=True, inputs=leaves), quick)
    el = B * L * R * u.element_size()
    fwd_gbps = 4 * el / (fwd[0] * 1e-3) / 1e9
    bwd_gbps = 7 * el / (bwd[0] * 1e-3) / 1e9
    return {
        "B": B, "L": L, "R": R, "dtype": dname, "a_is_one": a_is_one,
        "tiles": {"block_t": used[0], "block_r": used[1], "num_warps": used[2], "window": used[3]},
        "fwd_ms": fwd[0], "fwd_ms_p20_p80": [fwd[1], fwd[2]],
        "bwd_ms": bwd[0], "bwd_ms_p20_p80": [bwd[1], bwd[2]],
        "ref_fwd_ms": ref_f[0], "ref_fwd_ms_p20_p80": [ref_f[1], ref_f[2]],
        "ref_bwd_ms": ref_b[0], "ref_bwd_ms_p20_p80": [ref_b[1], ref_b[2]],
        "fwd_gbps": fwd_gbps, "bwd_gbps": bwd_gbps,
        "fwd_frac_copy": fwd_gbps / copy, "bwd_frac_copy": bwd_gbps / copy,
        "speedup_fwd_bwd": (ref_f[0] + ref_b[0]) / (fwd[0] + bwd[0]),
        "rel_err": errs,
    }


def sweep(do_bench, copy, quick) -> list[dict]:
    """Tile-size sweep (development): each of SWEEP_TILES per shape and dtype, fwd and bwd timed; then the
    registers and spills of every compiled variant."""
    from kernels import scan as S

    rows = []
    for B, L, R in SHAPES[1:]:
        for dname in DTYPES:
            for tiles in SWEEP_TILES:
                try:
                    r = bench_scan_row(do_bench, B, L, R, dname, True, copy, True, tiles=tiles, with_ref=False)
                except KernelMismatch:
                    raise
                except Exception as e:  # a tile that does not compile (resources) is recorded, not hidden
                    rows.append({"B": B, "L": L, "dtype": dname, "tiles": tiles, "error": repr(e)[:200]})
                    continue
                rows.append({"B": B, "L": L, "dtype": dname, "tiles": tiles,
                             "fwd_frac": round(r["fwd_frac_copy"], 3), "bwd_frac": round(r["bwd_frac_copy"], 3),
                             "fwd_ms": r["fwd_ms"], "bwd_ms": r["bwd_ms"]})
                print({k: v for k, v in rows[-1].items() if k not in ("fwd_ms", "bwd_ms")}, flush=True)
    for name, kern in (("fwd", S._scan_fwd_kernel), ("bwd", S._scan_bwd_kernel)):
        for key, ck in kern.device_caches[0][0].items():
            consts = [x for x in str(key).split("('constexpr', ")[1:]]
            print(name, "regs", ck.n_regs, "spills", ck.n_spills, "consts", [c.split(")")[0] for c in consts][:8])
    return rows


def diagnose(do_bench, copy) -> list[dict]:
    """Where the time goes (development): a Triton copy with the scan's tiling (load 3 tiles, store 1), the
    kernels without the look-back (wrong results on purpose: times the tile work alone), the full kernels;
    plus registers and spills of each compiled kernel."""
    import triton
    import triton.language as tl

    from kernels import scan as S

    @triton.jit
    def tile_copy(u_ptr, g_ptr, v_ptr, y_ptr, L, R: tl.constexpr, BLOCK_T: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        offs = rows[:, None].to(tl.int64) * R + tl.arange(0, R)[None, :]
        m = (rows < L)[:, None]
        x = tl.load(u_ptr + offs, mask=m) * tl.load(g_ptr + offs, mask=m) + tl.load(v_ptr + offs, mask=m)
        tl.store(y_ptr + offs, x, mask=m)

    rows = []
    for B, L, R in SHAPES[1:]:
        for dname, dtype in DTYPES.items():
            u, g, v, a = make_inputs(B, L, R, dtype, False, seed=5)
            dy = torch.randn_like(u)
            el = B * L * R * u.element_size()
            for bt in (64, 128):
                for w in (4, 8):
                    tiles = (bt, 64, w, 16)
                    y = torch.empty_like(u)
                    t_copy = do_bench(lambda: tile_copy[(B * L // bt,)](u, g, v, y, B * L, R, BLOCK_T=bt, num_warps=w),
                                      return_mode="median")
                    _, carry, used = S._scan_fwd(u, g, v, a, True, tiles)
                    f0 = do_bench(lambda: S._scan_fwd(u, g, v, a, True, tiles, meta={"LOOKBACK": False}), return_mode="median")
                    f1 = do_bench(lambda: S._scan_fwd(u, g, v, a, True, tiles), return_mode="median")
                    b0 = do_bench(lambda: S._scan_bwd(dy, u, g, v, a, carry, used, meta={"LOOKBACK": False}), return_mode="median")
                    b1 = do_bench(lambda: S._scan_bwd(dy, u, g, v, a, carry, used), return_mode="median")
                    row = {"B": B, "L": L, "dtype": dname, "block_t": bt, "warps": w,
                           "copy_frac": round(4 * el / (t_copy * 1e-3) / 1e9 / copy, 3),
                           "fwd_nolb_frac": round(4 * el / (f0 * 1e-3) / 1e9 / copy, 3),
                           "fwd_frac": round(4 * el / (f1 * 1e-3) / 1e9 / copy, 3),
                           "bwd_nolb_frac": round(7 * el / (b0 * 1e-3) / 1e9 / copy, 3),
                           "bwd_frac": round(7 * el / (b1 * 1e-3) / 1e9 / copy, 3)}
                    rows.append(row)
                    print(row, flush=True)
    for name, kern in (("fwd", S._scan_fwd_kernel), ("bwd", S._scan_bwd_kernel)):
        try:
            for key, ck in kern.device_caches[0][0].items():
                print(name, "regs", ck.n_regs, "spills", ck.n_spills, str(key)[:300])
        except Exception as e:  # introspection differs between Triton versions; the timings above stand alone
            print(name, "no register report:", repr(e)[:200])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for kernels.json")
    p.add_argument("--skip-lns", action="store_true", help="leave out the LNS matmul bench")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smallest shape only")
    p.add_argument("--sweep", action="store_true", help="only sweep scan tile sizes (development)")
    p.add_argument("--diag", action="store_true", help="only the where-does-time-go diagnosis (development)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench

    bench_lns = None
    if not args.skip_lns:
        from lns_bench import bench_lns  # a missing module is an error: pass --skip-lns to leave LNS out

    dev = torch.cuda.get_device_name()
    print(f"device {dev} | torch {torch.__version__} | triton {triton.__version__} | python {platform.python_version()}")
    torch.manual_seed(0)
    copy = copy_gbps(do_bench)
    print(f"device-to-device copy: {copy:.0f} GB/s (read + write)", flush=True)
    result = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "copy_gbps": copy, "scan": []}
    if args.diag or args.sweep:  # development modes: they write their own file, not kernels.json
        os.makedirs(args.out, exist_ok=True)
        name, fn = ("diag", diagnose) if args.diag else ("sweep", sweep)
        try:
            rows = fn(do_bench, copy) if args.diag else fn(do_bench, copy, True)
        except KernelMismatch as e:
            print(f"error: kernel disagrees with the reference, not reported: {e}", file=sys.stderr)
            return 1
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return 0
    shapes = SHAPES[:1] if args.quick else SHAPES
    t0 = time.time()
    try:
        for B, L, R in ODD_SHAPES:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                errs = verify_scan(B, L, R, dtype, a_is_one=False, seed=11)
                result.setdefault("checked", []).append(
                    {"B": B, "L": L, "R": R, "dtype": str(dtype)[6:], "rel_err": errs})
        print(f"checked {len(result['checked'])} odd shapes/dtypes against float64: all within tolerance", flush=True)
        for B, L, R in shapes:  # warm-up: compile and settle clocks before the first timed row
            u, g, v, a = make_inputs(B, L, R, torch.float32, True)
            for _ in range(20):
                torch.cumsum(g * u, dim=1)
        torch.cuda.synchronize()
        for B, L, R in shapes:
            for dname in DTYPES:
                for a_is_one in (True, False) if (B, L, R) == SHAPES[1] else (True,):
                    row = bench_scan_row(do_bench, B, L, R, dname, a_is_one, copy, args.quick)
                    result["scan"].append(row)
                    print(f"scan B={B} L={L} R={R} {dname} a1={a_is_one}: fwd {row['fwd_ms']*1e3:.1f} us "
                          f"({row['fwd_frac_copy']:.0%} copy), bwd {row['bwd_ms']*1e3:.1f} us "
                          f"({row['bwd_frac_copy']:.0%}), ref {row['ref_fwd_ms']*1e3:.0f}+{row['ref_bwd_ms']*1e3:.0f} us, "
                          f"speedup x{row['speedup_fwd_bwd']:.1f}", flush=True)
    except KernelMismatch as e:
        print(f"error: kernel disagrees with the reference, not reported: {e}", file=sys.stderr)
        return 1
    if bench_lns is not None:
        result["lns"] = bench_lns(torch.device("cuda"))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "kernels.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    print(f"{'shape':>16} {'dtype':>5} {'a=1':>4} {'fwd GB/s':>9} {'%copy':>6} {'bwd GB/s':>9} {'%copy':>6} {'speedup':>8}")
    for r in result["scan"]:
        print(f"{str((r['B'], r['L'], r['R'])):>16} {r['dtype']:>5} {str(r['a_is_one'])[0]:>4} {r['fwd_gbps']:9.0f} "
              f"{r['fwd_frac_copy']:6.0%} {r['bwd_gbps']:9.0f} {r['bwd_frac_copy']:6.0%} {r['speedup_fwd_bwd']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
