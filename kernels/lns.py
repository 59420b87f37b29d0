"""LNS (logarithmic number system) weights: encode/decode, a Triton matmul that decodes in its tile loop, and a
plain-torch reference. Inference only: nothing here has a backward.

Format (`bits` = 8 or 16, `f` = fractional bits, `Q = 2^(bits-1) - 1` the largest magnitude code):
  * a weight `w[n, k]` of output channel `n` is stored as one signed integer `c` (int8 / int16): `sign(c) = sign(w)`,
    `|c| = m` in `1..Q` is the biased fixed-point log, and `c = 0` is the reserved code for exact zero (the code
    `-2^(bits-1)` is never written: it would be "negative zero").
  * `log2|w| = (o[n] + m - Q) / 2^f`: `o[n]` is an int32 per-output-channel offset in the same fixed-point units,
    `o[n] = ceil(2^f * log2 max_k |w[n, k]|)`, so the channel's largest weight sits at (or one step under) `m = Q`
    and the codes cover `(Q - 1) / 2^f` octaves below it. `granularity="tensor"` uses one offset for all channels.
  * Split: 8-bit = sign + 3 integer + 4 fractional bits (range 7.94 octaves: down to max/245 per channel);
    16-bit = sign + 4 integer + 11 fractional bits (range 16.0 octaves: down to max/65500).
  * Rounding is to the nearest log step, so for `|w|` inside the range the relative error is at most
    `2^(2^-(f+1)) - 1` (the log error is at most half a step, 2^-(f+1)): 2.190e-2 (8-bit), 1.692e-4 (16-bit).
    Below the range, `|w|` goes to whichever of 0 or the smallest magnitude `w_min = 2^((o - Q + 1)/2^f)` is nearer,
    so the absolute error is at most `w_min / 2`.

Why f = 4 for 8 bits (measured on Gaussian weights [256, 4096], relative error of x @ w^T): f = 3
gives 2x the rounding error (rms 2.5% vs 1.25%; matmul error 2.5% vs 1.26%) for range nobody needs (0.01% of weights
sit at the bottom code); f = 5 covers only 3.97 octaves and puts 20% of the weights at 0 or max/16: matmul error
3.3%, worse than f = 4. For 16 bits, f = 11 puts the LNS rounding error (1.7e-4) under the fp16 decode rounding
(2^-11 = 4.9e-4) while still covering 16 octaves.

Matmul: `y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N])`. The kernels (kernels/lns_triton.py) load int8/int16 code
tiles, decode `sign * exp2((|c| - Q) / 2^f)` (a value in (0, 1], so it cannot overflow fp16) to the dot dtype,
multiply with `tl.dot` (tensor cores; fp32 accumulate), and apply the per-channel scale `2^(o[n] / 2^f)` and bias
once in the epilogue. Dot dtype: x's dtype for fp16/bf16; for fp32 x the decoded tile stays fp32 and `tl.dot` runs
in tf32. `variant="auto"` (default) runs the tiled kernel above 64 rows and the small-M kernels measured fastest
on an H100 at 64 rows or fewer (kernels/lns_variants.py, docs/lns_kernel.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from kernels.lns_variants import SMALL_M_VARIANTS, TILED_DEFAULT_BLOCKS, VARIANTS, auto_variant

try:  # triton is optional on CPU-only installs; the reference path works without it
    import triton
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None

__all__ = [
    "LNSWeight",
    "DEFAULT_FRAC_BITS",
    "lns_encode",
    "lns_decode",
    "lns_matmul",
    "lns_matmul_ref",
    "lns_logadd_matmul_ref",
    "relative_error_bound",
    "validate_block_sizes",
    "VARIANTS",
]

# Fractional bits of the fixed-point log per code width; the module docstring says why these.
DEFAULT_FRAC_BITS: dict[int, int] = {8: 4, 16: 11}
_CODE_DTYPE = {8: torch.int8, 16: torch.int16}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class LNSWeight:
    """A weight matrix `[N, K]` (nn.Linear layout: out_features x in_features) in LNS form.

    codes:   int8 / int16 `[N, K]`, signed code `c` (0 = exact zero), see the module docstring.
    offsets: int32 `[N]`, per-output-channel offset in units of 2^-frac_bits octaves.
    bits:    8 or 16. frac_bits: fractional bits f of the fixed-point log.
    """

    codes: torch.Tensor
    offsets: torch.Tensor
    bits: int
    frac_bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def max_code(self) -> int:
        """Q = 2^(bits-1) - 1: the magnitude code of the channel's largest representable weight."""
        return (1 << (self.bits - 1)) - 1

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def nbytes(self) -> int:
        """Bytes of the stored weight: codes plus offsets."""
        return self.codes.numel() * self.codes.element_size() + self.offsets.numel() * self.offsets.element_size()

    def to(self, device: torch.device | str) -> LNSWeight:
        return LNSWeight(self.codes.to(device), self.offsets.to(device), self.bits, self.frac_bits)


