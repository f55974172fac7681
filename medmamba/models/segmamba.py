"""SegMamba (V1): a Mamba encoder with tri-orientated Mamba (ToM) layers and a UNETR-style decoder.

Paper: Z. Xing, T. Ye, Y. Yang, G. Liu, L. Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D
Medical Image Segmentation", MICCAI 2024, arXiv 2401.13560.
Released code followed: ``ge-xing/SegMamba`` @ cff3597 (``model_segmamba/segmamba.py`` with the
vendored mamba_ssm 1.0.1 fork, ``bimamba_type="v3"``). Structure and parameter count are those of the
released code (67,416,196 parameters for in 4, out 4; 67,363,213 for the class defaults in 1, out 13).

Layout (for an input of size S, four stages)::

    x ─ vit (MambaEncoder) ── stage i: [stem | IN + Conv k2 s2] → GSC → depths[i] × MambaLayer
    │                         side output i = MlpChannel(InstanceNorm(stage output)) at S / 2^(i+1)
    ├ encoder1(x) ........................................................ skip @ S
    ├ encoder2(out0), encoder3(out1), encoder4(out2) ..................... skips @ S/2, S/4, S/8
    └ encoder5(out3) (feat[3] → hidden_size) → decoder5 → decoder4 → decoder3 → decoder2 → decoder1 → out

The encoders/decoders are MONAI's ``UnetrBasicBlock`` / ``UnetrUpBlock`` / ``UnetOutBlock`` with
res_block=True and instance norm, as released. Submodule names follow the released code, so the
released state_dict keys are ours.

Known differences from the released code (all deliberate):

- **Inter-slice order from the tensor's shape.** The released ToM hard-codes the slice counts
  ``nslices = [64, 32, 16, 8]`` per stage, correct only for a 128³ input (other sizes run when L is
  divisible by nslices but silently mix slices). Here each ToM layer gets the grid (D, H, W) of its
  stage and scans the inter-slice route ``medmamba_kernels.routes.inter_slice((D, H, W))``: slice
  count = the first spatial axis at that stage, for any input size divisible by 16, anisotropic
  patches included.
- The three ToM directions run in one grouped scan call and the SiLU(z) gate is applied once after
  the un-permuted sum (equal to the released per-branch gate up to rounding, since the gate commutes
  with the permutations); parameters, their names and initialisation are the fork's.
- Constructor names follow nnU-Net (``input_channels``, ``num_classes``, ``deep_supervision``)
  instead of ``in_chans``/``out_chans``; ``drop_path_rate``, ``layer_scale_init_value``,
  ``conv_block`` and ``spatial_dims`` (accepted and ignored upstream) are not accepted.
- The number of stages follows ``len(depths)`` (four as released; the decoder grows with it); the
  head takes ``feat_size[0]`` channels where the released code hard-codes 48.
- SegMamba has no deep supervision: ``deep_supervision=True`` is rejected.
- ``paper_gsc=True`` builds the gated spatial convolution of the paper instead of the released one
  (see :class:`GSC`); the released form is the default.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

from .mamba import Mamba, set_ssm
from .layout import InputSizeError, StageLayout

__all__ = ["TOM_ROUTES", "GSC", "MambaLayer", "MlpChannel", "MambaEncoder", "SegMamba", "build_segmamba"]

TOM_ROUTES = ("raster", "raster_reverse", "inter_slice")
"""SegMamba's tri-orientated Mamba: forward raster, its reverse, and the inter-slice order."""


