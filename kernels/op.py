"""The public selective-scan op: validation, backend dispatch and its ``torch.library`` registration.

Backends share one contract (``cpu.py`` and ``triton_scan.py`` implement it):

``scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc, keep_chunk_states)
-> (out, chunk_states)``
``scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, route_index, route_desc, chunk_states)
-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``

with u, delta, z (batch, D, L) contiguous; A (D, N), D and delta_bias (D,) in the weight dtype
(fp32, fp64 for fp64 inputs); B, C constant (D, N) or variable (batch, G, N, L), any strides (each
backend lays them out as it needs them); optional ones None;
chunk_states (batch, D, ceil(L / CHUNK_LEN), N), the state after each chunk's last step, the only
thing saved between forward and backward; without ``keep_chunk_states`` (no backward will follow)
only the last state, (batch, D, 1, N). Absent gradients are None.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from .reference import selective_scan_ref
from .routes import Route, cached_route_tables

__all__ = ["selective_scan", "scan_backend", "CHUNK_LEN", "MAX_DSTATE"]

CHUNK_LEN = 256
"""Steps between the saved states: the backward recomputes one chunk at a time from the state
before it. Every backend reads it from here."""
MAX_DSTATE = 256
BACKENDS = ("reference", "cpu", "triton")


def scan_backend(u: torch.Tensor) -> str:
    """The backend a call on ``u`` uses: ``MEDMAMBA_SCAN`` if set, else Triton for CUDA tensors and
    the CPU path otherwise."""
    forced = os.environ.get("MEDMAMBA_SCAN", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"MEDMAMBA_SCAN={forced!r} is not one of {', '.join(BACKENDS)}")
        if forced == "cpu" and u.is_cuda:
            raise ValueError("MEDMAMBA_SCAN=cpu cannot run on CUDA tensors; move them to the CPU or unset it")
        return forced
    return "triton" if u.is_cuda else "cpu"


def _backend_module(name: str):
    if name == "triton":
        from . import triton_scan

        return triton_scan
    from . import cpu

    return cpu


def _absent() -> torch.Tensor:
    """Custom ops cannot return None: absent gradients travel as empty tensors."""
    return torch.empty(0)


def _state_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


@torch.library.custom_op("medmamba::selective_scan_fwd", mutates_args=())
def _scan_fwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    route_index: torch.Tensor | None, route_desc: torch.Tensor | None,
    delta_softplus: bool, backend: str, keep_chunk_states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, states = _backend_module(backend).scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, route_index, route_desc, keep_chunk_states)
    return out, states.to(_state_dtype(u))


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, delta_softplus, backend,
                   keep_chunk_states=True):
    batch, dim, length = u.shape
    n_saved = -(-length // CHUNK_LEN) if keep_chunk_states else 1
    states = u.new_empty((batch, dim, n_saved, A.shape[1]), dtype=_state_dtype(u))
    return torch.empty_like(u), states


@torch.library.custom_op("medmamba::selective_scan_bwd", mutates_args=())
def _scan_bwd(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    route_index: torch.Tensor | None, route_desc: torch.Tensor | None, chunk_states: torch.Tensor,
    delta_softplus: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    grads = _backend_module(backend).scan_bwd(
        dout.contiguous(), u, delta, A, B, C, D, z, delta_bias, delta_softplus, route_index, route_desc,
        chunk_states)
    return tuple(_absent().to(u.device) if g is None else g for g in grads)


@_scan_bwd.register_fake
def _scan_bwd_fake(dout, u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, chunk_states,
                   delta_softplus, backend):
    def like(x):
        return _absent().to(u.device) if x is None else torch.empty_like(x)

    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), like(D), like(z), like(delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, delta_softplus, backend, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, output[1])
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend


def _backward(ctx, dout, dstates):
    # The last state is documented as non-differentiable (as in mamba_ssm): dstates is ignored.
    u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, states = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_bwd(
        dout, u, delta, A, B, C, D, z, delta_bias, route_index, route_desc, states,
        ctx.delta_softplus, ctx.backend)
    return (du, ddelta, dA, dB, dC,
            None if D is None else dD, None if z is None else dz, None if delta_bias is None else dbias,
            None, None, None, None, None)


torch.library.register_autograd("medmamba::selective_scan_fwd", _backward, setup_context=_setup_context)


# FLOP counters (torch.utils.flop_counter, and so `medmamba models`) see only aten ops; without these
# formulas the scan would count as free.
@register_flop_formula(torch.ops.medmamba.selective_scan_fwd)
def _scan_fwd_flops(u_shape, *args, out_shape=None, **kwargs) -> int:
    """The Mamba authors' count, 9·B·L·D·N (state-spaces/mamba#110; also VMamba's): discretisation,
    state update and output contraction, with the parallel-scan overhead."""
    batch, dim, length = u_shape
    A_shape = args[1]
    return 9 * batch * length * dim * A_shape[1]


@register_flop_formula(torch.ops.medmamba.selective_scan_bwd)
def _scan_bwd_flops(dout_shape, u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
    """Three forwards' worth (docs/selective_scan.md §9): the states are recomputed, then the adjoint scan
    and its products with B, C, Δ and u."""
    batch, dim, length = u_shape
    return 3 * 9 * batch * length * dim * A_shape[1]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    routes: Sequence[Route] | None = None,
):
    """Selective scan (Mamba-1 S6) with the semantics of mamba_ssm's ``selective_scan_fn``.

    Args:
        u, delta: (batch, D, L) fp32/fp16/bf16 (fp64 on the CPU path and the reference).
        A: (D, N), real and negative (the Mamba block passes ``-exp(A_log)``); N ≤ 256.
        B, C: constant (D, N), variable (batch, N, L), or grouped (batch, G, N, L) with G dividing D.
        D, delta_bias: optional (D,). z: optional gate (batch, D, L).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state (batch, D, N) fp32 (not differentiable).
        routes: optional K scan routes (K dividing D): channel block k is scanned along route k;
            inputs and outputs stay in natural order. See ``medmamba_kernels.routes``.

    Returns:
        out (batch, D, L) in u's dtype, and the last state if asked for.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, routes)
    backend = scan_backend(u)
    if backend == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                  tuple(routes) if routes is not None else None)
    weight_dtype = _state_dtype(u)
    u, delta = u.contiguous(), delta.contiguous()
    z = z.contiguous() if z is not None else None
    A = A.to(weight_dtype)
    B = _as_grouped(B, weight_dtype)
    C = _as_grouped(C, weight_dtype)
    D = D.to(weight_dtype) if D is not None else None
    delta_bias = delta_bias.to(weight_dtype) if delta_bias is not None else None
    route_index = route_desc = None
    if routes is not None:
        route_index, route_desc = cached_route_tables(tuple(routes), u.shape[2], str(u.device))
    # Inference (no_grad, inference_mode, or nothing that requires grad) needs no chunk states.
    keep_chunk_states = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    out, states = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, route_index, route_desc,
                            bool(delta_softplus), backend, keep_chunk_states)
    if return_last_state:
        return out, states[:, :, -1].detach()
    return out


