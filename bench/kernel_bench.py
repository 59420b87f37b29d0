"""GPU benchmark of the gated scan (kernels/scan.py), public autograd path and bare launchers, plus the LNS matmul.

Usage: python bench/kernel_bench.py --out DIR [--quick] [--skip-lns] [--baseline PATH]   (development: --sweep)
Writes DIR/kernels.json. Before any timing, every implementation and path is checked against the float64
chunked torch scan (output and all four gradients) on fresh inputs; one that disagrees is not reported and
the script exits non-zero. Bandwidth figures count the bytes a scan must move (forward: read u, g, v, write y;
backward: read dy, u, g, v, write du, dg, dv) against the device-to-device copy measured in the same run.

Scan rows, one per shape, dtype and path:
  "bare":   the launchers `_scan_fwd` / `_scan_bwd` (what the kernels cost, allocations included);
  "public": `gated_scan(..., backend="triton")` through autograd, as the model calls it: fwd_ms is the forward
            with inputs that require grad; bwd_ms is forward + `torch.autograd.grad` minus that forward (medians;
            bwd p20/p80 are the fwd+bwd quantiles minus the forward median);
  "public_old" / "bare_old": the same for the module given by --baseline (e.g. the previous kernels/scan.py).
Beside those eager figures (which count host work wherever the GPU waits for it), every row also has
  fwd_ms_graph / bwd_ms_graph (+ _p20_p80, frac_copy_graph): the same calls captured once in a CUDA graph and
            replayed (same definitions: public bwd = fwd+bwd graph minus fwd graph): device time, no host work;
  fwd_host_ms / bwd_host_ms: host (CPU) wall time per call, the GPU not waited for (public bwd likewise a difference).
"autograd_floor": the same host and eager figures for an autograd Function that launches no kernel, called the
public way: what the autograd machinery alone costs on this host, which no public path can go below.
--quick: fewer repetitions and no torch-reference timings; all shapes, dtypes and paths, all checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time

# The repo's packages first (the project is not pip-installed); bench/ (where `python bench/x.py` starts the
# path) stays after it, for `from lns_bench import lns_rows`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

# (B, L, R): the three shapes of earlier runs (the two targets among them), the odd shapes checked before
# (masks, several channel blocks), a wider rank and a long sequence. Every one is timed on both paths.
SHAPES = [(8, 2048, 64), (16, 4096, 64), (8, 16384, 64), (3, 1000, 24), (2, 4097, 48), (4, 8192, 96),
          (32, 2048, 128), (2, 65536, 64)]
TARGETS = [(16, 4096, 64), (8, 16384, 64)]
CHECK_ONLY = [(1, 130, 5)]  # checked (fp32, bf16, fp16), not timed
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative error ||out - ref|| / ||ref|| allowed against the float64 reference, per input dtype:
# fp32 accumulates in fp32 (~1e-6 observed); bf16 rounds every input and output (2^-8 relative).
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2, torch.float16: 5e-3}
GRADS = ("y", "du", "dg", "dv", "da")
DEVICE = "cuda"  # tests set "cpu" (Triton's interpreter, a stand-in timer) to exercise the checks and rows


class KernelMismatch(RuntimeError):
    pass


def load_impl(path: str):
    """A scan module (kernels/scan.py or a copy of an older one) imported from its file under a private name."""
    name = "scan_impl_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton's JIT reads kernel sources through the module
    spec.loader.exec_module(mod)
    return mod


def make_inputs(B, L, R, dtype, seed=0):
    """Random inputs shaped like the model's: u, v, dy ~ N(0, 1), g = sigmoid(N(0, 1)), a ~ U(0.9, 1)."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    u = torch.randn(B, L, R, device=DEVICE, generator=gen).to(dtype)
    g = torch.sigmoid(torch.randn(B, L, R, device=DEVICE, generator=gen)).to(dtype)
    v = torch.randn(B, L, R, device=DEVICE, generator=gen).to(dtype)
    a = 0.9 + 0.1 * torch.rand(R, device=DEVICE, generator=gen)
    dy = torch.randn(B, L, R, device=DEVICE, generator=gen).to(dtype)
    return u, g, v, a, dy


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def reference(u, g, v, a, dy):
    """y and the four gradients of the chunked torch scan in float64 (kernels/scan.py's torch backend)."""
    from kernels.scan import _gated_scan_torch

    leaves = [t.detach().double().requires_grad_(True) for t in (u, g, v, a)]
    y = _gated_scan_torch(*leaves)
    return (y, *torch.autograd.grad(y, leaves, dy.double()))


def run_path(impl, path, u, g, v, a, dy):
    """y, du, dg, dv, da through one path of one implementation."""
    if path == "public":
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
        y = impl.gated_scan(*leaves, backend="triton")
        return (y, *torch.autograd.grad(y, leaves, dy))
    y, carry, tiles = impl._scan_fwd(u, g, v, a, True)
    return (y, *impl._scan_bwd(dy, u, g, v, a, carry, tiles))


def check(impl, path, B, L, R, dtype, ref_cache, seed=1) -> dict:
    """Relative errors of one path against float64 on fresh inputs; raises KernelMismatch (NaN included)."""
    key = (B, L, R, dtype, seed)
    if key not in ref_cache:
        inputs = make_inputs(B, L, R, dtype, seed=seed)
        ref_cache.clear()  # one reference at a time: the large ones take GiBs in float64
        ref_cache[key] = (inputs, reference(*inputs))
    inputs, ref = ref_cache[key]
    # Poison: fill and free a NaN block so the kernels' torch.empty outputs likely reuse NaN memory; an element
    # a kernel forgets to write then fails the check instead of passing on stale data.
    poison = torch.full((8 * inputs[0].numel(),), float("nan"), dtype=dtype, device=DEVICE)
    del poison
    errs = {n: _rel(o, r) for n, o, r in zip(GRADS, run_path(impl, path, *inputs), ref)}
    bad = {k: e for k, e in errs.items() if not e <= REL_TOL[dtype]}
    if bad:
        raise KernelMismatch(f"{impl.__name__} {path} B={B} L={L} R={R} {dtype}: rel err {bad} > {REL_TOL[dtype]}")
    return errs


def copy_gbps(do_bench) -> float:
    """Device-to-device copy of 1 GiB: GB/s counting bytes read + written (10^9 bytes)."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def path_fns(impl, path, u, g, v, a, dy):
    """(forward, second, second_is_fwd_bwd): the calls one path times. public: the forward through gated_scan, then
    forward + torch.autograd.grad (its backward is the difference); bare: the two launchers."""
    if path == "public":
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
        return (lambda: impl.gated_scan(*leaves, backend="triton"),
                lambda: torch.autograd.grad(impl.gated_scan(*leaves, backend="triton"), leaves, dy), True)
    _, carry, tiles = impl._scan_fwd(u, g, v, a, True)
    return lambda: impl._scan_fwd(u, g, v, a, True), lambda: impl._scan_bwd(dy, u, g, v, a, carry, tiles), False


def time_pair(timer, fwd_fn, second_fn, both) -> tuple[list, list]:
    """([fwd median, p20, p80], [bwd median, p20, p80]) in ms with timer(fn) -> [median, p20, p80]; when `both`,
    the second call is forward + backward and the backward is its quantiles minus the forward median."""
    fwd, second = timer(fwd_fn), timer(second_fn)
    return fwd, ([x - fwd[0] for x in second] if both else second)


def time_path(do_bench, impl, path, u, g, v, a, dy, reps) -> tuple[list, list]:
    """([fwd median, p20, p80], [bwd median, p20, p80]) in ms for one path (see the module docstring)."""
    return time_pair(lambda fn: do_bench(fn, warmup=reps[0], rep=reps[1], quantiles=[0.5, 0.2, 0.8]),
                     *path_fns(impl, path, u, g, v, a, dy))


def graph_bench(do_bench, fn, reps) -> list:
    """[median, p20, p80] ms of replaying a CUDA graph of fn (captured after a warm-up on a side stream, as
    torch.cuda.graph asks): the device time of fn's kernels without the host work that launches them."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=reps[0], rep=reps[1], quantiles=[0.5, 0.2, 0.8])


