"""Triton kernels of the gated scan (kernels/scan_launch.py launches them; kernels/scan.py holds the reference,
autograd and public API).

Chunked two-pass design, no communication between programs (as flash-linear-attention's chunk kernels and
Mamba-2's state passing). A sequence is one (batch, block of BLOCK_R channels); it is cut into chunks of
BLOCK_C steps, each walked by one program in sub-tiles of BLOCK_T steps (BLOCK_C = K * BLOCK_T).

Forward ``h_t = a*h_{t-1} + g_t*u_t``, ``y_t = g_t*v_t*h_t``:
  1. ``_chunk_state_fwd``: each chunk's end state from a zero start, a weighted reduction
     ``sum_t a^(end-t) g_t u_t`` (reads g, u). The last chunk's is never needed: not launched for it.
  2. ``_chunk_scan_fwd``: the state entering chunk c, ``sum_{j<c} (a^BLOCK_C)^(c-1-j) state_j`` (a few
     [BLOCK_R] words from L2), then the recurrence through the chunk's sub-tiles; writes y and the state
     before every sub-tile (saved for the backward: [B, ceil(L/BLOCK_T), R] fp32, 1/BLOCK_T of the data).
Backward (mirrored, reverse time), with ``dh_t = g_t v_t dy_t + a*dh_{t+1}``:
  1. ``_chunk_state_bwd``: each chunk's ``sum_t a^(t-start) g_t v_t dy_t`` (reads dy, g, v); chunk 0 not needed.
  2. ``_chunk_scan_bwd``: dh entering from later chunks the same way, then the sub-tiles last to first: h
     recomputed from the saved state, du, dg, dv stored, per-chunk partial da; the last program of each channel
     block (a counter in the carry's always-zero first row) sums the partials in a fixed order into da.
Every value is written by exactly one program and every sum has a fixed order, so results are bitwise reproducible
run to run; no buffer needs zeroing. Data traffic: forward reads 2 + 3 and writes 1 element per (b, t, r) (the
second read of g, u may hit L2), backward reads 3 + 4 and writes 3.
"""

from __future__ import annotations

import triton
import triton.language as tl

WINDOW = 16  # earlier chunk states read per loop step of the state passing
# Integer arguments Triton must not specialise on (divisible by 16, equal to 1): the layouts load one element
# per thread along R, so alignment hints buy nothing, and every shape then shares one compiled kernel per
# dtype and tile (the bench's quick mode compiles a handful of kernels, not one per shape).
_SIZES = ["L", "R", "NC", "NRB", "NT", "KSUB"]


@triton.jit
def _first_order(a1, x1, a2, x2):
    # (a1, x1) then (a2, x2): h -> a2*(a1*h + x1) + x2. Associative, not commutative.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _pow(base, e, NBITS: tl.constexpr):
    """base ** e by binary exponentiation, e integer in [0, 2^NBITS). base [1, N] or [N], e broadcastable to it.
    Exact for any sign of base (no logarithm); 0 ** 0 = 1."""
    r = tl.where((e & 1) != 0, base, 1.0)
    b = base
    for i in tl.static_range(1, NBITS):
        b = b * b
        r = tl.where(((e >> i) & 1) != 0, r * b, r)
    return r


@triton.jit
def _pow_c(base, E: tl.constexpr):
    """base ** E for a compile-time 1 <= E < 2^16 (binary exponentiation, unrolled at compile time)."""
    r = base * 0.0 + 1.0
    b = base
    for i in tl.static_range(16):
        if (E >> i) & 1:
            r = r * b
        if (E >> i) > 1:
            b = b * b
    return r


@triton.jit
def _pass_states(
    st_ptr, seq, c, NC, lanes, a_c, STEP: tl.constexpr, BLOCK_R: tl.constexpr, WINDOW: tl.constexpr, LOG_W: tl.constexpr
):
    """State entering chunk c from chunks c-step, c-2*step, ... (STEP +1: forward, earlier chunks; -1:
    backward, later chunks): sum_k a_c^k * st[c - step*(k+1)] over chunks in [0, NC). a_c = a^BLOCK_C [BLOCK_R].
    st_ptr: [S, NC, BLOCK_R] fp32 per-chunk states. Returns [BLOCK_R] fp32."""
    kk = tl.arange(0, WINDOW)
    pw = _pow(a_c[None, :], kk[:, None], LOG_W + 1)  # [WINDOW, BLOCK_R]: a_c^k
    a_w = _pow_c(a_c, WINDOW)
    n = c if STEP > 0 else NC - 1 - c  # chunks on that side
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    mult = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
    k0 = 0
    while k0 < n:  # a while loop: Triton's interpreter cannot take range() of a program-id-derived bound
        j = c - STEP * (k0 + 1 + kk)  # [WINDOW] chunk read in row k
        ok = (k0 + kk) < n
        offs = (seq * NC + j).to(tl.int64)[:, None] * BLOCK_R + lanes[None, :]
        st = tl.load(st_ptr + offs, mask=ok[:, None], other=0.0)
        acc += mult * tl.sum(pw * st, axis=0)
        mult = mult * a_w
        k0 += WINDOW
    return acc


