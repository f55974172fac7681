"""LightM-UNet: a U-Net whose encoder is made of residual Mamba blocks.

Follows the paper *LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image Segmentation*
(Liao et al. 2024, arXiv 2403.05246) as released in ``MrBlankness/LightM-UNet`` (network as fixed in
d2bed4a, 2024-03-29; snapshot 6b72e27), whose building blocks are MONAI SegResNet's with Mamba layers in
place of the encoder convolutions.

Structure (init_filters F = 32, blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1)):

- ``convInit``: depthwise-separable conv k3 (in → F), no norm or activation.
- Down stage i: for i > 0 an RVM layer (C/2 → C) **at the higher resolution**, then MaxPool 2; then
  ``blocks_down[i]`` × ResMambaBlock(C), C = F·2^i. The output of every stage is a skip.
- Up stage i: 1×1 conv (no bias) C → C/2, (bi/tri)linear ×2, **+ skip** (added, not concatenated),
  ``blocks_up[i]`` × ResUpBlock(C/2).
- Head: GroupNorm → ReLU → depthwise-separable conv k1 with bias (F → num_classes).

With these sizes there are 21 Mamba layers (3 at width 32, 5 at 64, 5 at 128, 8 at 256); the 3D network
for 1 input channel and 3 classes has 5,015,766 parameters, 4,277,440 of them in the Mambas.

Known differences and notes:

- The paper claims about 1M parameters (1.09M in 2D) and 116× fewer parameters than nnU-Net. That figure
  is ``thop``'s count, which only sees hooked submodules: mamba_ssm's fused path never calls the Mamba's
  Linear/Conv1d modules and ``A_log``/``D`` are plain parameters (upstream issues #9, #44). The released
  network has ≈5.0M parameters (issue #30); we report ``sum(p.numel())``.
- The paper's "VSS module" is the plain 1D ``mamba_ssm.Mamba`` (issue #31); here it is
  :class:`medmamba.models.mamba.Mamba` (same parameters and initialisation) on medmamba's scan.
- The RVM layer applies the **same** LayerNorm before and after the Mamba (one set of affine
  parameters) and casts fp16 input to fp32 as upstream; autocast is not disabled (upstream's recipe
  trains without AMP).
- No deep supervision (upstream's trainer subclasses ``nnUNetTrainerNoDeepSupervision``); the
  ``deep_supervision`` argument exists for nnU-Net's constructor contract and must be False.
- The upstream network takes its sizes from the trainer, not from the plans; here they are constructor
  keywords recorded in ``init_kwargs`` so that nnU-Net's ``get_network_from_plans`` rebuilds it.
- Module and attribute names follow upstream (``convInit``, ``down_layers``, ``up_samples``,
  ``up_layers``, ``conv_final``, ``norm``/``mamba``/``proj``/``skip_scale``, …), so its state_dicts load.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer

from .mamba import Mamba, channels_first_linear, set_ssm
from .layout import InputSizeError, StageLayout

__all__ = [
    "RVMLayer",
    "DownsampleRVM",
    "DepthwiseSeparableConv",
    "ResMambaBlock",
    "ResUpBlock",
    "LightMUNet",
    "build_lightm_unet",
]

_DEFAULT_NORM = ("GROUP", {"num_groups": 8})
_DEFAULT_ACT = ("RELU", {"inplace": True})


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer (upstream ``MambaLayer``): (B, C, *spatial) -> (B, C_out, *spatial).

    Tokens are the voxels in C-order; ``y = proj(LN(Mamba(LN(x)) + skip_scale · x))`` with one
    LayerNorm used twice and the scalar ``skip_scale`` (init 1) on the un-normalised input.

    Args:
        input_dim: C, the Mamba's d_model.
        output_dim: C_out of the final Linear (with bias).
        d_state, d_conv, expand: Mamba sizes (mamba_ssm defaults 16, 4, 2).
    """

    def __init__(self, input_dim: int, output_dim: int, *, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upstream casts half input to fp32 (only fp16, not bf16); under autocast the Linear layers
        # still run in the autocast dtype.
        if x.dtype == torch.float16:
            x = x.float()
        batch, channels = x.shape[:2]
        if channels != self.input_dim:
            raise ValueError(f"RVMLayer expects {self.input_dim} channels, got {channels}")
        spatial = x.shape[2:]
        tokens = x.reshape(batch, channels, -1).transpose(1, 2)  # (B, L, C), a view
        y = self.mamba(self.norm(tokens)) + self.skip_scale * tokens
        # The same LayerNorm again: upstream shares its affine parameters between both uses. The
        # projection works channels-first, so the result reshapes to the volume without a copy.
        y = channels_first_linear(self.proj, self.norm(y).transpose(1, 2))
        return y.reshape(batch, self.output_dim, *spatial)


class DownsampleRVM(nn.Sequential):
    """RVM layer then MaxPool: (B, C, *S) -> (B, C_out, *S/stride).

    The Mamba runs at the input resolution, before pooling, as upstream (its cost is set by the larger
    token count).
    """

    def __init__(self, spatial_dims: int, input_dim: int, output_dim: int, *, stride: int = 2,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2) -> None:
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        super().__init__(
            RVMLayer(input_dim, output_dim, d_state=d_state, d_conv=d_conv, expand=expand),
            pool(kernel_size=stride, stride=stride),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise conv k (groups = in_channels) then pointwise 1×1 (in → out): (B, in, *S) -> (B, out, *S).

    Both are MONAI ``Convolution(conv_only=True)`` with "same" padding, as upstream's
    ``get_dwconv_layer``; ``bias`` applies to both.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, kernel_size: int = 3,
                 bias: bool = False) -> None:
        super().__init__(
            Convolution(spatial_dims, in_channels, in_channels, kernel_size=kernel_size, bias=bias,
                        conv_only=True, groups=in_channels),
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, bias=bias, conv_only=True),
        )


