"""Triton selective scan (Mamba-1 S6): forward and backward kernels for CUDA tensors.

Design (see docs/selective_scan.md §2-4 for the maths):

* Grid ``(dim, batch)``: one program per (batch, channel). Each program holds a tile of
  ``[BLOCK_N, BLOCK_L]`` (all N states, padded to a power of two, by a block of time steps) and
  walks the sequence in tiles. ``BLOCK_L`` is a power of two dividing ``CHUNK_LEN``, so chunk
  boundaries are always tile boundaries.
* Forward: per tile, discretise (ā = exp2(Δ·A·log2 e), b̄ = Δ·B·u), run ``tl.associative_scan`` over
  time with the pair combine (a0,b0)∘(a1,b1) = (a1·a0, a1·b0 + b1) (products of numbers ≤ 1 only: no
  range problem at any L), add the state carried from the previous tile, contract with C, add D·u,
  gate with silu(z). The state after the last step of every ``CHUNK_LEN`` chunk is stored; that
  (batch, dim, ceil(L/CHUNK_LEN), N) fp32 tensor is the only thing saved for the backward.
* Backward: chunks last → first. Each chunk's states are recomputed from the saved state of the
  chunk before it; the adjoint λ_t = gy_t·C_t + ā_{t+1}·λ_{t+1} runs as a reverse
  ``tl.associative_scan`` per tile with λ carried between tiles (and chunks). When a chunk spans
  several tiles, a first forward pass over the chunk writes each tile's starting state to a small
  per-program scratch (batch·dim·tiles·N, independent of L) so the reverse pass can start each tile
  without re-scanning the chunk from its beginning.
* Nothing of size batch·dim·L·N touches global memory. Variable dB/dC are accumulated with fp32
  atomics into (batch, G, N, L) buffers (the channels of a group add into the same slots); dA, dD,
  d_bias and constant dB/dC are per-program partial sums written to (batch, dim, ...) buffers and
  summed over batch on the host (deterministic, no atomics).
* Routes: mode 0 natural order, mode 1 an index table (K, L), mode 2 a strided descriptor (K, 7)
  from which the natural index of each scan position is computed arithmetically (no table read, no
  permuted copy). Loads and stores go straight to the natural positions.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .op import CHUNK_LEN

_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2 e)
# Tile sizes (elements of the [BLOCK_N, BLOCK_L] tile) and elements per thread. Not tuned on a GPU:
# chosen from ptxas register counts for sm_90 so that neither kernel spills (forward 2048 elements,
# 8 warps: ~125 registers; backward, which keeps ~12 tile-sized tensors live, 1024 elements,
# 8 warps: ~150-230 registers).
_FWD_TILE_ELEMS, _FWD_ELEMS_PER_THREAD = 2048, 8
_BWD_TILE_ELEMS, _BWD_ELEMS_PER_THREAD = 1024, 4


# --------------------------------------------------------------------------------------------
# Helpers shared by the kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _pair_combine(a0, b0, a1, b1):
    # (a0, b0) is the earlier segment, (a1, b1) the later one: h -> a1·(a0·h + b0) + b1.
    # With reverse=True Triton feeds (accumulated later segment, current earlier element), so the
    # same function composes x_t = a_t·x_{t+1} + b_t for the adjoint.
    return a1 * a0, a1 * b0 + b1


@triton.jit
def _softplus(x):
    # log1p(exp(x)) below the threshold 20 (torch / CUDA kernel), x itself above.
    e = tl.exp(tl.minimum(x, 20.0))
    one_p = 1.0 + e
    # Accurate log1p without libdevice: log(1+e) · e / ((1+e) - 1) cancels the rounding of 1+e;
    # when 1+e rounds to 1, log1p(e) = e to fp32 precision.
    safe = tl.where(one_p == 1.0, 1.0, one_p - 1.0)
    lp = tl.where(one_p == 1.0, e, tl.log(one_p) * (e / safe))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _route_desc(desc_ptr, k, ROUTE_MODE: tl.constexpr):
    """The stride descriptor of route k: (flip, P1, P2, s0, s1, s2); dummies unless mode 2."""
    if ROUTE_MODE == 2:
        row = desc_ptr + k * 7
        flip = tl.load(row)
        P1 = tl.load(row + 2)
        P2 = tl.load(row + 3)
        s0 = tl.load(row + 4)
        s1 = tl.load(row + 5)
        s2 = tl.load(row + 6)
    else:
        flip = 0
        P1 = 1
        P2 = 1
        s0 = 0
        s1 = 0
        s2 = 0
    return flip, P1, P2, s0, s1, s2


@triton.jit
def _natural_pos(i, valid, L, route_row_ptr, flip, P1, P2, s0, s1, s2, ROUTE_MODE: tl.constexpr):
    """Natural (memory) index along L of scan positions ``i``. Positions where ``valid`` is false
    get an arbitrary index; every access that uses it is masked."""
    if ROUTE_MODE == 1:
        p = tl.load(route_row_ptr + i, mask=valid, other=0)
    elif ROUTE_MODE == 2:
        j = tl.where(flip != 0, L - 1 - i, i)
        j = tl.where(valid, j, 0)  # keeps // and % on non-negative numbers
        p = (j // (P1 * P2)) * s0 + ((j // P2) % P1) * s1 + (j % P2) * s2
    else:
        p = i
    return p


@triton.jit
def _discretised_delta(x, SOFTPLUS: tl.constexpr):
    if SOFTPLUS:
        return _softplus(x)
    else:
        return x


@triton.jit
def _load_step_inputs(
    t0, L, nL, n_mask, row, route_row_ptr, flip, P1, P2, s0, s1, s2,
    u_ptr, delta_ptr, bias, B_row_ptr, Bc, A2,
    B_VAR: tl.constexpr, SOFTPLUS: tl.constexpr, ROUTE_MODE: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Load and discretise one tile of time steps [t0, t0 + BLOCK_L).

    Returns the scan positions ``i``, their validity, natural positions ``p``, u, the pre-softplus
    input x = delta + bias, Δ (0 on padded steps), B as [BLOCK_N, BLOCK_L] (variable) or
    [BLOCK_N, 1] (constant), ā and b̄. Padded steps get ā = 1, b̄ = 0, so they leave the state
    unchanged and the tile's last column is the state after the last real step.
    """
    i = t0 + tl.arange(0, BLOCK_L)
    valid = i < L
    p = _natural_pos(i, valid, L, route_row_ptr, flip, P1, P2, s0, s1, s2, ROUTE_MODE)
    u = tl.load(u_ptr + row + p, mask=valid, other=0.0).to(tl.float32)
    x = tl.load(delta_ptr + row + p, mask=valid, other=0.0).to(tl.float32) + bias
    dt = tl.where(valid, _discretised_delta(x, SOFTPLUS), 0.0)
    if B_VAR:
        Bt = tl.load(B_row_ptr + nL[:, None] + p[None, :],
                     mask=n_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
    else:
        Bt = Bc[:, None]
    # exp2 with A pre-scaled by log2(e): the fast hardware exponential.
    a = tl.exp2(dt[None, :] * A2[:, None])
    bbar = Bt * (dt * u)[None, :]
    return i, valid, p, u, x, dt, Bt, a, bbar


@triton.jit
def _last_column(x, BLOCK_L: tl.constexpr):
    # Column BLOCK_L - 1 of a [BLOCK_N, BLOCK_L] tile (a masked reduction: no register indexing).
    cols = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where(cols[None, :] == BLOCK_L - 1, x, 0.0), axis=1)


