"""U-Mamba (Bot and Enc), 2D and 3D, in its two released forms.

Paper: Ma, Li, Wang, "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation",
arXiv 2401.04722 (2024). Code: bowang-lab/U-Mamba.

Two variants, chosen with ``variant=``:

- ``"paper_v1"`` (default) — the first upload (92a741a, 2024-01-09), the code behind the paper's
  numbers (its parameter counts match the published tables). Encoder = DNA ``ResidualEncoder``
  (stem conv-IN-LReLU, stages of ``BasicBlockD``, first block strided with an AvgPool + 1×1 conv + IN
  shortcut); decoder = transposed conv + ``StackedResidualBlocks`` (DNA ``UNetResDecoder``). Bot puts
  one LayerNorm + Mamba on the bottleneck; Enc puts one after every encoder stage, always with voxels
  as tokens. The same code serves 2D and 3D.
- ``"repo_2024_03"`` — the rewrite (530739b, 2024-03-27: ``UMambaBot_{2d,3d}.py``,
  ``UMambaEnc_{2d,3d}.py``). ``BasicResBlock`` (two k-convs, 1×1 conv shortcut without norm) opens the
  stem and every stage, ``BasicBlockD`` fills the rest; block counts are reduced inside the network
  (deep encoder stages and high-resolution decoder stages get one block); the decoder upsamples with
  nearest interpolation + 1×1 conv; Enc switches a stage's Mamba to channels-as-tokens when the
  stage's feature map has no more voxels than channels (so it needs ``input_size`` = the training
  patch and accepts only that size); the 2D files drop the stage-0 skip in the last decoder stage
  and Enc-2D puts Mamba on alternating stages only (the last stage always has one). This module
  picks the 2D behaviour from ``conv_op`` (Conv2d) instead of from separate files.

Both: the Mamba layer (LayerNorm + Mamba(d_state 16, d_conv 4, expand 2)) has **no residual**, its
output replaces the features; tokens are the voxels in C order (first spatial axis slowest); it runs
with autocast disabled on an fp32 copy of its input. Weights: nnU-Net's ``InitWeights_He(1e-2)``
applied to the whole network, as upstream's ``get_umamba_*_from_plans`` does; it touches only
Conv2d/Conv3d/ConvTranspose2d/3d (checked in dynamic_network_architectures 0.4), so Mamba's Linear
and depthwise Conv1d keep their own (mamba_ssm) initialisation, LayerNorm and InstanceNorm their
PyTorch defaults. paper_v1 Enc (and only it: v1 Bot and every repo_2024_03 builder skip it) then
applies DNA's ``init_last_bn_before_add_to_0``, which zeroes the last norm of every ``BasicBlockD``
so that each residual block starts as its shortcut.

Known differences from upstream (deliberate):

- Constructed from nnU-Net ≥ 2.4 ``arch_kwargs`` (PlainConvUNet's keys, + ``variant``, + Enc's
  ``input_size``) instead of the flat nnU-Net 2.1.1 plans keys that upstream's builders read
  (U-Mamba issue #62). Class arguments may be classes or dotted names.
- Upstream's repo_2024_03 ``__init__`` reduces the block counts by editing the plans' lists in
  place; here the caller's lists are copied and left unchanged (``init_kwargs`` records them as
  given, so a rebuild from plans reduces them again to the same network).
- Upstream's Bot-3D and the 2D files cast only fp16 input of the Mamba layer to fp32 (Enc-3D casts
  fp16 and bf16); bf16 input would then meet fp32 Linear weights with autocast disabled and fail.
  Here every file casts both fp16 and bf16 (identical results wherever upstream runs).
- Invalid input sizes raise a ``ValueError`` at the start of ``forward`` (upstream fails later
  with a shape mismatch or an assert).
- Upstream's repo_2024_03 accepts ``dropout_op`` and ignores it; so does this port, with a warning.
"""

from __future__ import annotations

import contextlib
import math
import pydoc
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    maybe_convert_scalar_to_list,
)
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import (
    ResidualEncoder,
)
from dynamic_network_architectures.building_blocks.unet_residual_decoder import (
    UNetResDecoder,
)
from dynamic_network_architectures.initialization.weight_init import (
    InitWeights_He,
    init_last_bn_before_add_to_0,
)

