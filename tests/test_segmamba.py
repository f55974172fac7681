"""SegMamba V1: exact parameter counts of the released configuration, the ToM layer against a
released-style three-branch computation, the inter-slice order taken from each stage's grid, GSC
forms, the MLP on the side outputs only, norm/bias parity, shapes, input checks, nnU-Net plans."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from medmamba_kernels import routes, selective_scan_ref
from medmamba_kernels.routes import route_for

from medmamba.models.profile import count_parameters as _count
from medmamba.models.registry import create, get, plans_architecture
from medmamba.models.segmamba import GSC, TOM_ROUTES, MambaLayer, SegMamba

# Four stages as released, tiny widths: every test input below is a few thousand voxels.
TINY = dict(feat_size=[4, 8, 8, 16], hidden_size=16, depths=[1, 1, 1, 1])


def _tiny(in_channels=2, num_classes=3, seed=0, **overrides) -> SegMamba:
    torch.manual_seed(seed)
    return create("segmamba", in_channels, num_classes, **{**TINY, **overrides})


# --- parameter counts (docs/networks.md §7) -------------------------------------------------


def test_released_configuration_parameter_count_and_breakdown():
    model = create("segmamba", 4, 4)
    assert _count(model) == 67_416_196
    vit = model.vit
    assert _count(vit) == 15_718_080  # MambaEncoder 15.72M
    assert _count(vit.downsample_layers) == 840_720  # stem + downsamples 0.84M
    assert _count(vit.gscs) == 10_969_920  # 4 GSC 10.97M
    assert _count(vit.stages) == 3_121_920  # 8 ToM layers 3.12M
    assert _count(vit.mlps) == 785_520  # 4 MLP 0.79M
    encoders = sum(_count(getattr(model, f"encoder{i}")) for i in range(1, 6))
    assert encoders == 32_185_344  # UNETR encoders 32.19M
    assert _count(model.encoder5) == 24_182_784  # encoder5 alone 24.18M
    assert _count(model) - _count(vit) - encoders == 19_512_772  # decoders and head 19.51M
    del model


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        ((1, 13), {}, 67_363_213),  # upstream class defaults in 1, out 13
        # Paper GSC: final conv 3³ instead of 1³, +26·C² per stage = +5,091,840.
        ((4, 4), {"paper_gsc": True}, 67_416_196 + 26 * (48**2 + 96**2 + 192**2 + 384**2)),
    ],
)
def test_other_parameter_counts(args, kwargs, expected):
    model = create("segmamba", *args, **kwargs)
    assert _count(model) == expected
    del model


@pytest.mark.parametrize("dim,expected", [(48, 31_488), (96, 94_080), (192, 312_576), (384, 1_122_816)])
def test_tom_layer_parameter_count(dim, expected):
    # LayerNorm 2d + shared in_proj 4d² and out_proj 2d² + three direction sets of 110d + 4d·ceil(d/16).
    assert expected == 2 * dim + 6 * dim**2 + 3 * (110 * dim + 4 * dim * math.ceil(dim / 16))
    assert _count(MambaLayer(dim)) == expected


def test_tom_parameter_layout_matches_bimamba_v3():
    d, r = 48, 3
    got = {k: tuple(v.shape) for k, v in MambaLayer(d).state_dict().items()}
    expected = {"norm.weight": (d,), "norm.bias": (d,), "mamba.in_proj.weight": (4 * d, d),
                "mamba.out_proj.weight": (d, 2 * d)}
    for sfx in ("", "_b", "_s"):
        expected.update({
            f"mamba.conv1d{sfx}.weight": (2 * d, 1, 4), f"mamba.conv1d{sfx}.bias": (2 * d,),
            f"mamba.x_proj{sfx}.weight": (r + 32, 2 * d),
            f"mamba.dt_proj{sfx}.weight": (2 * d, r), f"mamba.dt_proj{sfx}.bias": (2 * d,),
            f"mamba.A{sfx}_log": (2 * d, 16), f"mamba.D{sfx}": (2 * d,),
        })
    assert got == expected


# --- ToM and the inter-slice order ---------------------------------------------------------------


def _released_tom_layer(layer: MambaLayer, x: torch.Tensor) -> torch.Tensor:
    """The released MambaLayer written out: three branches, each on its own reordered copy of xz
    (forward; flipped; inter-slice by chunk/stack/flatten with nslices = first spatial size), each
    gated by its own reordered z, un-reordered, summed, out_proj, + input."""
    m = layer.mamba
    batch, channels, *grid = x.shape
    length, nslices = math.prod(grid), grid[0]
    tokens = layer.norm(x.reshape(batch, channels, length).transpose(1, 2))
    xz = (tokens @ m.in_proj.weight.t()).transpose(1, 2)  # (B, 4d, L)

    def branch(xz_dir, sfx):
        xs, z = xz_dir.chunk(2, dim=1)
        conv = getattr(m, f"conv1d{sfx}")
        xs = F.silu(F.conv1d(xs, conv.weight, conv.bias, padding=3, groups=m.d_inner)[..., :length])
        dt, B, C = (xs.transpose(1, 2) @ getattr(m, f"x_proj{sfx}").weight.t()).split([m.dt_rank, 16, 16], -1)
        dt_proj = getattr(m, f"dt_proj{sfx}")
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
        return selective_scan_ref(xs, delta, -torch.exp(getattr(m, f"A{sfx}_log")), B.transpose(1, 2),
                                  C.transpose(1, 2), getattr(m, f"D{sfx}"), z=z, delta_bias=dt_proj.bias,
                                  delta_softplus=True)

    out = branch(xz, "")
    out_b = branch(xz.flip(-1), "_b").flip(-1)
    xz_s = torch.stack(xz.chunk(nslices, dim=-1), dim=-1).flatten(-2)
    out_s = branch(xz_s, "_s")
    out_s = out_s.reshape(batch, -1, length // nslices, nslices).permute(0, 1, 3, 2).flatten(-2)
    y = (out + out_b + out_s).transpose(1, 2) @ m.out_proj.weight.t()
    return y.transpose(1, 2).reshape(x.shape) + x


@pytest.mark.parametrize("grid", [(3, 4, 5), (5, 2, 3)])
def test_tom_layer_equals_released_three_branch_computation(grid):
    torch.manual_seed(0)
    layer = MambaLayer(8)
    x = torch.randn(2, 8, *grid)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _released_tom_layer(layer, x), rtol=1e-4, atol=1e-5)


def test_inter_slice_route_follows_each_stage_grid():
    model = _tiny().eval()
    size = (32, 48, 16)  # non-cubic; the first axis differs from the released nslices at every stage
    seen: dict[int, list] = {}
    for i, stage in enumerate(model.vit.stages):
        for layer in stage:
            assert layer.mamba.routes == TOM_ROUTES
            layer.mamba.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: seen.setdefault(i, []).append(kwargs["grid_shape"]), with_kwargs=True
            )
    with torch.no_grad():
        model(torch.randn(1, 2, *size))
    for i, grids in seen.items():
        expected_grid = tuple(s // 2 ** (i + 1) for s in size)
        assert grids == [expected_grid]
        route = route_for("inter_slice", expected_grid)
        assert route == routes.inter_slice(expected_grid)
        # The released reorder (chunk into nslices along L, stack, flatten) with nslices = the first
        # spatial size at this stage is the same permutation ...
        length = math.prod(expected_grid)
        released = torch.stack(torch.arange(length).chunk(expected_grid[0]), -1).flatten()
        assert torch.equal(torch.tensor(route.permutation()), released)
        # ... while the released hard-coded count for a 128³ input would be another order here.
        hard_coded = [64, 32, 16, 8][i]
        assert hard_coded != expected_grid[0]
    assert sorted(seen) == [0, 1, 2, 3]


# --- encoder structure ---------------------------------------------------------------------------


def _instance_norm(x):
    return F.instance_norm(x, eps=1e-5)


def test_gsc_is_additive_by_default_and_gated_in_paper_form():
    torch.manual_seed(0)
    c = 4
    x = torch.randn(1, c, 4, 5, 6)
    gsc, paper = GSC(c), GSC(c, paper=True)
    assert gsc.proj4.kernel_size == (1, 1, 1) and paper.proj4.kernel_size == (3, 3, 3)
    assert _count(paper) - _count(gsc) == 26 * c * c
    with torch.no_grad():
        a = F.relu(_instance_norm(gsc.proj2(F.relu(_instance_norm(gsc.proj(x))))))
        b = F.relu(_instance_norm(gsc.proj3(x)))
        torch.testing.assert_close(gsc(x), F.relu(_instance_norm(gsc.proj4(a + b))) + x)
        p = paper
        a = F.relu(p.proj2(_instance_norm(F.relu(p.proj(_instance_norm(x))))))
        b = F.relu(p.proj3(_instance_norm(x)))
        torch.testing.assert_close(paper(x), F.relu(p.proj4(_instance_norm(a * b))) + x)


def test_mlp_only_on_the_side_outputs():
    model = _tiny().eval()
    vit = model.vit
    got: dict[str, torch.Tensor] = {}

    def keep(name, which):
        def hook(module, args, output):
            got[name] = (args[0] if which == "in" else output).detach()
        return hook

    for i in range(4):
        vit.stages[i].register_forward_hook(keep(f"stage{i}", "out"))
        vit.mlps[i].register_forward_hook(keep(f"mlp{i}_in", "in"))
        vit.mlps[i].register_forward_hook(keep(f"mlp{i}_out", "out"))
        getattr(model, f"encoder{i + 2}").register_forward_hook(keep(f"encoder{i + 2}_in", "in"))
        if i < 3:
            vit.downsample_layers[i + 1].register_forward_hook(keep(f"down{i + 1}_in", "in"))
    with torch.no_grad():
        model(torch.randn(1, 2, 16, 32, 16))
    for i in range(4):
        stage_out = got[f"stage{i}"]
        if i < 3:  # the main path continues from the stage output, without norm or MLP
            assert torch.equal(got[f"down{i + 1}_in"], stage_out)
        torch.testing.assert_close(got[f"mlp{i}_in"], _instance_norm(stage_out))
        assert torch.equal(got[f"encoder{i + 2}_in"], got[f"mlp{i}_out"])
    # MlpChannel: Conv1³ d → 2d, GELU, Conv1³ 2d → d, no residual.
    mlp = vit.mlps[1]
    assert (mlp.fc1.in_channels, mlp.fc1.out_channels, mlp.fc1.kernel_size) == (8, 16, (1, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(got["mlp1_out"], mlp.fc2(F.gelu(mlp.fc1(got["mlp1_in"]))))


def test_norms_biases_and_released_names():
    model = _tiny()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(isinstance(m, nn.InstanceNorm3d) for m in norms)
    assert all(not m.affine and not m.track_running_stats for m in norms)
    # The UNETR side: encoder1..5, decoder5..2 (up blocks), decoder1, and no other top-level part.
    decoder_parts = [getattr(model, f"{kind}{i}") for kind in ("encoder", "decoder") for i in range(1, 6)]
    assert {name for name, _ in model.named_children()} == {
        "vit", "out", *(f"encoder{i}" for i in range(1, 6)), *(f"decoder{i}" for i in range(1, 6))}
    for part in decoder_parts:
        convs = [m for m in part.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
        assert convs and all(c.bias is None for c in convs)
    encoder_convs = [m for m in model.vit.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.bias is not None for c in encoder_convs)
    stem = model.vit.downsample_layers[0][0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7, 7), (2, 2, 2), (3, 3, 3))
    down = model.vit.downsample_layers[1]
    assert isinstance(down[0], nn.InstanceNorm3d) and (down[1].kernel_size, down[1].stride) == ((2, 2, 2), (2, 2, 2))
    assert model.out.conv.conv.bias is not None and model.out.conv.conv.in_channels == TINY["feat_size"][0]
    keys = set(model.state_dict())
    for key in ["vit.downsample_layers.0.0.weight", "vit.downsample_layers.3.1.bias", "vit.gscs.0.proj4.weight",
                "vit.stages.3.0.norm.weight", "vit.stages.3.0.mamba.A_s_log", "vit.mlps.0.fc1.weight",
                "encoder1.layer.conv3.conv.weight", "encoder5.layer.conv1.conv.weight",
                "decoder5.transp_conv.conv.weight", "decoder2.conv_block.conv1.conv.weight",
                "decoder1.layer.conv1.conv.weight", "out.conv.conv.weight"]:
        assert key in keys, key


# --- shapes, input checks, plans ------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 32, 32), (32, 48, 16)])
def test_output_shape_at_input_resolution(size):
    model = _tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *size)


def test_stage_count_follows_depths():
    torch.manual_seed(0)
    model = create("segmamba", 1, 2, feat_size=[4, 8, 8], depths=[1, 2, 1], hidden_size=8).eval()
    assert model.total_stride == 8 and not hasattr(model, "encoder5") and len(model.vit.stages[1]) == 2
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 16, 24)).shape == (1, 2, 8, 16, 24)


def test_invalid_inputs_get_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match=r"divisible by 16.*\(16, 32, 40\)"):
        model(torch.randn(1, 2, 16, 32, 40))
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="one voxel"):
        model.train()(torch.randn(1, 2, 16, 16, 16))


def test_no_deep_supervision_and_3d_only():
    with pytest.raises(ValueError, match="deep supervision"):
        create("segmamba", 1, 2, deep_supervision=True, **TINY)
    with pytest.raises(ValueError):
        create("segmamba", 1, 2, spatial_dims=2)
    assert get("segmamba").spatial_dims == (3,)
    assert not hasattr(_tiny(), "decoder")


@pytest.mark.parametrize("overrides", [{}, {"paper_gsc": True, "routes": ["raster", "inter_slice"]}])
def test_nnunet_plans_round_trip(overrides):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    model = _tiny(**overrides)
    assert model.kw_requires_import == ()
    arch = json.loads(json.dumps(plans_architecture(model)))
    assert arch["network_class_name"] == "medmamba.models.segmamba.SegMamba"
    rebuilt = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     2, 3, allow_init=True, deep_supervision=False)
    assert type(rebuilt) is SegMamba and rebuilt.init_kwargs == model.init_kwargs
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert _count(rebuilt) == _count(model)
