"""Gated first-order scan of the AR-SSM mixer: ``h_t = a*h_{t-1} + g_t*u_t``, ``y_t = g_t*v_t*h_t``.

Layout follows flash-linear-attention: plain-torch references here, the Triton kernels in kernels/scan_triton.py
(design notes there) and their launchers in kernels/scan_launch.py, then the ``torch.autograd.Function`` and the
public wrapper that validates its inputs.
"""

from __future__ import annotations

import contextlib

import torch
import triton

from kernels.scan_launch import ScanTiles, _scan_bwd, _scan_fwd, _tiles  # noqa: F401  (re-exported: bench, tests)
from kernels.scan_shapes import SCAN_TORCH_CHUNK, scan_tile_widths

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BACKENDS = ("auto", "triton", "torch")


def gated_scan_ref(u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference: walks L one step at a time (slow; for tests), fp32 accumulation.

    u, g, v: [B, L, R]; a: [R] per-channel decay. ``h_t = a*h_{t-1} + g_t*u_t`` with h_{-1} = 0;
    returns ``y_t = g_t*v_t*h_t`` [B, L, R] in the input dtype (float64 inputs accumulate in float64).
    Differentiable through autograd in u, g, v and a.
    """
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u32, g32, v32, a32 = (t.to(acc) for t in (u, g, v, a))
    x = g32 * u32  # [B, L, R]
    h_t = torch.zeros_like(x[:, 0])  # [B, R]
    hs = []
    for t in range(x.shape[1]):
        h_t = a32 * h_t + x[:, t]
        hs.append(h_t)
    h = torch.stack(hs, dim=1) if hs else torch.zeros_like(x)
    return (g32 * v32 * h).to(u.dtype)


def _gated_scan_torch(u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Chunked plain-torch scan (the "torch" backend), differentiable through autograd, fp32 accumulation.

    Within a chunk of C steps h = M x with M[t, s] = a^(t-s) (s <= t) [C, C, R]; across chunks the carry
    h_end is propagated with a^C. Exact for any a (powers, no logarithms), O(B*L*C*R) work.
    u, g, v: [B, L, R]; a: [R]. Returns y [B, L, R] in the input dtype.
    """
    # Autocast would run the einsum below in bf16 and lose the fp32 accumulation this path promises.
    with torch.autocast(device_type=u.device.type, enabled=False):
        return _gated_scan_torch_fp32(u, g, v, a)


def _gated_scan_torch_fp32(u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    B, L, R = u.shape
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    if u.numel() == 0:  # keeps the graph connected so that gradients (zeros) still flow
        return (u * g * v + 0 * a).to(u.dtype)
    C = min(SCAN_TORCH_CHUNK, max(L, 1))
    n = -(-L // C)
    pad = n * C - L
    x = g.to(acc) * u.to(acc)  # [B, L, R]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    x = x.view(B, n, C, R)
    a32 = a.to(acc)
    k = torch.arange(C + 1, device=u.device, dtype=acc)
    powers = a32[None, :] ** k[:, None]  # [C+1, R]: a^0 .. a^C (torch.pow: 0^0 = 1, grad finite)
    t_idx = torch.arange(C, device=u.device)
    diff = (t_idx[:, None] - t_idx[None, :]).clamp(min=0)  # [C, C]: t - s
    causal = (t_idx[:, None] >= t_idx[None, :]).to(acc)
    m = powers[diff] * causal[:, :, None]  # [C, C, R]
    h_loc = torch.einsum("tsr,bnsr->bntr", m, x)  # [B, n, C, R]
    carry = torch.zeros(B, R, device=u.device, dtype=acc)
    chunks = []
    for i in range(n):  # carry into chunk i decays by a^(t+1) at step t of the chunk
        h_i = h_loc[:, i] + powers[1:][None] * carry[:, None, :]
        chunks.append(h_i)
        carry = h_i[:, -1]
    h = torch.stack(chunks, dim=1).reshape(B, n * C, R)[:, :L]
    return (g.to(acc) * v.to(acc) * h).to(u.dtype)


_NO_SWITCH = contextlib.nullcontext()  # reusable: the common case builds no context object per call


def _on_device(t: torch.Tensor):
    # Triton launches on the current CUDA device: switch only when the inputs live on another one.
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NO_SWITCH


class _GatedScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, g, v, a, tiles=None):
        # contiguous() returns the tensor itself when it already is: no copy on the model's path.
        u, g, v, a = u.contiguous(), g.contiguous(), v.contiguous(), a.contiguous()
        need = any(ctx.needs_input_grad[:4])
        with _on_device(u):
            y, carry, used = _scan_fwd(u, g, v, a, need, tiles)
        if need:
            ctx.save_for_backward(u, g, v, a, carry)  # carry: h before each sub-tile, 1/BLOCK_T of the data
            ctx.tiles = used
        return y

    @staticmethod
    def backward(ctx, dy):
        u, g, v, a, carry = ctx.saved_tensors
        with _on_device(u):
            du, dg, dv, da = _scan_bwd(dy.contiguous(), u, g, v, a, carry, ctx.tiles)
        return du, dg, dv, da, None


# --- the same kernels as opaque torch.library ops, for torch.compile -------------------------------------------------
# Dynamo would otherwise trace into the launcher (lru_cache, dataclass tiles, device switching) and break the graph;
# as custom ops with a fake (shape-only) implementation, a compiled region keeps the scan as one node and its
# backward as another. The eager path keeps _GatedScanFn (no custom-op dispatch cost per call).


@torch.library.custom_op("phase1::gated_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, L, R] in u's dtype, carry [B, ceil(L/block_t), R] fp32): the forward, always saving the carry."""
    u, g, v, a = u.contiguous(), g.contiguous(), v.contiguous(), a.contiguous()
    with _on_device(u):
        y, carry, _ = _scan_fwd(u, g, v, a, True)
    return y, carry


@_scan_fwd_op.register_fake
def _(u, g, v, a):  # noqa: ARG001 - the op's signature; the shapes follow from u alone
    B, L, R = u.shape
    block_t = scan_tile_widths(L, R)[0]
    return u.new_empty((B, L, R)), u.new_empty((B, (L + block_t - 1) // block_t, R), dtype=torch.float32)


@torch.library.custom_op("phase1::gated_scan_bwd", mutates_args=())
def _scan_bwd_op(
    dy: torch.Tensor, u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor, carry: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, dg, dv [B, L, R] in u's dtype, da [R] in a's dtype)."""
    u, g, v, a = u.contiguous(), g.contiguous(), v.contiguous(), a.contiguous()
    B, L, R = u.shape
    with _on_device(u):
        return _scan_bwd(dy.contiguous(), u, g, v, a, carry, _tiles(L, R, u.dtype, B))


@_scan_bwd_op.register_fake
def _(dy, u, g, v, a, carry):  # noqa: ARG001 - the op's signature; the shapes follow from u and a
    return u.new_empty(u.shape), u.new_empty(u.shape), u.new_empty(u.shape), a.new_empty(a.shape)


def _op_setup_context(ctx, inputs, output):
    u, g, v, a = inputs
    ctx.save_for_backward(u, g, v, a, output[1])


def _op_backward(ctx, dy, _dcarry):
    u, g, v, a, carry = ctx.saved_tensors
    return _scan_bwd_op(dy, u, g, v, a, carry)


_scan_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _validate(u, g, v, a, backend: str) -> None:
    # Called on every forward: each attribute is read once (a tensor's .device or .shape builds a new object).
    if backend not in _BACKENDS:
        raise ValueError(f"gated_scan: backend={backend!r} is not one of {_BACKENDS}")
    for name, t in (("u", u), ("g", g), ("v", v), ("a", a)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"gated_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    shape, dtype, device = u.shape, u.dtype, u.device
    if len(shape) != 3:
        raise ValueError(f"gated_scan: u must be [B, L, R], got shape {tuple(shape)}")
    for name, t in (("g", g), ("v", v)):
        if t.shape != shape:
            raise ValueError(f"gated_scan: {name} shape {tuple(t.shape)} != u shape {tuple(shape)}")
    if a.shape != shape[2:]:
        raise ValueError(f"gated_scan: a must be [R] = [{shape[2]}], got shape {tuple(a.shape)}")
    # float64 only on the torch backend (gradcheck, references); the kernels take the three model dtypes.
    if dtype not in _DTYPES and not (dtype == torch.float64 and backend == "torch"):
        allowed = _DTYPES + ((torch.float64,) if backend == "torch" else ())
        raise ValueError(f"gated_scan: dtype {dtype} is not supported with backend={backend!r}; use one of {allowed}")
    for name, t in (("g", g), ("v", v)):
        if t.dtype != dtype:
            raise ValueError(f"gated_scan: {name} dtype {t.dtype} != u dtype {dtype}; cast them to one dtype")
    if not a.is_floating_point():
        raise ValueError(f"gated_scan: a must be floating point, got {a.dtype}")
    for name, t in (("g", g), ("v", v), ("a", a)):
        if t.device != device:
            raise ValueError(f"gated_scan: {name} is on {t.device} but u is on {device}; move them to one device")
    # (not checked while torch.compile traces: dynamo cannot read triton's knobs; the CPU-only case it guards is the
    # interpreter's, which tests compile on purpose)
    if backend == "triton" and not u.is_cuda and not torch.compiler.is_compiling() and not _interpreting():
        raise ValueError(
            f"gated_scan: backend='triton' needs CUDA tensors, got device {device}; "
            "use backend='torch' (or 'auto'), or run Triton's interpreter (TRITON_INTERPRET=1) on CPU"
        )


def gated_scan(u: torch.Tensor, g: torch.Tensor, v: torch.Tensor, a: torch.Tensor, backend: str = "auto"):
    """Gated scan ``y_t = g_t*v_t*h_t`` with ``h_t = a*h_{t-1} + g_t*u_t`` (h_{-1} = 0).

    u, g, v: [B, L, R] (fp32 / bf16 / fp16, one dtype); a: [R] decay (any float dtype; typically in (0, 1]).
    backend: "triton" (fused kernels; CUDA, or CPU through TRITON_INTERPRET=1), "torch" (chunked reference,
    autograd), "auto" (triton iff the inputs are CUDA tensors). Accumulates in fp32; y [B, L, R] in u's dtype.
    Differentiable in u, g, v and a.
    """
    _validate(u, g, v, a, backend)
    if backend == "auto":
        backend = "triton" if u.is_cuda else "torch"
    if backend == "torch" or u.numel() == 0:  # an empty problem launches no kernel: nothing to compute
        return _gated_scan_torch(u, g, v, a)
    if torch.compiler.is_compiling():  # inside torch.compile: the opaque ops above (same kernels, same tiles)
        return _scan_fwd_op(u, g, v, a)[0]
    return _GatedScanFn.apply(u, g, v, a)
