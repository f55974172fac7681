"""Pure-PyTorch selective scan: the readable oracle every fast path is tested against.

It materialises the discretised (B, D, L, N) tensors and loops over L in Python, so it is slow and
memory-hungry by design; it computes in fp32, or in fp64 when given fp64 inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .routes import Route, route_tables

__all__ = ["selective_scan_ref"]


def selective_scan_ref(
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
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics.

    Shapes: u, delta, z (B, D, L); A (D, N); B and C (D, N), (B, N, L) or grouped (B, G, N, L);
    D, delta_bias (D,). Returns out (B, D, L) in u's dtype, and the final state (B, D, N) fp32 when
    ``return_last_state``.

    ``routes`` (K routes, K dividing D) scans channel block k (``D/K`` channels) along route k:
    inputs and outputs stay in natural order, the scan reads them in the route's order.
    """
    if routes is not None:
        return _ref_along_routes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, routes)
    out_dtype = u.dtype
    compute = torch.promote_types(u.dtype, torch.float32)
    batch, dim, length = u.shape
    u, delta = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as in the CUDA kernel
    A = A.to(compute)
    B_per_channel = _per_channel(B.to(compute), dim)
    C_per_channel = _per_channel(C.to(compute), dim)

    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B_per_channel.dim() == 2:
        drive = torch.einsum("bdl,dn,bdl->bdln", delta, B_per_channel, u)
    else:
        drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B_per_channel, u)

    # unbind, not indexing in the loop: the backward of L slices would add L full-size gradients.
    C_steps = C_per_channel.unbind(-1) if C_per_channel.dim() == 4 else [C_per_channel[None]] * length
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C_steps):
        state = decay_t * state + drive_t
        ys.append((state * C_t).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(out_dtype)
    return (out, state) if return_last_state else out


def _per_channel(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (D, N) or (B, D, N, L): groups repeated over their D/G channels."""
    if BC.dim() == 2:
        return BC
    if BC.dim() == 3:
        BC = BC[:, None]
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def _ref_along_routes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, routes):
    """Permute every per-position input along its channel block's route, scan, permute back."""
    dim, length = u.shape[1], u.shape[2]
    n_routes = len(routes)
    if dim % n_routes:
        raise ValueError(f"{n_routes} routes do not divide D={dim} channels")
    index, _ = route_tables(routes, length, u.device)
    # Channel d uses route d // (D/K); position i of its scan reads index[k, i].
    channel_index = index.repeat_interleave(dim // n_routes, dim=0)  # (D, L)

    def gather_channels(x):
        return None if x is None else torch.gather(x, 2, channel_index.expand(x.shape[0], -1, -1))

    def gather_BC(x):
        if x.dim() == 2:
            return x
        per_channel = _per_channel(x, dim)  # (B, D, N, L)
        idx = channel_index[None, :, None, :].expand(per_channel.shape[0], -1, per_channel.shape[2], -1)
        return torch.gather(per_channel, 3, idx)

    result = selective_scan_ref(
        gather_channels(u), gather_channels(delta), A, gather_BC(B), gather_BC(C), D,
        gather_channels(z), delta_bias, delta_softplus, return_last_state,
    )
    out, last = (result if return_last_state else (result, None))
    natural = torch.empty_like(out).scatter_(2, channel_index.expand(out.shape[0], -1, -1), out)
    return (natural, last) if return_last_state else natural