@triton.jit
def _program_lanes(seq, a_ptr, R, NRB, BLOCK_R: tl.constexpr):
    """The channels of program row `seq` (every kernel's first axis: batch row b times NRB channel blocks):
    (b, lanes [BLOCK_R], cols = channel indices [BLOCK_R], lane_ok = cols < R, a = decay [BLOCK_R] fp32)."""
    lanes = tl.arange(0, BLOCK_R)
    cols = (seq % NRB) * BLOCK_R + lanes
    lane_ok = cols < R
    a = tl.load(a_ptr + cols, mask=lane_ok, other=1.0).to(tl.float32)
    return seq // NRB, lanes, cols, lane_ok, a


@triton.jit
def _sub_tile(b, rows, cols, lane_ok, L, R):
    """int64 element offsets [BLOCK_T, BLOCK_R] of rows x cols in batch row b of a contiguous [B, L, R] tensor,
    and the mask of the elements inside it (rows < L, cols < R)."""
    offs = b.to(tl.int64) * L * R + rows[:, None].to(tl.int64) * R + cols[None, :]
    return offs, (rows < L)[:, None] & lane_ok[None, :]


@triton.jit(do_not_specialize=_SIZES)
def _chunk_state_fwd(
    u_ptr, g_ptr, a_ptr, st_ptr, L, R, NC, NRB, KSUB, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, LOG_T: tl.constexpr
):
    """st[seq, c] = sum over chunk c of a^(last row - t) * g_t*u_t [BLOCK_R] fp32 (chunks 0 .. NC-2)."""
    seq = tl.program_id(0)
    c = tl.program_id(1)
    b, lanes, cols, lane_ok, a = _program_lanes(seq, a_ptr, R, NRB, BLOCK_R)
    rows_l = tl.arange(0, BLOCK_T)
    w = _pow(a[None, :], (BLOCK_T - 1 - rows_l)[:, None], LOG_T + 1)  # [BLOCK_T, BLOCK_R] a^(BLOCK_T-1-i)
    a_t = _pow_c(a, BLOCK_T)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    k = 0
    while k < KSUB:  # chunks 0 .. NC-2 are full (the row mask only guards)
        rows = (c * KSUB + k) * BLOCK_T + rows_l
        offs, m = _sub_tile(b, rows, cols, lane_ok, L, R)
        x = tl.load(g_ptr + offs, mask=m, other=0).to(tl.float32) * tl.load(u_ptr + offs, mask=m, other=0).to(
            tl.float32
        )
        acc = acc * a_t + tl.sum(w * x, axis=0)
        k += 1
    tl.store(st_ptr + (seq * NC + c).to(tl.int64) * BLOCK_R + lanes, acc)