from .baselines import nnunet_unet_kwargs
from .mamba import Mamba, set_ssm
from .layout import InputSizeError, StageLayout
from .registry import dotted_name

__all__ = [
    "VARIANTS",
    "MambaLayer",
    "BasicResBlock",
    "UpsampleLayer",
    "ResidualMambaEncoder",
    "ResidualMambaEncoderV1",
    "UNetResUpsampleDecoder",
    "UMambaBot",
    "UMambaEnc",
    "reduce_block_counts",
    "stage_feature_map_sizes",
    "build_umamba_bot",
    "build_umamba_enc",
]

VARIANTS = ("paper_v1", "repo_2024_03")
KW_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")



# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for this device type; a no-op where autocast does not exist (meta tensors used to
    count FLOPs)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class MambaLayer(nn.Module):
    """LayerNorm + Mamba over the tokens of a feature map, **without** a residual.

    Voxel tokens (default): (B, C, *spatial) is flattened in C order to L = prod(spatial) tokens of
    width C = ``dim``. Channel tokens (``channel_token=True``, repo_2024_03 Enc): the C channels are
    the tokens and the flattened feature map of ``dim`` = prod(spatial) voxels is each token's vector
    (LayerNorm over the spatial positions). Output (B, C, *spatial), input dtype promoted to fp32.

    The forward runs with autocast disabled on an fp32 copy of the input, as upstream does against
    NaN in reduced precision (U-Mamba issue #8).
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 channel_token: bool = False) -> None:
        super().__init__()
        self.dim = int(dim)
        self.channel_token = bool(channel_token)
        self.norm = nn.LayerNorm(self.dim)
        self.mamba = Mamba(d_model=self.dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *spatial) -> (B, C, *spatial)."""
        with _autocast_disabled(x.device.type):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            batch, channels, *spatial = x.shape
            if self.channel_token:
                if math.prod(spatial) != self.dim:
                    raise ValueError(f"channel-token Mamba layer expects {self.dim} voxels per channel, got "
                                     f"spatial shape {tuple(spatial)}")
                tokens = x.reshape(batch, channels, self.dim)  # (B, L=C, d_model=voxels)
                return self.mamba(self.norm(tokens)).reshape(batch, channels, *spatial)
            if channels != self.dim:
                raise ValueError(f"Mamba layer expects {self.dim} channels, got {channels}")
            tokens = x.reshape(batch, channels, -1).transpose(1, 2)  # (B, L=voxels, C), C order
            out = self.mamba(self.norm(tokens))
            return out.transpose(1, 2).reshape(batch, channels, *spatial)


class BasicResBlock(nn.Module):
    """repo_2024_03's residual block: act(norm(conv(act(norm(conv(x))))) + conv1x1(x)).

    conv k (stride ``stride``, padding k//2) → norm → act → conv k (stride 1) → norm; the shortcut
    is a 1×1 conv with the same stride and **no norm** (upstream always builds it,
    ``use_1x1conv=True``). Every conv has a bias (upstream calls conv_op without ``bias=``).
    (B, C_in, *sp) → (B, C_out, *sp // stride).
    """

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 norm_op: type[nn.Module], norm_op_kwargs: dict | None, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, use_1x1conv: bool = True,
                 nonlin: type[nn.Module] = nn.LeakyReLU, nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        kernel_size = maybe_convert_scalar_to_list(conv_op, kernel_size)
        stride = maybe_convert_scalar_to_list(conv_op, stride)
        padding = [k // 2 for k in kernel_size]
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = {"inplace": True} if nonlin_kwargs is None else nonlin_kwargs
        self.conv1 = conv_op(input_channels, output_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = norm_op(output_channels, **norm_op_kwargs)
        self.act1 = nonlin(**nonlin_kwargs)
        self.conv2 = conv_op(output_channels, output_channels, kernel_size, padding=padding)
        self.norm2 = norm_op(output_channels, **norm_op_kwargs)
        self.act2 = nonlin(**nonlin_kwargs)
        self.conv3 = conv_op(input_channels, output_channels, kernel_size=1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return self.act2(y + shortcut)


class UpsampleLayer(nn.Module):
    """repo_2024_03's upsampling: nearest interpolation by the pool size, then a 1×1 conv (bias).

    (B, C_in, *sp) → (B, C_out, *sp · scale). The paper figure draws a transposed conv; this code
    does not use one (paper_v1 does).
    """

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 pool_op_kernel_size: Sequence[int], mode: str = "nearest") -> None:
        super().__init__()
        self.conv = conv_op(input_channels, output_channels, kernel_size=1)
        self.pool_op_kernel_size = [float(s) for s in pool_op_kernel_size]
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.pool_op_kernel_size, mode=self.mode))