class ResMambaBlock(nn.Module):
    """Pre-activation residual block of two RVM layers: (B, C, *S) -> (B, C, *S).

    ``x + RVM(act(norm2(RVM(act(norm1(x))))))``, no activation after the addition.

    Args:
        spatial_dims: 2 or 3. channels: C.
        norm, act: MONAI layer specifications (name, kwargs); upstream GroupNorm(8) and ReLU(inplace).
    """

    def __init__(self, spatial_dims: int, channels: int, *, norm: Any = _DEFAULT_NORM, act: Any = _DEFAULT_ACT,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2) -> None:
        super().__init__()
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)
        self.act = get_act_layer(act)
        self.conv1 = RVMLayer(channels, channels, **mamba_kw)
        self.conv2 = RVMLayer(channels, channels, **mamba_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        return x + identity


class ResUpBlock(nn.Module):
    """Decoder block: (B, C, *S) -> (B, C, *S), ``act(norm2(DWConv(act(norm1(x))) + skip_scale · x))``.

    ``skip_scale`` is a learnable scalar (init 1) on the block's input.
    """

    def __init__(self, spatial_dims: int, channels: int, *, kernel_size: int = 3, norm: Any = _DEFAULT_NORM,
                 act: Any = _DEFAULT_ACT) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)
        self.act = get_act_layer(act)
        self.conv = DepthwiseSeparableConv(spatial_dims, channels, channels, kernel_size=kernel_size)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The in-place ReLU would overwrite x; the skip needs the block's input.
        identity = x
        x = self.conv(self.act(self.norm1(x))) + self.skip_scale * identity
        return self.act(self.norm2(x))


def _as_spec(spec: Any) -> Any:
    """A MONAI layer spec (name or (name, kwargs)) as a tuple (plans give lists)."""
    return spec if isinstance(spec, str) else tuple(spec)


def _jsonable_spec(spec: Any) -> Any:
    return spec if isinstance(spec, str) else [spec[0], dict(spec[1])] if len(spec) > 1 else [spec[0]]


