"""One place that lists every architecture medmamba builds, by name.

Each network module registers a builder with :func:`register`; :func:`create` builds by name. Every
network class is also constructible from nnU-Net plans: it records the constructor keywords it was
built with in ``init_kwargs`` (JSON-serialisable; classes such as ``conv_op`` as dotted strings named
in ``kw_requires_import``), so :func:`plans_architecture` can write the plans' ``architecture`` entry
and nnunetv2's unmodified ``get_network_from_plans`` can rebuild the same network.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import torch.nn as nn

__all__ = ["Architecture", "register", "create", "available", "get", "plans_architecture", "dotted_name"]

# Modules whose import registers architectures; listed here so that the registry is complete
# without importing anything else first.
_NETWORK_MODULES = (
    "medmamba.models.baselines",
    "medmamba.models.umamba",
    "medmamba.models.segmamba",
    "medmamba.models.lightm_unet",
    "medmamba.models.mhs_vm",
)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    ``builder(in_channels, num_classes, spatial_dims=3, **kwargs) -> nn.Module`` builds the
    configuration the reference doc pins when called with no other keyword (for U-Net-like networks
    the nnU-Net 6-stage 3D configuration for a 128³ patch, deep supervision on).
    """

    name: str
    builder: Callable[..., nn.Module]
    spatial_dims: tuple[int, ...]
    paper: str
    code: str
    summary: str


_REGISTRY: dict[str, Architecture] = {}
_loaded = False


def register(name: str, *, spatial_dims: tuple[int, ...], paper: str, code: str, summary: str):
    """Decorator for a builder function; see :class:`Architecture` for its contract."""

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = Architecture(name, builder, tuple(spatial_dims), paper, code, summary)
        return builder

    return decorate


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _NETWORK_MODULES:
            importlib.import_module(module)
        _loaded = True


def available() -> list[str]:
    """Names of every registered architecture, in registration order."""
    _load()
    return list(_REGISTRY)


def get(name: str) -> Architecture:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create(name: str, in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` input channels and ``num_classes`` outputs.

    With no other keyword this is the configuration the reference doc's parameter targets were
    computed for; keywords override its parts (see each builder's docstring).
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