def host_ms(fn, n=20, batches=7) -> list:
    """[median, p20, p80] ms of host (CPU) wall time per call over batches of n calls, the device synchronised only
    between batches: the GPU is never waited for (n calls queue far fewer launches than the launch queue holds)."""
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    fn()
    per_call = []
    for _ in range(batches):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t0) / n * 1e3)
    sync()
    per_call.sort()
    return [per_call[len(per_call) // 2], per_call[len(per_call) // 5], per_call[(4 * len(per_call)) // 5]]


class _NullFn(torch.autograd.Function):
    """Four inputs like the scan's, no kernel: outputs from the caching allocator, nothing computed."""

    @staticmethod
    def forward(ctx, u, g, v, a):
        ctx.save_for_backward(u, g, v, a)
        return torch.empty_like(u)

    @staticmethod
    def backward(ctx, _dy):
        u, g, v, a = ctx.saved_tensors
        return torch.empty_like(u), torch.empty_like(g), torch.empty_like(v), torch.empty_like(a)


def autograd_floor(timers, reps, shape=(16, 4096, 64)) -> dict:
    """Eager and host ms of _NullFn called the way the public path is timed (forward; forward + autograd.grad)."""
    u, g, v, a, dy = make_inputs(*shape, torch.float32, seed=3)
    leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
    fns = (lambda: _NullFn.apply(*leaves), lambda: torch.autograd.grad(_NullFn.apply(*leaves), leaves, dy), True)
    do_bench, _, host = timers
    eager = time_pair(lambda fn: do_bench(fn, warmup=reps[0], rep=reps[1], quantiles=[0.5, 0.2, 0.8]), *fns)
    on_host = time_pair(host, *fns)
    row = {"B": shape[0], "L": shape[1], "R": shape[2], "fwd_ms": eager[0][0], "bwd_ms": eager[1][0],
           "fwd_host_ms": on_host[0][0], "bwd_host_ms": on_host[1][0]}
    print(f"autograd floor (no kernel) {shape}: eager fwd {row['fwd_ms'] * 1e3:6.1f} us bwd {row['bwd_ms'] * 1e3:6.1f}"
          f" us | host fwd {row['fwd_host_ms'] * 1e3:6.1f} us bwd {row['bwd_host_ms'] * 1e3:6.1f} us", flush=True)
    return row


def scan_row(timers, impl, path, label, B, L, R, dname, copy, errs, reps, with_ref) -> dict:
    """One row: eager (do_bench), CUDA-graph replay and host figures of one path (see the module docstring)."""
    do_bench, graph, host = timers
    dtype = DTYPES[dname]
    u, g, v, a, dy = make_inputs(B, L, R, dtype, seed=3)
    fwd, bwd = time_path(do_bench, impl, path, u, g, v, a, dy, reps)
    tiles = impl._scan_fwd(u, g, v, a, True)[2]  # what the launcher picks (the public path picks the same)
    el = B * L * R * u.element_size()

    def gbps(f_ms, b_ms):
        return 4 * el / (f_ms * 1e-3) / 1e9, 7 * el / (b_ms * 1e-3) / 1e9

    fwd_gbps, bwd_gbps = gbps(fwd[0], bwd[0])
    row = {"B": B, "L": L, "R": R, "dtype": dname, "a_is_one": False, "path": label,
           "tiles": dataclasses.asdict(tiles) if dataclasses.is_dataclass(tiles) else list(tiles),
           "fwd_ms": fwd[0], "fwd_ms_p20_p80": fwd[1:], "bwd_ms": bwd[0], "bwd_ms_p20_p80": bwd[1:],
           "fwd_gbps": fwd_gbps, "bwd_gbps": bwd_gbps, "fwd_frac_copy": fwd_gbps / copy,
           "bwd_frac_copy": bwd_gbps / copy, "rel_err": errs}
    try:
        gf, gb = time_pair(lambda fn: graph(fn, reps), *path_fns(impl, path, u, g, v, a, dy))
        g_fwd, g_bwd = gbps(gf[0], gb[0])
        row.update(fwd_ms_graph=gf[0], fwd_ms_graph_p20_p80=gf[1:], bwd_ms_graph=gb[0], bwd_ms_graph_p20_p80=gb[1:],
                   fwd_frac_copy_graph=g_fwd / copy, bwd_frac_copy_graph=g_bwd / copy)
    except RuntimeError as e:  # a path that cannot be captured is reported as such, with the reason
        row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
        print(f"scan {label} B={B} L={L} R={R} {dname}: no CUDA-graph figures ({row['graph_error']})", flush=True)
    hf, hb = time_pair(host, *path_fns(impl, path, u, g, v, a, dy))
    row.update(fwd_host_ms=hf[0], fwd_host_ms_p20_p80=hf[1:], bwd_host_ms=hb[0], bwd_host_ms_p20_p80=hb[1:])
    if with_ref:  # plain torch with a = 1 (the guide's formulation), autograd for the backward
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v)]
        ru, rg, rv = leaves
        y_ref = rg * rv * torch.cumsum(rg * ru, dim=1)
        rf = do_bench(lambda: rg * rv * torch.cumsum(rg * ru, dim=1), return_mode="median")
        rb = do_bench(lambda: torch.autograd.grad(y_ref, leaves, dy, retain_graph=True), return_mode="median")
        row.update(ref_fwd_ms=rf, ref_bwd_ms=rb, speedup_fwd_bwd=(rf + rb) / (fwd[0] + bwd[0]))
    return row


def bench_scan(timers, copy, impls, quick, shapes=SHAPES, check_only=CHECK_ONLY) -> dict:
    """Checks every (implementation, path) on every shape and dtype (and CHECK_ONLY in fp32/bf16/fp16), then times
    them. timers: (do_bench, graph(fn, reps), host(fn)), each giving [median, p20, p80] ms. Returns {"scan": rows,
    "checked": rows, "autograd_floor": row}. Raises KernelMismatch before timing anything if one fails."""
    checked, ref_cache = [], {}
    paths = [(impl, path, path + suffix) for impl, suffix in impls for path in ("public", "bare")]
    errs = {}
    for B, L, R in list(shapes) + list(check_only):
        dts = list(DTYPES.values()) + ([torch.float16] if (B, L, R) in check_only else [])
        for dtype in dts:
            for impl, path, label in paths:
                e = check(impl, path, B, L, R, dtype, ref_cache)
                errs[(B, L, R, dtype, label)] = e
                checked.append({"B": B, "L": L, "R": R, "dtype": str(dtype)[6:], "path": label, "rel_err": e})
    ref_cache.clear()
    print(f"checked {len(checked)} (shape, dtype, path) against float64: all within tolerance", flush=True)
    reps = (10, 40) if quick else (100, 500)
    rows = []
    for B, L, R in shapes:
        for dname, dtype in DTYPES.items():
            for impl, path, label in paths:
                row = scan_row(timers, impl, path, label, B, L, R, dname, copy, errs[(B, L, R, dtype, label)],
                               reps, with_ref=not quick and label == "public")
                rows.append(row)
                print(f"scan {label:>10} B={B} L={L} R={R} {dname}: fwd {row['fwd_ms'] * 1e3:7.1f} us "
                      f"({row['fwd_frac_copy']:4.0%} copy), bwd {row['bwd_ms'] * 1e3:7.1f} us "
                      f"({row['bwd_frac_copy']:4.0%}) | graph fwd {row.get('fwd_ms_graph', float('nan')) * 1e3:7.1f}"
                      f" bwd {row.get('bwd_ms_graph', float('nan')) * 1e3:7.1f} us | host fwd "
                      f"{row['fwd_host_ms'] * 1e3:7.1f} bwd {row['bwd_host_ms'] * 1e3:7.1f} us", flush=True)
    return {"scan": rows, "checked": checked, "autograd_floor": autograd_floor(timers, reps)}


