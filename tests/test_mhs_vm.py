"""MHS-VM (2D as released on the VM-UNet host, 3D generalisation): parameter counts of the reference
doc's targets, the head routes against hand-written orders, the D = 1 reduction of the 3D routes, the
gated fusion unit against a hand computation, one grouped scan per head, output shapes, input-size
errors and the nnU-Net plans round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from medmamba_kernels import selective_scan_ref
from medmamba_kernels.routes import Route

from medmamba.models import mhs_vm, registry
from medmamba.models.mhs_vm import (
    HEAD_KINDS,
    MHSM,
    MHSVM,
    SS2D,
    FinalPatchExpand,
    MultiRouteS6,
    PatchExpand,
    PatchMerging,
    VSSGate,
    gated_fusion,
    head_routes,
)
from medmamba.models.profile import count_parameters as n_params

TINY = dict(dims=[8, 16, 32, 64], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])


# ---------------------------------------------------------------- parameter counts (reference §8)


def test_builder_default_2d_is_the_released_isic_configuration():
    model = registry.create("mhs_vm", 3, 1, spatial_dims=2)
    assert n_params(model) == 17_257_129
    assert model.init_kwargs["dims"] == [96, 192, 384, 768] and model.init_kwargs["head_num"] == 4
    assert model.init_kwargs["depths"] == [2, 2, 2, 2] and model.init_kwargs["depths_decoder"] == [2, 2, 2, 1]
    assert model.init_kwargs["gfu_threshold"] == 0.5 and model.init_kwargs["with_proj"]
    del model


def test_three_heads_and_the_vm_unet_host():
    three = n_params(MHSVM(3, 1, head_num=3))
    assert three == 17_386_153 and round(three / 1e6, 2) == 17.39
    # The same host with SS2D is VM-UNet, 27,427,561 (its published figure).
    assert n_params(MHSVM(3, 1, mixer="ss2d")) == 27_427_561


def test_mixer_counts():
    gate = n_params(VSSGate(768))
    assert gate == 2_597_376 and round(gate / 1e6, 2) == 2.60
    assert n_params(SS2D(96)) == 105_216
    assert round(n_params(SS2D(768)) / 1e6, 2) == 4.45
    # Reference §5 formula for SS2D(d), r = ceil(d/16).
    d, r = 192, 12
    formula = 4 * d * d + 20 * d + 8 * d * (r + 32) + 8 * d * r + 8 * d + 128 * d + 8 * d + 4 * d + 2 * d * d
    assert n_params(SS2D(d)) == formula


def test_builder_default_3d():
    model = registry.create("mhs_vm", 4, 3)
    assert model.spatial_dims == 3 and model.init_kwargs["dims"] == [64, 128, 256, 512]
    assert n_params(model) == 9_454_099
    # Every head has at least 16 channels (reference §12) with all four route families.
    assert min(m.d_head for m in model.modules() if isinstance(m, MHSM)) == 16
    assert {m.head_num for m in model.modules() if isinstance(m, MHSM)} == {4}


def test_head_engine_parameter_shapes():
    # d = 96, h = 4: s = 24, r = ceil(24/16) = 2; K = 4 per-route sets, N = 16.
    mhsm = MHSM(96, head_num=4)
    assert [h.head for h in mhsm.heads] == ["C", "X", "S", "Z"]
    shapes = {k: tuple(v.shape) for k, v in mhsm.heads[0].engine.state_dict().items()}
    assert shapes == {"x_proj_weight": (4, 34, 24), "dt_projs_weight": (4, 24, 2), "dt_projs_bias": (4, 24),
                      "A_logs": (96, 16), "Ds": (96,)}
    assert tuple(mhsm.subspace_proj.weight.shape) == (96, 96) and tuple(mhsm.y_proj.weight.shape) == (96, 96)
    assert not hasattr(MHSM(96, with_proj=False), "y_proj")
    gate = VSSGate(96)
    assert tuple(gate.in_proj.weight.shape) == (192, 96) and not hasattr(gate, "out_proj")
    assert tuple(gate.conv2d.weight.shape) == (96, 1, 3, 3) and gate.conv2d.bias is not None


# ---------------------------------------------------------------- routes


def perms(head, shape):
    return [r.permutation().tolist() for r in head_routes(head, shape)]


HAND_2D = {
    (3, 3): {
        "C": ([0, 1, 2, 5, 4, 3, 6, 7, 8], [0, 3, 6, 7, 4, 1, 2, 5, 8]),
        "X": ([0, 1, 3, 6, 4, 2, 5, 7, 8], [2, 1, 5, 8, 4, 0, 3, 7, 6]),
        "S": ([0, 1, 2, 5, 8, 7, 6, 3, 4], [6, 7, 8, 5, 2, 1, 0, 3, 4]),
        "Z": ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 3, 6, 1, 4, 7, 2, 5, 8]),
    },
    (4, 4): {
        "C": ([0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
              [0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3]),
        "X": ([0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15],
              [3, 2, 7, 11, 6, 1, 0, 5, 10, 15, 14, 9, 4, 8, 13, 12]),
        "S": ([0, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4, 5, 6, 10, 9],
              [12, 13, 14, 15, 11, 7, 3, 2, 1, 0, 4, 8, 9, 10, 6, 5]),
        "Z": (list(range(16)), [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]),
    },
    (2, 3): {  # H ≠ W pins the orientation
        "C": ([0, 1, 2, 5, 4, 3], [0, 3, 4, 1, 2, 5]),
        "X": ([0, 1, 3, 4, 2, 5], [2, 1, 5, 4, 0, 3]),
        "S": ([0, 1, 2, 5, 4, 3], [3, 4, 5, 2, 1, 0]),
        "Z": ([0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5]),
    },
}


@pytest.mark.parametrize("shape", sorted(HAND_2D))
@pytest.mark.parametrize("head", HEAD_KINDS)
def test_2d_routes_against_hand_examples(shape, head):
    first, second = HAND_2D[shape][head]
    # Order of the parameter sets: route 0, its reverse, route 1, its reverse.
    assert perms(head, shape) == [first, first[::-1], second, second[::-1]]


def test_2d_routes_use_the_kernels_routes_where_they_match():
    kinds = {h: [(r.kind, r.axes) for r in head_routes(h, (4, 6))[::2]] for h in HEAD_KINDS}
    assert kinds == {"C": [("snake", None), ("mhs_snake_transposed", None)],
                     "X": [("diagonal_zigzag", None), ("mhs_zigzag_mirrored", None)],
                     "S": [("spiral", None), ("mhs_spiral_mirrored", None)],
                     "Z": [("axes", (0, 1)), ("axes", (1, 0))]}


HAND_3D = {
    ("mhs_snake", (2, 2, 2)): [0, 1, 3, 2, 6, 7, 5, 4],
    ("mhs_snake_transposed", (2, 2, 2)): [0, 4, 6, 2, 3, 7, 5, 1],
    ("mhs_zigzag", (2, 2, 2)): [0, 4, 1, 2, 3, 5, 6, 7],
    ("mhs_zigzag_mirrored", (2, 2, 2)): [1, 5, 0, 3, 2, 4, 7, 6],
    ("mhs_spiral", (2, 3, 3)): [0, 1, 2, 5, 8, 7, 6, 3, 4, 13, 12, 15, 16, 17, 14, 11, 10, 9],
    ("mhs_spiral_mirrored", (2, 3, 3)): [15, 16, 17, 14, 11, 10, 9, 12, 13, 4, 3, 0, 1, 2, 5, 8, 7, 6],
}


@pytest.mark.parametrize("kind, shape", sorted(HAND_3D))
def test_3d_routes_against_hand_examples(kind, shape):
    assert Route(shape, kind).permutation().tolist() == HAND_3D[(kind, shape)]


def test_3d_raster_head_is_raster_and_inter_slice():
    first, _, second, _ = perms("Z", (2, 2, 3))
    assert first == list(range(12))
    # (W, H, D): slice index fastest (SegMamba's inter-slice idea), then H, then W.
    assert second == [0, 6, 3, 9, 1, 7, 4, 10, 2, 8, 5, 11]


SHAPES = [(1, 1), (2, 5), (5, 3), (6, 6), (1, 4, 4), (3, 5, 4), (4, 4, 4), (2, 7, 3), (5, 1, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_route_is_a_permutation(shape):
    length = math.prod(shape)
    for head in HEAD_KINDS:
        for route in head_routes(head, shape):
            perm = route.permutation()
            assert sorted(perm.tolist()) == list(range(length))
            inverse = np.argsort(perm)
            np.testing.assert_array_equal(perm[inverse], np.arange(length))
        # The two routes of a head differ (whenever the grid is not a line).
        if sum(s > 1 for s in shape) >= 2:
            r = head_routes(head, shape)
            assert r[0].permutation().tolist() != r[2].permutation().tolist()


@pytest.mark.parametrize("head", HEAD_KINDS)
@pytest.mark.parametrize("hw", [(3, 3), (4, 4), (2, 5), (6, 4), (8, 8)])
def test_3d_routes_on_one_slice_are_the_2d_routes(head, hw):
    assert perms(head, (1, *hw)) == perms(head, hw)


def _steps(perm, shape):
    coords = np.stack(np.unravel_index(perm, shape), 1)
    return np.abs(np.diff(coords, axis=0))


@pytest.mark.parametrize("shape", [(3, 5, 4), (4, 3, 6), (5, 5, 5), (2, 7, 3)])
def test_3d_route_locality(shape):
    # Snakes and slice-alternating spirals step to a 6-neighbour everywhere, odd sizes included;
    # the diagonal planes step to a 6-neighbour or a face-diagonal neighbour.
    for kind in ("mhs_snake", "mhs_snake_transposed", "mhs_spiral", "mhs_spiral_mirrored"):
        assert (_steps(Route(shape, kind).permutation(), shape).sum(1) == 1).all(), kind
    for kind in ("mhs_zigzag", "mhs_zigzag_mirrored"):
        steps = _steps(Route(shape, kind).permutation(), shape)
        assert (steps.max(1) == 1).all() and (steps.sum(1) <= 2).all(), kind


def test_routes_are_cached_per_shape_and_nothing_is_precomputed():
    assert head_routes("X", (5, 7)) is head_routes("X", [5, 7])
    model = MHSVM(1, 2, **TINY)
    assert list(model.buffers()) == []  # no route tables held by the model or pinned to a device


# ---------------------------------------------------------------- the scan and the fusion


def test_gated_fusion_against_hand_computation():
    # (batch 1, K 4, channels 1, L 3): routes disagree, agree exactly, and one outlier.
    y = torch.tensor([[1.0, 3.0, 0.0], [2.0, 3.0, 0.0], [4.0, 3.0, 0.0], [7.0, 3.0, 1.0]]).view(1, 4, 1, 3)
    # Position 0: Σ = 14, unbiased std = √7, mean(y − min) = (0+1+3+6)/4 = 2.5.
    # Position 2: Σ = 1, std = 0.5, mean(y − min) = 0.25.
    for t in (0.5, 0.0, 0.4):
        expected = [14 * max(math.sqrt(7) / (2.5 + 1e-5) - t, 0.0), 0.0, 1 * max(0.5 / (0.25 + 1e-5) - t, 0.0)]
        torch.testing.assert_close(gated_fusion(y, t), torch.tensor(expected).view(1, 1, 3))
    # A threshold above the CV suppresses the position entirely.
    assert gated_fusion(y, 2.5)[0, 0, 2] == 0
    # Where all routes agree the std is 0: the gradient stays finite.
    y = y.clone().requires_grad_(True)
    gated_fusion(y, 0.0).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_one_grouped_scan_call_per_head(monkeypatch):
    calls = []
    real = mhs_vm.selective_scan

    def spy(u, delta, A, B, C, *args, routes=None, **kwargs):
        calls.append((tuple(u.shape), tuple(B.shape), tuple(C.shape), tuple(A.shape), routes, u.dtype))
        return real(u, delta, A, B, C, *args, routes=routes, **kwargs)

    monkeypatch.setattr(mhs_vm, "selective_scan", spy)
    gate = VSSGate(32, head_num=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gate(torch.randn(2, 4, 6, 32))
    assert len(calls) == 4  # one per head
    for (u_shape, b_shape, c_shape, a_shape, routes, dtype), head in zip(calls, HEAD_KINDS):
        assert u_shape == (2, 4 * 8, 24) and b_shape == c_shape == (2, 4, 16, 24) and a_shape == (32, 16)
        assert routes == head_routes(head, (4, 6))
        assert dtype == torch.float32  # the scan runs in fp32 under autocast, as released


def test_engine_equals_scanning_permuted_copies():
    # The released head gathers 4 permuted copies, scans each, flips/scatters back; the op does it
    # inside. Compare with the reference scan on explicit copies.
    torch.manual_seed(0)
    engine = MultiRouteS6(6, n_routes=4, d_state=16, dt_rank=1)
    shape = (2, 3, 4)
    routes = head_routes("X", shape)
    x = torch.randn(2, 6, 24)
    out = engine(x, routes).double()  # the scan runs in fp32, as released
    x, w = x.double(), {k: v.detach().double() for k, v in engine.state_dict().items()}
    x_dbl = torch.einsum("bdl,kcd->bkcl", x, w["x_proj_weight"])
    dts, Bs, Cs = x_dbl.split([1, 16, 16], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, w["dt_projs_weight"])
    A = -torch.exp(w["A_logs"]).view(4, 6, 16)
    for k, route in enumerate(routes):
        perm = torch.from_numpy(route.permutation().copy())
        y = selective_scan_ref(x[..., perm], dts[:, k][..., perm], A[k], Bs[:, k][..., perm], Cs[:, k][..., perm],
                               w["Ds"].view(4, 6)[k], delta_bias=w["dt_projs_bias"][k], delta_softplus=True)
        expected = torch.empty_like(y)
        expected[..., perm] = y
        torch.testing.assert_close(out[:, k], expected, rtol=1e-4, atol=1e-5)


def test_ss2d_cross_scan_order():
    # VMamba v0: k0 row-major, k1 column-major (W×H transpose), k2/k3 their reverses.
    routes = [r.permutation().tolist() for r in (head_routes("Z", (2, 3)))]
    ss2d_order = [routes[0], routes[2], routes[1], routes[3]]
    ref = torch.arange(6).view(2, 3)
    hw = ref.reshape(-1).tolist()
    wh = ref.t().reshape(-1).tolist()
    assert ss2d_order == [hw, wh, hw[::-1], wh[::-1]]
    model = SS2D(8)
    assert model(torch.randn(1, 2, 3, 8)).shape == (1, 2, 3, 8)


# ---------------------------------------------------------------- host blocks


def test_patch_merging_and_expanding_channel_order():
    # Released PatchMerging2D concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2].
    merge = PatchMerging(3, spatial_dims=2)
    x = torch.randn(1, 4, 6, 3)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(merge(x), merge.reduction(merge.norm(cat)))
    # 3D: 8 offsets, first axis fastest; Linear 8C → 2C.
    merge3 = PatchMerging(3, spatial_dims=3)
    x = torch.randn(1, 2, 4, 6, 3)
    offsets = [(a, b, c) for c in (0, 1) for b in (0, 1) for a in (0, 1)]
    cat = torch.cat([x[:, a::2, b::2, c::2] for a, b, c in offsets], -1)
    torch.testing.assert_close(merge3(x), merge3.reduction(merge3.norm(cat)))
    assert tuple(merge3.reduction.weight.shape) == (6, 24)
    # PatchExpand: 'b h w (p1 p2 c) -> b (h p1) (w p2) c'.
    expand = PatchExpand(2, spatial_dims=2)
    x = torch.randn(1, 2, 3, 4)
    e = expand.expand(x).view(1, 2, 3, 2, 2, 2)
    torch.testing.assert_close(expand(x), expand.norm(e.permute(0, 1, 3, 2, 4, 5).reshape(1, 4, 6, 2)))
    final = FinalPatchExpand(96, (4, 4))
    assert tuple(final.expand.weight.shape) == (384, 96) and final.out_dim == 24
    expand3 = PatchExpand(4, spatial_dims=3)
    assert tuple(expand3.expand.weight.shape) == (32, 8)
    assert expand3(torch.randn(1, 2, 3, 1, 8)).shape == (1, 4, 6, 2, 4)


def test_drop_path_schedule():
    model = MHSVM(3, 1, **{**TINY, "depths": [2, 2, 2, 2], "depths_decoder": [2, 2, 2, 1]})
    enc = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks]
    dec = [b.drop_path.drop_prob for layer in model.layers_up for b in layer.blocks]
    np.testing.assert_allclose(enc, np.linspace(0, 0.2, 8), atol=1e-6)
    np.testing.assert_allclose(dec, np.linspace(0, 0.2, 7)[::-1], atol=1e-6)


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 32)), (2, (32, 64)), (3, (32, 32, 32)), (3, (32, 64, 32))])
def test_output_shapes(spatial_dims, size):
    model = registry.create("mhs_vm", 2, 3, spatial_dims=spatial_dims, **TINY)
    out = model(torch.randn(1, 2, *size))
    assert out.shape == (1, 3, *size) and torch.isfinite(out).all()


def test_variants_run():
    x = torch.randn(1, 1, 32, 32)
    for kw in (dict(head_num=3, dims=[12, 24, 48, 96]), dict(with_proj=False), dict(mixer="ss2d"),
               dict(patch_size=[2, 4], dims=[8, 16, 32], depths=[1, 1, 1], depths_decoder=[1, 1, 1])):
        assert MHSVM(1, 2, **{**TINY, **kw})(x).shape == (1, 2, 32, 32)
    # Anisotropic 3D patch embedding: 8 slices, patch (1, 4, 4), 3 stages (D multiple of 4).
    model = MHSVM(1, 2, spatial_dims=3, patch_size=[1, 4, 4], dims=[8, 16, 32], depths=[1, 1, 1],
                  depths_decoder=[1, 1, 1])
    assert model(torch.randn(1, 1, 8, 16, 32)).shape == (1, 2, 8, 16, 32)


def test_invalid_input_size_and_arguments():
    model = MHSVM(1, 2, **TINY)
    with pytest.raises(ValueError, match=r"\(32, 48\).*divisible by \(32, 32\)"):
        model(torch.randn(1, 1, 32, 48))
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(1, 1, 32, 32, 32))
    model3 = MHSVM(1, 2, spatial_dims=3, **TINY)
    with pytest.raises(ValueError, match=r"\(16, 32, 32\).*divisible"):
        model3(torch.randn(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="deep supervision"):
        MHSVM(1, 2, deep_supervision=True, **TINY)
    with pytest.raises(ValueError, match="2D only"):
        MHSVM(1, 2, spatial_dims=3, mixer="ss2d", **TINY)
    with pytest.raises(ValueError, match="twice"):
        MHSVM(1, 2, dims=[8, 12, 32, 64])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nnunet_plans_round_trip(spatial_dims):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    model = registry.create("mhs_vm", 2, 3, spatial_dims=spatial_dims, **TINY, gfu_threshold=0.4)
    arch = json.loads(json.dumps(registry.plans_architecture(model)))
    assert arch["network_class_name"] == "medmamba.models.mhs_vm.MHSVM" and arch["_kw_requires_import"] == []
    rebuilt = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     2, 3, allow_init=True, deep_supervision=False)
    assert type(rebuilt) is MHSVM and rebuilt.init_kwargs == model.init_kwargs
    assert n_params(rebuilt) == n_params(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_gated_fusion_std_is_torch_std():
    """The fusion's std, written with elementwise operations for speed, equals torch's unbiased
    std over the route axis, values and gradients."""
    torch.manual_seed(0)
    y = torch.randn(2, 4, 3, 50, dtype=torch.float64, requires_grad=True)
    ours = mhs_vm._std_over_routes(y, 1)
    theirs = y.std(dim=1, correction=1)
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn_like(theirs)
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), y)[0],
                               torch.autograd.grad((theirs * weights).sum(), y)[0])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_final_conv_applied_as_a_matrix_equals_the_conv(spatial_dims):
    """The 1×1 final_conv runs as a matrix product on the channels-last tokens (no copy of the
    full-resolution volume); it must equal the conv it is."""
    torch.manual_seed(0)
    model = MHSVM(1, 3, spatial_dims=spatial_dims, **TINY)
    seen = {}
    model.final_up.register_forward_hook(lambda mod, inp, out: seen.update(tokens=out))
    x = torch.randn(1, 1, *([32] * spatial_dims))
    out = model(x)
    torch.testing.assert_close(out, model.final_conv(seen["tokens"].movedim(-1, 1)))
