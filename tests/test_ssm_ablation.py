"""SSM-ablation twins (``<arch>_nossm``): the same network and parameters with every selective scan
replaced by the identity on its input; registered from their source's record, planned with their
source's preset, and rebuilt by nnU-Net from their plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medmamba.models import registry
from medmamba.models.mamba import Mamba, channels_first_linear, set_ssm

ROOT = Path(__file__).resolve().parents[1]

SOURCES = [n for n in registry.available() if registry.get(n).ablation_twin]
TWINS = [registry.get(n).ablation_twin for n in SOURCES]

# Small configurations (create kwargs, input size) for a forward and backward pass on the CPU.
_TINY_UNET = dict(features_per_stage=[4, 8, 16], n_stages=3)
TINY = {
    "umamba_bot": (_TINY_UNET, (16, 16, 16)),
    "umamba_enc": (dict(_TINY_UNET, input_size=[16, 16, 16]), (16, 16, 16)),
    "segmamba": (dict(feat_size=[4, 8, 8, 16], hidden_size=16, depths=[1, 1, 1, 1]), (32, 16, 16)),
    "lightm_unet": (dict(init_filters=8), (16, 16, 16)),
    "mhs_vm": (dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], drop_path_rate=0.0),
               (32, 32, 32)),
}


def test_every_mamba_network_has_a_twin_derived_from_its_record():
    assert SOURCES == ["umamba_bot", "umamba_enc", "segmamba", "lightm_unet", "mhs_vm"]
    for source, twin in zip(SOURCES, TWINS):
        s, t = registry.get(source), registry.get(twin)
        assert twin == f"{source}{registry.ABLATION_SUFFIX}" and t.ablation_of == source
        # Everything but the name, builder, summary and the pairing facts is the source's.
        for field in ("network_class", "spatial_dims", "planner", "deep_supervision", "paper_recipe",
                      "blocks_keywords", "patch_keyword", "paper", "code"):
            assert getattr(t, field) == getattr(s, field), (twin, field)
        assert t.baseline_rank is None and t.ablation_twin is None
    assert registry.baselines() == ["unet", "resenc_m", "resenc_l", "resenc_xl"]
    with pytest.raises(ValueError, match="sets ssm itself"):
        registry.create("lightm_unet_nossm", 1, 2, ssm=True)


@pytest.mark.parametrize("source", SOURCES)
def test_twin_has_the_sources_parameters_and_loads_its_state_dict(source):
    """Full reference configurations on the meta device: the counts docs/networks.md pins hold for
    the twins too; a small one on the CPU: the source's state_dict loads strictly."""
    twin = registry.get(source).ablation_twin
    dims = max(registry.get(source).spatial_dims)
    with torch.device("meta"):
        full_s, full_t = registry.create(source, 4, 3, spatial_dims=dims), registry.create(twin, 4, 3, spatial_dims=dims)
    assert sum(p.numel() for p in full_t.parameters()) == sum(p.numel() for p in full_s.parameters())
    assert {k: v.shape for k, v in full_t.state_dict().items()} == {k: v.shape for k, v in full_s.state_dict().items()}
    assert full_t.init_kwargs == {**full_s.init_kwargs, "ssm": False}  # what the plans record
    assert "ssm" not in full_s.init_kwargs  # the sources' plans are unchanged

    kwargs, size = TINY[source]
    torch.manual_seed(0)
    net_s = registry.create(source, 1, 2, spatial_dims=len(size), **kwargs)
    net_t = registry.create(twin, 1, 2, spatial_dims=len(size), **kwargs)
    net_t.load_state_dict(net_s.state_dict(), strict=True)
    net_s.eval(), net_t.eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        out_t = net_t(x)
        out_t = out_t[0] if isinstance(out_t, (list, tuple)) else out_t
        # Switching the source's scans off gives the twin exactly: the flag is all that differs.
        set_ssm(net_s, False)
        out_s = net_s(x)
        out_s = out_s[0] if isinstance(out_s, (list, tuple)) else out_s
    assert torch.equal(out_t, out_s) and torch.isfinite(out_t).all()