@triton.jit(do_not_specialize=_SIZES)
def _chunk_scan_fwd(
    u_ptr,
    g_ptr,
    v_ptr,
    a_ptr,
    st_ptr,
    y_ptr,
    carry_ptr,
    L,
    R,
    NC,
    NRB,
    NT,
    KSUB,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    WINDOW: tl.constexpr,
    LOG_W: tl.constexpr,
    SAVE_CARRY: tl.constexpr,
):
    """y over chunk c; carry[b, i, channel] = h before sub-tile i (i = c*KSUB + k) when SAVE_CARRY."""
    seq = tl.program_id(0)
    c = NC - 1 - tl.program_id(1)  # last chunk first: the chunks pass 1 read last are likeliest in L2
    b, lanes, cols, lane_ok, a = _program_lanes(seq, a_ptr, R, NRB, BLOCK_R)
    rows_l = tl.arange(0, BLOCK_T)
    a_c = _pow(_pow_c(a, BLOCK_T), KSUB, 5)  # a^(chunk length), KSUB <= 16
    h_in = _pass_states(st_ptr, seq, c, NC, lanes, a_c, 1, BLOCK_R, WINDOW, LOG_W)
    decay = tl.broadcast_to(a[None, :], (BLOCK_T, BLOCK_R))
    last = rows_l[:, None] == BLOCK_T - 1
    k = 0
    while k < KSUB:  # while, not range(): not unrolled (registers), and the interpreter takes it.
        # Sub-tiles wholly past L (last chunk only) are masked out.
        i = c * KSUB + k  # sub-tile index in the sequence
        if SAVE_CARRY:
            tl.store(carry_ptr + (b * NT + i).to(tl.int64) * R + cols, h_in, mask=lane_ok & (i < NT))
        rows = (c * KSUB + k) * BLOCK_T + rows_l
        offs, m = _sub_tile(b, rows, cols, lane_ok, L, R)
        u = tl.load(u_ptr + offs, mask=m, other=0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=m, other=0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=m, other=0).to(tl.float32)
        pw, x = tl.associative_scan((decay, g * u), 0, _first_order)  # pw[t] = a^(t+1), x: from a zero start
        h = x + pw * h_in[None, :]
        tl.store(y_ptr + offs, (g * v * h).to(y_ptr.dtype.element_ty), mask=m)
        h_in = tl.sum(tl.where(last, h, 0.0), axis=0)
        k += 1


@triton.jit(do_not_specialize=_SIZES)
def _chunk_state_bwd(
    dy_ptr,
    g_ptr,
    v_ptr,
    a_ptr,
    st_ptr,
    L,
    R,
    NC,
    NRB,
    KSUB,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    LOG_T: tl.constexpr,
):
    """st[seq, c] = sum over chunk c of a^(t - first row) * g_t*v_t*dy_t [BLOCK_R] fp32 (chunks 1 .. NC-1)."""
    seq = tl.program_id(0)
    c = tl.program_id(1) + 1
    b, lanes, cols, lane_ok, a = _program_lanes(seq, a_ptr, R, NRB, BLOCK_R)
    rows_l = tl.arange(0, BLOCK_T)
    w = _pow(a[None, :], rows_l[:, None], LOG_T + 1)  # a^i
    a_t = _pow_c(a, BLOCK_T)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    mult = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
    k = 0
    while k < KSUB:  # rows past L load as 0
        rows = (c * KSUB + k) * BLOCK_T + rows_l
        offs, m = _sub_tile(b, rows, cols, lane_ok, L, R)
        q = (
            tl.load(dy_ptr + offs, mask=m, other=0).to(tl.float32)
            * tl.load(g_ptr + offs, mask=m, other=0).to(tl.float32)
            * tl.load(v_ptr + offs, mask=m, other=0).to(tl.float32)
        )
        acc += mult * tl.sum(w * q, axis=0)
        mult = mult * a_t
        k += 1
    tl.store(st_ptr + (seq * NC + c).to(tl.int64) * BLOCK_R + lanes, acc)