class LightMUNet(nn.Module):
    """LightM-UNet: (B, input_channels, *S) -> (B, num_classes, *S); every side of S divisible by
    2^(len(blocks_down) − 1) (8 by default).

    Args:
        input_channels: image channels. num_classes: output channels (logits).
        deep_supervision: must be False (the network has a single output); accepted for nnU-Net.
        spatial_dims: 2 or 3.
        init_filters: width F of the full-resolution stage; stage i has F·2^i channels. Must be divisible
            by the GroupNorm group count (8).
        blocks_down: ResMambaBlocks per encoder stage (its length sets the number of resolutions).
        blocks_up: ResUpBlocks per decoder stage, bottom-up; ``len(blocks_down) − 1`` entries.
        norm, act: MONAI layer specifications, upstream ``("GROUP", {"num_groups": 8})`` and
            ``("RELU", {"inplace": True})``.
        dropout_prob: dropout after ``convInit`` (upstream option, off by default).
        upsample_mode: MONAI ``UpSample`` mode: "nontrainable" ((bi/tri)linear, upstream), "deconv" or
            "pixelshuffle".
        d_state, d_conv, expand: sizes of every Mamba.
        ssm: False is the SSM ablation: every Mamba's scan is the identity on its input (the RVM
            layer's LayerNorms, skip_scale and projection stay); same parameters.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        deep_supervision: bool = False,
        spatial_dims: int = 3,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: Any = _DEFAULT_NORM,
        act: Any = _DEFAULT_ACT,
        dropout_prob: float | None = None,
        upsample_mode: str = "nontrainable",
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        ssm: bool = True,
    ) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError("LightM-UNet has no deep supervision (its released code has one output); "
                             "pass deep_supervision=False")
        if spatial_dims not in (2, 3):
            raise ValueError(f"LightM-UNet supports spatial_dims 2 or 3, got {spatial_dims}")
        blocks_down, blocks_up = [int(b) for b in blocks_down], [int(b) for b in blocks_up]
        if len(blocks_down) < 1 or len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs len(blocks_down) - 1 entries, got blocks_down {blocks_down} "
                             f"and blocks_up {blocks_up}")
        norm, act = _as_spec(norm), _as_spec(act)
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.init_filters = init_filters
        self.blocks_down = tuple(blocks_down)
        self.blocks_up = tuple(blocks_up)
        self.dropout_prob = dropout_prob
        self.total_stride = 2 ** (len(blocks_down) - 1)
        self.init_kwargs = {
            "spatial_dims": spatial_dims, "init_filters": init_filters, "blocks_down": blocks_down,
            "blocks_up": blocks_up, "norm": _jsonable_spec(norm), "act": _jsonable_spec(act),
            "dropout_prob": dropout_prob, "upsample_mode": str(upsample_mode), "d_state": d_state,
            "d_conv": d_conv, "expand": expand,
        }
        self.kw_requires_import: tuple[str, ...] = ()
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand)

        self.convInit = DepthwiseSeparableConv(spatial_dims, input_channels, init_filters)
        if dropout_prob is not None:
            self.dropout = get_dropout_layer(("dropout", {"p": dropout_prob}), dropout_dim=spatial_dims)

        self.down_layers = nn.ModuleList()
        for i, n_blocks in enumerate(blocks_down):
            channels = init_filters * 2**i
            # Index 0 of every stage is the downsampling RVM (Identity at full resolution), as upstream,
            # so that state_dict keys match.
            down = (DownsampleRVM(spatial_dims, channels // 2, channels, **mamba_kw) if i > 0 else nn.Identity())
            blocks = [ResMambaBlock(spatial_dims, channels, norm=norm, act=act, **mamba_kw) for _ in range(n_blocks)]
            self.down_layers.append(nn.Sequential(down, *blocks))

        self.up_samples = nn.ModuleList()
        self.up_layers = nn.ModuleList()
        n_up = len(blocks_up)
        for i, n_blocks in enumerate(blocks_up):
            channels = init_filters * 2 ** (n_up - i)
            self.up_samples.append(nn.Sequential(
                Convolution(spatial_dims, channels, channels // 2, kernel_size=1, bias=False, conv_only=True),
                UpSample(spatial_dims, channels // 2, channels // 2, scale_factor=2, mode=upsample_mode,
                         interp_mode="linear", align_corners=False),
            ))
            self.up_layers.append(nn.Sequential(
                *[ResUpBlock(spatial_dims, channels // 2, norm=norm, act=act) for _ in range(n_blocks)]))

        self.conv_final = nn.Sequential(
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=init_filters),
            get_act_layer(act),
            DepthwiseSeparableConv(spatial_dims, init_filters, num_classes, kernel_size=1, bias=True),
        )
        if not ssm:  # the SSM ablation (lightm_unet_nossm); recorded only when on
            set_ssm(self, False)
            self.init_kwargs["ssm"] = False

    def stage_layout(self) -> StageLayout:
        return StageLayout(len(self.blocks_down), (self.total_stride,) * self.spatial_dims)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, input_channels, *S) with every side of S divisible by the
        total stride."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"LightM-UNet ({self.spatial_dims}D, {self.input_channels} input channels) expects "
                             f"input (B, {self.input_channels}, {', '.join('S' * self.spatial_dims)}), "
                             f"got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self.total_stride for s in spatial):
            raise InputSizeError(f"LightM-UNet input spatial size {spatial} is invalid: every side must be "
                                 f"divisible by {self.total_stride} (2^{len(self.blocks_down) - 1} for "
                                 f"{len(self.blocks_down) - 1} poolings)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, input_channels, *S) -> logits (B, num_classes, *S)."""
        self.check_input(x)
        x = self.convInit(x)
        if self.dropout_prob is not None:
            x = self.dropout(x)
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        # skips[-1] is the bottleneck itself; the decoder adds the stages above it, deepest first.
        for up, up_layer, skip in zip(self.up_samples, self.up_layers, reversed(skips[:-1])):
            x = up_layer(up(x) + skip)
        return self.conv_final(x)


def build_lightm_unet(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any) -> LightMUNet:
    """LightM-UNet as upstream's nnU-Net trainer builds it: init_filters 32, blocks_down (1, 2, 2, 4),
    blocks_up (1, 1, 1), no deep supervision. Keywords are :class:`LightMUNet`'s (e.g. ``init_filters``,
    ``blocks_down``, ``blocks_up``, ``deep_supervision`` (must stay False), ``d_state``)."""
    return LightMUNet(in_channels, num_classes, spatial_dims=spatial_dims, **kwargs)
