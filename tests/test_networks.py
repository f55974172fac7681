"""The contract every registered network meets, checked the same way for all of them: output shapes
with and without deep supervision, learning (one small volume overfits), bit-for-bit checkpoints,
a finite training step under bf16/fp16 autocast, and the nnU-Net plans round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmamba.models.registry import available, create, get, plans_architecture

# Tiny configurations: (create kwargs, input spatial size) per (architecture, spatial_dims). The
# defaults are the full reference configurations, far too big to train on a 2-core CPU.
_TINY_UNET = dict(features_per_stage=[4, 8, 16], n_stages=3)
_TINY_MHS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], drop_path_rate=0.0)
TINY = {
    ("unet", 3): (_TINY_UNET, (16, 16, 16)),
    ("unet", 2): (_TINY_UNET, (32, 32)),
    ("resenc_m", 3): (_TINY_UNET, (16, 16, 16)),
    ("resenc_m", 2): (_TINY_UNET, (32, 32)),
    ("resenc_l", 3): (_TINY_UNET, (16, 16, 16)),
    ("resenc_l", 2): (_TINY_UNET, (32, 32)),
    ("lightm_unet", 3): (dict(init_filters=8), (16, 16, 16)),
    ("lightm_unet", 2): (dict(init_filters=8), (32, 32)),
    ("umamba_bot", 3): (_TINY_UNET, (16, 16, 16)),
    ("umamba_bot", 2): (_TINY_UNET, (32, 32)),
    ("umamba_enc", 3): (dict(_TINY_UNET, input_size=[16, 16, 16]), (16, 16, 16)),
    ("umamba_enc", 2): (dict(_TINY_UNET, input_size=[32, 32], variant="repo_2024_03"), (32, 32)),
    # First axis 48: no stage has depth 2 (see the autocast test).
    ("segmamba", 3): (dict(feat_size=[4, 8, 8, 16], hidden_size=16, depths=[1, 1, 1, 1]), (48, 16, 16)),
    ("mhs_vm", 2): (_TINY_MHS, (32, 32)),
    ("mhs_vm", 3): (_TINY_MHS, (32, 32, 32)),
}
TINY[("resenc_xl", 3)], TINY[("resenc_xl", 2)] = TINY[("resenc_l", 3)], TINY[("resenc_l", 2)]
# The SSM-ablation twins meet the same contract, at their source's tiny configuration.
TINY.update({(get(name).ablation_twin, dims): value for (name, dims), value in list(TINY.items())
             if get(name).ablation_twin})
# Architectures that follow nnU-Net's deep-supervision contract.
DEEP_SUPERVISION = {"unet", "resenc_m", "resenc_l", "resenc_xl", "umamba_bot", "umamba_enc", "umamba_bot_nossm",
                    "umamba_enc_nossm"}

IN_CHANNELS, NUM_CLASSES = 2, 3


def _build(name, dims, deep_supervision=False, seed=0):
    kwargs, size = TINY[(name, dims)]
    torch.manual_seed(seed)
    kwargs = dict(kwargs)
    if name in DEEP_SUPERVISION:
        kwargs["deep_supervision"] = deep_supervision
    return create(name, IN_CHANNELS, NUM_CLASSES, spatial_dims=dims, **kwargs), size


CASES = sorted(TINY)


def test_every_architecture_is_registered_and_has_a_tiny_case():
    mamba = {"umamba_bot", "umamba_enc", "segmamba", "lightm_unet", "mhs_vm"}
    assert set(available()) == {"unet", "resenc_m", "resenc_l", "resenc_xl", *mamba,
                                *(f"{name}_nossm" for name in mamba)}
    for name in available():
        for dims in get(name).spatial_dims:
            assert (name, dims) in TINY, f"no tiny test configuration for {name} in {dims}D"


@pytest.mark.parametrize("name,dims", CASES)
def test_output_shapes(name, dims):
    model, size = _build(name, dims)
    x = torch.randn(2, IN_CHANNELS, *size)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES, *size)
    if name in DEEP_SUPERVISION:
        model.decoder.deep_supervision = True
        outs = model(x)
        assert isinstance(outs, (list, tuple)) and len(outs) > 1
        assert outs[0].shape == (2, NUM_CLASSES, *size)
        sizes = [o.shape[2:].numel() for o in outs]
        assert sizes == sorted(sizes, reverse=True), "deep supervision outputs must go highest resolution first"


def _sphere_case(size, seed=0):
    """One volume with a bright sphere (class 1) holding a darker core (class 2)."""
    gen = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))
    label = (radius < 0.7).long() + (radius < 0.35).long()
    image = torch.stack([label.float() + 0.3 * torch.randn(size, generator=gen) for _ in range(IN_CHANNELS)])
    return image[None], label[None]


@pytest.mark.slow
@pytest.mark.parametrize("name,dims", CASES)
def test_overfits_one_volume(name, dims):
    model, size = _build(name, dims)
    image, label = _sphere_case(size)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(image), label)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name,dims", CASES)
def test_checkpoint_round_trip_is_bit_exact(name, dims, tmp_path):
    model, size = _build(name, dims, seed=0)
    path = tmp_path / "checkpoint.pt"
    torch.save(model.state_dict(), path)
    restored, _ = _build(name, dims, seed=1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    restored.eval()
    x = torch.randn(1, IN_CHANNELS, *size)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,dims", CASES)
def test_training_step_under_autocast_is_finite(name, dims, dtype):
    model, size = _build(name, dims)
    image, label = _sphere_case(size)
    # torch 2.13's oneDNN bf16 3D-conv backward intermittently returns NaN weight gradients when a
    # spatial axis is 2 with ≥ 16 channels (reproduced with a bare Conv3d, no network code); the
    # native convolution keeps this test about the networks.
    with torch.backends.mkldnn.flags(enabled=dtype is not torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(image).float(), label)
        loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name,dims", CASES)
def test_nnunet_plans_round_trip(name, dims):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    model, _ = _build(name, dims)
    arch = plans_architecture(model)
    rebuilt = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     IN_CHANNELS, NUM_CLASSES, allow_init=True, deep_supervision=False)
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,dims,expected", [
    ("unet", 3, 31_205_254),
    ("resenc_m", 3, 102_359_430),
    ("resenc_l", 3, 102_359_430),
    ("unet", 2, 33_489_940),
    ("resenc_m", 2, 105_934_932),
])
def test_baseline_parameter_counts(name, dims, expected):
    with torch.device("meta"):
        model = create(name, 1, 14, spatial_dims=dims)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name,dims", CASES)
def test_invalid_input_size_gets_a_clear_error(name, dims):
    model, size = _build(name, dims)
    bad = (*size[:-1], size[-1] + 1)
    with pytest.raises(ValueError, match=str(bad[-1])):
        model(torch.randn(1, IN_CHANNELS, *bad))
