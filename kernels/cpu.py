"""CPU selective scan: Numba-compiled, multi-threaded, memory O(B·D·L).

Forward: one sequential pass per (batch, channel), the pair recurrence h = ā·h + b̄ (multiplies
numbers ≤ 1 only, so it is stable at any L) vectorised over the N states, saving the state at the
end of every ``CHUNK_LEN`` steps (only the last one when no backward will follow). Backward: chunks
last to first; each chunk's states are recomputed from the saved state before it into a
(CHUNK_LEN, N) scratch per worker, then the adjoint is swept backwards through the chunk. Nothing of
size B·D·L·N is ever allocated; the saved chunk states are B·D·N·L/CHUNK_LEN.

Parallelism: the forward splits (batch, channel) pairs over workers. The backward must sum dB/dC
over the channels of a group; each worker takes blocks of channels of one (batch, group) and
accumulates into its own partial buffer, summed afterwards, so no two workers write the same memory.

Speed comes from the loops over N vectorising (8 states per AVX2 instruction): the kernels are
written so that LLVM can prove their arrays do not overlap (see ``_backward``), which
``tests/test_scan_cpu.py`` checks on the generated code.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .op import CHUNK_LEN

# Numba's OpenMP layer brings a second OpenMP runtime beside PyTorch's; their idle threads spin
# against each other and cost ~8 ms a call on 2 cores. The workqueue layer has no such clash
# (measured: 0.3 ms). It must not be entered from several Python threads at once, and the scan is
# called from the training thread only. NUMBA_THREADING_LAYER still overrides this.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@intrinsic
def _float32_from_bits(typingctx, bits):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _exp(x):
    return math.exp(x)


# Without "reassoc", which the kernels use for their sums: reassociated, the reduction below merges
# ln2's two halves and the bias of k into rounded constants (measured: relative error 5e-6 instead
# of 2e-7, enough to fail the gradient tests at large Δ).
@overload(_exp, jit_options={"fastmath": {"contract", "arcp", "nsz"}})
def _exp_overload(x):
    """exp that LLVM can vectorise: libm's expf is an opaque call that keeps the per-state loop
    scalar, and ā = exp(Δ·A) is the hot spot of the scan. Cody-Waite reduction exp(x) = 2^k·exp(r),
    |r| ≤ ln2/2, a degree-6 polynomial for exp(r) (relative error ~2e-7, fp32 rounding level) and
    2^k built from its exponent bits. fp64 (gradcheck) keeps math.exp."""
    if x != types.float32:
        return lambda x: math.exp(x)

    def fast_exp(x):
        # Branch-free clamps and a truncating int conversion of a positive number (= floor)
        # keep this free of libm calls.
        x = x if x > np.float32(-87.0) else np.float32(-87.0)
        x = x if x < np.float32(88.0) else np.float32(88.0)
        biased_k = np.int32(x * np.float32(1.4426950408889634) + np.float32(128.5))  # round(x/ln2) + 128
        k = np.float32(biased_k) - np.float32(128.0)  # exact; an int32 difference would widen to int64
        r = x - k * np.float32(0.693145751953125)  # ln2 split in two so k·ln2 is exact
        r = r - k * np.float32(1.428606765330187e-06)
        p = np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        return p * _float32_from_bits((biased_k - np.int32(1)) << np.int32(23))  # 2^k: exponent bits k + 127

    return fast_exp


def _softplus(x):
    """softplus(x) = log(1 + e^x) with PyTorch's threshold: x itself above 20."""
    return x if x > 20.0 else math.log1p(math.exp(x))


def _softplus_slope(x):
    """softplus' derivative, the logistic σ(x) = 1 / (1 + e^-x); 1 above the threshold 20."""
    return 1.0 if x > 20.0 else 1.0 / (1.0 + math.exp(-x))


