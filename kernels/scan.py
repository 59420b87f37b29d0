"""Gated first-order scan of the AR-SSM mixer: ``h_t = a*h_{t-1} + g_t*u_t``, ``y_t = g_t*v_t*h_t``.

Layout follows flash-linear-attention: plain-torch reference, Triton kernels (forward and backward),
launchers, ``torch.autograd.Function``, public wrapper that validates its inputs.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BACKENDS = ("auto", "triton", "torch")
_TORCH_CHUNK = 64  # chunk length of the torch backend: O(L*C*R) work, L/C sequential steps


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
    C = min(_TORCH_CHUNK, max(L, 1))
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


# --------------------------------------------------------------------------------------------------------
# Triton kernels. One program per chunk of BLOCK_T steps x BLOCK_R channels: a local scan inside the tile
# (tl.associative_scan over (decay, value) pairs), then the carry from earlier chunks through a single-pass
# decoupled look-back (as in CUB's scan): each chunk publishes its local aggregate at once, then walks back
# over its predecessors' published words until it meets an inclusive prefix. Each published word packs the
# fp32 value (low 32 bits) and a status (high 32 bits: 0 empty, 1 written) so a reader never sees a value
# without its status; aggregates and inclusive prefixes go to two write-once buffers. Chunks are numbered
# by an atomic ticket, so a predecessor always got its ticket (and a resident program) first: no deadlock
# whatever order the hardware schedules programs in.
# The data move once: forward reads u, g, v and writes y; backward reads dy, u, g, v and writes du, dg, dv.
# --------------------------------------------------------------------------------------------------------
_WINDOW = 4  # predecessors read per look-back round trip (sweep: 4 and 8 beat 16 and 32)


@triton.jit
def _first_order(a1, x1, a2, x2):
    # (a1, x1) then (a2, x2): h -> a2*(a1*h + x1) + x2. Associative, not commutative.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _pack(val, status):
    # fp32 value [BLOCK_R] + status -> int64 word; one 64-bit store publishes both.
    bits = val.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return bits | (status.to(tl.int64) << 32)


@triton.jit
def _value(w):
    return (w & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _look_back(incl_ptr, agg_ptr, seq, c, step, NC, lanes, lane_ok, a_chunk,
               BLOCK_R: tl.constexpr, WINDOW: tl.constexpr):
    """Carry into chunk c from chunks c-step, c-2*step, ... (step = +1 forward, -1 backward). Returns [BLOCK_R] fp32.

    Reads WINDOW predecessors per round trip (as CUB's warp-wide look-back does): the nearest one with an
    inclusive prefix ends the walk, aggregates before it are added with their decay a_chunk^k; a
    predecessor that has published nothing yet stops the window there and the walk reads again. Chunks
    outside [0, NC) count as an inclusive prefix 0. Every decision is uniform over the program (taken from
    reductions); a thread whose own copy of a word it must use was still empty re-reads it: Triton may
    replicate a tensor over threads, and two copies of one element may read the word at different moments;
    the re-read (after the reduction's barrier) cannot see an older word than the one that made the
    decision. Words are written once, so every copy that sees a word sees the same value.
    """
    kk = tl.arange(0, WINDOW)
    pw = tl.cumprod(tl.where(kk[:, None] == 0, 1.0, tl.broadcast_to(a_chunk[None, :], (WINDOW, BLOCK_R))), 0)
    j = c - step  # nearest predecessor not yet read
    carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    mult = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
    while (j >= 0) & (j < NC):
        jk = j - step * kk  # [WINDOW] chunk read in row k
        inr = (jk >= 0) & (jk < NC)
        slot = (seq * NC + jk).to(tl.int64)[:, None] * BLOCK_R + lanes[None, :]
        m2 = inr[:, None] & lane_ok[None, :]
        wi = tl.load(incl_ptr + slot, mask=m2, other=0, volatile=True)
        wa = tl.load(agg_ptr + slot, mask=m2, other=0, volatile=True)
        si = tl.min(tl.where(m2, (wi >> 32).to(tl.int32), 1), axis=1)  # [WINDOW] 1: inclusive there (or virtual)
        sa = tl.min(tl.where(m2, (wa >> 32).to(tl.int32), 1), axis=1)
        k_inc = tl.min(tl.where(si > 0, kk, WINDOW), axis=0)
        k_gap = tl.min(tl.where((si == 0) & (sa == 0), kk, WINDOW), axis=0)
        done = k_inc < k_gap
        n_agg = tl.where(done, k_inc, k_gap)  # rows read as aggregates: 0 .. n_agg-1
        use_inc = (kk == k_inc) & done
        use_agg = kk < n_agg
        # Re-read only where this thread's copy of a word it is to use was still empty (another copy made the
        # decision): predicated off everywhere else, so the common case costs no second round trip.
        ei = ((wi >> 32) == 0) & m2 & use_inc[:, None]
        ea = ((wa >> 32) == 0) & m2 & use_agg[:, None]
        wi = tl.where(ei, tl.load(incl_ptr + slot, mask=ei, other=0, volatile=True), wi)
        wa = tl.where(ea, tl.load(agg_ptr + slot, mask=ea, other=0, volatile=True), wa)
        vals = tl.where(use_inc[:, None], _value(wi), tl.where(use_agg[:, None], _value(wa), 0.0))
        carry = carry + mult * tl.sum(pw * vals, axis=0)
        decay_n = tl.sum(tl.where(kk[:, None] == n_agg - 1, pw, 0.0), axis=0) * a_chunk  # a_chunk^n_agg
        mult = tl.where(n_agg > 0, mult * decay_n, mult)
        j = tl.where(done, -1, j - step * n_agg)
    return carry


@triton.jit
def _scan_fwd_kernel(
    # pointers
    u_ptr, g_ptr, v_ptr, a_ptr, y_ptr, carry_ptr, incl_ptr, agg_ptr, ticket_ptr,
    # sizes
    L, R, NC, NRB, n_seq,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, WINDOW: tl.constexpr, SAVE_CARRY: tl.constexpr,
    LOOKBACK: tl.constexpr = True,  # False only in the bench's diagnosis (times the tile work without the carry)
    PUBLISH_INCLUSIVE: tl.constexpr = True,  # False only in tests: every look-back then walks to chunk 0
):
    ticket = tl.atomic_add(ticket_ptr, 1)
    c = ticket // n_seq  # chunk index (all sequences' chunk 0 first: predecessors are n_seq tickets back)
    seq = ticket % n_seq
    b = seq // NRB
    rb = seq % NRB
    rows_l = tl.arange(0, BLOCK_T)
    rows = c * BLOCK_T + rows_l
    lanes = tl.arange(0, BLOCK_R)
    cols = rb * BLOCK_R + lanes
    lane_ok = cols < R
    mask = (rows < L)[:, None] & lane_ok[None, :]
    offs = b.to(tl.int64) * L * R + rows[:, None].to(tl.int64) * R + cols[None, :]
    u = tl.load(u_ptr + offs, mask=mask, other=0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.float32)
    a = tl.load(a_ptr + cols, mask=lane_ok, other=1).to(tl.float32)

    decay = tl.broadcast_to(a[None, :], (BLOCK_T, BLOCK_R))
    pw, x = tl.associative_scan((decay, g * u), 0, _first_order)  # pw[t] = a^(t+1), x = local state
    last = rows_l[:, None] == BLOCK_T - 1
    agg = tl.sum(tl.where(last, x, 0.0), axis=0)  # chunk's own end state [BLOCK_R]
    a_chunk = tl.sum(tl.where(last, pw, 0.0), axis=0)  # a^BLOCK_T
    slot = (seq * NC + c).to(tl.int64) * BLOCK_R + lanes
    one = tl.full([BLOCK_R], 1, dtype=tl.int32)
    if (c == 0) & PUBLISH_INCLUSIVE:  # nothing before: the aggregate is the inclusive prefix
        tl.store(incl_ptr + slot, _pack(agg, one), mask=lane_ok)
    else:
        tl.store(agg_ptr + slot, _pack(agg, one), mask=lane_ok)
    # y = g*v*(x + pw*carry): only two tiles stay live across the look-back (register pressure).
    gv = g * v
    y_loc = gv * x
    y_pw = gv * pw
    if LOOKBACK:
        carry = _look_back(incl_ptr, agg_ptr, seq, c, 1, NC, lanes, lane_ok, a_chunk, BLOCK_R, WINDOW)
    else:
        carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    if (c > 0) & PUBLISH_INCLUSIVE:
        tl.store(incl_ptr + slot, _pack(a_chunk * carry + agg, one), mask=lane_ok)
    if SAVE_CARRY:
        tl.store(carry_ptr + slot, carry, mask=lane_ok)
    y = y_loc + y_pw * carry[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scan_bwd_kernel(
    # pointers
    dy_ptr, u_ptr, g_ptr, v_ptr, a_ptr, carry_ptr, du_ptr, dg_ptr, dv_ptr, da_part_ptr, incl_ptr, agg_ptr, ticket_ptr,
    # sizes
    L, R, NC, NRB, n_seq,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, WINDOW: tl.constexpr,
    LOOKBACK: tl.constexpr = True,  # False only in the bench's diagnosis (times the tile work without the carry)
    PUBLISH_INCLUSIVE: tl.constexpr = True,  # False only in tests: every look-back then walks to the last chunk
):
    ticket = tl.atomic_add(ticket_ptr, 1)
    c = NC - 1 - ticket // n_seq  # reverse recurrence: last chunk first
    seq = ticket % n_seq
    b = seq // NRB
    rb = seq % NRB
    rows_l = tl.arange(0, BLOCK_T)
    rows = c * BLOCK_T + rows_l
    lanes = tl.arange(0, BLOCK_R)
    cols = rb * BLOCK_R + lanes
    lane_ok = cols < R
    mask = (rows < L)[:, None] & lane_ok[None, :]
    base = b.to(tl.int64) * L * R
    offs = base + rows[:, None].to(tl.int64) * R + cols[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.float32)
    # Row t-1 of g and u (same cache lines as the tile just loaded; row 0 of the chunk gets 0): the
    # forward scan of the shifted input gives h_{t-1} directly, which da needs, and h = a*h_{t-1} + g*u.
    mask_p = mask & (rows_l[:, None] > 0)
    u_p = tl.load(u_ptr + offs - R, mask=mask_p, other=0).to(tl.float32)
    g_p = tl.load(g_ptr + offs - R, mask=mask_p, other=0).to(tl.float32)
    a = tl.load(a_ptr + cols, mask=lane_ok, other=1).to(tl.float32)
    slot = (seq * NC + c).to(tl.int64) * BLOCK_R + lanes
    h_in = tl.load(carry_ptr + slot, mask=lane_ok, other=0)  # h before the chunk, saved by the forward

    decay = tl.broadcast_to(a[None, :], (BLOCK_T, BLOCK_R))
    decay_p = tl.where(rows_l[:, None] > 0, decay, 1.0)
    pw_p, x_p = tl.associative_scan((decay_p, g_p * u_p), 0, _first_order)  # pw_p[t] = a^t
    h_prev = x_p + pw_p * h_in[None, :]
    h = a[None, :] * h_prev + g * u

    dv = dy * g * h
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)
    pw_r, x_r = tl.associative_scan((decay, dy * g * v), 0, _first_order, reverse=True)  # pw_r[t] = a^(T-t)
    first_row = rows_l[:, None] == 0
    agg = tl.sum(tl.where(first_row, x_r, 0.0), axis=0)  # dL/dh at the chunk's first step, local part
    a_chunk = tl.sum(tl.where(first_row, pw_r, 0.0), axis=0)
    one = tl.full([BLOCK_R], 1, dtype=tl.int32)
    if (c == NC - 1) & PUBLISH_INCLUSIVE:  # nothing after: the aggregate is the inclusive suffix
        tl.store(incl_ptr + slot, _pack(agg, one), mask=lane_ok)
    else:
        tl.store(agg_ptr + slot, _pack(agg, one), mask=lane_ok)
    # gh = x_r + pw_r*carry. Split every output into its local part and its carry coefficient now, so four
    # tiles (not eight) stay live across the look-back. Rows past L: x_r = 0 there, and the only chunk with
    # such rows is the last, whose carry is 0.
    dg_loc = dy * v * h + u * x_r
    dg_pw = u * pw_r
    du_loc = g * x_r
    du_pw = g * pw_r
    da_loc = tl.sum(x_r * h_prev, axis=0)
    da_pw = tl.sum(pw_r * h_prev, axis=0)
    if LOOKBACK:  # dL/dh just after the chunk
        carry = _look_back(incl_ptr, agg_ptr, seq, c, -1, NC, lanes, lane_ok, a_chunk, BLOCK_R, WINDOW)
    else:
        carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    if (c < NC - 1) & PUBLISH_INCLUSIVE:
        tl.store(incl_ptr + slot, _pack(a_chunk * carry + agg, one), mask=lane_ok)
    tl.store(du_ptr + offs, (du_loc + du_pw * carry[None, :]).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + offs, (dg_loc + dg_pw * carry[None, :]).to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(da_part_ptr + slot, da_loc + da_pw * carry, mask=lane_ok)


def _tiles(L: int, R: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_R, num_warps, WINDOW) for a [B, L, R] problem.

    From the H100 sweep in bench/scan_notes.md: 64 steps x 32 channels on 2 warps was best or near best for
    fp32 and bf16 at (16, 4096, 64) and (8, 16384, 64), forward and backward (larger tiles spill registers in
    the backward, which holds two scans; smaller ones lengthen the look-back chains). Look-back window 4.
    """
    block_r = min(triton.next_power_of_2(R), 32)
    block_t = min(64, max(16, triton.next_power_of_2(L)))
    return block_t, block_r, 2, _WINDOW


def _workspace(n_words: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One zeroed allocation (one memset): inclusive words, aggregate words, then the ticket counter.
    buf = torch.zeros(2 * n_words + 1, dtype=torch.int64, device=device)
    return buf[:n_words], buf[n_words:2 * n_words], buf[2 * n_words:]


def _scan_fwd(u, g, v, a, save_carry: bool, tiles=None, meta=None):
    """Forward launcher. u, g, v contiguous [B, L, R]; a [R]. Returns (y [B, L, R], carry [S, NC, BLOCK_R] fp32
    or None, meta) where carry holds h before each chunk (S = B * channel blocks)."""
    B, L, R = u.shape
    block_t, block_r, warps, window = tiles or _tiles(L, R, u.dtype)
    nc, nrb = triton.cdiv(L, block_t), triton.cdiv(R, block_r)
    n_seq = B * nrb
    y = torch.empty_like(u)
    incl, agg, ticket = _workspace(n_seq * nc * block_r, u.device)
    carry = torch.empty(n_seq * nc * block_r if save_carry else 1, dtype=torch.float32, device=u.device)
    _scan_fwd_kernel[(n_seq * nc,)](
        u, g, v, a, y, carry, incl, agg, ticket, L, R, nc, nrb, n_seq,
        BLOCK_T=block_t, BLOCK_R=block_r, WINDOW=window, SAVE_CARRY=save_carry, num_warps=warps, **(meta or {}),
    )
    return y, (carry if save_carry else None), (block_t, block_r, warps, window)


def _scan_bwd(dy, u, g, v, a, carry, tiles, meta=None):
    """Backward launcher: (du, dg, dv) [B, L, R] in the input dtype, da [R] in a's dtype."""
    B, L, R = u.shape
    block_t, block_r, warps, window = tiles
    nc, nrb = triton.cdiv(L, block_t), triton.cdiv(R, block_r)
    n_seq = B * nrb
    du, dg, dv = torch.empty_like(u), torch.empty_like(g), torch.empty_like(v)
    da_part = torch.empty(n_seq * nc * block_r, dtype=torch.float32, device=u.device)
    incl, agg, ticket = _workspace(n_seq * nc * block_r, u.device)
    _scan_bwd_kernel[(n_seq * nc,)](
        dy, u, g, v, a, carry, du, dg, dv, da_part, incl, agg, ticket, L, R, nc, nrb, n_seq,
        BLOCK_T=block_t, BLOCK_R=block_r, WINDOW=window, num_warps=warps, **(meta or {}),
    )
    da = da_part.view(B, nrb, nc, block_r).sum(dim=(0, 2)).reshape(nrb * block_r)[:R]
    return du, dg, dv, da.to(a.dtype)


class _GatedScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, g, v, a, tiles=None):
        u, g, v, a = (t.contiguous() for t in (u, g, v, a))
        need = any(ctx.needs_input_grad[:4])
        with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():  # launch on the inputs' GPU
            y, carry, used = _scan_fwd(u, g, v, a, save_carry=need, tiles=tiles)
        if need:
            ctx.save_for_backward(u, g, v, a, carry)  # carry: h before each chunk, 1/BLOCK_T of the data
            ctx.tiles = used
        return y

    @staticmethod
    def backward(ctx, dy):
        u, g, v, a, carry = ctx.saved_tensors
        with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
            du, dg, dv, da = _scan_bwd(dy.contiguous(), u, g, v, a, carry, ctx.tiles)
        return du, dg, dv, da, None


def _validate(u, g, v, a, backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"gated_scan: backend={backend!r} is not one of {_BACKENDS}")
    for name, t in (("u", u), ("g", g), ("v", v), ("a", a)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"gated_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        raise ValueError(f"gated_scan: u must be [B, L, R], got shape {tuple(u.shape)}")
    for name, t in (("g", g), ("v", v)):
        if t.shape != u.shape:
            raise ValueError(f"gated_scan: {name} shape {tuple(t.shape)} != u shape {tuple(u.shape)}")
    if a.shape != (u.shape[2],):
        raise ValueError(f"gated_scan: a must be [R] = [{u.shape[2]}], got shape {tuple(a.shape)}")
    # float64 only on the torch backend (gradcheck, references); the kernels take the three model dtypes.
    allowed = _DTYPES + ((torch.float64,) if backend == "torch" else ())
    if u.dtype not in allowed:
        raise ValueError(f"gated_scan: dtype {u.dtype} is not supported with backend={backend!r}; use one of {allowed}")
    for name, t in (("g", g), ("v", v)):
        if t.dtype != u.dtype:
            raise ValueError(f"gated_scan: {name} dtype {t.dtype} != u dtype {u.dtype}; cast them to one dtype")
    if not a.is_floating_point():
        raise ValueError(f"gated_scan: a must be floating point, got {a.dtype}")
    for name, t in (("g", g), ("v", v), ("a", a)):
        if t.device != u.device:
            raise ValueError(f"gated_scan: {name} is on {t.device} but u is on {u.device}; move them to one device")
    if backend == "triton" and u.device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise ValueError(
            f"gated_scan: backend='triton' needs CUDA tensors, got device {u.device}; "
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
    return _GatedScanFn.apply(u, g, v, a)