@triton.jit(do_not_specialize=_SIZES)
def _chunk_scan_bwd(
    dy_ptr,
    u_ptr,
    g_ptr,
    v_ptr,
    a_ptr,
    st_ptr,
    carry_ptr,
    du_ptr,
    dg_ptr,
    dv_ptr,
    da_part_ptr,
    da_ptr,
    L,
    R,
    NC,
    NRB,
    NT,
    KSUB,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    WINDOW: tl.constexpr,
    LOG_W: tl.constexpr,
    RED_ROWS: tl.constexpr,
):
    """du, dg, dv over chunk c; da_part[b, c, channel] = sum over the chunk of dh_t * h_{t-1}, and da [R] = the sum
    of all B*NC partials of the channel block (by whichever of its programs ends last, in a fixed order). Reads the
    carry [B, NT, R] the forward saved (its layout does not depend on either pass's BLOCK_R); its row (b 0, sub-tile
    0), h before the first step and so 0, is borrowed as the channel blocks' counters and left 0 again."""
    seq = tl.program_id(0)
    c = NC - 1 - tl.program_id(1)  # last chunk first: the chunks pass 1 read last are likeliest in L2
    b, lanes, cols, lane_ok, a = _program_lanes(seq, a_ptr, R, NRB, BLOCK_R)
    rows_l = tl.arange(0, BLOCK_T)
    a_c = _pow(_pow_c(a, BLOCK_T), KSUB, 5)  # a^(chunk length), KSUB <= 16
    d_in = _pass_states(st_ptr, seq, c, NC, lanes, a_c, -1, BLOCK_R, WINDOW, LOG_W)  # dL/dh just after the chunk
    decay = tl.broadcast_to(a[None, :], (BLOCK_T, BLOCK_R))
    decay_p = tl.where(rows_l[:, None] > 0, decay, 1.0)
    first = rows_l[:, None] == 0
    da = tl.zeros([BLOCK_R], dtype=tl.float32)
    kr = 0
    while kr < KSUB:  # a while loop: not unrolled by the compiler, and the interpreter takes it
        # Last sub-tile first. Sub-tiles wholly past L (last chunk only) load zeros and give dh = 0: nothing
        # flows back from after the sequence's end.
        k = KSUB - 1 - kr
        i = c * KSUB + k
        rows = (c * KSUB + k) * BLOCK_T + rows_l
        offs, m = _sub_tile(b, rows, cols, lane_ok, L, R)
        dy = tl.load(dy_ptr + offs, mask=m, other=0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=m, other=0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=m, other=0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=m, other=0).to(tl.float32)
        # Row t-1 of g and u (mostly the lines just loaded; row 0 of the sub-tile gets 0): the forward scan of
        # the shifted input gives h_{t-1} directly (da needs it; no division by a), and h = a*h_{t-1} + g*u.
        m_p = m & (rows_l[:, None] > 0)
        u_p = tl.load(u_ptr + offs - R, mask=m_p, other=0).to(tl.float32)
        g_p = tl.load(g_ptr + offs - R, mask=m_p, other=0).to(tl.float32)
        # h before sub-tile 0 is 0 by definition: not loaded, its row holds the counters below.
        h0 = tl.load(carry_ptr + (b * NT + i).to(tl.int64) * R + cols, mask=lane_ok & (i < NT) & (i > 0), other=0.0)
        pw_p, x_p = tl.associative_scan((decay_p, g_p * u_p), 0, _first_order)  # pw_p[t] = a^t
        h_prev = x_p + pw_p * h0[None, :]
        h = a[None, :] * h_prev + g * u
        tl.store(dv_ptr + offs, (dy * g * h).to(dv_ptr.dtype.element_ty), mask=m)
        pw_r, x_r = tl.associative_scan((decay, dy * g * v), 0, _first_order, reverse=True)  # pw_r[t] = a^(T-t)
        dh = x_r + pw_r * d_in[None, :]
        tl.store(du_ptr + offs, (g * dh).to(du_ptr.dtype.element_ty), mask=m)
        tl.store(dg_ptr + offs, (dy * v * h + u * dh).to(dg_ptr.dtype.element_ty), mask=m)
        da += tl.sum(dh * h_prev, axis=0)
        d_in = tl.sum(tl.where(first, dh, 0.0), axis=0)
        kr += 1
    tl.store(da_part_ptr + (b * NC + c).to(tl.int64) * R + cols, da, mask=lane_ok)
    # Last program of the channel block sums the partials: no second launch, no zeroed buffer, and the same order
    # whichever program it is (bitwise reproducible). The barrier orders every thread's partial store before the
    # counter's release; the acquiring program reads the partials past L1 (.cg), where no stale line can sit.
    tl.debug_barrier()
    cnt_ptr = carry_ptr + seq % NRB  # an fp32 counter: exact far beyond any B*NC
    n_parts = (tl.num_programs(0) // NRB) * NC
    ended = tl.atomic_add(cnt_ptr, 1.0, sem="acq_rel", scope="gpu")
    if ended == n_parts - 1:
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        rows_p = tl.arange(0, RED_ROWS)
        j = 0
        while j < n_parts:
            rows = j + rows_p
            offs = rows.to(tl.int64)[:, None] * R + cols[None, :]
            part = tl.load(
                da_part_ptr + offs, mask=(rows < n_parts)[:, None] & lane_ok[None, :], other=0.0, cache_modifier=".cg"
            )
            acc += tl.sum(part, axis=0)
            j += RED_ROWS
        tl.store(da_ptr + cols, acc.to(da_ptr.dtype.element_ty), mask=lane_ok)
        tl.store(cnt_ptr, 0.0)  # the carry as the forward left it: a second backward through the graph finds 0