def _as_grouped(BC: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
    """(D, N) stays a weight in the weight dtype; (batch, N, L) becomes (batch, 1, N, L). Strides
    are left alone: each backend lays B and C out as it needs them (the CPU path transposes them to
    (batch, G, L, N) anyway), so slices of a projection's output are not copied twice."""
    if BC.dim() == 2:
        return BC.to(weight_dtype)
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return BC


def _validate(u, delta, A, B, C, D, z, delta_bias, routes) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError("u has an empty sequence axis (L = 0)")
    if delta.shape != u.shape:
        raise ValueError(f"delta has shape {tuple(delta.shape)}, u has {tuple(u.shape)}: they must match")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported; pass a real, negative A")
    nstate = A.shape[1]
    if not 1 <= nstate <= MAX_DSTATE:
        raise ValueError(f"A has N={nstate} states; 1 ≤ N ≤ {MAX_DSTATE} is supported")
    groups = {}
    for name, BC in (("B", B), ("C", C)):
        if BC.dim() == 2:
            if BC.shape != (dim, nstate):
                raise ValueError(f"constant {name} must be (D={dim}, N={nstate}), got {tuple(BC.shape)}")
            continue
        expected = {3: (batch, nstate, length), 4: (batch, BC.shape[1], nstate, length)}.get(BC.dim())
        if expected is None or tuple(BC.shape) != expected:
            raise ValueError(f"{name} must be (D, N), (batch, N, L) or (batch, G, N, L) with batch={batch}, "
                             f"N={nstate}, L={length}; got {tuple(BC.shape)}")
        groups[name] = BC.shape[1] if BC.dim() == 4 else 1
        if dim % groups[name]:
            raise ValueError(f"{name} has G={groups[name]} groups, which does not divide D={dim}")
    if len(groups) == 2 and groups["B"] != groups["C"]:
        raise ValueError(f"variable B and C must have the same number of groups, got {groups['B']} and {groups['C']}")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ValueError(f"{name} must be (D={dim},), got {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z has shape {tuple(z.shape)}, u has {tuple(u.shape)}: they must match")
    if routes is not None:
        if len(routes) == 0 or dim % len(routes):
            raise ValueError(f"{len(routes)} routes must be at least one and divide D={dim}")
