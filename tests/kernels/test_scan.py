"""kernels/scan.py: Triton kernels (interpreter on CPU) and the torch backend against a float64 reference. Outputs
start as NaN (tests/kernels/conftest.py), so an element a kernel never writes fails."""

from __future__ import annotations

import pytest
import torch
import triton

from kernels import scan
from kernels.scan import gated_scan, gated_scan_ref

# Tolerances per input dtype, against the float64 reference: fp32 accumulates in fp32; bf16/fp16 round every
# input and output (bf16 has 8 significant bits, fp16 11).
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
}


def assert_close(name, out, ref, dtype):
    assert torch.isfinite(out).all(), f"{name}: non-finite values (an element was not written?)"
    torch.testing.assert_close(out.double(), ref.double(), **TOL[dtype], msg=lambda m: f"{name}: {m}")


def make(B, L, R, dtype, a_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, R, generator=gen).to(dtype)
    g = torch.sigmoid(torch.randn(B, L, R, generator=gen)).to(dtype)
    v = torch.randn(B, L, R, generator=gen).to(dtype)
    if a_kind == "one":
        a = torch.ones(R)
    elif a_kind == "signed":  # the kernels take powers of a by multiplication: any sign, and 0, must work
        a = torch.rand(R, generator=gen) * 1.9 - 0.95
        a[0] = 0.0
    else:
        a = torch.rand(R, generator=gen) * 0.99 + 0.01  # a in (0, 1)
    dy = torch.randn(B, L, R, generator=gen).to(dtype)
    return u, g, v, a, dy


def ref64(u, g, v, a, dy):
    """Output and the four gradients of the step-by-step reference, in float64."""
    leaves = [t.detach().double().requires_grad_(True) for t in (u, g, v, a)]
    y = gated_scan_ref(*leaves)
    return (y, *torch.autograd.grad(y, leaves, dy.double()))