@triton.jit
def _first_column(x, BLOCK_L: tl.constexpr):
    cols = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where(cols[None, :] == 0, x, 0.0), axis=1)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, route_ptr, desc_ptr,
    out_ptr, states_ptr,
    dim, L, N, n_chunks, ch_per_bgroup, ch_per_cgroup, ch_per_route, groups_b, groups_c,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ROUTE_MODE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr, KEEP_CHUNKS: tl.constexpr,
):
    d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 offsets: batch·dim·L may exceed 2^31
    row = (b * dim + d) * L  # start of (b, d, :) in u, delta, z, out

    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    nL = n.to(tl.int64) * L  # offset of state row n in a (N, L) slab of B / C (int64: N·L may be large)
    # Padded states: A = 0, B = C = 0 keep them at exactly 0 and out of every sum.
    A2 = tl.load(A_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32) * _LOG2E
    if B_VAR:
        B_row_ptr = B_ptr + (b * groups_b + d // ch_per_bgroup) * N * L
        Bc = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        B_row_ptr = B_ptr
        Bc = tl.load(B_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32)
    if C_VAR:
        C_row_ptr = C_ptr + (b * groups_c + d // ch_per_cgroup) * N * L
    else:
        Cc = tl.load(C_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dd = tl.load(D_ptr + d).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    else:
        bias = 0.0
    k = d // ch_per_route
    route_row_ptr = route_ptr + k * L
    flip, P1, P2, s0, s1, s2 = _route_desc(desc_ptr, k, ROUTE_MODE)

    h = tl.zeros([BLOCK_N], dtype=tl.float32)  # state after the previous tile
    for t0 in range(0, L, BLOCK_L):
        i, valid, p, u, x, dt, Bt, a, bbar = _load_step_inputs(
            t0, L, nL, n_mask, row, route_row_ptr, flip, P1, P2, s0, s1, s2,
            u_ptr, delta_ptr, bias, B_row_ptr, Bc, A2, B_VAR, SOFTPLUS, ROUTE_MODE, BLOCK_L)
        # Inclusive scan inside the tile, then fold in the carried state:
        # h_t = (Π_{s≤t} ā_s)·h_carry + scanned b̄_t.
        a_cum, b_cum = tl.associative_scan((a, bbar), axis=1, combine_fn=_pair_combine)
        hs = a_cum * h[:, None] + b_cum
        if C_VAR:
            Ct = tl.load(C_row_ptr + nL[:, None] + p[None, :],
                         mask=n_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
        else:
            Ct = Cc[:, None]
        y = tl.sum(Ct * hs, axis=0)
        if HAS_D:
            y += Dd * u
        if HAS_Z:
            zv = tl.load(z_ptr + row + p, mask=valid, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + row + p, y.to(out_ptr.dtype.element_ty), mask=valid)

        h = _last_column(hs, BLOCK_L)
        tile_end = t0 + BLOCK_L
        if KEEP_CHUNKS:
            if (tile_end % CHUNK == 0) | (tile_end >= L):
                c = t0 // CHUNK
                tl.store(states_ptr + ((b * dim + d) * n_chunks + c) * N + n, h, mask=n_mask)
        elif tile_end >= L:  # without a backward to come, only the last state (n_chunks is 1)
            tl.store(states_ptr + (b * dim + d) * N + n, h, mask=n_mask)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _scan_bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, route_ptr, desc_ptr,
    states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBv_ptr, dCv_ptr, part_n_ptr, part_1_ptr, scratch_ptr,
    dim, L, N, n_chunks, ch_per_bgroup, ch_per_cgroup, ch_per_route, groups_b, groups_c, batch,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ROUTE_MODE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr,
    TILES_PER_CHUNK: tl.constexpr,
):
    d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    prog = b * dim + d
    row = prog * L

    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    nL = n.to(tl.int64) * L  # offset of state row n in a (N, L) slab of B / C (int64: N·L may be large)
    A = tl.load(A_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    if B_VAR:
        B_row_ptr = B_ptr + (b * groups_b + d // ch_per_bgroup) * N * L
        dB_row_ptr = dBv_ptr + (b * groups_b + d // ch_per_bgroup) * N * L
        Bc = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        B_row_ptr = B_ptr
        Bc = tl.load(B_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32)
    if C_VAR:
        C_row_ptr = C_ptr + (b * groups_c + d // ch_per_cgroup) * N * L
        dC_row_ptr = dCv_ptr + (b * groups_c + d // ch_per_cgroup) * N * L
    else:
        Cc = tl.load(C_ptr + d * N + n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dd = tl.load(D_ptr + d).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    else:
        bias = 0.0
    k = d // ch_per_route
    route_row_ptr = route_ptr + k * L
    flip, P1, P2, s0, s1, s2 = _route_desc(desc_ptr, k, ROUTE_MODE)

    # λ at the first step after the tile being processed (λ_L = 0), and the per-program sums.
    lam_next = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_dA = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_dB = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_dC = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_dD = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc_dbias = tl.zeros([BLOCK_L], dtype=tl.float32)
    scratch_row = scratch_ptr + prog * TILES_PER_CHUNK * BLOCK_N

    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        chunk_t0 = c * CHUNK
        # State before the chunk: the saved state after chunk c-1 (zero before the sequence).
        h_saved = tl.load(states_ptr + (prog * n_chunks + tl.maximum(c - 1, 0)) * N + n,
                          mask=n_mask, other=0.0).to(tl.float32)
        h_chunk = tl.where(c > 0, h_saved, 0.0)
        n_tiles = tl.minimum(tl.cdiv(L - chunk_t0, BLOCK_L), TILES_PER_CHUNK)

        if TILES_PER_CHUNK > 1:
            # Phase 1: recompute forward through the chunk, keeping only each tile's start state.
            h = h_chunk
            for j in range(0, n_tiles - 1):
                tl.store(scratch_row + j * BLOCK_N + n, h)
                _, _, _, _, _, _, _, a, bbar = _load_step_inputs(
                    chunk_t0 + j * BLOCK_L, L, nL, n_mask, row, route_row_ptr, flip, P1, P2, s0, s1,
                    s2, u_ptr, delta_ptr, bias, B_row_ptr, Bc, A2, B_VAR, SOFTPLUS, ROUTE_MODE,
                    BLOCK_L)
                a_cum, b_cum = tl.associative_scan((a, bbar), axis=1, combine_fn=_pair_combine)
                h = _last_column(a_cum * h[:, None] + b_cum, BLOCK_L)
            tl.store(scratch_row + (n_tiles - 1) * BLOCK_N + n, h)
            # The reverse pass reads these slots, possibly from other threads of the program.
            tl.debug_barrier()

        # Phase 2: tiles of the chunk, last to first.
        for jj in range(0, n_tiles):
            j = n_tiles - 1 - jj
            t0 = chunk_t0 + j * BLOCK_L
            if TILES_PER_CHUNK > 1:
                h0 = tl.load(scratch_row + j * BLOCK_N + n)
            else:
                h0 = h_chunk
            i, valid, p, u, x, dt, Bt, a, bbar = _load_step_inputs(
                t0, L, nL, n_mask, row, route_row_ptr, flip, P1, P2, s0, s1, s2,
                u_ptr, delta_ptr, bias, B_row_ptr, Bc, A2, B_VAR, SOFTPLUS, ROUTE_MODE, BLOCK_L)
            # Recompute the states of the tile.
            a_cum, b_cum = tl.associative_scan((a, bbar), axis=1, combine_fn=_pair_combine)
            hs = a_cum * h0[:, None] + b_cum
            if C_VAR:
                Ct = tl.load(C_row_ptr + nL[:, None] + p[None, :],
                             mask=n_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
            else:
                Ct = Cc[:, None]

            # Gate: gy = g·silu(z); dz = g·y·σ(z)·(1 + z(1 - σ(z))) with y the pre-gate output.
            g = tl.load(dout_ptr + row + p, mask=valid, other=0.0).to(tl.float32)
            if HAS_Z:
                zv = tl.load(z_ptr + row + p, mask=valid, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zv)
                y = tl.sum(Ct * hs, axis=0)
                if HAS_D:
                    y += Dd * u
                dz = g * y * sig * (1.0 + zv * (1.0 - sig))
                tl.store(dz_ptr + row + p, dz.to(dz_ptr.dtype.element_ty), mask=valid)
                gy = g * zv * sig
            else:
                gy = g

            # ā_{t+1}, the coefficient of the adjoint recurrence: recomputed from Δ at the next scan
            # position (which may be in the next tile; its natural index follows the route).
            # ā_L = 0: nothing flows back from beyond the sequence.
            i_next = i + 1
            valid_next = i_next < L
            p_next = _natural_pos(i_next, valid_next, L, route_row_ptr, flip, P1, P2, s0, s1, s2,
                                  ROUTE_MODE)
            x_next = tl.load(delta_ptr + row + p_next, mask=valid_next, other=0.0).to(tl.float32) + bias
            dt_next = _discretised_delta(x_next, SOFTPLUS)
            a_next = tl.where(valid_next[None, :], tl.exp2(dt_next[None, :] * A2[:, None]), 0.0)

            # λ_t = gy_t·C_t + ā_{t+1}·λ_{t+1}: reverse scan inside the tile, then fold in λ carried
            # from the tile after: λ_t = scanned_t + (Π_{s≥t} ā_{s+1})·λ_{t_end+1}.
            c_drive = gy[None, :] * Ct
            q_a, q_b = tl.associative_scan((a_next, c_drive), axis=1, combine_fn=_pair_combine,
                                           reverse=True)
            lam = q_b + q_a * lam_next[:, None]
            lam_next = _first_column(lam, BLOCK_L)

            dtu = dt * u
            dB_t = lam * dtu[None, :]
            dC_t = gy[None, :] * hs
            if B_VAR:
                tl.atomic_add(dB_row_ptr + nL[:, None] + p[None, :], dB_t,
                              mask=n_mask[:, None] & valid[None, :], sem="relaxed")
            else:
                acc_dB += tl.sum(dB_t, axis=1)
            if C_VAR:
                tl.atomic_add(dC_row_ptr + nL[:, None] + p[None, :], dC_t,
                              mask=n_mask[:, None] & valid[None, :], sem="relaxed")
            else:
                acc_dC += tl.sum(dC_t, axis=1)

            # ā_t·h_{t-1} = h_t - b̄_t: h_{t-1} is never needed.
            ah_prev = hs - bbar
            du = dt * tl.sum(lam * Bt, axis=0)
            if HAS_D:
                du += Dd * gy
            ddt = tl.sum(lam * (A[:, None] * ah_prev + Bt * u[None, :]), axis=0)
            acc_dA += tl.sum(lam * dt[None, :] * ah_prev, axis=1)
            if SOFTPLUS:
                # d softplus(x)/dx = σ(x) below the threshold, 1 above it.
                ddelta = tl.where(x <= 20.0, ddt * tl.sigmoid(x), ddt)
            else:
                ddelta = ddt
            ddelta = tl.where(valid, ddelta, 0.0)
            acc_dbias += ddelta
            acc_dD += gy * u
            tl.store(du_ptr + row + p, du.to(du_ptr.dtype.element_ty), mask=valid)
            tl.store(ddelta_ptr + row + p, ddelta.to(ddelta_ptr.dtype.element_ty), mask=valid)
        if TILES_PER_CHUNK > 1:
            # The next (earlier) chunk overwrites the scratch slots this chunk read.
            tl.debug_barrier()

    # Per-program partial sums: part_n (3, batch, dim, N) = dA, dB, dC; part_1 (2, batch, dim).
    plane_n = batch * dim * N
    tl.store(part_n_ptr + prog * N + n, acc_dA, mask=n_mask)
    tl.store(part_n_ptr + plane_n + prog * N + n, acc_dB, mask=n_mask)
    tl.store(part_n_ptr + 2 * plane_n + prog * N + n, acc_dC, mask=n_mask)
    tl.store(part_1_ptr + prog, tl.sum(acc_dD, axis=0))
    tl.store(part_1_ptr + batch * dim + prog, tl.sum(acc_dbias, axis=0))


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _block_sizes(N: int, L: int, block_l: int | None, tile_elems: int):
    """BLOCK_N covers all states; BLOCK_L is a power of two dividing CHUNK_LEN, no longer than the
    sequence needs, sized so the [BLOCK_N, BLOCK_L] tile has at most ``tile_elems`` elements."""
    block_n = triton.next_power_of_2(N)
    if block_l is None:
        block_l = min(CHUNK_LEN, triton.next_power_of_2(L), max(1, tile_elems // block_n))
    if block_l < 1 or block_l & (block_l - 1) or CHUNK_LEN % block_l:
        raise ValueError(f"BLOCK_L={block_l} must be a power of two dividing CHUNK_LEN={CHUNK_LEN}")
    return block_n, block_l


def _num_warps(block_n: int, block_l: int, elems_per_thread: int) -> int:
    return max(1, min(8, block_n * block_l // (32 * elems_per_thread)))


def _on_device(t: torch.Tensor):
    """Launch on the tensors' GPU, not whichever device happens to be current."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _route_args(route_index, route_desc, u):
    """(mode, index table or dummy, descriptor or dummy, K)."""
    if route_desc is not None:
        return 2, u, route_desc.contiguous(), route_desc.shape[0]
    if route_index is not None:
        return 1, route_index.contiguous(), u, route_index.shape[0]
    return 0, u, u, 1


def _common_args(u, B, C, route_index, route_desc):
    batch, dim, length = u.shape
    b_var, c_var = B.dim() == 4, C.dim() == 4
    groups_b = B.shape[1] if b_var else 1
    groups_c = C.shape[1] if c_var else 1
    mode, index, desc, n_routes = _route_args(route_index, route_desc, u)
    if dim % n_routes or dim % groups_b or dim % groups_c:
        raise ValueError("routes and B/C groups must divide the channel count")
    return (batch, dim, length, b_var, c_var, groups_b, groups_c, mode, index, desc, n_routes)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, route_index, route_desc,
             keep_chunk_states: bool = True, *, block_l: int | None = None):
    """Forward scan. Returns out (batch, dim, L) in u's dtype and the chunk states
    (batch, dim, ceil(L / CHUNK_LEN), N) fp32, or only the last state (batch, dim, 1, N) without
    ``keep_chunk_states``. ``block_l`` overrides the tile length (tests)."""
    (batch, dim, length, b_var, c_var, groups_b, groups_c, mode, index, desc,
     n_routes) = _common_args(u, B, C, route_index, route_desc)
    nstate = A.shape[1]
    u, delta = u.contiguous(), delta.contiguous()
    z = z.contiguous() if z is not None else None
    B, C, A = B.contiguous(), C.contiguous(), A.contiguous()
    n_chunks = triton.cdiv(length, CHUNK_LEN) if keep_chunk_states else 1
    block_n, block_l = _block_sizes(nstate, length, block_l, _FWD_TILE_ELEMS)

    out = torch.empty_like(u)
    states = torch.zeros(batch, dim, n_chunks, nstate, device=u.device, dtype=torch.float32)
    if batch == 0:
        return out, states
    with _on_device(u):
        _scan_fwd_kernel[(dim, batch)](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, index, desc,
            out, states,
            dim, length, nstate, n_chunks, dim // groups_b, dim // groups_c, dim // n_routes,
            groups_b, groups_c,
            B_VAR=b_var, C_VAR=c_var, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), ROUTE_MODE=mode,
            BLOCK_N=block_n, BLOCK_L=block_l, CHUNK=CHUNK_LEN, KEEP_CHUNKS=bool(keep_chunk_states),
            num_warps=_num_warps(block_n, block_l, _FWD_ELEMS_PER_THREAD),
        )
    return out, states


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, route_index, route_desc,
             chunk_states, *, block_l: int | None = None):
    """Backward scan: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None where the input is None.
    ``block_l`` overrides the tile length (tests); it need not match the forward's."""
    (batch, dim, length, b_var, c_var, groups_b, groups_c, mode, index, desc,
     n_routes) = _common_args(u, B, C, route_index, route_desc)
    nstate = A.shape[1]
    dout, u, delta = dout.contiguous(), u.contiguous(), delta.contiguous()
    z = z.contiguous() if z is not None else None
    B, C, A = B.contiguous(), C.contiguous(), A.contiguous()
    chunk_states = chunk_states.contiguous()
    n_chunks = triton.cdiv(length, CHUNK_LEN)
    if tuple(chunk_states.shape) != (batch, dim, n_chunks, nstate):
        raise ValueError(f"chunk_states has shape {tuple(chunk_states.shape)}, expected "
                         f"{(batch, dim, n_chunks, nstate)}")
    block_n, block_l = _block_sizes(nstate, length, block_l, _BWD_TILE_ELEMS)
    # Tiles per chunk (fewer when the whole sequence is shorter than a chunk).
    tiles_per_chunk = min(CHUNK_LEN // block_l, triton.cdiv(length, block_l))

    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dBv = torch.zeros(B.shape, **f32) if b_var else None  # fp32 atomic accumulators
    dCv = torch.zeros(C.shape, **f32) if c_var else None
    part_n = torch.zeros(3, batch, dim, nstate, **f32)  # per-program dA, dB, dC (constant B/C)
    part_1 = torch.zeros(2, batch, dim, **f32)  # per-program dD, d_bias
    # Start states of the tiles of the chunk being differentiated (only with several tiles).
    scratch = (torch.empty(batch * dim * tiles_per_chunk * block_n, **f32)
               if tiles_per_chunk > 1 else part_1)
    if batch > 0:
        with _on_device(u):
            _scan_bwd_kernel[(dim, batch)](
                dout, u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, index, desc, chunk_states,
                du, ddelta, dz if dz is not None else du,
                dBv if b_var else part_n, dCv if c_var else part_n, part_n, part_1, scratch,
                dim, length, nstate, n_chunks, dim // groups_b, dim // groups_c, dim // n_routes,
                groups_b, groups_c, batch,
                B_VAR=b_var, C_VAR=c_var, HAS_D=D is not None, HAS_Z=z is not None,
                HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), ROUTE_MODE=mode,
                BLOCK_N=block_n, BLOCK_L=block_l, CHUNK=CHUNK_LEN, TILES_PER_CHUNK=tiles_per_chunk,
                num_warps=_num_warps(block_n, block_l, _BWD_ELEMS_PER_THREAD),
            )
    dA = part_n[0].sum(0).to(A.dtype)
    dB = dBv.to(B.dtype) if b_var else part_n[1].sum(0).to(B.dtype)
    dC = dCv.to(C.dtype) if c_var else part_n[2].sum(0).to(C.dtype)
    dD = part_1[0].sum(0).to(D.dtype) if D is not None else None
    dbias = part_1[1].sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias
