"""The one table of the architectures medmamba builds: every fact about an architecture lives in its
:class:`Architecture` record here, and nowhere else.

Planning (which planner, which builder keywords it sets), training (deep supervision, the paper's
recipe), comparison (the baseline order) and the command line read the record; none of them keeps a
list of names. Adding a network = its module (network class + builder), one record (in
:data:`_BUILT_IN` or, from outside the package, :func:`register`) and one preset file in ``plans/``.

Builders are named as ``"module:function"`` and imported when a network is first built, so reading
the table (``available()``, ``get()``) imports no network code, and the table needs no separate list
of modules to import.

Every network class is also constructible from nnU-Net plans: it records the constructor keywords it
was built with in ``init_kwargs`` (JSON-serialisable; classes such as ``conv_op`` as dotted strings
named in ``kw_requires_import``), so :func:`plans_architecture` can write the plans' ``architecture``
entry and nnunetv2's unmodified ``get_network_from_plans`` can rebuild the same network; and it
reports its resolutions through ``stage_layout()`` (:mod:`medmamba.models.layout`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import torch.nn as nn

__all__ = ["Architecture", "PLANNER_KINDS", "ABLATION_SUFFIX", "ABLATION_KEYWORDS", "register", "create", "available",
           "get", "baselines", "ablation_twin_of", "architectures_of_network", "plans_architecture", "dotted_name"]

#: How a planner lays an architecture out for a patch:
#: "unet": nnU-Net's U-Net topology per candidate patch (stages, strides, kernels from
#: ``get_pool_and_conv_props``), features and blocks per stage from the preset;
#: "fixed": the layout does not depend on the patch; every axis is a multiple of the network's
#: ``stage_layout().input_multiple`` (and of the preset's ``divisible_by``).
PLANNER_KINDS = ("unet", "fixed")

#: The name of an architecture's SSM-ablation twin is its own name with this suffix.
ABLATION_SUFFIX = "_nossm"
#: The builder (and network class) keywords that make a network its SSM-ablation twin: every
#: selective scan replaced by the identity on its input (``medmamba.models.mamba.Mamba``'s ``ssm``).
#: The twin's plans carry them in ``arch_kwargs``, so nnU-Net rebuilds the twin from its plans.
ABLATION_KEYWORDS = {"ssm": False}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything medmamba knows about one architecture.

    Attributes:
        name: the architecture's name (``--arch``, preset ``architecture =``, plans, reports).
        builder_spec: ``"module:function"`` (or the function itself) with the signature
            ``builder(in_channels, num_classes, spatial_dims=3, **kwargs) -> nn.Module``; called with no
            other keyword it builds the configuration whose parameter count docs/networks.md lists
            (for U-Net-like networks nnU-Net's 6-stage 3D configuration for a 128³ patch, deep
            supervision on).
        network_class: the dotted name of the class the builder returns, as nnU-Net plans name it
            (how plans that no medmamba planner wrote are traced back to an architecture).
        spatial_dims: the dimensionalities it has a form for, e.g. ``(2, 3)``.
        planner: its planner kind, one of :data:`PLANNER_KINDS`.
        deep_supervision: whether the network has nnU-Net deep supervision (one output per decoder
            stage); without it, every recipe trains it without.
        paper_recipe: the name of its paper's training recipe (``medmamba.training.recipes.RECIPES``),
            what ``--recipe paper`` trains it with.
        paper, code, summary: where it comes from, and one line about it.
        baseline_rank: its place in the baseline order (0 first) when no baseline is named for a
            comparison; None for architectures that are never the default baseline.
        ablation_twin: the name of its SSM-ablation twin (the same network with the state-space
            scan replaced by the identity, :func:`ablation_twin_of`), or None when it has none. A
            record that names one gets its twin registered with it.
        ablation_of: for a twin, the architecture it ablates (its planner preset, topology and
            memory plan are the source's); None otherwise.
        blocks_keywords: for ``planner="unet"``: the builder keywords that receive the preset's
            blocks per encoder stage and per decoder stage.
        patch_keyword: for ``planner="unet"``: the builder keyword that receives the planned patch,
            for a network whose structure depends on it (U-Mamba Enc's ``input_size``); None otherwise.
    """

    name: str
    builder_spec: str | Callable[..., nn.Module]
    network_class: str
    spatial_dims: tuple[int, ...]
    planner: str
    deep_supervision: bool
    paper_recipe: str
    paper: str = ""
    code: str = ""
    summary: str = ""
    baseline_rank: int | None = None
    ablation_twin: str | None = None
    ablation_of: str | None = None
    blocks_keywords: tuple[str, str] = ("n_conv_per_stage", "n_conv_per_stage_decoder")
    patch_keyword: str | None = None

    def __post_init__(self) -> None:
        if self.planner not in PLANNER_KINDS:
            raise ValueError(f"architecture {self.name!r}: planner must be one of {', '.join(PLANNER_KINDS)}, "
                             f"got {self.planner!r}")
        if not self.spatial_dims or not set(self.spatial_dims) <= {2, 3}:
            raise ValueError(f"architecture {self.name!r}: spatial_dims must name 2 and/or 3, got {self.spatial_dims}")
        if isinstance(self.builder_spec, str) and ":" not in self.builder_spec:
            raise ValueError(f"architecture {self.name!r}: builder_spec must be 'module:function', "
                             f"got {self.builder_spec!r}")
        object.__setattr__(self, "spatial_dims", tuple(self.spatial_dims))

    @property
    def builder(self) -> Callable[..., nn.Module]:
        """The builder function (its module is imported on first use)."""
        if callable(self.builder_spec):
            return self.builder_spec
        module, function = self.builder_spec.split(":")
        return getattr(importlib.import_module(module), function)


_NNUNET_PAPER = "Isensee et al., nnU-Net, Nature Methods 2021; nnU-Net Revisited, MICCAI 2024"
_NNUNET_CODE = "MIC-DKFZ/nnUNet, MIC-DKFZ/dynamic-network-architectures"
_UMAMBA_PAPER = ("Ma, Li, Wang, U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation, "
                 "arXiv 2401.04722")
_UMAMBA_CODE = "bowang-lab/U-Mamba (paper_v1: 92a741a 2024-01-09; repo_2024_03: 530739b 2024-03-27)"
_RESENC_BLOCKS = ("n_blocks_per_stage", "n_conv_per_stage_decoder")

# The architectures shipped with medmamba, in the order commands list them. Their paper recipes and
# differences from upstream: docs/networks.md, docs/recipes.md.
_BUILT_IN = (
    Architecture(
        "unet", "medmamba.models.baselines:build_unet",
        "medmamba.models.baselines.PlainConvUNet", (2, 3), planner="unet", deep_supervision=True,
        paper_recipe="nnunet_default", baseline_rank=0, paper=_NNUNET_PAPER, code=_NNUNET_CODE,
        summary="nnU-Net PlainConvUNet (the default nnU-Net configuration)"),
    Architecture(
        "resenc_m", "medmamba.models.baselines:build_resenc",
        "medmamba.models.baselines.ResidualEncoderUNet", (2, 3), planner="unet", deep_supervision=True,
        paper_recipe="nnunet_default", baseline_rank=1, blocks_keywords=_RESENC_BLOCKS, paper=_NNUNET_PAPER,
        code=_NNUNET_CODE, summary="nnU-Net ResEnc M preset (ResidualEncoderUNet; planner target 8 GB)"),
    Architecture(
        "resenc_l", "medmamba.models.baselines:build_resenc",
        "medmamba.models.baselines.ResidualEncoderUNet", (2, 3), planner="unet", deep_supervision=True,
        paper_recipe="nnunet_default", baseline_rank=2, blocks_keywords=_RESENC_BLOCKS, paper=_NNUNET_PAPER,
        code=_NNUNET_CODE, summary="nnU-Net ResEnc L preset (ResidualEncoderUNet; planner target 24 GB)"),
    Architecture(
        "resenc_xl", "medmamba.models.baselines:build_resenc",
        "medmamba.models.baselines.ResidualEncoderUNet", (2, 3), planner="unet", deep_supervision=True,
        paper_recipe="nnunet_default", baseline_rank=3, blocks_keywords=_RESENC_BLOCKS, paper=_NNUNET_PAPER,
        code=_NNUNET_CODE, summary="nnU-Net ResEnc XL preset (ResidualEncoderUNet; planner target 40 GB)"),
    # U-Mamba's released commands train with nnU-Net's stock trainer; its NoAMP trainer is a fallback
    # for NaNs, selectable as the recipe umamba_noamp.
    Architecture(
        "umamba_bot", "medmamba.models.umamba:build_umamba_bot",
        "medmamba.models.umamba.UMambaBot", (2, 3), planner="unet", deep_supervision=True,
        ablation_twin="umamba_bot_nossm", paper_recipe="nnunet_default", paper=_UMAMBA_PAPER, code=_UMAMBA_CODE,
        summary="U-Mamba Bot: residual U-Net, LayerNorm + Mamba on the bottleneck (paper_v1 | repo_2024_03)"),
    Architecture(
        "umamba_enc", "medmamba.models.umamba:build_umamba_enc",
        "medmamba.models.umamba.UMambaEnc", (2, 3), planner="unet", deep_supervision=True,
        ablation_twin="umamba_enc_nossm", paper_recipe="nnunet_default", patch_keyword="input_size",
        paper=_UMAMBA_PAPER, code=_UMAMBA_CODE,
        summary="U-Mamba Enc: residual U-Net, LayerNorm + Mamba after every encoder stage (paper_v1 | "
                "repo_2024_03)"),
    Architecture(
        "segmamba", "medmamba.models.segmamba:build_segmamba",
        "medmamba.models.segmamba.SegMamba", (3,), planner="fixed", deep_supervision=False,
        ablation_twin="segmamba_nossm", paper_recipe="segmamba_ce",
        paper="Xing et al., SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation, "
              "MICCAI 2024 (arXiv 2401.13560)",
        code="https://github.com/ge-xing/SegMamba (cff3597)",
        summary="Mamba encoder (GSC + tri-orientated Mamba layers, 4 stages 48-384) with a UNETR decoder; "
                "no deep supervision; inputs divisible by 16."),
    Architecture(
        "lightm_unet", "medmamba.models.lightm_unet:build_lightm_unet",
        "medmamba.models.lightm_unet.LightMUNet", (2, 3), planner="fixed",
        deep_supervision=False, ablation_twin="lightm_unet_nossm", paper_recipe="lightm_unet_adam",
        paper="Liao et al. 2024, LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image Segmentation, "
              "arXiv 2403.05246",
        code="https://github.com/MrBlankness/LightM-UNet (6b72e27)",
        summary="U-Net with residual Mamba (RVM) blocks in the encoder, additive skips, 21 Mambas; 5.0M params "
                "(paper's ~1M is a thop undercount)."),
    Architecture(
        "mhs_vm", "medmamba.models.mhs_vm:build_mhs_vm",
        "medmamba.models.mhs_vm.MHSVM", (2, 3), planner="fixed", deep_supervision=False,
        ablation_twin="mhs_vm_nossm", paper_recipe="mhs_vm_adamw",
        paper="Ji 2024, MHS-VM: Multi-Head Scanning in Parallel Subspaces for Vision Mamba, arXiv 2406.05992",
        code="https://github.com/PixDeep/MHS-VM (be64b6f), host https://github.com/JCruan519/VM-UNet",
        summary="VM-UNet host with a multi-head scan mixer (4 heads × 2 routes + reverses, gated route fusion); "
                "17.26M params in 2D; 3D generalisation with 3D route families."),
)