@pytest.mark.parametrize("source", ["umamba_bot", "lightm_unet", "mhs_vm"])
def test_every_twin_parameter_gets_a_gradient_and_the_scans_are_zero(source):
    """nnU-Net wraps DDP without find_unused_parameters: every parameter must have a gradient. The
    scan's own parameters get exactly zero (they do not act)."""
    kwargs, size = TINY[source]
    net = registry.create(registry.get(source).ablation_twin, 1, 2, spatial_dims=len(size), **kwargs)
    out = net(torch.randn(1, 1, *size))
    outs = [out] if isinstance(out, torch.Tensor) else out  # every deep-supervision head
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    scan = [n for n, p in net.named_parameters()
            if any(key in n for key in ("x_proj", "dt_proj", "A_log", ".D", "Ds", "A_logs"))]
    assert scan and all(torch.count_nonzero(dict(net.named_parameters())[n].grad) == 0 for n in scan)


@pytest.mark.parametrize("routes", [None, ("raster", "raster_reverse", "inter_slice")])
def test_the_mixers_scan_is_the_identity_on_its_input(routes):
    """With ssm=False the Mamba mixer computes out_proj(Σ_dir unpermute(SiLU(conv_dir(x_dir))) · SiLU(z)):
    its projections, convolutions and gate, with y = u in place of the scan."""
    torch.manual_seed(0)
    d, grid = 8, (3, 4, 5)
    length = 3 * 4 * 5
    mixer = Mamba(d, routes=routes, ssm=False)
    source = Mamba(d, routes=routes)
    mixer.load_state_dict(source.state_dict())
    x = torch.randn(2, length, d)
    y = mixer(x, grid_shape=grid if routes else None)

    tokens = x.transpose(1, 2)
    xi = channels_first_linear(mixer.in_proj, tokens, 0, mixer.d_inner)
    z = channels_first_linear(mixer.in_proj, tokens, mixer.d_inner, 2 * mixer.d_inner)
    if routes is None:
        u = F.silu(mixer.conv1d(xi)[..., :length])
    else:
        from medmamba_kernels.routes import route_for

        u = 0
        for sfx, name in zip(["", "_b", "_s"], routes):
            perm = torch.tensor(route_for(name, grid).permutation())
            u_dir = F.silu(getattr(mixer, f"conv1d{sfx}")(xi[..., perm])[..., :length])
            inverse = torch.argsort(perm)
            u = u + u_dir[..., inverse]
    expected = channels_first_linear(mixer.out_proj, u * F.silu(z)).transpose(1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    # The source mixer scans: its output differs.
    assert not torch.allclose(source(x, grid_shape=grid if routes else None), y)


def test_the_mhs_head_fuses_identity_routes_by_their_sum():
    """MHS-VM: each route's scan output is its input, so the K = 4 outputs agree and the GFU's CV is
    0 everywhere (it would zero the head); the twin fuses them by the plain sum, K · x."""
    from medmamba.models.mhs_vm import ScanHead, VSSGate

    torch.manual_seed(0)
    head = ScanHead(16, "C")
    set_ssm(head, False)
    x = torch.randn(2, 16, 4, 8)
    torch.testing.assert_close(head(x), 4 * x)
    gate = VSSGate(16, head_num=2, spatial_dims=2)
    assert set_ssm(gate, False) == 2
    tokens = torch.randn(2, 4, 8, 16)
    xx, z = gate.in_proj(tokens).chunk(2, dim=-1)
    u = gate.act(gate.conv2d(xx.movedim(-1, 1))).movedim(1, -1)
    parts = gate.mhsm.subspace_proj(u).split(gate.mhsm.d_head, dim=-1)
    mixed = gate.mhsm.y_proj(gate.mhsm.y_norm(torch.cat([4 * p for p in parts], -1)))
    torch.testing.assert_close(gate(tokens), gate.out_norm(mixed) * F.silu(z))


def test_a_twin_is_planned_as_its_source_and_rebuilt_from_its_plans(tmp_path):
    """The twin resolves to its source's preset (no file of its own) and is planned by tracing the
    source network, so patch, batch and memory are the source's; its plans add ssm = false, and
    nnU-Net's get_network_from_plans builds the twin from them."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from medmamba.planning import available_presets, load_preset, plan

    preset = load_preset("lightm_unet_nossm")
    assert (preset.name, preset.architecture) == ("lightm_unet_nossm", "lightm_unet_nossm")
    assert preset.path == load_preset("lightm_unet").path
    assert available_presets()["umamba_enc_nossm"] == available_presets()["umamba_enc"]

    from test_planning import write_raw_dataset

    raw = write_raw_dataset(tmp_path / "raw", n_cases=2)
    plans = plan(raw, ["lightm_unet", "lightm_unet_nossm"], preprocessed_root=tmp_path / "pre", num_processes=1,
                 configurations=["3d_fullres"], fingerprint_samples=10_000)
    source, twin = (plans[n]["configurations"]["3d_fullres"] for n in ("lightm_unet", "lightm_unet_nossm"))
    assert (twin["patch_size"], twin["batch_size"]) == (source["patch_size"], source["batch_size"])
    assert twin["medmamba"]["memory"]["estimated_gb"] == source["medmamba"]["memory"]["estimated_gb"]
    assert twin["architecture"]["arch_kwargs"] == {**source["architecture"]["arch_kwargs"], "ssm": False}
    assert plans["lightm_unet_nossm"]["medmamba"]["architecture"] == "lightm_unet_nossm"
    assert twin["medmamba"]["planned_as"] == "lightm_unet"
    arch = twin["architecture"]
    with torch.device("meta"):
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     4, 3, allow_init=False, deep_supervision=False)
    assert net.init_kwargs["ssm"] is False
    assert registry.architectures_of_network(arch["network_class_name"], {"configurations": {"3d_fullres": twin}}) \
        == ["lightm_unet_nossm"]
    assert registry.architectures_of_network(arch["network_class_name"], {"configurations": {"3d_fullres": source}}) \
        == ["lightm_unet"]


def test_a_users_preset_of_a_mamba_network_has_a_twin_planned_as_it(tmp_path):
    """``my_lightm_nossm`` is the user's ``my_lightm.toml`` (here: a 4 GiB target) with lightm_unet's
    twin as its architecture: planned with the user's settings, paired with it in compare."""
    from medmamba.evaluation.report import ArchitectureResult, twin_pairs
    from medmamba.planning import PresetError, available_presets, load_preset, plan

    user = tmp_path / "presets"
    user.mkdir()
    text = (ROOT / "plans" / "lightm_unet.toml").read_text()
    assert "target_gb = 8.0" in text
    (user / "my_lightm.toml").write_text(text.replace("target_gb = 8.0", "target_gb = 4.0"))
    (user / "my_unet.toml").write_text((ROOT / "plans" / "unet.toml").read_text())
    found = available_presets(user)
    assert found["my_lightm_nossm"] == found["my_lightm"] == user / "my_lightm.toml"
    assert "my_unet_nossm" not in found  # a U-Net has no scan to ablate
    twin = load_preset("my_lightm_nossm", user)
    assert (twin.name, twin.architecture, twin.memory.target_gb) == ("my_lightm_nossm", "lightm_unet_nossm", 4.0)
    with pytest.raises(PresetError, match="my_unet.*no selective scan"):
        load_preset("my_unet_nossm", user)
    with pytest.raises(PresetError, match="twin of preset nothing: unknown architecture or preset 'nothing'"):
        load_preset("nothing_nossm", user)

    from test_planning import write_raw_dataset

    raw = write_raw_dataset(tmp_path / "raw", n_cases=2)
    plans = plan(raw, ["my_lightm", "my_lightm_nossm"], preprocessed_root=tmp_path / "pre", num_processes=1,
                 plans_dir=user, configurations=["3d_fullres"], fingerprint_samples=10_000)
    source, ablated = (plans[n]["configurations"]["3d_fullres"] for n in ("my_lightm", "my_lightm_nossm"))
    assert (ablated["patch_size"], ablated["batch_size"]) == (source["patch_size"], source["batch_size"])
    assert ablated["architecture"]["arch_kwargs"] == {**source["architecture"]["arch_kwargs"], "ssm": False}

    def result(preset: str, configuration: str = "3d_fullres") -> ArchitectureResult:
        folder = tmp_path / f"nnUNetTrainerMedMamba__medmambaPlans_{preset}__{configuration}"
        return ArchitectureResult(name=preset, evaluation=None, recipe="nnunet_default", trainer_folder=str(folder))

    assert twin_pairs([result("my_lightm"), result("my_lightm_nossm"), result("unet")]) == \
        {"my_lightm": "my_lightm_nossm"}
    # only the same configuration is a pair
    assert twin_pairs([result("lightm_unet", "2d"), result("lightm_unet_nossm")]) == {}
