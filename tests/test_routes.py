"""Scan routes: each is a permutation, strided descriptors agree with index tables, and scanning
along a route equals the reference on the permuted sequence, permuted back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medmamba_kernels import routes, selective_scan, selective_scan_ref
from medmamba_kernels.routes import ROUTE_FAMILIES, route_for

GRIDS = [(5,), (4, 6), (3, 4, 5), (4, 4, 4)]


@pytest.mark.parametrize("family", sorted(ROUTE_FAMILIES))
@pytest.mark.parametrize("shape", GRIDS)
def test_every_route_is_a_permutation(family, shape):
    perm = route_for(family, shape).permutation()
    assert sorted(perm.tolist()) == list(range(int(np.prod(shape))))


def _descriptor_index(desc, length):
    flip, p0, p1, p2, s0, s1, s2 = desc
    j = np.arange(length)
    j = length - 1 - j if flip else j
    return (j // (p1 * p2)) * s0 + (j // p2 % p1) * s1 + (j % p2) * s2


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_stride_descriptor_matches_index_table(axes, reverse):
    route = routes.axis_order((3, 4, 5), axes, reverse)
    np.testing.assert_array_equal(_descriptor_index(route.descriptor(), 60), route.permutation())


def test_known_orders():
    np.testing.assert_array_equal(routes.raster((2, 3), reverse=True).permutation(), [5, 4, 3, 2, 1, 0])
    # Inter-slice (SegMamba): slice index fastest, perm[i] = (i mod S)·P + i div S.
    S, H, W = 3, 2, 2
    i = np.arange(S * H * W)
    np.testing.assert_array_equal(routes.inter_slice((S, H, W)).permutation(), (i % S) * H * W + i // S)
    np.testing.assert_array_equal(routes.snake((2, 3)).permutation(), [0, 1, 2, 5, 4, 3])
    np.testing.assert_array_equal(routes.spiral((3, 3)).permutation(), [0, 1, 2, 5, 8, 7, 6, 3, 4])
    np.testing.assert_array_equal(routes.diagonal_zigzag((3, 3)).permutation(), [0, 1, 3, 6, 4, 2, 5, 7, 8])


@pytest.mark.parametrize("family,shape", [
    ("snake", (8, 8)), ("snake", (3, 5)), ("snake", (4, 4, 4)), ("snake", (2, 3, 4)), ("snake", (3, 3, 5)),
    ("hilbert", (8, 8)), ("hilbert", (4, 4, 4)),
])
def test_space_filling_routes_step_to_neighbours(family, shape):
    coords = np.stack(np.unravel_index(route_for(family, shape).permutation(), shape), 1)
    steps = np.abs(np.diff(coords, axis=0)).sum(1)
    assert (steps == 1).all()


@pytest.fixture(params=["cpu", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setenv("MEDMAMBA_SCAN", request.param)
    return request.param


def _scan_inputs(length, dim=4, groups=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(2, dim, length, generator=gen), delta=0.5 * torch.rand(2, dim, length, generator=gen),
        A=-0.5 * torch.rand(dim, 6, generator=gen), B=torch.randn(2, groups, 6, length, generator=gen),
        C=torch.randn(2, groups, 6, length, generator=gen), D=torch.randn(dim, generator=gen),
        z=torch.randn(2, dim, length, generator=gen), delta_bias=0.5 * torch.rand(dim, generator=gen),
    )


@pytest.mark.parametrize("family", sorted(ROUTE_FAMILIES))
def test_scan_along_route_equals_permuted_reference(backend, family):
    shape = (3, 4, 5)
    length = 60
    inputs = _scan_inputs(length, groups=1)
    route = route_for(family, shape)
    perm = torch.from_numpy(route.permutation().copy())
    permuted = {k: (v[..., perm] if v.dim() >= 3 else v) for k, v in inputs.items()}
    expected = torch.empty(2, 4, length, dtype=torch.float64)
    expected[..., perm] = selective_scan_ref(**{k: v.double() for k, v in permuted.items()}, delta_softplus=True)
    got = selective_scan(**inputs, delta_softplus=True, routes=[route])
    torch.testing.assert_close(got.double(), expected, rtol=6e-4, atol=2e-3)


def test_multi_route_call_equals_separate_calls(backend):
    shape = (3, 4, 5)
    length = 60
    inputs = _scan_inputs(length, dim=8, groups=4)
    route_list = [routes.raster(shape), routes.raster(shape, reverse=True), routes.inter_slice(shape),
                  routes.hilbert(shape)]
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    together = selective_scan(**leaves, delta_softplus=True, routes=route_list)
    dout = torch.randn_like(together)
    grads_together = torch.autograd.grad(together, list(leaves.values()), dout)

    leaves2 = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    parts = []
    for k, route in enumerate(route_list):
        channels = slice(2 * k, 2 * k + 2)
        parts.append(selective_scan(
            leaves2["u"][:, channels], leaves2["delta"][:, channels], leaves2["A"][channels],
            leaves2["B"][:, k:k + 1], leaves2["C"][:, k:k + 1], leaves2["D"][channels],
            leaves2["z"][:, channels], leaves2["delta_bias"][channels], delta_softplus=True, routes=[route]))
    separate = torch.cat(parts, 1)
    grads_separate = torch.autograd.grad(separate, list(leaves2.values()), dout)
    torch.testing.assert_close(together, separate, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(leaves, grads_together, grads_separate):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")


def test_route_length_must_match():
    inputs = _scan_inputs(60)
    with pytest.raises(ValueError, match="L=60"):
        selective_scan(**inputs, routes=[routes.raster((4, 4))])


def test_registered_route_kind_is_usable_everywhere():
    def columns(shape):
        return np.arange(int(np.prod(shape))).reshape(shape).T.reshape(-1)

    routes.register_route_kind("test_columns", columns)
    with pytest.raises(ValueError, match="already registered"):
        routes.register_route_kind("test_columns", columns)
    assert route_for("test_columns_reverse", (2, 3)).permutation().tolist() == [5, 2, 4, 1, 3, 0]


def test_route_tables_traced_with_fake_tensors_do_not_leak_into_real_runs():
    # The planners trace networks under FakeTensorMode; a route table memoised there was once
    # returned to the next real forward pass, which then produced fake tensors.
    from medmamba_kernels.routes import cached_route_tables, route_for
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    routes = (route_for("raster", (3, 4, 5)), route_for("raster_reverse", (3, 4, 5)))
    with FakeTensorMode():
        index, _ = cached_route_tables(routes, 60, "cpu")
        assert isinstance(index[0], FakeTensor)
    index, _ = cached_route_tables(routes, 60, "cpu")
    assert not isinstance(index[0], FakeTensor)
    assert torch.equal(index[1], torch.arange(59, -1, -1))


def test_route_tables_first_made_while_predicting_serve_training():
    # A prediction (inference mode) used to memoise inference tensors that a later training step
    # could not save for backward.
    from medmamba_kernels.routes import cached_route_tables, route_for

    routes = (route_for("raster", (2, 3, 7)), route_for("inter_slice", (2, 3, 7)))
    with torch.inference_mode():
        index, _ = cached_route_tables(routes, 42, "cpu")
    assert not index[0].is_inference()
    x = torch.randn(1, 42, requires_grad=True)
    x[:, index[1]].sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