# Δ = softplus(delta + bias) and its derivative are computed in the kernels, in their vectorised
# loops over a chunk's positions: as PyTorch passes they cost ~10% of the scan at U-Mamba Bot's shape
# and a (B, D, L) tensor each. No reassociation, as for _exp.
@overload(_softplus, jit_options={"fastmath": {"contract", "arcp", "nsz"}})
def _softplus_overload(x):
    if x != types.float32:
        return _softplus

    def fast_softplus(x):
        # max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], and log1p(e) = 2·atanh(s), s = e / (2 + e) in
        # (0, 1/3]: a series in s² (error below 2e-9 with the terms up to s^15) without cancellation
        # however small e is. Above 20 it rounds to x, PyTorch's threshold value.
        e = _exp(-abs(x))
        s = e / (np.float32(2.0) + e)
        s2 = s * s
        p = np.float32(1.0 / 15.0)
        p = p * s2 + np.float32(1.0 / 13.0)
        p = p * s2 + np.float32(1.0 / 11.0)
        p = p * s2 + np.float32(1.0 / 9.0)
        p = p * s2 + np.float32(1.0 / 7.0)
        p = p * s2 + np.float32(1.0 / 5.0)
        p = p * s2 + np.float32(1.0 / 3.0)
        p = p * s2 + np.float32(1.0)
        return max(x, np.float32(0.0)) + np.float32(2.0) * s * p

    return fast_softplus


@overload(_softplus_slope, jit_options={"fastmath": {"contract", "arcp", "nsz"}})
def _softplus_slope_overload(x):
    if x != types.float32:
        return _softplus_slope

    def fast_slope(x):
        # σ(x) from e = exp(-|x|), which never overflows; above 20 it rounds to 1.
        e = _exp(-abs(x))
        inverse = np.float32(1.0) / (np.float32(1.0) + e)
        return inverse if x >= np.float32(0.0) else e * inverse

    return fast_slope