def relative_error_bound(bits: int, frac_bits: int | None = None) -> float:
    """Largest relative encode error `|w_hat - w| / |w|` for weights inside the code range: 2^(2^-(f+1)) - 1."""
    f = DEFAULT_FRAC_BITS[_check_bits(bits)] if frac_bits is None else frac_bits
    return 2.0 ** (2.0 ** -(f + 1)) - 1.0


def _check_bits(bits: int) -> int:
    if bits not in _CODE_DTYPE or isinstance(bits, bool):
        raise ValueError(f"bits: {bits!r} is not supported (allowed: 8 or 16)")
    return bits


def lns_encode(
    w: torch.Tensor,
    bits: int = 8,
    *,
    frac_bits: int | None = None,
    granularity: Literal["channel", "tensor"] = "channel",
) -> LNSWeight:
    """Encode a float weight `w [N, K]` (N output channels) to LNS codes; see the module docstring for the format."""
    _check_bits(bits)
    f = DEFAULT_FRAC_BITS[bits] if frac_bits is None else frac_bits
    if not isinstance(f, int) or not 0 <= f <= bits - 2:
        raise ValueError(f"frac_bits: {f!r} is out of range for {bits}-bit codes (allowed: 0 .. {bits - 2})")
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w: expected a 2-D weight [N, K], got {getattr(w, 'shape', type(w).__name__)}")
    if w.numel() == 0:
        raise ValueError(f"w: shape {tuple(w.shape)} is empty (need N >= 1 and K >= 1)")
    if w.dtype not in _FLOAT_DTYPES + (torch.float64,):
        raise ValueError(f"w: dtype {w.dtype} is not a floating type (allowed: float64/32, bfloat16, float16)")
    if granularity not in ("channel", "tensor"):
        raise ValueError(f"granularity: {granularity!r} is not supported (allowed: 'channel' or 'tensor')")
    w64 = w.detach().to(torch.float64)  # float64: the log and its rounding must not add error of their own
    if not torch.isfinite(w64).all():
        raise ValueError("w: contains inf or NaN; LNS codes can only hold finite weights")
    q = (1 << (bits - 1)) - 1
    step = 2.0**f
    mag = w64.abs()
    peak = mag.amax(dim=1) if granularity == "channel" else mag.amax().expand(w64.shape[0])
    # Offset rounds up so the largest weight is never clipped; an all-zero channel gets offset 0 (all codes 0).
    offsets = torch.where(peak > 0, torch.ceil(torch.log2(peak.clamp_min(1e-300)) * step), torch.zeros_like(peak))
    offsets = offsets.clamp(-(2**31) + q, 2**31 - 1 - q)
    m = torch.round(torch.log2(mag.clamp_min(1e-300)) * step - offsets[:, None] + q)
    # Below the range: nearest of 0 and the smallest magnitude w_min (at m = 1).
    w_min = torch.exp2((offsets[:, None] + 1 - q) / step)
    m = torch.where(m < 1, torch.where(mag >= w_min / 2, 1.0, 0.0), m.clamp(max=q))
    m = torch.where(mag == 0, 0.0, m)
    codes = (torch.sign(w64) * m).to(_CODE_DTYPE[bits])
    return LNSWeight(codes.contiguous(), offsets.to(torch.int32).contiguous(), bits, f)


def lns_decode(weight: LNSWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode LNS codes to a float tensor `[N, K]` of `dtype` (computed in fp32, or fp64 when asked, then cast)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    c = weight.codes.to(torch.int32)
    mag = c.abs()
    expo = (weight.offsets.to(torch.int32)[:, None] + mag - weight.max_code).to(compute) / 2.0**weight.frac_bits
    val = torch.exp2(expo) * torch.sign(c).to(compute)  # sign(0) = 0: the zero code decodes to exact 0
    return val.to(dtype)


# --- reference ---------------------------------------------------------------------------------------------------


def lns_matmul_ref(x: torch.Tensor, weight: LNSWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain torch: decode the weight to fp32, `y [M, N] = x [M, K] @ w^T (+ bias)` in fp32, cast to x's dtype."""
    y = x.to(torch.float32) @ lns_decode(weight, torch.float32).to(x.device).t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def lns_logadd_matmul_ref(x: torch.Tensor, weight: LNSWeight, acc_frac_bits: int | None = None) -> torch.Tensor:
    """Accuracy experiment, plain torch, no speed claim: `x [M, K] @ w^T` computed entirely in the log domain.

    x is LNS-encoded too (one offset per row, `weight.bits`); each product is the exact sum of two fixed-point logs;
    the sum over K is a sequence of log-adds with the exact sign-aware correction term,
    `log2|2^a +- 2^b| = max(a, b) + log2(1 +- 2^-|a - b|)` (the sign of the larger term wins, equal magnitudes of
    opposite sign cancel to exact zero), the accumulator's log rounded to `acc_frac_bits` fractional bits after
    every step (default: the weight's own f, i.e. a pure LNS accumulator). Returns float64 `[M, N]`.
    Cost: K sequential steps over [M, N] float64 tensors; tiny shapes only.
    """
    F = weight.frac_bits if acc_frac_bits is None else acc_frac_bits
    xl = lns_encode(x.to(torch.float64), weight.bits, frac_bits=weight.frac_bits)

    def logs(lw: LNSWeight) -> tuple[torch.Tensor, torch.Tensor]:
        c = lw.codes.to(torch.int64)
        lg = (lw.offsets.to(torch.int64)[:, None] + c.abs() - lw.max_code).to(torch.float64) / 2.0**lw.frac_bits
        return torch.where(c == 0, -torch.inf, lg), torch.sign(c).to(torch.float64)

    (lx, sx), (lw, sw) = logs(xl), logs(weight.to(x.device))
    acc = torch.full((x.shape[0], lw.shape[0]), -torch.inf, dtype=torch.float64, device=x.device)
    sgn = torch.zeros_like(acc)  # 0: the accumulator is exactly zero
    for k in range(x.shape[1]):
        b = lx[:, k, None] + lw[None, :, k]  # exact: both are on the 2^-f grid
        t = sx[:, k, None] * sw[None, :, k]
        hi, lo = torch.maximum(acc, b), torch.minimum(acc, b)
        d = (hi - lo).nan_to_num(nan=0.0)  # inf - inf (both zero) -> 0, masked below
        same = sgn * t >= 0
        corr = torch.where(same, torch.log2(1 + torch.exp2(-d)), torch.log2(-torch.expm1(-d * math.log(2))))
        new = torch.round((hi + corr) * 2.0**F) / 2.0**F
        new_sgn = torch.where(acc >= b, sgn, t)
        cancel = ~same & (d == 0)
        acc = torch.where(sgn == 0, b, torch.where(t == 0, acc, torch.where(cancel, -torch.inf, new)))
        sgn = torch.where(sgn == 0, t, torch.where(t == 0, sgn, torch.where(cancel, 0.0, new_sgn)))
    return sgn * torch.exp2(acc)


# --- Triton launcher (the kernel is in kernels/lns_triton.py) ----------------------------------------------------

if triton is not None:
    from kernels.lns_bits import bits_decode_supported
    from kernels.lns_launch import check_int32_extents, launch_config, max_shared_bytes
    from kernels.lns_small import lns_matmul_small
    from kernels.lns_triton import INTERPRETED as _INTERPRETED
    from kernels.lns_triton import _lns_matmul_kernel
else:
    _INTERPRETED = False


def validate_block_sizes(block_m: int, block_n: int, block_k: int) -> None:
    """Raise ValueError unless every tile size is a power of two in 16..256 (tl.dot needs >= 16 per dim)."""
    for name, v in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        _validate_block(name, v)


def _validate_block(name: str, v: object) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 16 or v > 256 or v & (v - 1):
        raise ValueError(f"{name}: {v!r} is out of range (allowed: a power of two from 16 to 256)")


def _lns_matmul_triton(
    x: torch.Tensor,
    weight: LNSWeight,
    bias: torch.Tensor | None,
    block_m: int,
    block_n: int,
    block_k: int,
    bits_decode: bool = False,
) -> torch.Tensor:
    M, K = x.shape
    N = weight.codes.shape[0]
    # Offsets inside the kernel are int32: refuse what would overflow them instead of reading wrong memory.
    check_int32_extents(
        **{
            "x": x.stride(0) * max(M - 1, 0) + x.stride(1) * (K - 1),
            "y [M, N]": M * N,
            "weight": weight.codes.stride(0) * (N - 1) + weight.codes.stride(1) * (K - 1),
        }
    )
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0:
        return y
    smem = max_shared_bytes(x.device.index if x.is_cuda else None)
    num_warps, num_stages = launch_config(
        block_m, block_n, block_k, x.element_size(), weight.codes.element_size(), smem
    )
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    try:
        _lns_matmul_kernel[grid](
            x,
            weight.codes,
            weight.offsets,
            bias if bias is not None else weight.offsets,
            y,
            M,
            N,
            K,
            x.stride(0),
            x.stride(1),
            weight.codes.stride(0),
            weight.codes.stride(1),
            y.stride(0),
            y.stride(1),
            2.0**-weight.frac_bits,
            Q=weight.max_code,
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            GROUP_M=8,
            TF32=x.dtype == torch.float32,
            INTERPRET=_interpreter_on(),
            BITS=bits_decode,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    except triton.runtime.errors.OutOfResources as e:
        raise ValueError(
            f"block sizes (block_m, block_n, block_k) = ({block_m}, {block_n}, {block_k}) need more GPU resources "
            f"than {torch.cuda.get_device_name(x.device)} has ({e}); choose smaller lns_block_size_m/n/k"
        ) from e
    return y


# --- public wrapper ----------------------------------------------------------------------------------------------


def lns_matmul(
    x: torch.Tensor,
    weight: LNSWeight,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    backend: Literal["auto", "triton", "torch"] = "auto",
    *,
    bias: torch.Tensor | None = None,
    variant: str = "auto",
) -> torch.Tensor:
    """`y [M, N] = x [M, K] @ decode(weight) [N, K]^T (+ bias [N])`, output in x's dtype, fp32 accumulation.

    x: fp32 / bf16 / fp16 `[M, K]` (any strides). weight: LNSWeight `[N, K]` on x's device. bias: float `[N]`.
    block_m/n/k: the Triton kernel's tile sizes, powers of two in 16..256 (checked for every backend); None: the
    variant's default (TILED_DEFAULT_BLOCKS for the tiled kernels; kernels/lns_small.py for the small-M ones, which
    take block_n/block_k only: their row tile follows M).
    backend: "triton" (on CPU only under TRITON_INTERPRET=1), "torch" (`lns_matmul_ref`), "auto" = triton iff x is
    on CUDA. Inference only: there is no backward, so an input that would need a gradient raises ValueError.
    Dot precision: fp16/bf16 x -> the decoded tile is rounded to x's dtype; fp32 x -> fp32 tile, tf32 tensor cores.
    variant (Triton backend): "auto" (default: `auto_variant(M)`, measured per M range; a small-M pick runs with its
    own tiles, the caller's block sizes serve the tiled kernel), or one of VARIANTS: "tiled" (the tiled kernel) or
    a small-M kernel of
    kernels/lns_small.py: "skinny", "skinny_splitk", "swap" (kernels/lns_swap.py), "gemv" (exp2 decode). A "_bits"
    suffix swaps in the bit-construction decode of kernels/lns_bits.py (8-bit codes with f = 4; "tiled_bits"
    refuses other formats, the small-M ones keep exp2 for them). All compute the same sums to fp32 rounding
    (docs/lns_kernel.md).
    """
    for name, given in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if given is not None:
            _validate_block(name, given)
    if variant != "auto" and variant not in VARIANTS:
        allowed = ", ".join(map(repr, ("auto", *VARIANTS)))
        raise ValueError(f"variant: {variant!r} is not supported (allowed: {allowed})")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: {backend!r} is not supported (allowed: 'auto', 'triton', 'torch')")
    if not isinstance(weight, LNSWeight):
        raise ValueError(f"weight: expected an LNSWeight (from lns_encode), got {type(weight).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [M, K], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x: dtype {x.dtype} is not supported (allowed: float32, bfloat16, float16)")
    N, K = weight.codes.shape
    if x.shape[1] != K:
        raise ValueError(f"x: has K = {x.shape[1]} columns but the weight [N, K] = [{N}, {K}] expects {K}")
    if weight.codes.dtype != _CODE_DTYPE.get(weight.bits) or weight.offsets.shape != (N,):
        raise ValueError(
            f"weight: inconsistent LNSWeight (codes {weight.codes.dtype} for {weight.bits} bits, "
            f"offsets {tuple(weight.offsets.shape)} for N = {N}); build it with lns_encode"
        )
    if weight.codes.device != x.device or weight.offsets.device != x.device:
        raise ValueError(
            f"weight: is on {weight.codes.device} but x is on {x.device}; move it with weight.to(x.device)"
        )
    if bias is not None:
        if bias.shape != (N,) or bias.dtype not in _FLOAT_DTYPES or bias.device != x.device:
            raise ValueError(
                f"bias: expected a float [{N}] tensor on {x.device}, got {bias.dtype} "
                f"{tuple(bias.shape)} on {bias.device}"
            )
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        raise ValueError(
            "x: requires grad, but lns_matmul is inference-only (no backward); run under "
            "torch.no_grad() / torch.inference_mode(), or train with lns_enabled: false"
        )
    use_triton = backend == "triton" or (backend == "auto" and x.is_cuda)
    if not use_triton:
        return lns_matmul_ref(x, weight, bias)
    if triton is None:
        raise ValueError(
            "backend: 'triton' was asked for but triton is not installed; pip install triton, or use backend='torch'"
        )
    if not x.is_cuda and not _interpreter_on():
        raise ValueError(
            f"backend: 'triton' on {x.device} needs TRITON_INTERPRET=1 (set before importing triton); "
            "or use backend='torch' / 'auto'"
        )
    if variant == "auto":
        variant, auto_n, auto_k = auto_variant(x.shape[0])
        if variant in SMALL_M_VARIANTS:
            block_n, block_k = auto_n, auto_k
    if variant in SMALL_M_VARIANTS:
        return lns_matmul_small(variant, x, weight, bias, _interpreter_on(), block_n, block_k)
    bits_decode = variant == "tiled_bits"
    if bits_decode and not bits_decode_supported(weight.bits, weight.frac_bits):
        raise ValueError(
            f"variant: 'tiled_bits' decodes 8-bit codes with 4 fractional bits only, not {weight.bits}-bit codes "
            f"with {weight.frac_bits}; use variant='tiled'"
        )
    bm, bn, bk = (d if b is None else b for b, d in zip((block_m, block_n, block_k), TILED_DEFAULT_BLOCKS))
    return _lns_matmul_triton(x, weight, bias, bm, bn, bk, bits_decode)


def _interpreter_on() -> bool:
    return _INTERPRETED


def flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of one `[M, K] @ [K, N]` matmul (multiply + add = 2)."""
    return 2 * m * n * k