# ----------------------------------------------------------------------------------------------
# Configuration helpers
# ----------------------------------------------------------------------------------------------


def reduce_block_counts(n_stages: int, n_blocks_encoder: Sequence[int],
                        n_blocks_decoder: Sequence[int]) -> tuple[list[int], list[int]]:
    """repo_2024_03's block-count reduction, on copies (upstream edits the plans' lists in place).

    Encoder stages with index ≥ ceil(S/2) get 1 block; decoder entries (index 0 = deepest) with
    index in [ceil((S−1)/2 + 0.5), S−2] get 1 block. S=6: [2,2,2,1,1,1] / [2,2,2,1,1].
    """
    enc, dec = list(n_blocks_encoder), list(n_blocks_decoder)
    for s in range(math.ceil(n_stages / 2), n_stages):
        enc[s] = 1
    for s in range(math.ceil((n_stages - 1) / 2 + 0.5), n_stages - 1):
        dec[s] = 1
    return enc, dec


def stage_feature_map_sizes(input_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Feature-map size after each encoder stage: fmap_s = fmap_{s−1} // strides[s] (stage 0 included)."""
    sizes, size = [], list(input_size)
    for stride in strides:
        size = [i // j for i, j in zip(size, stride)]
        sizes.append(size)
    return sizes


def _locate(value: Any) -> Any:
    """A class given as a dotted name (plans form) → the class; classes and None pass through."""
    if isinstance(value, str):
        located = pydoc.locate(value)
        if located is None:
            raise ValueError(f"cannot import {value!r}")
        return located
    return value


def _plans_name(value: Any) -> Any:
    """A class or dotted name → the class's canonical dotted name (plans form); None passes through."""
    return None if value is None else dotted_name(_locate(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _per_stage(value: int | Sequence, n: int, name: str) -> list:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} entries, got {len(values)}: {values}")
    return values


# ----------------------------------------------------------------------------------------------
# Encoders and decoder
# ----------------------------------------------------------------------------------------------


class ResidualMambaEncoder(nn.Module):
    """repo_2024_03 encoder; returns the skips (one per stage, highest resolution first).

    stem = BasicResBlock(in → F0, k0, stride 1) + (n_blocks[0]−1) BasicBlockD; stage s =
    BasicResBlock(C → F_s, k_s, stride strides[s]) + (n_blocks[s]−1) BasicBlockD, followed by
    ``mamba_layers[s]`` (a :class:`MambaLayer` or Identity; the Mamba output is both the skip and
    the next stage's input). ``n_blocks_per_stage`` is used as given (reduce it before).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Sequence[int],
                 conv_op: type[nn.Module], kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 n_blocks_per_stage: Sequence[int], conv_bias: bool, norm_op: type[nn.Module],
                 norm_op_kwargs: dict | None, nonlin: type[nn.Module], nonlin_kwargs: dict | None,
                 mamba_layers: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        common = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                      nonlin_kwargs=nonlin_kwargs)

        def extra_blocks(channels: int, kernel, count: int) -> list[nn.Module]:
            return [BasicBlockD(input_channels=channels, output_channels=channels, kernel_size=kernel, stride=1,
                                conv_bias=conv_bias, **common) for _ in range(count)]

        f0 = features_per_stage[0]
        self.stem = nn.Sequential(
            BasicResBlock(input_channels=input_channels, output_channels=f0, kernel_size=kernel_sizes[0], stride=1,
                          use_1x1conv=True, **common),
            *extra_blocks(f0, kernel_sizes[0], n_blocks_per_stage[0] - 1),
        )
        stages, channels = [], f0
        for s in range(n_stages):
            stages.append(nn.Sequential(
                BasicResBlock(input_channels=channels, output_channels=features_per_stage[s],
                              kernel_size=kernel_sizes[s], stride=strides[s], use_1x1conv=True, **common),
                *extra_blocks(features_per_stage[s], kernel_sizes[s], n_blocks_per_stage[s] - 1),
            ))
            channels = features_per_stage[s]
        self.stages = nn.ModuleList(stages)
        self.mamba_layers = nn.ModuleList(mamba_layers or [nn.Identity() for _ in range(n_stages)])
        # What the decoder reads from its encoder (DNA convention).
        self.output_channels = list(features_per_stage)
        self.strides = [list(s) for s in strides]
        self.kernel_sizes = [list(k) for k in kernel_sizes]
        self.conv_op, self.conv_bias = conv_op, conv_bias
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs
        self.dropout_op, self.dropout_op_kwargs = None, None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        return skips


class ResidualMambaEncoderV1(ResidualEncoder):
    """paper_v1 encoder: DNA ``ResidualEncoder`` (stem conv-norm-act, BasicBlockD stages) with
    ``mamba_layers[s]`` after stage s (MambaLayer or Identity). Returns the skips."""

    def __init__(self, *args: Any, mamba_layers: Sequence[nn.Module] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, return_skips=True, **kwargs)
        n_stages = len(self.stages)
        self.mamba_layers = nn.ModuleList(mamba_layers or [nn.Identity() for _ in range(n_stages)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        return skips


class UNetResUpsampleDecoder(nn.Module):
    """repo_2024_03 decoder (upstream's ``UNetResDecoder``): per level from the deepest, nearest
    upsampling + 1×1 conv (C_below → C_skip), concatenation with the skip, BasicResBlock(2·C_skip →
    C_skip) + (n_blocks[s]−1) BasicBlockD, and a 1×1 segmentation head (always built).

    ``drop_last_skip`` (the 2D files): the full-resolution level does not concatenate the stage-0
    skip, so its BasicResBlock takes C_skip channels.
    Forward: skips (highest resolution first) → logits (B, num_classes, *sp) of the highest
    resolution, or with ``deep_supervision`` a list of S−1 logits, highest resolution first.
    """

    def __init__(self, encoder: ResidualMambaEncoder, num_classes: int, n_blocks_per_stage: Sequence[int],
                 deep_supervision: bool, drop_last_skip: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder  # kept as in DNA/upstream decoders (checkpoint keys decoder.encoder.*)
        self.num_classes = num_classes
        self.drop_last_skip = drop_last_skip
        n_enc = len(encoder.output_channels)
        if len(n_blocks_per_stage) != n_enc - 1:
            raise ValueError(f"the decoder needs {n_enc - 1} block counts, got {list(n_blocks_per_stage)}")
        common = dict(conv_op=encoder.conv_op, norm_op=encoder.norm_op, norm_op_kwargs=encoder.norm_op_kwargs,
                      nonlin=encoder.nonlin, nonlin_kwargs=encoder.nonlin_kwargs)
        stages, upsample_layers, seg_layers = [], [], []
        for s in range(1, n_enc):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            kernel = encoder.kernel_sizes[-(s + 1)]
            upsample_layers.append(UpsampleLayer(encoder.conv_op, below, skip, encoder.strides[-s]))
            concat = not (drop_last_skip and s == n_enc - 1)
            stages.append(nn.Sequential(
                BasicResBlock(input_channels=2 * skip if concat else skip, output_channels=skip, kernel_size=kernel,
                              stride=1, use_1x1conv=True, **common),
                *[BasicBlockD(input_channels=skip, output_channels=skip, kernel_size=kernel, stride=1,
                              conv_bias=encoder.conv_bias, **common) for _ in range(n_blocks_per_stage[s - 1] - 1)],
            ))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.upsample_layers = nn.ModuleList(upsample_layers)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x, outputs = skips[-1], []
        last = len(self.stages) - 1
        for s, (up, stage) in enumerate(zip(self.upsample_layers, self.stages)):
            x = up(x)
            if not (self.drop_last_skip and s == last):
                x = torch.cat((x, skips[-(s + 2)]), 1)
            x = stage(x)
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
            elif s == last:
                outputs.append(self.seg_layers[-1](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------


class _UMambaBase(nn.Module):
    """Shared constructor logic: argument normalisation, plans record, input-size check, init."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: int | Sequence[int],
                 conv_op: Any, kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_conv_per_stage: int | Sequence[int], num_classes: int,
                 n_conv_per_stage_decoder: int | Sequence[int], conv_bias: bool = True, norm_op: Any = None,
                 norm_op_kwargs: dict | None = None, dropout_op: Any = None, dropout_op_kwargs: dict | None = None,
                 nonlin: Any = None, nonlin_kwargs: dict | None = None, deep_supervision: bool = False,
                 variant: str = "paper_v1", stem_channels: int | None = None,
                 input_size: Sequence[int] | None = None, ssm: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        # The plans form of what was given (before any reduction), for plans_architecture().
        self.init_kwargs = _jsonable({
            "n_stages": n_stages, "features_per_stage": features_per_stage, "conv_op": _plans_name(conv_op),
            "kernel_sizes": kernel_sizes, "strides": strides, "n_conv_per_stage": n_conv_per_stage,
            "n_conv_per_stage_decoder": n_conv_per_stage_decoder, "conv_bias": conv_bias,
            "norm_op": _plans_name(norm_op), "norm_op_kwargs": norm_op_kwargs, "dropout_op": _plans_name(dropout_op),
            "dropout_op_kwargs": dropout_op_kwargs, "nonlin": _plans_name(nonlin), "nonlin_kwargs": nonlin_kwargs,
            "variant": variant, "stem_channels": stem_channels,
        })
        if input_size is not None:
            self.init_kwargs["input_size"] = [int(i) for i in input_size]
        self.kw_requires_import = KW_REQUIRES_IMPORT

        conv_op, norm_op, dropout_op, nonlin = map(_locate, (conv_op, norm_op, dropout_op, nonlin))
        if conv_op is None or norm_op is None or nonlin is None:
            raise ValueError("conv_op, norm_op and nonlin are required (classes or dotted names)")
        self.spatial_dims = convert_conv_op_to_dim(conv_op)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"U-Mamba is 2D or 3D; conv_op {conv_op} is {self.spatial_dims}D")
        self.variant = variant
        self.n_stages = n_stages
        features = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernels = [maybe_convert_scalar_to_list(conv_op, k)
                   for k in _per_stage(kernel_sizes, n_stages, "kernel_sizes")]
        strides = [maybe_convert_scalar_to_list(conv_op, s) for s in _per_stage(strides, n_stages, "strides")]
        n_enc = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        n_dec = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.strides = [list(s) for s in strides]
        # Each spatial size must be divisible by the product of the strides on its axis, so that
        # upsampling returns exactly the skip's size.
        self.total_stride = [math.prod(s[d] for s in self.strides) for d in range(self.spatial_dims)]
        self.input_size = None if input_size is None else [int(i) for i in input_size]
        self.required_input_size: list[int] | None = None  # set by channel-token Enc

        mamba_layers = self._mamba_layers(features, strides)
        if variant == "repo_2024_03":
            if dropout_op is not None:
                warnings.warn("U-Mamba repo_2024_03 ignores dropout_op (as upstream does)", stacklevel=3)
            n_enc, n_dec = reduce_block_counts(n_stages, n_enc, n_dec)
            self.encoder = ResidualMambaEncoder(
                input_channels, n_stages, features, conv_op, kernels, strides, n_enc, conv_bias, norm_op,
                norm_op_kwargs, nonlin, nonlin_kwargs, mamba_layers=mamba_layers)
            self._after_encoder()
            self.decoder = UNetResUpsampleDecoder(self.encoder, num_classes, n_dec, deep_supervision,
                                                  drop_last_skip=self.spatial_dims == 2)
        else:
            self.encoder = ResidualMambaEncoderV1(
                input_channels, n_stages, features, conv_op, kernels, strides, n_enc, conv_bias, norm_op,
                norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, stem_channels=stem_channels,
                mamba_layers=mamba_layers)
            self._after_encoder()
            self.decoder = UNetResDecoder(self.encoder, num_classes, n_dec, deep_supervision)
        self.n_blocks_per_stage = n_enc
        self.n_blocks_per_stage_decoder = n_dec
        self.apply(self.initialize)
        if not ssm:  # the SSM ablation (umamba_*_nossm); recorded only when on, so plans stay as they were
            set_ssm(self, False)
            self.init_kwargs["ssm"] = False

    def _mamba_layers(self, features: list[int], strides: list[list[int]]) -> list[nn.Module] | None:
        """Mamba layers inside the encoder, one per stage (Enc), or None."""
        return None

    def _after_encoder(self) -> None:
        """Modules between encoder and decoder (Bot's bottleneck Mamba); registered in upstream's order."""

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's init for U-Mamba (``InitWeights_He(1e-2)``): convs only, Mamba keeps its own."""
        InitWeights_He(1e-2)(module)

    def stage_layout(self) -> StageLayout:
        return StageLayout(self.n_stages, tuple(self.total_stride))

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise InputSizeError unless ``spatial`` is a valid input size for this network."""
        spatial = list(spatial)
        name = type(self).__name__
        if len(spatial) != self.spatial_dims:
            raise InputSizeError(f"{name} is {self.spatial_dims}D: expected input (B, C, {self.spatial_dims} spatial "
                                 f"dims), got spatial size {spatial}")
        if self.required_input_size is not None and spatial != self.required_input_size:
            raise InputSizeError(f"{name} ({self.variant}) uses channels as tokens in a stage and only accepts its "
                                 f"training patch input_size={self.required_input_size}; got input size {spatial}")
        bad = [(i, t) for i, t in zip(spatial, self.total_stride) if i % t]
        if bad:
            raise InputSizeError(f"{name}: input size {spatial} is not divisible by the total stride "
                                 f"{self.total_stride} (product of the strides per axis)")
        if self.training and math.prod(i // t for i, t in zip(spatial, self.total_stride)) == 1:
            # InstanceNorm cannot normalise a single voxel in training mode (torch raises deep inside).
            raise InputSizeError(f"{name}: input size {spatial} leaves a single voxel at the deepest stage "
                                 f"(total stride {self.total_stride}); in training that needs more")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x (B, input_channels, *spatial) → logits (B, num_classes, *spatial), or with
        ``decoder.deep_supervision`` a list of S−1 logits, highest resolution first."""
        self.check_input_size(x.shape[2:])
        return self.decoder(self._encode(x))

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)


class UMambaBot(_UMambaBase):
    """U-Mamba Bot: residual U-Net with one LayerNorm + Mamba (d_model = F_{S−1}, no residual) on the
    bottleneck; skips[−1] = mamba_layer(skips[−1]).

    Constructor: nnU-Net PlainConvUNet-style arch_kwargs (``n_conv_per_stage`` = residual blocks per
    encoder stage, ``n_conv_per_stage_decoder`` = blocks per decoder stage) + ``variant``
    ("paper_v1" | "repo_2024_03") + ``stem_channels`` (paper_v1 only; repo_2024_03 ignores it, as
    upstream) + ``ssm`` (False: the SSM ablation, the Mamba's scan replaced by the identity; see
    :class:`medmamba.models.mamba.Mamba`). Input (B, input_channels, *spatial), each axis divisible
    by the total stride.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: int | Sequence[int],
                 conv_op: Any, kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_conv_per_stage: int | Sequence[int], num_classes: int,
                 n_conv_per_stage_decoder: int | Sequence[int], conv_bias: bool = True, norm_op: Any = None,
                 norm_op_kwargs: dict | None = None, dropout_op: Any = None, dropout_op_kwargs: dict | None = None,
                 nonlin: Any = None, nonlin_kwargs: dict | None = None, deep_supervision: bool = False,
                 variant: str = "paper_v1", stem_channels: int | None = None, ssm: bool = True) -> None:
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
                         dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, variant,
                         stem_channels, ssm=ssm)

    def _after_encoder(self) -> None:
        self.mamba_layer = MambaLayer(dim=self.encoder.output_channels[-1])

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = self.encoder(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return skips


class UMambaEnc(_UMambaBase):
    """U-Mamba Enc: a LayerNorm + Mamba (no residual) after every encoder stage, its output both the
    skip and the next stage's input.

    repo_2024_03: needs ``input_size`` (the training patch); a stage whose feature map has at most
    F_s voxels scans its channels as tokens (d_model = voxels), and then the network accepts only
    ``input_size``. In 2D only alternating stages have a Mamba layer (stage s iff s odd XOR S odd,
    so the last stage always has one). paper_v1: voxel tokens at every stage, 2D and 3D alike;
    ``input_size`` is optional and only recorded.
    Other arguments as :class:`UMambaBot`.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: int | Sequence[int],
                 conv_op: Any, kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_conv_per_stage: int | Sequence[int], num_classes: int,
                 n_conv_per_stage_decoder: int | Sequence[int], conv_bias: bool = True, norm_op: Any = None,
                 norm_op_kwargs: dict | None = None, dropout_op: Any = None, dropout_op_kwargs: dict | None = None,
                 nonlin: Any = None, nonlin_kwargs: dict | None = None, deep_supervision: bool = False,
                 variant: str = "paper_v1", stem_channels: int | None = None,
                 input_size: Sequence[int] | None = None, ssm: bool = True) -> None:
        if variant == "repo_2024_03" and input_size is None:
            raise ValueError("UMambaEnc repo_2024_03 needs input_size (the plans' patch_size): it decides which "
                             "stages scan channels as tokens")
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
                         dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, variant,
                         stem_channels, input_size, ssm=ssm)

    def initialize(self, module: nn.Module) -> None:
        """The He init of every U-Mamba network, and for paper_v1 the zeroed last norm of each
        ``BasicBlockD``: upstream's first ``get_umamba_enc_from_plans`` (92a741a) applies
        ``init_last_bn_before_add_to_0`` after ``InitWeights_He(1e-2)``; its Bot builder and the
        2024-03 rewrite do not."""
        InitWeights_He(1e-2)(module)
        if self.variant == "paper_v1":
            init_last_bn_before_add_to_0(module)

    def _mamba_layers(self, features: list[int], strides: list[list[int]]) -> list[nn.Module]:
        if self.variant == "paper_v1":
            return [MambaLayer(dim=f) for f in features]
        if len(self.input_size) != self.spatial_dims:
            raise ValueError(f"input_size {self.input_size} must have {self.spatial_dims} entries")
        layers = []
        for s, (fmap, f) in enumerate(zip(stage_feature_map_sizes(self.input_size, strides), features)):
            if self.spatial_dims == 2 and not (bool(s % 2) ^ bool(self.n_stages % 2)):
                layers.append(nn.Identity())
                continue
            channel_token = math.prod(fmap) <= f
            if channel_token:
                self.required_input_size = list(self.input_size)
            layers.append(MambaLayer(dim=math.prod(fmap) if channel_token else f, channel_token=channel_token))
        return layers


