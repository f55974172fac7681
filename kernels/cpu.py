"""CPU selective scan: Numba-compiled, multi-threaded, memory O(B·D·L).

Forward: one sequential pass per (batch, channel) with the N-state vector in registers, the pair
recurrence h = ā·h + b̄ (multiplies numbers ≤ 1 only, so it is stable at any L), saving the state at
the end of every ``CHUNK_LEN`` steps. Backward: chunks last to first; each chunk's states are
recomputed from the saved state before it into a (CHUNK_LEN, N) scratch per thread, then the adjoint
is swept backwards. Nothing of size B·D·L·N is ever allocated; the saved chunk states are
B·D·N·L/CHUNK_LEN.

Parallelism: the forward splits (batch, channel) pairs over threads. The backward must sum dB/dC
over the channels of a group; each thread works on a block of channels of one (batch, group) and
accumulates into its own partial buffer, summed afterwards, so no two threads write the same memory.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

CHUNK_LEN = 256

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


@overload(_exp)
def _exp_overload(x):
    """exp that LLVM can vectorise: libm's expf is an opaque call that keeps the per-state loop
    scalar, and ā = exp(Δ·A) is the hot spot of the scan. Cody-Waite reduction exp(x) = 2^k·exp(r),
    |r| ≤ ln2/2, a degree-6 polynomial for exp(r) (relative error ~1e-7, fp32 rounding level) and
    2^k built from its exponent bits. fp64 (gradcheck) keeps math.exp."""
    if x != types.float32:
        return lambda x: math.exp(x)

    def fast_exp(x):
        # Branch-free clamps and a truncating int conversion of a positive number (= floor)
        # keep this free of libm calls.
        x = x if x > np.float32(-87.0) else np.float32(-87.0)
        x = x if x < np.float32(88.0) else np.float32(88.0)
        biased_k = np.int32(x * np.float32(1.4426950408889634) + np.float32(128.5))  # round(x/ln2) + 128
        k = np.float32(biased_k - np.int32(128))
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


@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"}, error_model="numpy")
def _forward(u, dt_all, A, Bc, Bv, Cc, Cv, Dv, z, route, out, states,
             b_var, c_var, has_z, has_route, chunk_len):
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups_b = Bv.shape[1]
    groups_c = Cv.shape[1]
    n_routes = route.shape[0]
    for job in numba.prange(batch * dim):
        b = job // dim
        d = job % dim
        gb = d // (dim // groups_b)
        gc = d // (dim // groups_c)
        k = d // (dim // n_routes)
        h = np.zeros(nstate, dtype=states.dtype)
        for t in range(length):
            p = route[k, t] if has_route else t
            dt = dt_all[b, d, p]
            x = u[b, d, p]
            dtx = dt * x
            # Row views instead of per-element branches keep the loop over N vectorisable.
            B_row = Bv[b, gb, p] if b_var else Bc[d]
            C_row = Cv[b, gc, p] if c_var else Cc[d]
            A_row = A[d]
            y = np.float32(0.0)  # stays fp32 on the fp32 path; numba widens it for fp64 inputs
            for n in range(nstate):
                h[n] = _exp(dt * A_row[n]) * h[n] + dtx * B_row[n]
                y += C_row[n] * h[n]
            y += Dv[d] * x
            if has_z:
                zz = z[b, d, p]
                y *= zz / (1.0 + math.exp(-zz))
            out[b, d, p] = y
            if (t + 1) % chunk_len == 0 or t == length - 1:
                states[b, d, t // chunk_len, :] = h


@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"}, error_model="numpy")
def _backward(dout, u, dt_all, A, Bc, Bv, Cc, Cv, Dv, z, route, states,
              du, ddt_all, dz, dA_part, dBc_part, dCc_part, dD_part, dBv_part, dCv_part,
              b_var, c_var, has_z, has_route, chunk_len, n_blocks):
    """Adjoint sweep; writes dL/dΔ (the wrapper applies softplus' derivative). Per-channel results:
    dA/dBc/dCc (batch, dim, N), dD (batch, dim); for variable B/C, (batch, G, slots, L, N) with one
    slot per block of channels sharing a group."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups_b = Bv.shape[1]
    groups_c = Cv.shape[1]
    # Jobs are (batch, group, block) over the finer of the B/C groupings (one divides the other),
    # so all channels of a block share one B group and one C group.
    groups = max(groups_b, groups_c)
    per_group = dim // groups
    per_block = (per_group + n_blocks - 1) // n_blocks
    n_routes = route.shape[0]
    n_chunks = states.shape[2]
    for job in numba.prange(batch * groups * n_blocks):
        b = job // (groups * n_blocks)
        g = (job // n_blocks) % groups
        blk = job % n_blocks
        slot_b = (g % (groups // groups_b)) * n_blocks + blk
        slot_c = (g % (groups // groups_c)) * n_blocks + blk
        hs = np.empty((chunk_len, nstate), dtype=states.dtype)
        decays = np.empty((chunk_len, nstate), dtype=states.dtype)  # ā of the chunk, kept for the sweep
        h_before = np.empty(nstate, dtype=states.dtype)
        lam = np.empty(nstate, dtype=states.dtype)
        a_next = np.empty(nstate, dtype=states.dtype)
        # Sums over the whole sequence: fp32 within a chunk (same type as the per-position rows,
        # so the state loop has no branches), flushed into float64 at each chunk's end.
        dA_chunk = np.empty(nstate, dtype=states.dtype)
        dB_chunk = np.empty(nstate, dtype=states.dtype)
        dC_chunk = np.empty(nstate, dtype=states.dtype)
        dA_acc = np.empty(nstate, dtype=np.float64)
        dB_acc = np.empty(nstate, dtype=np.float64)
        dC_acc = np.empty(nstate, dtype=np.float64)
        first = g * per_group + blk * per_block
        for d in range(first, min(first + per_block, (g + 1) * per_group)):
            gb = d // (dim // groups_b)
            gc = d // (dim // groups_c)
            k = d // (dim // n_routes)
            A_row = A[d]
            lam[:] = 0.0
            a_next[:] = 0.0  # ā_L = 0: nothing follows the last step
            dA_acc[:] = 0.0
            dB_acc[:] = 0.0
            dC_acc[:] = 0.0
            dD_acc = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk_len
                t1 = min(length, t0 + chunk_len)
                for n in range(nstate):
                    h_before[n] = states[b, d, c - 1, n] if c > 0 else 0.0
                # Recompute the chunk's states from the one saved before it.
                for t in range(t0, t1):
                    p = route[k, t] if has_route else t
                    dt = dt_all[b, d, p]
                    dtx = dt * u[b, d, p]
                    i = t - t0
                    B_row = Bv[b, gb, p] if b_var else Bc[d]
                    h_prev = hs[i - 1] if i > 0 else h_before
                    h_row = hs[i]
                    a_row = decays[i]
                    for n in range(nstate):
                        a_row[n] = _exp(dt * A_row[n])
                        h_row[n] = a_row[n] * h_prev[n] + dtx * B_row[n]
                # Sweep the adjoint λ_t = gy_t·C_t + ā_{t+1}·λ_{t+1} backwards through the chunk.
                dA_chunk[:] = 0.0
                dB_chunk[:] = 0.0
                dC_chunk[:] = 0.0
                for t in range(t1 - 1, t0 - 1, -1):
                    p = route[k, t] if has_route else t
                    dt = dt_all[b, d, p]
                    x = u[b, d, p]
                    dtx = dt * x
                    g_out = dout[b, d, p]
                    i = t - t0
                    B_row = Bv[b, gb, p] if b_var else Bc[d]
                    C_row = Cv[b, gc, p] if c_var else Cc[d]
                    dB_row = dBv_part[b, gb, slot_b, p] if b_var else dB_chunk
                    dC_row = dCv_part[b, gc, slot_c, p] if c_var else dC_chunk
                    h_row = hs[i]
                    h_prev = hs[i - 1] if i > 0 else h_before
                    a_row = decays[i]
                    if has_z:
                        zz = z[b, d, p]
                        sig = 1.0 / (1.0 + math.exp(-zz))
                        y = Dv[d] * x
                        for n in range(nstate):
                            y += C_row[n] * h_row[n]
                        dz[b, d, p] = g_out * y * sig * (1.0 + zz * (1.0 - sig))
                        gy = g_out * zz * sig
                    else:
                        gy = g_out
                    du_acc = np.float32(0.0)
                    ddt = np.float32(0.0)
                    for n in range(nstate):
                        lam_n = gy * C_row[n] + a_next[n] * lam[n]
                        lam[n] = lam_n
                        a = a_row[n]
                        a_next[n] = a
                        ah = a * h_prev[n]  # ā_t·h_{t-1}
                        dC_row[n] += gy * h_row[n]
                        dB_row[n] += lam_n * dtx
                        du_acc += lam_n * B_row[n]
                        ddt += lam_n * (A_row[n] * ah + B_row[n] * x)
                        dA_chunk[n] += lam_n * dt * ah
                    du[b, d, p] = Dv[d] * gy + dt * du_acc
                    dD_acc += gy * x
                    ddt_all[b, d, p] = ddt
                for n in range(nstate):
                    dA_acc[n] += dA_chunk[n]
                    dB_acc[n] += dB_chunk[n]
                    dC_acc[n] += dC_chunk[n]
            for n in range(nstate):
                dA_part[b, d, n] = dA_acc[n]
                dBc_part[b, d, n] = dB_acc[n]
                dCc_part[b, d, n] = dC_acc[n]
            dD_part[b, d] = dD_acc


def _np(x: torch.Tensor, dtype) -> np.ndarray:
    return x.detach().to(dtype=_TORCH[dtype]).contiguous().numpy()


_TORCH = {np.float32: torch.float32, np.float64: torch.float64}


class _Args:
    """Numba wants every argument present and typed: absent D becomes zeros, absent z, B/C layouts
    and routes become tiny dummies, flagged off. Variable B/C are laid out (batch, G, L, N) so the
    inner loop over N reads contiguous memory.

    Δ = softplus(delta + bias) is computed here with PyTorch's vectorised softplus (threshold 20, as
    the CUDA kernel): inside the sequential kernel a scalar log1p and exp per step cost as much as
    the whole scan over 16 states."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, softplus, route_index):
        self.dtype = dtype = np.float64 if u.dtype == torch.float64 else np.float32
        self.shape = tuple(u.shape)
        dim = u.shape[1]
        self.b_var, self.c_var = B.dim() == 4, C.dim() == 4
        dummy4 = np.zeros((1, 1, 1, 1), dtype)
        self.Bv = _np(B.transpose(2, 3), dtype) if self.b_var else dummy4
        self.Cv = _np(C.transpose(2, 3), dtype) if self.c_var else dummy4
        self.Bc = np.zeros((1, 1), dtype) if self.b_var else _np(B, dtype)
        self.Cc = np.zeros((1, 1), dtype) if self.c_var else _np(C, dtype)
        delta_in = delta.detach().to(_TORCH[dtype])
        if delta_bias is not None:
            delta_in = delta_in + delta_bias.detach().to(_TORCH[dtype])[:, None]
        self.softplus = bool(softplus)
        # Only the backward needs the pre-softplus values (for the derivative): keep them then only.
        self.delta_in = delta_in if self.softplus else None
        dt = F.softplus(delta_in) if self.softplus else delta_in
        self.u, self.dt, self.A = _np(u, dtype), _np(dt, dtype), _np(A, dtype)
        self.D = _np(D, dtype) if D is not None else np.zeros(dim, dtype)
        self.has_z = z is not None
        self.z = _np(z, dtype) if self.has_z else np.zeros((1, 1, 1), dtype)
        self.has_route = route_index is not None
        self.route = (route_index.contiguous().numpy() if self.has_route
                      else np.zeros((1, 1), dtype=np.int64))

    def inputs(self):
        return (self.u, self.dt, self.A, self.Bc, self.Bv, self.Cc, self.Cv, self.D, self.z, self.route)

    def delta_grad(self, ddt: np.ndarray) -> torch.Tensor:
        """dL/d(delta + bias) from dL/dΔ, in place: softplus' derivative is the logistic below 20,
        1 above. (In place: at long L every extra (B, D, L) temporary is a large share of the peak.)"""
        ddt = torch.from_numpy(ddt)
        if self.softplus:
            ddt.mul_(torch.sigmoid(self.delta_in).masked_fill_(self.delta_in > 20.0, 1.0))
        return ddt


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc):
    """See ``medmamba_kernels.op`` for the backend contract. ``route_desc`` is unused: on the CPU an
    index table costs no more than strides."""
    args = _Args(u, delta, A, B, C, D, z, delta_bias, softplus, route_index)
    args.delta_in = None  # the forward needs only Δ
    batch, dim, length = args.shape
    out = np.empty((batch, dim, length), dtype=args.dtype)
    states = np.empty((batch, dim, -(-length // CHUNK_LEN), A.shape[1]), dtype=args.dtype)
    _forward(*args.inputs(), out, states, args.b_var, args.c_var, args.has_z, args.has_route, CHUNK_LEN)
    return torch.from_numpy(out).to(u.dtype), torch.from_numpy(states)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc, chunk_states):
    args = _Args(u, delta, A, B, C, D, z, delta_bias, softplus, route_index)
    dtype = args.dtype
    batch, dim, length = args.shape
    nstate = A.shape[1]
    groups_b, groups_c = args.Bv.shape[1], args.Cv.shape[1]
    groups = max(groups_b, groups_c)
    # One job per thread where batch × groups alone would leave threads idle, with at least 8
    # channels a block: each block has its own dB/dC partial sums, so their memory stays at most
    # max(threads·B·G·L·N, B·D·L·N / 8).
    threads = numba.get_num_threads()
    n_blocks = max(1, min((dim // groups) // 8, -(-threads // (batch * groups))))
    du = np.empty((batch, dim, length), dtype=dtype)
    ddt = np.empty_like(du)
    dz = np.empty_like(du) if args.has_z else np.zeros((1, 1, 1), dtype)
    per_channel = lambda: np.zeros((batch, dim, nstate), dtype)  # noqa: E731
    dA_part, dBc_part, dCc_part = per_channel(), per_channel(), per_channel()
    dD_part = np.zeros((batch, dim), dtype)

    def variable_part(is_var, n_groups):
        if not is_var:
            return np.zeros((1, 1, 1, 1, 1), dtype)
        return np.zeros((batch, n_groups, n_blocks * groups // n_groups, length, nstate), dtype)

    dBv_part = variable_part(args.b_var, groups_b)
    dCv_part = variable_part(args.c_var, groups_c)
    _backward(_np(dout, dtype), *args.inputs(), _np(chunk_states, dtype),
              du, ddt, dz, dA_part, dBc_part, dCc_part, dD_part, dBv_part, dCv_part,
              args.b_var, args.c_var, args.has_z, args.has_route, CHUNK_LEN, n_blocks)

    def variable_grad(part, like):  # (batch, G, slots, L, N) -> (batch, G, N, L)
        return torch.from_numpy(part.sum(axis=2)).transpose(2, 3).contiguous().to(like.dtype)

    def summed(part, like):
        return torch.from_numpy(part.sum(axis=0)).to(like.dtype)

    ddelta = args.delta_grad(ddt)
    return (
        torch.from_numpy(du).to(u.dtype),
        ddelta.to(delta.dtype),
        summed(dA_part, A),
        variable_grad(dBv_part, B) if args.b_var else summed(dBc_part, B),
        variable_grad(dCv_part, C) if args.c_var else summed(dCc_part, C),
        summed(dD_part, D) if D is not None else None,
        torch.from_numpy(dz).to(z.dtype) if args.has_z else None,
        ddelta.sum(dim=(0, 2)).to(delta_bias.dtype) if delta_bias is not None else None,
    )
