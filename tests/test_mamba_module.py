"""The Mamba mixer: mamba_ssm's parameter layout and initialisation, its forward against the slow
path written out with the reference scan, multi-direction routes, autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from medmamba_kernels import selective_scan_ref
from medmamba_kernels.routes import route_for

from medmamba.models import Mamba


def test_parameter_names_and_shapes_match_mamba_ssm():
    d_model, d_inner, rank, n = 32, 64, 2, 16
    expected = {
        "A_log": (d_inner, n), "D": (d_inner,), "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, 4), "conv1d.bias": (d_inner,), "x_proj.weight": (rank + 2 * n, d_inner),
        "dt_proj.weight": (d_inner, rank), "dt_proj.bias": (d_inner,), "out_proj.weight": (d_model, d_inner),
    }
    got = {k: tuple(v.shape) for k, v in Mamba(d_model).state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("d_model", [32, 48, 320])
def test_parameter_count_formula(d_model):
    # docs/selective_scan.md §7: 6D² + 110D + 4D·ceil(D/16) for expand 2, N 16, d_conv 4.
    count = sum(p.numel() for p in Mamba(d_model).parameters())
    assert count == 6 * d_model**2 + 110 * d_model + 4 * d_model * math.ceil(d_model / 16)


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    torch.testing.assert_close(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5
    assert getattr(m.dt_proj.bias, "_no_reinit", False) and getattr(m.A_log, "_no_weight_decay", False)


def _slow_path(m: Mamba, x: torch.Tensor, sfx: str = "", perm=None, gate=True) -> torch.Tensor:
    """mamba_ssm's non-fused forward, written out step by step with the reference scan; returns the
    scan output (gated if ``gate``) in the direction's order before out_proj."""
    length = x.shape[1]
    xz = (x @ m.in_proj.weight.t()).transpose(1, 2)
    xs, z = xz.chunk(2, dim=1)
    if perm is not None:
        xs, z = xs[..., perm], z[..., perm]
    conv = getattr(m, f"conv1d{sfx}")
    xs = F.silu(F.conv1d(xs, conv.weight, conv.bias, padding=3, groups=m.d_inner)[..., :length])
    x_dbl = xs.transpose(1, 2) @ getattr(m, f"x_proj{sfx}").weight.t()
    dt, B, C = x_dbl.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt_proj = getattr(m, f"dt_proj{sfx}")
    delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
    A = -torch.exp(getattr(m, f"A{sfx}_log"))
    return selective_scan_ref(xs, delta, A, B.transpose(1, 2), C.transpose(1, 2), getattr(m, f"D{sfx}"),
                              z=z if gate else None, delta_bias=dt_proj.bias, delta_softplus=True)


def test_forward_equals_slow_path():
    torch.manual_seed(0)
    m = Mamba(16)
    x = torch.randn(2, 70, 16)
    expected = _slow_path(m, x).transpose(1, 2) @ m.out_proj.weight.t()
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    original = Mamba(16)
    copy = Mamba(16)
    copy.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(1, 30, 16)
    assert torch.equal(original(x), copy(x))


def test_directions_are_summed_after_unpermuting():
    torch.manual_seed(0)
    grid = (3, 4, 5)
    names = ("raster", "raster_reverse", "inter_slice")
    m = Mamba(16, routes=names)
    assert {"conv1d_b.weight", "A_b_log", "D_b", "x_proj_s.weight", "dt_proj_s.bias"} <= set(m.state_dict())
    x = torch.randn(2, 60, 16)
    z = (x @ m.in_proj.weight.t()).transpose(1, 2).chunk(2, dim=1)[1]
    y = torch.zeros(2, m.d_inner, 60)
    for sfx, name in zip(["", "_b", "_s"], names):
        perm = torch.from_numpy(route_for(name, grid).permutation().copy())
        y[..., perm] += _slow_path(m, x, sfx, perm, gate=False)
    expected = (y * F.silu(z)).transpose(1, 2) @ m.out_proj.weight.t()
    torch.testing.assert_close(m(x, grid), expected, rtol=1e-4, atol=1e-5)


def test_routes_need_the_grid_shape():
    m = Mamba(16, routes=("raster", "raster_reverse"))
    with pytest.raises(ValueError, match="grid shape"):
        m(torch.randn(1, 60, 16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_step_under_autocast_is_finite(dtype):
    torch.manual_seed(0)
    m = Mamba(32, routes=("raster", "raster_reverse"))
    x = 10 * torch.randn(2, 512, 32)
    with torch.autocast("cpu", dtype=dtype):
        loss = m(x, (8, 8, 8)).float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("bias", [False, True])
def test_channels_first_linear_is_the_linear_layer(bias):
    from medmamba.models.mamba import channels_first_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 10, bias=bias)
    tokens = torch.randn(2, 7, 6)
    expected = linear(tokens).transpose(1, 2)
    torch.testing.assert_close(channels_first_linear(linear, tokens.transpose(1, 2)), expected)
    torch.testing.assert_close(channels_first_linear(linear, tokens.transpose(1, 2), 3, 8), expected[:, 3:8])


@pytest.mark.parametrize("routes", [None, ("raster", "raster_reverse", "inter_slice")])
def test_output_is_a_view_of_a_channels_first_tensor(routes):
    """The mixer computes on the scan's (batch, D, L) layout and hands back (batch, L, d_model) as a
    transposed view, so a caller holding channels-first volumes gets them back without a copy; and
    it still equals mamba_ssm's token-major arithmetic with biased projections."""
    torch.manual_seed(0)
    m = Mamba(16, bias=True, routes=routes)
    x = torch.randn(2, 60, 16)
    out = m(x, (3, 4, 5) if routes else None)
    assert out.shape == (2, 60, 16) and out.transpose(1, 2).is_contiguous()
    if routes is None:
        xz = x @ m.in_proj.weight.t() + m.in_proj.bias
        z = xz[..., m.d_inner:].transpose(1, 2)
        xs = xz[..., :m.d_inner].transpose(1, 2)
        xs = F.silu(F.conv1d(xs, m.conv1d.weight, m.conv1d.bias, padding=3, groups=m.d_inner)[..., :60])
        dt, B, C = (xs.transpose(1, 2) @ m.x_proj.weight.t()).split([m.dt_rank, 16, 16], dim=-1)
        y = selective_scan_ref(xs, (dt @ m.dt_proj.weight.t()).transpose(1, 2), -torch.exp(m.A_log),
                               B.transpose(1, 2), C.transpose(1, 2), m.D, z=z, delta_bias=m.dt_proj.bias,
                               delta_softplus=True)
        expected = y.transpose(1, 2) @ m.out_proj.weight.t() + m.out_proj.bias
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