@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"}, error_model="numpy")
def _forward(u, delta, bias, A, B_src, C_src, Dv, z, route, out, states, h_w, dt_w, gate_w,
             softplus, b_var, c_var, has_z, has_route, chunk_len):
    """One sequential pass per (batch, channel), the N states in the worker's row of ``h_w``.
    Δ = delta + bias, through softplus if asked. ``states`` receives the state after every
    ``chunk_len`` steps or, when it has a single slot, only the last one. ``dt_w`` and ``gate_w``
    are per-worker scratch for a chunk's Δ and silu(z). As in ``_backward``: separate arrays and no
    views in the loop, so the loops vectorise."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups_b = B_src.shape[1] if b_var else 1
    groups_c = C_src.shape[1] if c_var else 1
    n_routes = route.shape[0]
    n_chunks = -(-length // chunk_len)
    every_chunk = states.shape[2] == n_chunks  # else a single slot for the last state
    n_workers = h_w.shape[0]
    for worker in numba.prange(n_workers):
        w = np.int64(worker)
        for job in range(w, batch * dim, n_workers):
            b = job // dim
            d = job % dim
            k = d // (dim // n_routes)
            # Scalar selections, not tuples: Numba counts tuples as possible aliases and then
            # withholds ``noalias`` from the arrays (see ``_backward``).
            bb = b if b_var else 0
            bg = d // (dim // groups_b) if b_var else d
            cb = b if c_var else 0
            cg = d // (dim // groups_c) if c_var else d
            for n in range(nstate):
                h_w[w, n] = 0.0
            for c in range(n_chunks):
                t0 = c * chunk_len
                t1 = min(length, t0 + chunk_len)
                # The chunk's Δ and gate, each in one vectorised loop.
                for t in range(t0, t1):
                    x_in = delta[b, d, route[k, t] if has_route else t] + bias[d]
                    dt_w[w, t - t0] = _softplus(x_in) if softplus else x_in
                if has_z:
                    for t in range(t0, t1):
                        zz = z[b, d, route[k, t] if has_route else t]
                        gate_w[w, t - t0] = zz / (np.float32(1.0) + _exp(-zz))  # fp32 constant: see below
                for t in range(t0, t1):
                    p = route[k, t] if has_route else t
                    dt = dt_w[w, t - t0]
                    x = u[b, d, p]
                    dtx = dt * x
                    bp = p if b_var else 0
                    cp = p if c_var else 0
                    # fp32 constants keep the fp32 path in fp32 (a float64 literal would widen the
                    # loop to float64); numba widens them for fp64 inputs.
                    y = np.float32(0.0)
                    for n in range(nstate):
                        h = _exp(dt * A[d, n]) * h_w[w, n] + dtx * B_src[bb, bg, bp, n]
                        h_w[w, n] = h
                        y += C_src[cb, cg, cp, n] * h
                    y += Dv[d] * x
                    out[b, d, p] = y * gate_w[w, t - t0] if has_z else y
                if every_chunk or c == n_chunks - 1:
                    for n in range(nstate):
                        states[b, d, c if every_chunk else 0, n] = h_w[w, n]


@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"}, error_model="numpy")
def _backward(dout, u, delta, bias, A, B_src, C_src, Dv, z, route, states,
              du, ddelta, dz, dA_part, dD_part, dBc_part, dCc_part, dB_dst, dC_dst,
              hs, decays, h_cur, mu, dA_chunk, dt_w, slope_w, x_w, gy_w, gz_w,
              softplus, b_var, c_var, has_z, has_route, chunk_len, n_blocks):
    """Adjoint sweep; writes dL/d(delta + bias) (through softplus' derivative when it is on).

    Sums over the sequence (float64):
    dA/dBc/dCc (batch, dim, N), dD (batch, dim). Variable dB/dC go to ``dB_dst``/``dC_dst``
    (batch, G, slots, L, N), one slot per block of channels of a group; constant ones to
    per-worker accumulators ``dB_dst``/``dC_dst`` (workers, 1, 1, 1, N) flushed into dBc/dCc.
    ``hs`` … ``gz_w`` are per-worker scratch.

    Why it is laid out like this: LLVM vectorises the loops over the N states only if it can
    prove that their stores do not overlap their loads. Every array here is a separate argument
    (scratch too, allocated by the caller) and the parallel loop body takes no views of them and
    builds no tuples, so Numba marks them all ``noalias``. With row views (the previous layout) the
    sweep stayed scalar, and with a tuple in the body LLVM guarded each loop with ~20 runtime
    overlap checks per step. For the same reason a loop that writes a row of an array never reads
    another row of it (``h_cur`` carries the state; ``hs`` is only written in the recomputation).
    The sweep carries μ_t = ā_t·λ_t rather than λ and ā_{t+1} (one array fewer). Chunks are the
    outer loop and channels the inner one, so the dB/dC rows of a chunk stay in cache while every
    channel of a block adds into them. The gate and the per-position inputs of a chunk are read in
    separate loops over positions, which vectorise too."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups_b = B_src.shape[1] if b_var else 1
    groups_c = C_src.shape[1] if c_var else 1
    # Jobs are (batch, group, block) over the finer of the B/C groupings (one divides the other),
    # so all channels of a block share one B group and one C group.
    groups = max(groups_b, groups_c)
    per_group = dim // groups
    per_block = (per_group + n_blocks - 1) // n_blocks
    n_routes = route.shape[0]
    n_chunks = states.shape[2]
    n_jobs = batch * groups * n_blocks
    n_workers = hs.shape[0]
    for worker in numba.prange(n_workers):
        w = np.int64(worker)  # parfor indices may be unsigned; int64 keeps index tuples one type
        for job in range(w, n_jobs, n_workers):
            b = job // (groups * n_blocks)
            g = (job // n_blocks) % groups
            blk = job % n_blocks
            first = g * per_group + blk * per_block
            last = min(first + per_block, (g + 1) * per_group)
            for j in range(last - first):
                for n in range(nstate):
                    mu[w, j, n] = 0.0  # ā_L·λ_L = 0: nothing follows the last step
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk_len
                t1 = min(length, t0 + chunk_len)
                for d in range(first, last):
                    j = d - first
                    gb = d // (dim // groups_b)
                    gc = d // (dim // groups_c)
                    k = d // (dim // n_routes)
                    # Where B/C are read and dB/dC written: the natural position for variable
                    # ones, the channel's row (and the worker's accumulator) for constant ones.
                    # (Scalar selections, not tuples: Numba counts tuples as possible aliases
                    # and then withholds ``noalias``.)
                    bb = b if b_var else 0
                    bg = gb if b_var else d
                    cb = b if c_var else 0
                    cg = gc if c_var else d
                    db0 = b if b_var else w
                    db1 = gb if b_var else 0
                    db2 = (g % (groups // groups_b)) * n_blocks + blk if b_var else 0
                    dc0 = b if c_var else w
                    dc1 = gc if c_var else 0
                    dc2 = (g % (groups // groups_c)) * n_blocks + blk if c_var else 0
                    # The chunk's per-position inputs, and the gate's parts (gy = dout·silu(z) and
                    # dout·silu'(z), which times the pre-gate output is dz), in vectorised loops.
                    for t in range(t0, t1):
                        p = route[k, t] if has_route else t
                        x_in = delta[b, d, p] + bias[d]
                        dt_w[w, t - t0] = _softplus(x_in) if softplus else x_in
                        slope_w[w, t - t0] = _softplus_slope(x_in) if softplus else 1.0
                        x_w[w, t - t0] = u[b, d, p]
                    if has_z:
                        for t in range(t0, t1):
                            p = route[k, t] if has_route else t
                            zz = z[b, d, p]
                            g_out = dout[b, d, p]
                            sig = np.float32(1.0) / (np.float32(1.0) + _exp(-zz))
                            gy_w[w, t - t0] = g_out * zz * sig
                            gz_w[w, t - t0] = g_out * sig * (np.float32(1.0) + zz * (np.float32(1.0) - sig))
                    else:
                        for t in range(t0, t1):
                            gy_w[w, t - t0] = dout[b, d, route[k, t] if has_route else t]
                    # Recompute the chunk's states from the one saved before it.
                    for n in range(nstate):
                        h0 = states[b, d, c - 1, n] if c > 0 else 0.0
                        h_cur[w, n] = h0
                        hs[w, 0, n] = h0
                    for t in range(t0, t1):
                        p = route[k, t] if has_route else t
                        i = t - t0
                        dt = dt_w[w, i]
                        dtx = dt * x_w[w, i]
                        bp = p if b_var else 0
                        for n in range(nstate):
                            a = _exp(dt * A[d, n])
                            h = a * h_cur[w, n] + dtx * B_src[bb, bg, bp, n]
                            h_cur[w, n] = h
                            hs[w, i + 1, n] = h
                            decays[w, i, n] = a
                    # Sweep the adjoint backwards through the chunk, carrying μ_t = ā_t·λ_t:
                    # λ_t = gy_t·C_t + μ_{t+1}.
                    for n in range(nstate):
                        dA_chunk[w, n] = 0.0
                    dD_acc = 0.0
                    for t in range(t1 - 1, t0 - 1, -1):
                        p = route[k, t] if has_route else t
                        i = t - t0
                        dt = dt_w[w, i]
                        x = x_w[w, i]
                        dtx = dt * x
                        gy = gy_w[w, i]
                        bp = p if b_var else 0
                        cp = p if c_var else 0
                        y = np.float32(0.0)  # fp32 constants: see _forward
                        du_acc = np.float32(0.0)
                        ddt = np.float32(0.0)
                        for n in range(nstate):
                            Bn = B_src[bb, bg, bp, n]
                            Cn = C_src[cb, cg, cp, n]
                            a = decays[w, i, n]
                            hn = hs[w, i + 1, n]
                            ah = a * hs[w, i, n]  # ā_t·h_{t-1}
                            lam = gy * Cn + mu[w, j, n]
                            mu[w, j, n] = a * lam
                            y += Cn * hn
                            dC_dst[dc0, dc1, dc2, cp, n] += gy * hn
                            dB_dst[db0, db1, db2, bp, n] += lam * dtx
                            du_acc += lam * Bn
                            ddt += lam * (A[d, n] * ah + Bn * x)
                            dA_chunk[w, n] += lam * dt * ah
                        du[b, d, p] = Dv[d] * gy + dt * du_acc
                        ddelta[b, d, p] = ddt * slope_w[w, i]
                        if has_z:
                            dz[b, d, p] = gz_w[w, i] * (y + Dv[d] * x)
                        dD_acc += gy * x
                    # Sums over the sequence: fp32 within a chunk, float64 across chunks.
                    dD_part[b, d] += dD_acc
                    for n in range(nstate):
                        dA_part[b, d, n] += dA_chunk[w, n]
                    if not b_var:
                        for n in range(nstate):
                            dBc_part[b, d, n] += dB_dst[w, 0, 0, 0, n]
                            dB_dst[w, 0, 0, 0, n] = 0.0
                    if not c_var:
                        for n in range(nstate):
                            dCc_part[b, d, n] += dC_dst[w, 0, 0, 0, n]
                            dC_dst[w, 0, 0, 0, n] = 0.0


def _np(x: torch.Tensor, dtype) -> np.ndarray:
    return x.detach().to(dtype=_TORCH[dtype]).contiguous().numpy()


_TORCH = {np.float32: torch.float32, np.float64: torch.float64}


class _Args:
    """Numba wants every argument present and typed: absent D, delta_bias, z and routes become
    zeros or tiny dummies, flagged off. B and C are 4D for both layouts, so one loop body serves
    both: variable (batch, G, L, N) (the loop over N reads contiguous memory), constant (1, D, 1, N).
    Everything else is handed over as it is (no (B, D, L) copies for fp32 inputs)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, softplus, route_index):
        self.dtype = dtype = np.float64 if u.dtype == torch.float64 else np.float32
        self.shape = batch, dim, length = tuple(u.shape)
        self.nstate = A.shape[1]
        self.b_var, self.c_var = B.dim() == 4, C.dim() == 4
        self.B = _np(B.transpose(2, 3), dtype) if self.b_var else _np(B, dtype).reshape(1, dim, 1, -1)
        self.C = _np(C.transpose(2, 3), dtype) if self.c_var else _np(C, dtype).reshape(1, dim, 1, -1)
        self.softplus = bool(softplus)
        self.u, self.delta, self.A = _np(u, dtype), _np(delta, dtype), _np(A, dtype)
        self.bias = _np(delta_bias, dtype) if delta_bias is not None else np.zeros(dim, dtype)
        self.D = _np(D, dtype) if D is not None else np.zeros(dim, dtype)
        self.has_z = z is not None
        self.z = _np(z, dtype) if self.has_z else np.zeros((1, 1, 1), dtype)
        self.has_route = route_index is not None
        self.route = (route_index.contiguous().numpy() if self.has_route
                      else np.zeros((1, 1), dtype=np.int64))

    def inputs(self):
        return (self.u, self.delta, self.bias, self.A, self.B, self.C, self.D, self.z, self.route)

    def workers(self, jobs: int) -> int:
        return max(1, min(numba.get_num_threads(), jobs))


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc, keep_chunk_states=True):
    """See ``medmamba_kernels.op`` for the backend contract. ``route_desc`` is unused: on the CPU an
    index table costs no more than strides."""
    args = _Args(u, delta, A, B, C, D, z, delta_bias, softplus, route_index)
    batch, dim, length = args.shape
    out = np.empty((batch, dim, length), dtype=args.dtype)
    n_saved = -(-length // CHUNK_LEN) if keep_chunk_states else 1
    states = np.empty((batch, dim, n_saved, args.nstate), dtype=args.dtype)
    workers = args.workers(batch * dim)
    _forward(*args.inputs(), out, states, np.empty((workers, args.nstate), args.dtype),
             np.empty((workers, CHUNK_LEN), args.dtype), np.empty((workers, CHUNK_LEN), args.dtype),
             args.softplus, args.b_var, args.c_var, args.has_z, args.has_route, CHUNK_LEN)
    return torch.from_numpy(out).to(u.dtype), torch.from_numpy(states)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc, chunk_states):
    args = _Args(u, delta, A, B, C, D, z, delta_bias, softplus, route_index)
    dtype = args.dtype
    batch, dim, length = args.shape
    nstate = args.nstate
    groups_b = args.B.shape[1] if args.b_var else 1
    groups_c = args.C.shape[1] if args.c_var else 1
    groups = max(groups_b, groups_c)
    # One job per thread where batch × groups alone would leave threads idle, with at least 8
    # channels a block: each block has its own dB/dC partial sums, so their memory stays at most
    # max(threads·B·G·L·N, B·D·L·N / 8).
    threads = numba.get_num_threads()
    n_blocks = max(1, min((dim // groups) // 8, -(-threads // (batch * groups))))
    per_block = -(-(dim // groups) // n_blocks)
    workers = args.workers(batch * groups * n_blocks)
    du = np.empty((batch, dim, length), dtype=dtype)
    ddelta = np.empty_like(du)
    dz = np.empty_like(du) if args.has_z else np.zeros((1, 1, 1), dtype)
    sums = lambda is_present: np.zeros((batch, dim, nstate) if is_present else (1, 1, 1))  # noqa: E731
    dA_part, dBc_part, dCc_part = sums(True), sums(not args.b_var), sums(not args.c_var)
    dD_part = np.zeros((batch, dim))

    def destination(is_var, n_groups):
        if not is_var:  # the workers' accumulators of one chunk
            return np.zeros((workers, 1, 1, 1, nstate), dtype)
        return np.zeros((batch, n_groups, n_blocks * groups // n_groups, length, nstate), dtype)

    dB_dst = destination(args.b_var, groups_b)
    dC_dst = destination(args.c_var, groups_c)
    scratch = lambda *shape: np.empty((workers, *shape), dtype)  # noqa: E731
    _backward(_np(dout, dtype), *args.inputs(), _np(chunk_states, dtype),
              du, ddelta, dz, dA_part, dD_part, dBc_part, dCc_part, dB_dst, dC_dst,
              scratch(CHUNK_LEN + 1, nstate), scratch(CHUNK_LEN, nstate), scratch(nstate),
              scratch(per_block, nstate), scratch(nstate), *(scratch(CHUNK_LEN) for _ in range(5)),
              args.softplus, args.b_var, args.c_var, args.has_z, args.has_route, CHUNK_LEN, n_blocks)

    def variable_grad(part, like):  # (batch, G, slots, L, N) -> (batch, G, N, L)
        return torch.from_numpy(part.sum(axis=2)).transpose(2, 3).contiguous().to(like.dtype)

    def summed(part, like):
        return torch.from_numpy(part.sum(axis=0)).to(like.dtype)

    ddelta = torch.from_numpy(ddelta)
    return (
        torch.from_numpy(du).to(u.dtype),
        ddelta.to(delta.dtype),
        summed(dA_part, A),
        variable_grad(dB_dst, B) if args.b_var else summed(dBc_part, B),
        variable_grad(dC_dst, C) if args.c_var else summed(dCc_part, C),
        summed(dD_part, D) if D is not None else None,
        torch.from_numpy(dz).to(z.dtype) if args.has_z else None,
        ddelta.sum(dim=(0, 2)).to(delta_bias.dtype) if delta_bias is not None else None,
    )