def run_triton(u, g, v, a, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
    y = gated_scan(*leaves, backend="triton")
    return (y, *torch.autograd.grad(y, leaves, dy))


CASES = [  # (B, L, R, dtype, a): odd lengths hit the row masks, R not a power of two the lane masks
    (1, 63, 5, torch.float32, "rand"),
    (2, 130, 24, torch.float32, "rand"),
    (1, 63, 40, torch.float32, "rand"),  # two channel blocks of 32
    (2, 130, 5, torch.bfloat16, "rand"),
    (3, 63, 24, torch.bfloat16, "one"),
    (1, 63, 5, torch.float16, "rand"),
    # Several chunks of 256 steps (state passing) and a last chunk with a partial and two empty sub-tiles:
    (1, 600, 40, torch.float32, "rand"),
    (2, 600, 24, torch.bfloat16, "rand"),
    (1, 600, 5, torch.float16, "signed"),
    (1, 300, 5, torch.float32, "signed"),
]


@pytest.mark.parametrize("B,L,R,dtype,a_kind", CASES,
                         ids=[f"B{b}-L{l}-R{r}-{str(d)[6:]}-a_{k}" for b, l, r, d, k in CASES])
def test_triton_matches_reference(B, L, R, dtype, a_kind):
    u, g, v, a, dy = make(B, L, R, dtype, a_kind)
    out = run_triton(u, g, v, a, dy)
    ref = ref64(u, g, v, a, dy)
    assert out[0].dtype == dtype and out[0].shape == (B, L, R)
    for name, o, r in zip(("y", "du", "dg", "dv", "da"), out, ref):
        # da sums B*L terms of size ~1: compare it relative to that scale.
        scale = max(1.0, r.abs().max().item()) if name == "da" else 1.0
        assert_close(name, o / scale, r / scale, dtype)
    assert out[4].dtype == a.dtype


def test_a_one_is_gated_cumsum():
    """With a = 1 the scan is the guide's formulation y = g*v*cumsum(g*u), exactly so in float64."""
    u, g, v, a, _ = make(2, 63, 5, torch.float32, "one", seed=3)
    expect = (g * v * torch.cumsum(g * u, dim=1)).double()
    u64, g64, v64 = u.double(), g.double(), v.double()
    assert torch.equal(gated_scan_ref(u64, g64, v64, a.double()), g64 * v64 * torch.cumsum(g64 * u64, dim=1))
    assert_close("triton", gated_scan(u, g, v, a, backend="triton"), expect, torch.float32)
    assert_close("torch", gated_scan(u, g, v, a, backend="torch"), expect, torch.float32)


def test_decay_below_one_differs_from_cumsum():
    """a < 1 really decays the state (a kernel that ignored a would pass the a = 1 tests)."""
    u, g, v, a, _ = make(1, 63, 5, torch.float32, "rand", seed=4)
    y = gated_scan(u, g, v, a * 0.5, backend="triton")
    assert not torch.allclose(y, g * v * torch.cumsum(g * u, dim=1), rtol=1e-2, atol=1e-2)
    assert_close("y", y, ref64(u, g, v, a * 0.5, torch.zeros_like(u))[0], torch.float32)


@pytest.mark.parametrize("L,tiles", [
    # 19 chunks each way: the state passing reads earlier (later) chunks in two windows of 16.
    (300, scan.ScanTiles(16, fwd_c=16, fwd_r=8, fwd_warps=1, bwd_c=16, bwd_r=4, bwd_warps=1)),
    # Chunks of two (forward) and four (backward) sub-tiles, the last chunk partly past L; channel blocks
    # differ between the passes (the saved carry's layout does not depend on them).
    (1000, scan.ScanTiles(16, fwd_c=32, fwd_r=8, fwd_warps=2, bwd_c=64, bwd_r=2, bwd_warps=1)),
    # Three chunks of four sub-tiles, the last one past L but for 2 rows.
    (130, scan.ScanTiles(16, fwd_c=64, fwd_r=8, fwd_warps=1, bwd_c=64, bwd_r=8, bwd_warps=1)),
])
def test_chunked_launchers_match_reference_with_small_tiles(L, tiles):
    """The launchers with small tiles: many chunks per sequence, so the per-chunk states passed forward (and
    backward) span several windows and several sub-tiles per chunk; odd L, R = 5 in blocks of 2 to 8."""
    u, g, v, a, dy = make(2, L, 5, torch.float32, "rand", seed=5)
    y, carry, used = scan._scan_fwd(u, g, v, a, True, tiles)
    assert used == tiles and carry.shape == (2, -(-L // tiles.block_t), 5)  # h before every sub-tile
    saved = carry.clone()
    grads = scan._scan_bwd(dy, u, g, v, a, carry, used)
    # The backward borrows the carry's first row (h before step 0: zero) as counters and must leave it as it was.
    assert torch.equal(carry, saved) and not carry[:, 0].any()
    for name, o, r in zip(("y", "du", "dg", "dv", "da"), (y, *grads), ref64(u, g, v, a, dy)):
        scale = max(1.0, r.abs().max().item()) if name == "da" else 1.0
        assert_close(name, o / scale, r / scale, torch.float32)


def test_a_second_backward_through_one_graph_gives_the_same_gradients():
    """retain_graph: the saved carry serves a second backward, so the first must leave it unchanged (its first row
    is borrowed as the da counters); gradients bitwise equal, da in a's dtype (summed in the kernel)."""
    u, g, v, a, dy = make(2, 130, 24, torch.float32, "rand", seed=11)
    leaves = [t.clone().requires_grad_(True) for t in (u, g, v, a.bfloat16())]
    y = gated_scan(*leaves, backend="triton")
    first = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    second = torch.autograd.grad(y, leaves, dy)
    for name, f, s in zip(("du", "dg", "dv", "da"), first, second):
        assert torch.equal(f, s), f"{name}: the second backward differs"
    assert first[3].dtype == torch.bfloat16
    ref = ref64(u, g, v, a.bfloat16().float(), dy)[4]
    assert_close("da", first[3].float() / ref.abs().max(), ref / ref.abs().max(), torch.bfloat16)


def test_forward_without_grad_saves_no_state():
    u, g, v, a, _ = make(1, 130, 5, torch.float32, "rand", seed=9)
    y, carry, _ = scan._scan_fwd(u, g, v, a, False)
    assert carry is None
    assert_close("y", y, gated_scan_ref(u.double(), g.double(), v.double(), a.double()), torch.float32)


def test_non_contiguous_inputs():
    u, g, v, a, _ = make(1, 5, 63, torch.float32, "rand", seed=6)
    ut, gt, vt = (t.transpose(1, 2) for t in (u, g, v))  # [1, 63, 5] views, not contiguous
    assert_close("y", gated_scan(ut, gt, vt, a[:5], backend="triton"),
                 gated_scan_ref(ut.double(), gt.double(), vt.double(), a[:5].double()), torch.float32)


@pytest.mark.parametrize("L", [1, 63, 130])
def test_torch_backend_matches_reference_float64(L):
    u, g, v, a, dy = make(2, L, 5, torch.float64, "rand", seed=7)
    a = a.double()
    leaves = [t.clone().requires_grad_(True) for t in (u, g, v, a)]
    y = gated_scan(*leaves, backend="torch")
    out = (y, *torch.autograd.grad(y, leaves, dy))
    for name, o, r in zip(("y", "du", "dg", "dv", "da"), out, ref64(u, g, v, a, dy)):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_auto_on_cpu_uses_torch_backend_and_keeps_dtype():
    u, g, v, a, _ = make(1, 63, 5, torch.bfloat16, "rand", seed=8)
    y = gated_scan(u, g, v, a)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, scan._gated_scan_torch(u, g, v, a))


@pytest.mark.parametrize("case,match", [
    ("u_2d", r"u must be \[B, L, R\], got shape \(63, 5\)"),
    ("g_shape", r"g shape \(1, 62, 5\) != u shape \(1, 63, 5\)"),
    ("a_shape", r"a must be \[R\] = \[5\], got shape \(4,\)"),
    ("int_dtype", r"dtype torch.int64 is not supported"),
    ("mixed_dtype", r"v dtype torch.bfloat16 != u dtype torch.float32"),
    ("f64_triton", r"dtype torch.float64 is not supported with backend='triton'"),
    ("backend", r"backend='cuda' is not one of"),
    ("device", r"a is on meta but u is on cpu"),
    ("not_tensor", r"g must be a torch.Tensor, got list"),
])
def test_validation_errors_name_the_value(case, match):
    u, g, v, a, _ = make(1, 63, 5, torch.float32, "rand")
    kw = {"backend": "triton"}
    if case == "u_2d":
        u = u[0]
    elif case == "g_shape":
        g = g[:, :62]
    elif case == "a_shape":
        a = a[:4]
    elif case == "int_dtype":
        u, g, v = (t.long() for t in (u, g, v))
    elif case == "mixed_dtype":
        v = v.bfloat16()
    elif case == "f64_triton":
        u, g, v = (t.double() for t in (u, g, v))
    elif case == "backend":
        kw = {"backend": "cuda"}
    elif case == "device":
        a = torch.empty(5, device="meta")
    elif case == "not_tensor":
        g = g.tolist()
    with pytest.raises(ValueError, match=match):
        gated_scan(u, g, v, a, **kw)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    u, g, v, a, _ = make(1, 3, 5, torch.float32, "rand")
    with pytest.raises(ValueError, match="needs CUDA tensors, got device cpu"):
        gated_scan(u, g, v, a, backend="triton")


def test_torch_backend_accumulates_in_fp32_under_cpu_autocast():
    """CPU autocast must not push the torch path's einsum into bf16: the result matches the fp32 reference."""
    torch.manual_seed(3)
    u, g, v = (torch.randn(2, 130, 6) for _ in range(3))
    a = torch.rand(6) * 0.5 + 0.5
    expected = gated_scan_ref(u.double(), g.double(), v.double(), a.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gated_scan(u, g, v, a, backend="torch")
    assert got.dtype == torch.float32
    err = (got.double() - expected).norm() / expected.norm()
    assert err < 1e-5, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(triton.knobs.runtime.interpret, reason="the interpreter runs programs one by one: run with "
                    "TRITON_INTERPRET=0 (tests/conftest.py sets 1 unless told otherwise)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_results_are_bitwise_reproducible(dtype):
    """Many launches at a large shape give bitwise-identical outputs and gradients (every value is written by
    one program, da is reduced in a fixed order by the last program of each channel block). The interpreter runs
    programs one by one and cannot catch a race; this runs them concurrently, and also checks against the float64
    torch scan once. The first call launches through Triton, the later ones through kernels/triton_direct.py's
    direct path: equal results check that path too."""
    B, L, R = 8, 16384, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(B, L, R, device="cuda", generator=gen).to(dtype)
    g = torch.sigmoid(torch.randn(B, L, R, device="cuda", generator=gen)).to(dtype)
    v = torch.randn(B, L, R, device="cuda", generator=gen).to(dtype)
    a = 0.9 + 0.1 * torch.rand(R, device="cuda", generator=gen)
    dy = torch.randn(B, L, R, device="cuda", generator=gen).to(dtype)

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, g, v, a)]
        y = gated_scan(*leaves, backend="triton")
        return (y, *torch.autograd.grad(y, leaves, dy))

    first = run()
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (u, g, v, a)]
    y_ref = scan._gated_scan_torch(*ref_leaves)
    ref = (y_ref, *torch.autograd.grad(y_ref, ref_leaves, dy.double()))
    rel_tol = 1e-4 if dtype == torch.float32 else 1.5e-2
    for name, o, r in zip(("y", "du", "dg", "dv", "da"), first, ref):
        err = ((o.double() - r).norm() / r.norm()).item()
        assert err <= rel_tol, f"{name}: relative error {err:.2e} > {rel_tol}"
    for i in range(50):
        for name, o, o0 in zip(("y", "du", "dg", "dv", "da"), run(), first):
            assert torch.equal(o, o0), f"run {i + 1}: {name} differs from the first run"


@pytest.mark.slow  # inductor compiles the surrounding ops (C++ on the CPU): ~30 s
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_region_calls_the_kernels_as_one_op_with_the_eager_results(dtype):
    """Inside torch.compile the scan is the phase1::gated_scan_fwd/bwd custom ops (fullgraph: no graph break); the
    output and the four gradients equal the eager autograd path's (same kernels and tiles: bitwise), and the
    reference's within the dtype's tolerance."""
    torch._dynamo.reset()
    u, g, v, a, dy = make(2, 37, 5, dtype, "decay", seed=3)

    def f(u, g, v, a):
        return gated_scan(u, g, v, a, backend="triton")

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, dynamic=False)):
        leaves = [t.clone().requires_grad_(True) for t in (u, g, v, a)]
        y = fn(*leaves)
        results.append((y, *torch.autograd.grad(y, leaves, dy)))
    for name, eager, compiled, ref in zip("y du dg dv da".split(), *results, ref64(u, g, v, a, dy), strict=True):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
        assert_close(name, compiled, ref, dtype if name != "da" else torch.float32)