def sweep(do_bench, copy, quick) -> list[dict]:
    """Development: bare-path fractions of copy for candidate ScanTiles at the two target shapes."""
    from kernels import scan as S

    rows = []
    for B, L, R in TARGETS:
        for dname, dtype in DTYPES.items():
            base = S._tiles(L, R, dtype, B)
            cands = [base] + [dataclasses.replace(base, **kw) for kw in (
                {"fwd_warps": 8}, {"fwd_r": 16, "fwd_warps": 4}, {"fwd_r": 64, "fwd_warps": 8},
                {"fwd_c": 256 if base.fwd_c != 256 else 128}, {"bwd_r": 32, "bwd_warps": 8},
                {"bwd_r": 16, "bwd_warps": 4}, {"bwd_c": 256 if base.bwd_c != 256 else 512})]
            u, g, v, a, dy = make_inputs(B, L, R, dtype, seed=3)
            ref = reference(u, g, v, a, dy)
            el = B * L * R * u.element_size()
            for t in cands:
                y, carry, _ = S._scan_fwd(u, g, v, a, True, t)
                errs = {n: _rel(o, r) for n, o, r in zip(GRADS, (y, *S._scan_bwd(dy, u, g, v, a, carry, t)), ref)}
                if not all(e <= REL_TOL[dtype] for e in errs.values()):
                    raise KernelMismatch(f"sweep {t}: {errs}")
                args = (u, g, v, a)
                f = do_bench(lambda t=t, x=args: S._scan_fwd(*x, True, t), return_mode="median")
                b = do_bench(lambda t=t, x=(dy, *args, carry): S._scan_bwd(*x, t), return_mode="median")
                rows.append({"B": B, "L": L, "dtype": dname, "tiles": dataclasses.asdict(t),
                             "fwd_frac": round(4 * el / (f * 1e-3) / 1e9 / copy, 3),
                             "bwd_frac": round(7 * el / (b * 1e-3) / 1e9 / copy, 3)})
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for kernels.json")
    p.add_argument("--skip-lns", action="store_true", help="leave out the LNS matmul bench")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, no torch-reference timings")
    p.add_argument("--baseline", metavar="PATH", help="an older scan module (file) to time beside the current one")
    p.add_argument("--lns-baseline", metavar="PATH", help="an older kernels/lns.py to time beside the current one")
    p.add_argument("--sweep", action="store_true", help="only sweep scan tiles (development; writes sweep.json)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/kernel_bench.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench

    from kernels import scan

    lns_rows = None
    if not args.skip_lns and not args.sweep:
        from lns_bench import lns_rows  # a missing module is an error: pass --skip-lns to leave LNS out
    impls = [(scan, "")] + ([(load_impl(args.baseline), "_old")] if args.baseline else [])

    t0 = time.time()
    dev = torch.cuda.get_device_name()
    print(f"device {dev} | torch {torch.__version__} | triton {triton.__version__} | python {platform.python_version()}")
    torch.manual_seed(0)
    copy = copy_gbps(do_bench)
    print(f"device-to-device copy: {copy:.0f} GB/s (read + write)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    try:
        if args.sweep:  # development mode: its own file, not kernels.json
            with open(os.path.join(args.out, "sweep.json"), "w") as f:
                json.dump(sweep(do_bench, copy, args.quick), f, indent=1)
            return 0
        timers = (do_bench, lambda fn, reps: graph_bench(do_bench, fn, reps), host_ms)
        result = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "copy_gbps": copy,
                  "quick": args.quick, "baseline": args.baseline, **bench_scan(timers, copy, impls, args.quick)}
    except KernelMismatch as e:
        print(f"error: kernel disagrees with the reference, not reported: {e}", file=sys.stderr)
        return 1
    if lns_rows is not None:
        result["lns"] = lns_rows(torch.device("cuda"), quick=args.quick, baseline_path=args.lns_baseline)
    result["wall_s"] = time.time() - t0
    path = os.path.join(args.out, "kernels.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    print_table(result["scan"])
    return 0


def print_table(rows) -> None:
    """% of copy per shape and dtype, one column pair per path; public/bare time ratios for the current code, eager
    and from CUDA-graph replays (device time only)."""
    labels = list(dict.fromkeys(r["path"] for r in rows))
    by = {(r["B"], r["L"], r["R"], r["dtype"], r["path"]): r for r in rows}
    print(f"{'shape':>16} {'dtype':>5} " + " ".join(f"{lab + ' fwd/bwd %copy':>24}" for lab in labels)
          + "   public/bare fwd, bwd: eager | graph")
    for key in dict.fromkeys(k[:4] for k in by):
        cells = [by[(*key, lab)] for lab in labels]
        ratio = ""
        if (*key, "public") in by and (*key, "bare") in by:
            pub, bare = by[(*key, "public")], by[(*key, "bare")]
            ratio = f"   {pub['fwd_ms'] / bare['fwd_ms']:.2f}, {pub['bwd_ms'] / bare['bwd_ms']:.2f}"
            if "fwd_ms_graph" in pub and "fwd_ms_graph" in bare:
                g_fwd, g_bwd = pub["fwd_ms_graph"] / bare["fwd_ms_graph"], pub["bwd_ms_graph"] / bare["bwd_ms_graph"]
                ratio += f" | {g_fwd:.2f}, {g_bwd:.2f}"
        print(f"{key[:3]!s:>16} {key[3]:>5} "
              + " ".join(f"{c['fwd_frac_copy']:>15.0%} / {c['bwd_frac_copy']:<6.0%}" for c in cells) + ratio)


if __name__ == "__main__":
    sys.exit(main())