_REGISTRY: dict[str, Architecture] = {}


def _add(arch: Architecture) -> Architecture:
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    _REGISTRY[arch.name] = arch
    return arch


class _AblationBuilder:
    """The builder of an SSM-ablation twin: its source's builder with :data:`ABLATION_KEYWORDS`
    (the source's network with every scan replaced by the identity)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
        taken = sorted(set(kwargs) & set(ABLATION_KEYWORDS))
        if taken:
            raise ValueError(f"{self.source}{ABLATION_SUFFIX} sets {', '.join(taken)} itself")
        return get(self.source).builder(in_channels, num_classes, spatial_dims=spatial_dims, **kwargs,
                                        **ABLATION_KEYWORDS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AblationBuilder) and other.source == self.source

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.source))


def ablation_twin_of(source: Architecture) -> Architecture:
    """The SSM-ablation twin of ``source`` (a record naming ``ablation_twin``), derived from it: the
    same record — network class, spatial dims, planner kind, deep supervision, paper recipe, blocks
    and patch keywords — under the name ``<source><ABLATION_SUFFIX>``, built by the source's builder
    with :data:`ABLATION_KEYWORDS`, never a baseline, planned with the source's preset
    (``ablation_of``)."""
    expected = f"{source.name}{ABLATION_SUFFIX}"
    if source.ablation_twin != expected:
        raise ValueError(f"architecture {source.name!r}: its ablation twin must be called {expected!r}, "
                         f"got {source.ablation_twin!r}")
    return dataclasses.replace(
        source, name=expected, builder_spec=_AblationBuilder(source.name), baseline_rank=None, ablation_twin=None,
        ablation_of=source.name,
        summary=f"SSM ablation of {source.name}: the same network and parameters with every selective scan "
                f"replaced by the identity on its input (docs/networks.md)")


def _add_with_twin(arch: Architecture) -> None:
    _add(arch)
    if arch.ablation_twin is not None:
        _add(ablation_twin_of(arch))


for _arch in _BUILT_IN:
    _add_with_twin(_arch)


def register(name: str, *, network_class: str, spatial_dims: tuple[int, ...], planner: str, deep_supervision: bool,
             paper_recipe: str, **facts: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder as architecture ``name`` (for networks outside this package;
    ``facts`` are the other :class:`Architecture` fields). The builder's module must be importable
    by name wherever the architecture is planned, trained or used (nnU-Net rebuilds the network from
    the dotted class name in the plans). With ``ablation_twin="<name>_nossm"`` the twin is registered
    too; the builder and the network class must then accept :data:`ABLATION_KEYWORDS`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _add_with_twin(Architecture(name, builder, network_class, tuple(spatial_dims), planner=planner,
                          deep_supervision=deep_supervision, paper_recipe=paper_recipe, **facts))
        return builder

    return decorate


def available() -> list[str]:
    """Names of every registered architecture, in the table's order (then registration order)."""
    return list(_REGISTRY)


