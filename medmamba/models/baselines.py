"""nnU-Net's U-Net baselines, built from dynamic_network_architectures unmodified.

``unet`` is nnU-Net's default PlainConvUNet; ``resenc_m``, ``resenc_l`` and ``resenc_xl`` are its
residual-encoder presets (ResidualEncoderUNet). The ResEnc presets differ only in the planner's GPU
memory target (8 GB for M, 24 GB for L, 40 GB for XL), which sets patch and batch size and, through the
patch, the number of stages; for one patch and stage count the networks are the same, as in nnU-Net.
"""

from __future__ import annotations

import math
import pydoc
from typing import Sequence

import torch
import torch.nn as nn
from dynamic_network_architectures.architectures import unet as dna_unet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from .layout import InputSizeError, StageLayout

__all__ = ["PlainConvUNet", "ResidualEncoderUNet", "nnunet_unet_kwargs", "build_unet", "build_resenc"]

_OPS = {
    2: ("torch.nn.modules.conv.Conv2d", "torch.nn.modules.instancenorm.InstanceNorm2d"),
    3: ("torch.nn.modules.conv.Conv3d", "torch.nn.modules.instancenorm.InstanceNorm3d"),
}
KW_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")


def nnunet_unet_kwargs(
    spatial_dims: int = 3,
    n_stages: int | None = None,
    features_per_stage: Sequence[int] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    strides: Sequence[Sequence[int]] | None = None,
) -> dict:
    """nnU-Net's default U-Net arch_kwargs (plans form: classes as dotted strings) for an isotropic
    patch: 6 stages in 3D (128³), 7 in 2D; features 32·2^i capped at 320 (3D) or 512 (2D); 3-kernels;
    stride 1 then 2; InstanceNorm(eps 1e-5, affine), LeakyReLU(inplace), conv bias, no dropout."""
    if spatial_dims not in _OPS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    n_stages = n_stages or (6 if spatial_dims == 3 else 7)
    cap = 320 if spatial_dims == 3 else 512
    features = list(features_per_stage or [min(32 * 2**i, cap) for i in range(n_stages)])
    kernels = [list(k) for k in (kernel_sizes or [[3] * spatial_dims] * n_stages)]
    strides = [list(s) for s in (strides or [[1] * spatial_dims] + [[2] * spatial_dims] * (n_stages - 1))]
    if not len(features) == len(kernels) == len(strides) == n_stages:
        raise ValueError(f"features_per_stage, kernel_sizes and strides need {n_stages} entries each, got "
                         f"{len(features)}, {len(kernels)}, {len(strides)}")
    conv_op, norm_op = _OPS[spatial_dims]
    return {
        "n_stages": n_stages, "features_per_stage": features, "conv_op": conv_op, "kernel_sizes": kernels,
        "strides": strides, "conv_bias": True, "norm_op": norm_op, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def _plans_form(value):
    """A constructor argument as nnU-Net plans store it: classes as dotted names."""
    return f"{value.__module__}.{value.__qualname__}" if isinstance(value, type) else value


class _CheckedInput:
    """Mixin for nnU-Net's U-Nets: record the plans form of the constructor arguments, and reject
    an input whose size the strides do not divide with a clear message instead of a shape error
    deep in the decoder."""

    kw_requires_import = KW_REQUIRES_IMPORT

    def _record(self, kwargs: dict) -> None:
        self.init_kwargs = {k: _plans_form(v) for k, v in kwargs.items()}
        strides = [[s] * len(kwargs["kernel_sizes"][0]) if isinstance(s, int) else list(s) for s in kwargs["strides"]]
        self.total_stride = [math.prod(axis) for axis in zip(*strides)]

    def forward(self, x: torch.Tensor):
        size = list(x.shape[2:])
        if len(size) != len(self.total_stride) or any(s % t for s, t in zip(size, self.total_stride)):
            raise InputSizeError(f"input size {size} is not divisible by the network's total stride "
                                 f"{self.total_stride} (the product of its strides per axis)")
        if self.training and math.prod(s // t for s, t in zip(size, self.total_stride)) == 1:
            # InstanceNorm cannot normalise a single voxel in training mode (torch raises deep inside).
            raise InputSizeError(f"input size {size} leaves a single voxel at the deepest stage (total stride "
                                 f"{self.total_stride}); in training that needs more: use a larger input")
        return super().forward(x)

    def stage_layout(self) -> StageLayout:
        return StageLayout(len(self.init_kwargs["strides"]), tuple(self.total_stride))


class PlainConvUNet(_CheckedInput, dna_unet.PlainConvUNet):
    """dynamic_network_architectures' PlainConvUNet with the input-size check; same parameters."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> None:
        super().__init__(input_channels=input_channels, num_classes=num_classes,
                         deep_supervision=deep_supervision, **kwargs)
        self._record(kwargs)


class ResidualEncoderUNet(_CheckedInput, dna_unet.ResidualEncoderUNet):
    """dynamic_network_architectures' ResidualEncoderUNet with the input-size check."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> None:
        super().__init__(input_channels=input_channels, num_classes=num_classes,
                         deep_supervision=deep_supervision, **kwargs)
        self._record(kwargs)


def _instantiate(cls, in_channels: int, num_classes: int, deep_supervision: bool, arch_kwargs: dict) -> nn.Module:
    """Build as nnU-Net's get_network_from_plans does: resolve the dotted class names, construct,
    apply the network's He initialisation."""
    resolved = {k: (pydoc.locate(v) if k in KW_REQUIRES_IMPORT and v is not None else v)
                for k, v in arch_kwargs.items()}
    model = cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=deep_supervision, **resolved)
    model.apply(InitWeights_He(1e-2))
    return model


def build_unet(in_channels: int, num_classes: int, spatial_dims: int = 3, deep_supervision: bool = True,
               n_conv_per_stage: int = 2, n_conv_per_stage_decoder: int = 2, **unet_kwargs) -> nn.Module:
    """PlainConvUNet; ``unet_kwargs`` go to :func:`nnunet_unet_kwargs` (n_stages, features_per_stage,
    kernel_sizes, strides). Default 3D: 31,205,254 parameters for 1 input channel and 14 classes."""
    kwargs = nnunet_unet_kwargs(spatial_dims, **unet_kwargs)
    kwargs["n_conv_per_stage"] = [n_conv_per_stage] * kwargs["n_stages"]
    kwargs["n_conv_per_stage_decoder"] = [n_conv_per_stage_decoder] * (kwargs["n_stages"] - 1)
    return _instantiate(PlainConvUNet, in_channels, num_classes, deep_supervision, kwargs)


def build_resenc(in_channels: int, num_classes: int, spatial_dims: int = 3, deep_supervision: bool = True,
                 **unet_kwargs) -> nn.Module:
    """ResidualEncoderUNet as nnU-Net's ResEnc presets: residual blocks (1, 3, 4, 6, 6, 6, …) per
    stage, one conv per decoder stage."""
    kwargs = nnunet_unet_kwargs(spatial_dims, **unet_kwargs)
    kwargs["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6, 6, 6][: kwargs["n_stages"]] + [6] * max(0, kwargs["n_stages"] - 8)
    kwargs["n_conv_per_stage_decoder"] = [1] * (kwargs["n_stages"] - 1)
    return _instantiate(ResidualEncoderUNet, in_channels, num_classes, deep_supervision, kwargs)