class GSC(nn.Module):
    """Gated spatial convolution: (B, C, D, H, W) -> (B, C, D, H, W), residual.

    Released form (default), every conv with bias, every InstanceNorm3d without affine parameters::

        A = ReLU(IN(Conv3³(ReLU(IN(Conv3³(x))))))      B = ReLU(IN(Conv1³(x)))
        out = ReLU(IN(Conv1³(A + B))) + x

    Paper form (``paper=True``, the GSC as the paper draws it, arXiv 2401.13560): each block is
    Norm → Conv → Nonlinear, the two branches are multiplied, and the final block is 3×3×3; the norm
    and nonlinearity types are the code's (InstanceNorm3d without affine, ReLU), the residual and all
    conv biases are kept::

        A = C3(C3(x))      B = C1(x)      out = C3(A ⊙ B) + x,   Ck(y) = ReLU(Convk(IN(y)))

    The paper form has 26·C² more parameters per GSC (final conv 3³ instead of 1³). Attribute names
    (proj…proj4, norm…norm4) are the released ones in both forms.
    """

    def __init__(self, channels: int, paper: bool = False) -> None:
        super().__init__()
        self.paper = bool(paper)
        final_kernel = 3 if self.paper else 1
        self.proj = nn.Conv3d(channels, channels, 3, 1, 1)
        self.norm = nn.InstanceNorm3d(channels)
        self.proj2 = nn.Conv3d(channels, channels, 3, 1, 1)
        self.norm2 = nn.InstanceNorm3d(channels)
        self.proj3 = nn.Conv3d(channels, channels, 1, 1, 0)
        self.norm3 = nn.InstanceNorm3d(channels)
        self.proj4 = nn.Conv3d(channels, channels, final_kernel, 1, final_kernel // 2)
        self.norm4 = nn.InstanceNorm3d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.paper:
            a = self.act(self.proj2(self.norm2(self.act(self.proj(self.norm(x))))))
            b = self.act(self.proj3(self.norm3(x)))
            return self.act(self.proj4(self.norm4(a * b))) + x
        a = self.act(self.norm2(self.proj2(self.act(self.norm(self.proj(x))))))
        b = self.act(self.norm3(self.proj3(x)))
        return self.act(self.norm4(self.proj4(a + b))) + x


class MambaLayer(nn.Module):
    """ToM layer: (B, C, *grid) -> (B, C, *grid); ``x + reshape(ToM(LayerNorm(flatten(x))))``.

    The tokens are the C-order flattening of the grid (last axis fastest); the grid shape goes to the
    mixer so that its routes (default :data:`TOM_ROUTES`) follow this input's size. No MLP, no
    drop-path (as released).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        routes: Sequence[str] = TOM_ROUTES,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, routes=tuple(routes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *grid = x.shape
        if channels != self.dim:
            raise ValueError(f"MambaLayer expects {self.dim} channels, got {channels}")
        tokens = x.reshape(batch, channels, -1).transpose(1, 2)  # (B, L, C)
        mixed = self.mamba(self.norm(tokens), grid_shape=tuple(grid))
        return mixed.transpose(1, 2).reshape(x.shape) + x


class MlpChannel(nn.Module):
    """Channel MLP on a volume: (B, C, D, H, W) -> (B, C, D, H, W); Conv1³ C→hidden, GELU, Conv1³
    hidden→C, both with bias. No residual (SegMamba applies it to the side outputs only)."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MambaEncoder(nn.Module):
    """SegMamba's encoder (attribute ``vit`` of :class:`SegMamba`).

    Input (B, in_chans, *S); returns one side output per stage, stage i: (B, dims[i], *S / 2^(i+1)).
    Stage i = downsample (i = 0: Conv3d(in, dims[0], k7, s2, p3); else InstanceNorm3d → Conv3d(k2,
    s2)) → GSC → depths[i] × :class:`MambaLayer`; the side output is MlpChannel(InstanceNorm3d(x))
    while the main path continues without the MLP.
    """

    def __init__(
        self,
        in_chans: int,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (48, 96, 192, 384),
        paper_gsc: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        routes: Sequence[str] = TOM_ROUTES,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims) or len(dims) < 1:
            raise ValueError(f"depths and dims need the same non-zero length, got {list(depths)} and {list(dims)}")
        self.num_stages = len(dims)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv3d(in_chans, dims[0], kernel_size=7, stride=2, padding=3))]
            + [
                nn.Sequential(nn.InstanceNorm3d(dims[i]), nn.Conv3d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                for i in range(self.num_stages - 1)
            ]
        )
        self.gscs = nn.ModuleList([GSC(d, paper=paper_gsc) for d in dims])
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*[MambaLayer(d, d_state=d_state, d_conv=d_conv, expand=expand, routes=routes)
                                for _ in range(depth)])
                for d, depth in zip(dims, depths)
            ]
        )
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(d))
        self.mlps = nn.ModuleList([MlpChannel(d, 2 * d) for d in dims])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.gscs[i](self.downsample_layers[i](x)))
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return tuple(outs)