# ----------------------------------------------------------------------------------------------
# Registry builders
# ----------------------------------------------------------------------------------------------


def _default_2d_input_size(n_stages: int) -> list[int]:
    """Default 2D patch of Enc: the one behind the 2D parameter targets (docs/networks.md §7), else a
    4×4 bottleneck.

    The 2D counts of Enc repo_2024_03 depend on the patch through its channel-token stages, and the
    patch they were computed for was not recorded with them. Among the patches nnU-Net plans for S
    stages (each side in [4, 8)·2^(S−1), so that S−1 poolings end at a 4…7 bottleneck) exactly one
    reproduces each
    target: 320² for 7 stages (47.02M) and 512² for 8 stages (64.01M). Other stage counts get
    nnU-Net's smallest bottleneck, 4×4 (side 4·2^(S−1)).
    """
    return {7: [320, 320], 8: [512, 512]}.get(n_stages, [4 * 2 ** (n_stages - 1)] * 2)


def _builder_arch_kwargs(spatial_dims: int, variant: str, n_stages: int | None, features_per_stage,
                         kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder) -> dict:
    kwargs = nnunet_unet_kwargs(spatial_dims, n_stages=n_stages, features_per_stage=features_per_stage,
                                kernel_sizes=kernel_sizes, strides=strides)
    n = kwargs["n_stages"]
    kwargs["n_conv_per_stage"] = _per_stage(n_conv_per_stage, n, "n_conv_per_stage")
    kwargs["n_conv_per_stage_decoder"] = _per_stage(n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder")
    kwargs["variant"] = variant
    return kwargs


def build_umamba_bot(in_channels: int, num_classes: int, spatial_dims: int = 3, *, variant: str = "paper_v1",
                     n_stages: int | None = None, features_per_stage: Sequence[int] | None = None,
                     kernel_sizes: Sequence[Sequence[int]] | None = None,
                     strides: Sequence[Sequence[int]] | None = None, n_conv_per_stage: int | Sequence[int] = 2,
                     n_conv_per_stage_decoder: int | Sequence[int] = 2, deep_supervision: bool = True,
                     patch_size: Sequence[int] | None = None, ssm: bool = True) -> UMambaBot:
    """U-Mamba Bot; with no keyword the 3D target configuration (in 1, 14 classes: paper_v1
    58,416,422 parameters, repo_2024_03 42,130,054). ``patch_size`` is optional and only checked
    against the strides (Bot works at any divisible size).

    Keywords: ``variant`` ("paper_v1" default | "repo_2024_03"), ``n_stages``, ``features_per_stage``,
    ``kernel_sizes``, ``strides`` (defaults: nnU-Net's isotropic plan, 6 stages [32..320] in 3D,
    7 stages [32..512] in 2D, 3-kernels, strides 1 then 2), ``n_conv_per_stage`` /
    ``n_conv_per_stage_decoder`` (residual blocks per stage, default 2), ``deep_supervision``
    (default True), ``ssm`` (default True; False: the SSM ablation). InstanceNorm(eps 1e-5, affine),
    LeakyReLU(0.01, inplace), conv bias.
    """
    kwargs = _builder_arch_kwargs(spatial_dims, variant, n_stages, features_per_stage, kernel_sizes, strides,
                                  n_conv_per_stage, n_conv_per_stage_decoder)
    model = UMambaBot(in_channels, num_classes=num_classes, deep_supervision=deep_supervision, ssm=ssm, **kwargs)
    if patch_size is not None:
        model.check_input_size(patch_size)
    return model


def build_umamba_enc(in_channels: int, num_classes: int, spatial_dims: int = 3, *, variant: str = "paper_v1",
                     n_stages: int | None = None, features_per_stage: Sequence[int] | None = None,
                     kernel_sizes: Sequence[Sequence[int]] | None = None,
                     strides: Sequence[Sequence[int]] | None = None, n_conv_per_stage: int | Sequence[int] = 2,
                     n_conv_per_stage_decoder: int | Sequence[int] = 2, deep_supervision: bool = True,
                     input_size: Sequence[int] | None = None, patch_size: Sequence[int] | None = None,
                     ssm: bool = True) -> UMambaEnc:
    """U-Mamba Enc; with no keyword the 3D target configuration (in 1, 14 classes, 128³: paper_v1
    59,690,022 parameters, repo_2024_03 42,760,582). ``input_size`` (alias ``patch_size``) is the
    training patch: default 128³ in 3D; in 2D 320² for 7 stages and 512² for 8 (the patches behind
    the 2D targets of docs/networks.md §7), else 4·2^(S−1) squared. Other keywords as :func:`build_umamba_bot`.
    """
    if input_size is not None and patch_size is not None and list(input_size) != list(patch_size):
        raise ValueError(f"input_size {list(input_size)} and patch_size {list(patch_size)} disagree")
    kwargs = _builder_arch_kwargs(spatial_dims, variant, n_stages, features_per_stage, kernel_sizes, strides,
                                  n_conv_per_stage, n_conv_per_stage_decoder)
    size = input_size if input_size is not None else patch_size
    if size is None:
        size = [128] * 3 if spatial_dims == 3 else _default_2d_input_size(kwargs["n_stages"])
    model = UMambaEnc(in_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                      input_size=list(size), ssm=ssm, **kwargs)
    model.check_input_size(size)
    return model