def get(name: str) -> Architecture:
    """The record of architecture ``name``; ValueError listing the known ones for another name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def baselines() -> list[str]:
    """The architectures a comparison tests the others against when none is named, best first."""
    ranked = [a for a in _REGISTRY.values() if a.baseline_rank is not None]
    return [a.name for a in sorted(ranked, key=lambda a: a.baseline_rank)]


def architectures_of_network(network_class_name: str, plans: dict | None = None) -> list[str]:
    """The architectures a network named in nnU-Net plans can be: the one a medmamba planner recorded
    in ``plans["medmamba"]["architecture"]``, else every architecture whose networks are of class
    ``network_class_name`` (dotted; several for ``ResidualEncoderUNet``: resenc_m, resenc_l,
    resenc_xl), the SSM-ablation twins when the plans' ``arch_kwargs`` hold :data:`ABLATION_KEYWORDS`
    and the others otherwise. Empty for a network the registry does not build (one of nnU-Net's own)."""
    recorded = (plans or {}).get("medmamba", {}).get("architecture")
    if recorded in _REGISTRY:
        return [recorded]
    names = [a.name for a in _REGISTRY.values() if a.network_class == network_class_name]
    # A twin has its source's class; its plans' arch_kwargs say which of the two they build.
    ablated = any(all(cfg.get("architecture", {}).get("arch_kwargs", {}).get(k) == v
                      for k, v in ABLATION_KEYWORDS.items())
                  for cfg in (plans or {}).get("configurations", {}).values() if isinstance(cfg, dict))
    return [n for n in names if (_REGISTRY[n].ablation_of is not None) == ablated]


def create(name: str, in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` input channels and ``num_classes`` outputs.

    With no other keyword this is the configuration docs/networks.md gives the parameter count of;
    keywords override its parts (see each builder's docstring).
    """
    arch = get(name)
    if spatial_dims not in arch.spatial_dims:
        raise ValueError(f"{name} supports spatial_dims {arch.spatial_dims}, not {spatial_dims}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be ≥ 1, got {in_channels} and {num_classes}")
    return arch.builder(in_channels, num_classes, spatial_dims=spatial_dims, **kwargs)


def dotted_name(obj: Any) -> str:
    """``module.QualName`` of a class, the form nnU-Net plans use for classes."""
    return f"{obj.__module__}.{obj.__qualname__}"


def plans_architecture(model: nn.Module) -> dict:
    """The plans' ``architecture`` entry that rebuilds ``model`` through nnU-Net."""
    for attr in ("init_kwargs", "kw_requires_import"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} has no {attr}: it cannot be written into nnU-Net plans")
    return {
        "network_class_name": dotted_name(type(model)),
        "arch_kwargs": dict(model.init_kwargs),
        "_kw_requires_import": list(model.kw_requires_import),
    }