class SegMamba(nn.Module):
    """SegMamba V1: (B, input_channels, D, H, W) -> logits (B, num_classes, D, H, W).

    Every spatial size must be divisible by 2^len(depths) (16 as released). No deep supervision.

    Args:
        input_channels, num_classes: image channels and output classes (upstream in_chans/out_chans).
        deep_supervision: must be False (SegMamba has none); accepted for nnU-Net's plans contract.
        depths: ToM layers per encoder stage (len = number of stages).
        feat_size: channels per encoder stage.
        hidden_size: channels of the deepest UNETR block (encoder5 as released).
        paper_gsc: the paper's gated GSC instead of the released additive one (see :class:`GSC`).
        norm_name: MONAI norm of the UNETR blocks ("instance" = InstanceNorm3d without affine); a
            list (from JSON) is passed to MONAI as a tuple.
        res_block: residual UNETR blocks (True as released).
        d_state, d_conv, expand: ToM mixer sizes (16, 4, 2 as released).
        routes: the ToM scan directions, route families of ``medmamba_kernels.routes``.
        ssm: False is the SSM ablation: every ToM direction's scan is the identity on its input (its
            causal conv, the sum over directions, the gate and out_proj stay); same parameters.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        deep_supervision: bool = False,
        depths: Sequence[int] = (2, 2, 2, 2),
        feat_size: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        paper_gsc: bool = False,
        norm_name: str | Sequence = "instance",
        res_block: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        routes: Sequence[str] = TOM_ROUTES,
        ssm: bool = True,
    ) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError(
                "SegMamba has no deep supervision (the released network returns one logit map); "
                "build it with deep_supervision=False (in nnU-Net: enable_deep_supervision = False)"
            )
        depths, feat_size, routes = [int(d) for d in depths], [int(f) for f in feat_size], [str(r) for r in routes]
        if len(depths) != len(feat_size) or not depths:
            raise ValueError(f"depths and feat_size need the same non-zero length, got {depths} and {feat_size}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.num_stages = len(feat_size)
        self.init_kwargs = {
            "depths": depths,
            "feat_size": feat_size,
            "hidden_size": int(hidden_size),
            "paper_gsc": bool(paper_gsc),
            "norm_name": norm_name if isinstance(norm_name, str) else list(norm_name),
            "res_block": bool(res_block),
            "d_state": int(d_state),
            "d_conv": int(d_conv),
            "expand": expand,
            "routes": routes,
        }
        self.kw_requires_import: tuple[str, ...] = ()
        norm = norm_name if isinstance(norm_name, str) else tuple(norm_name)
        n = self.num_stages

        self.vit = MambaEncoder(input_channels, depths=depths, dims=feat_size, paper_gsc=paper_gsc,
                                d_state=d_state, d_conv=d_conv, expand=expand, routes=routes)

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm, res_block=res_block)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm,
                                res_block=res_block)

        # encoder1 on the raw input; encoder{i+2} on side output i; the deepest maps to hidden_size.
        self.add_module("encoder1", basic(input_channels, feat_size[0]))
        for i in range(n - 1):
            self.add_module(f"encoder{i + 2}", basic(feat_size[i], feat_size[i + 1]))
        self.add_module(f"encoder{n + 1}", basic(feat_size[n - 1], hidden_size))
        # decoder{k} upsamples to the resolution of encoder{k-1} and fuses it as the skip.
        for k in range(n + 1, 1, -1):
            self.add_module(f"decoder{k}", up(hidden_size if k == n + 1 else feat_size[k - 1], feat_size[k - 2]))
        self.decoder1 = basic(feat_size[0], feat_size[0])
        self.out = UnetOutBlock(3, feat_size[0], num_classes)
        if not ssm:  # the SSM ablation (segmamba_nossm); recorded only when on
            set_ssm(self, False)
            self.init_kwargs["ssm"] = False

    @property
    def total_stride(self) -> int:
        """Each spatial size of the input must be a multiple of this."""
        return 2**self.num_stages

    def stage_layout(self) -> StageLayout:
        return StageLayout(self.num_stages, (self.total_stride,) * 3)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (B, input_channels, D, H, W) with every spatial size
        divisible by :attr:`total_stride` (and, in training mode, more than one voxel at the
        deepest stage)."""
        if x.ndim != 5 or x.shape[1] != self.input_channels:
            raise ValueError(
                f"SegMamba expects (batch, {self.input_channels}, D, H, W), got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(s % self.total_stride for s in spatial):
            raise InputSizeError(
                f"SegMamba needs every spatial size divisible by {self.total_stride} (a stride-2 stem and "
                f"{self.num_stages - 1} stride-2 downsamples, undone by as many 2× upsamplings); "
                f"got spatial size {spatial}"
            )
        if self.training and math.prod(s // self.total_stride for s in spatial) == 1:
            # InstanceNorm cannot normalise a single voxel in training mode (torch raises deep inside).
            raise InputSizeError(
                f"SegMamba in training mode needs more than one voxel at its deepest stage (InstanceNorm): "
                f"spatial size {spatial} / {self.total_stride} is a single voxel; use a larger patch"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n = self.num_stages
        outs = self.vit(x)
        skips = [self.encoder1(x)] + [getattr(self, f"encoder{i + 2}")(outs[i]) for i in range(n - 1)]
        y = getattr(self, f"encoder{n + 1}")(outs[n - 1])
        for k in range(n + 1, 1, -1):
            y = getattr(self, f"decoder{k}")(y, skips[k - 2])
        return self.out(self.decoder1(y))


def build_segmamba(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> SegMamba:
    """SegMamba V1. With no keyword: the released configuration (feat_size [48, 96, 192, 384],
    depths [2, 2, 2, 2], hidden_size 768, additive GSC); 67,416,196 parameters for in 4, out 4.
    Keywords are those of :class:`SegMamba` (e.g. ``feat_size``, ``depths``, ``hidden_size``,
    ``paper_gsc``); ``deep_supervision`` must stay False."""
    if spatial_dims != 3:
        raise ValueError(f"SegMamba is 3D only, got spatial_dims={spatial_dims}")
    return SegMamba(in_channels, num_classes, **kwargs)
