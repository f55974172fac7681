"""The Mamba (S6) mixer, one or several scan directions, on medmamba's selective-scan op.

Parameter names, shapes and initialisation follow mamba_ssm's ``mamba_simple.Mamba`` so that its
state_dicts load; extra directions carry their own conv1d/x_proj/dt_proj/A/D under the suffixes Vim
and SegMamba use (``conv1d_b``, ``A_b_log``, ``D_b`` …; ``_s`` for the third).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from medmamba_kernels import selective_scan
from medmamba_kernels.routes import cached_route_tables, route_for

__all__ = ["Mamba", "channels_first_linear", "set_ssm", "unused_parameters_term"]

_EXTRA_ROUTE_SUFFIXES = ("b", "s")


class Mamba(nn.Module):
    """Mamba block mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: token width. d_state, d_conv, expand, dt_*: as mamba_ssm (defaults 16, 4, 2, …).
        routes: None scans the sequence in the given order (mamba_ssm exactly). Otherwise route
            family names from ``medmamba_kernels.routes.ROUTE_FAMILIES`` (e.g. ``("raster",
            "raster_reverse", "inter_slice")``): each direction has its own causal conv, x_proj,
            dt_proj, A and D, runs along its route over the grid given to ``forward``, and the
            un-permuted outputs are summed before the shared gate and out_proj. All directions run
            in one scan call with grouped B/C.
        ssm: True runs the selective scan. False is the SSM ablation (architectures ``<arch>_nossm``):
            the scan is replaced by the identity on its input, ``y = u`` with ``u = SiLU(conv1d(x))``
            (per direction, then un-permuted and summed as with the scan), so in_proj, the causal
            conv, the gate ``y · SiLU(z)`` and out_proj stay. x_proj, dt_proj, A_log and D (every
            direction's) are kept — same parameters, same state_dict — but do not act: they enter
            the output with weight 0 (:func:`unused_parameters_term`), so they get a zero gradient
            and DDP without ``find_unused_parameters`` still sees a gradient for each of them. Also
            an attribute: :func:`set_ssm` switches a built network.
    """

    has_selective_scan = True  # set_ssm() switches its ``ssm``

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        routes: Sequence[str] | None = None,
        ssm: bool = True,
    ) -> None:
        super().__init__()
        self.ssm = bool(ssm)
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.routes = tuple(routes) if routes is not None else None
        n_directions = 1 if routes is None else len(self.routes)
        if n_directions < 1:
            raise ValueError("routes must name at least one direction (or be None)")
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self._suffixes = [""] + [f"_{s}" for s in _direction_suffixes(n_directions - 1)]
        for sfx in self._suffixes:
            self._add_direction(sfx, conv_bias, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _add_direction(self, sfx, conv_bias, dt_init, dt_scale, dt_min, dt_max, dt_init_floor) -> None:
        d_inner = self.d_inner
        setattr(self, f"conv1d{sfx}", nn.Conv1d(d_inner, d_inner, self.d_conv, groups=d_inner,
                                                padding=self.d_conv - 1, bias=conv_bias))
        setattr(self, f"x_proj{sfx}", nn.Linear(d_inner, self.dt_rank + 2 * self.d_state, bias=False))
        dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        # dt ~ log-uniform in [dt_min, dt_max]; the bias is its softplus inverse so that
        # softplus(bias) = dt at initialisation.
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True
        setattr(self, f"dt_proj{sfx}", dt_proj)
        # S4D-real: A[d, n] = -(n + 1).
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        A_log = nn.Parameter(torch.log(A))
        A_log._no_weight_decay = True
        setattr(self, f"A{sfx}_log", A_log)
        D = nn.Parameter(torch.ones(d_inner))
        D._no_weight_decay = True
        setattr(self, f"D{sfx}", D)

    def forward(self, hidden_states: torch.Tensor, grid_shape: Sequence[int] | None = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model); ``grid_shape`` is the spatial shape whose C-order
        flattening gave L (needed when ``routes`` is set).

        Returns (batch, L, d_model) as a transposed view of a channels-first (batch, d_model, L)
        tensor: the scan works on (batch, D, L), so every projection is computed as ``W @ x`` on
        that layout (the same arithmetic as the Linear layers, whose parameters these are) and
        nothing is transposed by copying. Callers holding channels-first volumes get their layout
        back without a copy as well (``out.transpose(1, 2)``)."""
        batch, length, _ = hidden_states.shape
        tokens = hidden_states.transpose(1, 2)  # (batch, d_model, L), a view
        x = channels_first_linear(self.in_proj, tokens, 0, self.d_inner)  # (batch, d_inner, L)
        z = channels_first_linear(self.in_proj, tokens, self.d_inner, 2 * self.d_inner)
        if self.routes is None:
            return self._scan_directions(x, z, [None], length).transpose(1, 2)
        if grid_shape is None or math.prod(grid_shape) != length:
            raise ValueError(f"routes need the grid shape whose flattening has L={length}, got {grid_shape}")
        routes = tuple(route_for(name, grid_shape) for name in self.routes)
        index, _ = cached_route_tables(routes, length, str(x.device))
        return self._scan_directions(x, z, list(index), length).transpose(1, 2)

    def _scan_directions(self, x, z, perms, length) -> torch.Tensor:
        """(batch, d_inner, L) x and z → (batch, d_model, L)."""
        us, deltas, Bs, Cs = [], [], [], []
        for sfx, perm in zip(self._suffixes, perms):
            # The causal conv runs along the direction, so the direction's copy of x is needed.
            x_dir = x if perm is None else x[..., perm]
            conv = getattr(self, f"conv1d{sfx}")
            u = F.silu(conv(x_dir)[..., :length])
            if not self.ssm:  # the ablation: the scan is the identity, y = u
                us.append(u)
                continue
            x_dbl = channels_first_linear(getattr(self, f"x_proj{sfx}"), u)  # (batch, R + 2N, L)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            # dt_proj's bias is added inside the scan, in fp32, as delta_bias.
            deltas.append(channels_first_linear(getattr(self, f"dt_proj{sfx}"), dt, bias=False))
            us.append(u)
            Bs.append(B)
            Cs.append(C)
        if not self.ssm:
            return self._identity_directions(us, z, perms, length)
        A = torch.cat([-torch.exp(getattr(self, f"A{sfx}_log").float()) for sfx in self._suffixes])
        D = torch.cat([getattr(self, f"D{sfx}").float() for sfx in self._suffixes])
        delta_bias = torch.cat([getattr(self, f"dt_proj{sfx}").bias.float() for sfx in self._suffixes])
        if perms[0] is None:
            y = selective_scan(us[0], deltas[0], A, Bs[0], Cs[0], D, z=z, delta_bias=delta_bias, delta_softplus=True)
        else:
            # All directions in one call: channel block k with B/C group k.
            y_dirs = selective_scan(torch.cat(us, 1), torch.cat(deltas, 1), A, torch.stack(Bs, 1),
                                    torch.stack(Cs, 1), D, delta_bias=delta_bias, delta_softplus=True)
            # Back to natural order: one gather with every direction's inverse permutation, then
            # the sum over directions (no zeros + scatter-add per direction).
            index = torch.stack(perms)  # (K, L)
            positions = torch.arange(length, device=index.device).expand_as(index)
            inverse = torch.empty_like(index).scatter_(1, index, positions)
            y_dirs = y_dirs.view(x.shape[0], len(perms), self.d_inner, length)
            y = torch.gather(y_dirs, 3, inverse[None, :, None, :].expand_as(y_dirs)).sum(1)
            # The gate commutes with the permutations, so one gate after the sum equals a gate
            # per direction.
            y = y * F.silu(z)
        return channels_first_linear(self.out_proj, y)

    def _identity_directions(self, us, z, perms, length) -> torch.Tensor:
        """The SSM ablation of :meth:`_scan_directions`: each direction's scan output is its input
        ``u``; un-permuting, the sum over directions, the gate and out_proj are unchanged."""
        if perms[0] is None:
            y = us[0]
        else:
            index = torch.stack(perms)  # (K, L)
            positions = torch.arange(length, device=index.device).expand_as(index)
            inverse = torch.empty_like(index).scatter_(1, index, positions)
            y_dirs = torch.stack(us, 1)  # (batch, K, d_inner, L)
            y = torch.gather(y_dirs, 3, inverse[None, :, None, :].expand_as(y_dirs)).sum(1)
        unused = [getattr(self, f"{name}{sfx}") for sfx in self._suffixes for name in ("x_proj", "dt_proj")]
        unused += [getattr(self, f"{name}{sfx}{tail}") for sfx in self._suffixes
                   for name, tail in (("A", "_log"), ("D", ""))]
        y = y * F.silu(z) + unused_parameters_term(unused, y.dtype, y.device)
        return channels_first_linear(self.out_proj, y)


def channels_first_linear(linear: nn.Linear, x: torch.Tensor, start: int = 0, stop: int | None = None,
                          bias: bool = True) -> torch.Tensor:
    """``linear`` applied along the channel axis of a channels-first (batch, C, L) ``x`` (any
    strides, e.g. a transposed (batch, L, C) tensor), output rows ``start:stop`` only:
    (batch, stop - start, L), contiguous; ``bias=False`` leaves the Linear's bias out. ``W @ x`` is
    the Linear's arithmetic on the scan's layout, with no transposing copy of x or of the result."""
    weight = linear.weight[start:stop]
    # bmm, not matmul: matmul(2D, 3D) computes the transposed product and copies it back.
    out = torch.bmm(weight.expand(x.shape[0], -1, -1), x)
    if bias and linear.bias is not None:
        out = out + linear.bias[start:stop, None]
    return out


def _direction_suffixes(count: int) -> list[str]:
    named = list(_EXTRA_ROUTE_SUFFIXES[:count])
    return named + [f"r{i}" for i in range(len(named) + 1, count + 1)]


def unused_parameters_term(modules_or_params, dtype: torch.dtype, device) -> torch.Tensor:
    """A scalar 0 that depends on every parameter of ``modules_or_params`` (modules or tensors):
    ``0 · Σ p.sum()``. Added to an output it changes nothing, gives those parameters an exact zero
    gradient, and keeps them in the autograd graph, which nnU-Net's DDP (wrapped without
    ``find_unused_parameters``) requires of every parameter. The SSM ablation keeps the scan's
    parameters this way."""
    total = torch.zeros((), dtype=torch.float32, device=device)
    for item in modules_or_params:
        params = item.parameters() if isinstance(item, nn.Module) else [item]
        for p in params:
            total = total + p.sum().float()
    return (total * 0.0).to(dtype)


def set_ssm(module: nn.Module, enabled: bool) -> int:
    """Switch the selective scan of every mixer inside ``module`` on (``enabled=True``) or to the
    identity (the SSM ablation, see :class:`Mamba`'s ``ssm``); returns how many mixers were switched.
    A mixer is any submodule whose class sets ``has_selective_scan = True`` and reads ``self.ssm``
    (:class:`Mamba`, ``medmamba.models.mhs_vm.MultiRouteS6`` and its SS2D)."""
    count = 0
    for sub in module.modules():
        if getattr(type(sub), "has_selective_scan", False):
            sub.ssm = bool(enabled)
            count += 1
    return count
