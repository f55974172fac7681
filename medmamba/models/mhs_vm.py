"""MHS-VM: multi-head scanning in parallel subspaces, on the VM-UNet host, in 2D and 3D.

Follows the paper *MHS-VM: Multi-Head Scanning in Parallel Subspaces for Vision Mamba* (Ji 2024,
arXiv 2406.05992) as released in ``PixDeep/MHS-VM`` (snapshot be64b6f), which replaces VM-UNet's SS2D
mixer (``JCruan519/VM-UNet``, VMamba v0) by a gated multi-head scan module. The 3D generalisation is
medmamba's (``docs/mhs_vm_3d.md``); the 2D network is the released one.

Structure (channels-last tokens between blocks; 2D defaults):

- ``PatchEmbed``: conv k4 s4 (in → 96) → LayerNorm.
- Encoder ``layers[i]``: ``depths[i]`` × :class:`VSSBlock` (dims 96, 192, 384, 768, depths 2, 2, 2, 2);
  stages 0–2 end in :class:`PatchMerging` (2×2 space-to-depth → LN(4C) → Linear 4C → 2C). The skips
  are the *inputs* of the encoder stages.
- Decoder ``layers_up[i]`` (dims 768, 384, 192, 96, depths 2, 2, 2, 1): stage 0 has no upsampling, the
  others open with :class:`PatchExpand` (Linear 2C → 4C → 2×2 depth-to-space → LN(C)); the skip is
  **added** before every decoder stage after the first.
- ``final_up`` (:class:`FinalPatchExpand`, 4× depth-to-space to 24 channels, LN) → ``final_conv`` 1×1.
- :class:`VSSBlock` = x + DropPath(mixer(LN(x))), no MLP; drop-path linear 0 → 0.2 over the encoder
  blocks and reversed over the decoder blocks.
- Mixer :class:`VSSGate`: in_proj d → 2d (x, z; no expansion) → depthwise conv 3 + SiLU on x →
  :class:`MHSM` → LN(d) · SiLU(z); no out_proj.
- :class:`MHSM`: a subspace projection d → h·s (s = d // h) splits the channels into h heads C, X, S
  (, Z); each :class:`ScanHead` scans its channels along two routes and their reverses (K = 4) with a
  bare S6 (:class:`MultiRouteS6`: per-route x_proj/dt_proj/A/D, grouped B/C, one ``selective_scan``
  call per head with the routes passed to the op, so inputs and outputs stay in natural order), then
  fuses the four outputs with the gated fusion unit (:func:`gated_fusion`); the heads are
  concatenated → LN → ``y_proj`` (h·s → d).

Routes per head (2D, over the (H, W) grid; 3D versions in :func:`head_routes` and docs/mhs_vm_3d.md):
C = horizontal snake / vertical snake; X = JPEG zigzag / the same with columns mirrored;
S = clockwise spiral from the top-left / vertically mirrored (counter-clockwise from the bottom-left);
Z = row-major / column-major (the SS2D pair). Routes are built from the tensor's grid shape at run
time and cached per shape (no precomputed 256² tables, no device fixed at build time).

Parameter counts (``sum(p.numel())``): 2D, 3 input channels, 1 class, h = 4, with_proj: 17,257,129
(h = 3: 17,386,153); VSSGate at d = 768: 2,597,376; with ``mixer="ss2d"`` the same host is VM-UNet,
27,427,561, and SS2D at d = 96 has 105,216. 3D default (dims 64, 128, 256, 512, h = 4, 4 input
channels, 3 classes): see :func:`build_mhs_vm`.

Known differences from the released code and notes:

- The released wrapper repeats a grey input to 3 channels and applies a sigmoid when there is one
  class. Here the network takes ``input_channels`` directly and always returns logits (losses apply
  the activation).
- No deep supervision (the original has one output); ``deep_supervision`` exists for nnU-Net's
  constructor contract and must be False.
- GFU threshold ``gfu_threshold`` defaults to 0.5, the ISIC18 training value; the ISIC17 config
  trains with 0.0 and the released ``test.py`` hard-codes 0.4 (a checkpoint trained with 0.5 is then
  evaluated with 0.4: pass the value you want).
- The paper's Fig. 1 draws an out_proj after the gate; the code has none (``y_proj`` plays that role).
  The paper's ESF fusion (Fig. 5) is not in the code and not here.
- The released routes are precomputed 256×256 index dictionaries moved to CUDA at build time; here
  they are generated per grid shape and cached, so any H, W divisible by 32 works on any device.
- The released ScanHead gathers 4 permuted copies, scans, flips and scatters back; here the gather and
  scatter happen inside medmamba's selective-scan op (``routes=``), which is the same computation.
- Names of the VM-UNet host and of SS2D follow the released code (``patch_embed``, ``layers``,
  ``layers_up``, ``final_up``, ``final_conv``, ``ln_1``, ``self_attention``, ``x_proj_weight``,
  ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds`` …); names inside MHSM that the reference
  does not record (``subspace_proj``, ``heads``, ``engine``, ``y_norm``) are ours. The host's wrapper
  module (``vmunet.`` prefix) is not reproduced.
- The GFU's std is taken over the 4 route outputs with Bessel's correction, as in the code; where
  the routes agree exactly the std is 0 and torch gives it a zero gradient.
- 3D (spatial_dims=3, medmamba's generalisation): PatchEmbed3D, PatchMerging3D (2×2×2 → LN(8C) →
  Linear 8C → 2C), PatchExpand3D (Linear 2C → 8C → 2×2×2 depth-to-space → LN(C)), final 4×4×4 expand,
  depthwise Conv3d 3 in the gate, and 3D route families that reduce to the 2D ones on a (1, H, W)
  grid (``docs/mhs_vm_3d.md``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from medmamba_kernels import routes as _routes
from medmamba_kernels import selective_scan
from medmamba_kernels.routes import Route, register_route_kind
from monai.networks.layers import DropPath

from .layout import InputSizeError, StageLayout
from .mamba import set_ssm, unused_parameters_term

__all__ = [
    "HEAD_KINDS",
    "head_routes",
    "gated_fusion",
    "MultiRouteS6",
    "ScanHead",
    "MHSM",
    "VSSGate",
    "SS2D",
    "VSSBlock",
    "PatchEmbed",
    "PatchMerging",
    "PatchExpand",
    "FinalPatchExpand",
    "VSSLayer",
    "VSSLayerUp",
    "MHSVM",
    "build_mhs_vm",
]

HEAD_KINDS = ("C", "X", "S", "Z")
"""Head order of MHSM: C "continuous" (snakes), X "diagonal" (zigzags), S "spiral", Z raster
(only with 4 heads)."""


# --------------------------------------------------------------------------------------------------
# Scan routes
# --------------------------------------------------------------------------------------------------
# Route builders take a grid shape (1 to 3 sizes, C-order flattening) and return the permutation
# perm[i] = natural index visited at position i. A 2D shape (H, W) is treated as (1, H, W): the flat
# indices coincide, so every 3D route on a single slice *is* the 2D route.


def _as_volume(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    return (1,) * (3 - len(shape)) + shape


def _nested_snake(shape: Sequence[int]) -> np.ndarray:
    """Boustrophedon over nested axes (slowest first): the inner order is walked forwards for even
    and backwards for odd indices of each outer axis, so consecutive positions are always
    6-neighbours (a reflected mixed-radix Gray code). In 2D this is the horizontal snake."""
    shape = tuple(int(s) for s in shape)
    order = np.arange(shape[-1])
    for size in reversed(shape[:-1]):
        block = order.size
        rows = np.stack([order if i % 2 == 0 else order[::-1] for i in range(size)])
        order = (np.arange(size)[:, None] * block + rows).reshape(-1)
    return order


def _mirror(perm: np.ndarray, shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """``perm`` with the grid mirrored along ``axes`` (i → size − 1 − i on those axes)."""
    grid = np.arange(int(np.prod(shape))).reshape(shape)
    return np.flip(grid, tuple(axes)).reshape(-1)[perm]


def _snake_route(shape) -> np.ndarray:
    """C head, route 0: snake over (D, H, W), W fastest; whole slices alternate direction."""
    return _nested_snake(_as_volume(shape))


def _snake_transposed_route(shape) -> np.ndarray:
    """C head, route 1: snake with the nesting reversed — W slowest, then H, then D fastest. On one
    slice it is the vertical snake (columns left to right, alternating up and down)."""
    vol = _as_volume(shape)
    grid = np.arange(int(np.prod(vol))).reshape(vol).transpose(2, 1, 0)
    return grid.reshape(-1)[_nested_snake(grid.shape)]


def _zigzag_route(shape) -> np.ndarray:
    """X head, route 0: planes d + h + w = k in increasing k. Inside a plane the voxels lie on
    sub-diagonals of constant d (h + w = k − d); these are visited by increasing d, each with h
    decreasing for even d and increasing for odd d, and the whole plane is walked backwards when
    k is odd. Every step reaches a 6-neighbour or a face-diagonal neighbour (no two voxels of one
    plane are 6-neighbours). On one slice (D = 1) it is the JPEG zigzag over anti-diagonals."""
    vol = _as_volume(shape)
    d, h, w = (a.reshape(-1) for a in np.meshgrid(*[np.arange(s) for s in vol], indexing="ij"))
    k = d + h + w
    sign = np.where(k % 2 == 1, -1, 1)  # odd planes walked backwards
    along = np.where(d % 2 == 0, -h, h)
    return np.lexsort((sign * along, sign * d, k))


def _zigzag_mirrored_route(shape) -> np.ndarray:
    """X head, route 1: route 0 with the W axis mirrored (columns j → W − 1 − j)."""
    vol = _as_volume(shape)
    return _mirror(_zigzag_route(vol), vol, (2,))


def _spiral_route(shape) -> np.ndarray:
    """S head, route 0: a clockwise spiral from the top-left corner inwards on even slices and the
    same spiral walked outwards from the centre on odd slices (orientation alternates), so each slice
    starts next to where the previous one ended."""
    vol = _as_volume(shape)
    plane = _routes.spiral(vol[1:]).permutation()
    block = plane.size
    return np.concatenate([i * block + (plane if i % 2 == 0 else plane[::-1]) for i in range(vol[0])])


def _spiral_mirrored_route(shape) -> np.ndarray:
    """S head, route 1: route 0 mirrored along H (vertically: counter-clockwise from the bottom-left
    corner, the 2D partner) and along the slice axis D (slices visited from last to first)."""
    vol = _as_volume(shape)
    return _mirror(_spiral_route(vol), vol, (0, 1))


_ROUTE_KINDS = {
    "mhs_snake": _snake_route,
    "mhs_snake_transposed": _snake_transposed_route,
    "mhs_zigzag": _zigzag_route,
    "mhs_zigzag_mirrored": _zigzag_mirrored_route,
    "mhs_spiral": _spiral_route,
    "mhs_spiral_mirrored": _spiral_mirrored_route,
}

for _name, _builder in _ROUTE_KINDS.items():
    # Kinds are global in medmamba_kernels; a re-import of this module must not register twice.
    if _name not in _routes.ROUTE_FAMILIES:
        register_route_kind(_name, _builder)


@lru_cache(maxsize=128)
def _cached_head_routes(head: str, shape: tuple[int, ...]) -> tuple[Route, Route, Route, Route]:
    if head not in HEAD_KINDS:
        raise ValueError(f"unknown MHS head {head!r}; known: {', '.join(HEAD_KINDS)}")
    if len(shape) == 2:
        # The released 2D routes; the existing kernels' routes where they are the same permutation.
        pairs = {
            "C": (_routes.snake(shape), Route(shape, "mhs_snake_transposed")),
            "X": (_routes.diagonal_zigzag(shape), Route(shape, "mhs_zigzag_mirrored")),
            "S": (_routes.spiral(shape), Route(shape, "mhs_spiral_mirrored")),
            "Z": (_routes.raster(shape), _routes.axis_order(shape, (1, 0))),
        }
    elif len(shape) == 3:
        pairs = {
            "C": (Route(shape, "mhs_snake"), Route(shape, "mhs_snake_transposed")),
            "X": (Route(shape, "mhs_zigzag"), Route(shape, "mhs_zigzag_mirrored")),
            "S": (Route(shape, "mhs_spiral"), Route(shape, "mhs_spiral_mirrored")),
            # (W, H, D) rather than SegMamba's (H, W, D): both put the slice axis fastest, but only
            # (W, H, D) is column-major on a single slice (the 2D partner); (H, W, D) would repeat route 0.
            "Z": (_routes.raster(shape), _routes.axis_order(shape, (2, 1, 0))),
        }
    else:
        raise ValueError(f"MHS routes need a 2D or 3D grid, got shape {shape}")
    first, second = pairs[head]
    return (first, first.reversed(), second, second.reversed())


def head_routes(head: str, shape: Sequence[int]) -> tuple[Route, Route, Route, Route]:
    """The four routes one head scans, in the order of its parameter sets: route 0, route 0
    reversed, route 1, route 1 reversed, over a grid of ``shape`` ((H, W) or (D, H, W)).

    ``head`` is one of :data:`HEAD_KINDS`. Cached per (head, shape); the index tables are built and
    cached per device by the scan op.
    """
    return _cached_head_routes(head, tuple(int(s) for s in shape))


# --------------------------------------------------------------------------------------------------
# Mixers
# --------------------------------------------------------------------------------------------------


def gated_fusion(y: torch.Tensor, threshold: float = 0.5, eps: float = 1e-5, dim: int = 1) -> torch.Tensor:
    """MHS-VM's gated fusion unit (the implemented form of "scan route attention").

    For route outputs ``y`` with the K routes along ``dim``:
    ``z = (Σ_k y_k) · ReLU(CV − threshold)``, ``CV = std_k(y) / (mean_k(y − min_k y) + eps)`` with the
    unbiased std. Positions where the routes agree (low CV) are suppressed.

    Args:
        y: e.g. (batch, K, channels, L) route outputs aligned to natural order.
        threshold: t; 0.5 (ISIC18 training), 0.0 (ISIC17), 0.4 (released ``test.py``).

    Returns:
        ``y`` reduced over ``dim``, e.g. (batch, channels, L).
    """
    std = _std_over_routes(y, dim)
    spread = (y - y.amin(dim=dim, keepdim=True)).mean(dim=dim)
    cv = std / (spread + eps)
    return y.sum(dim=dim) * F.relu(cv - threshold)


def _std_over_routes(y: torch.Tensor, dim: int) -> torch.Tensor:
    """``y.std(dim, correction=1)`` from elementwise operations: torch's std over a short middle
    axis took ~15% of MHS-VM's CPU training step. Where every value along ``dim`` is equal the std
    is exactly 0 and its gradient 0, as torch's (a plain sqrt would give 0·∞ = NaN there)."""
    deviation = y - y.mean(dim=dim, keepdim=True)
    var = (deviation * deviation).sum(dim=dim) / (y.shape[dim] - 1)
    spread = var > 0
    return torch.where(spread, var, 1.0).sqrt() * spread


class MultiRouteS6(nn.Module):
    """A bare S6 (no conv, gate or projections) scanning the same channels along K routes, with
    one parameter set per route: ``x_proj_weight`` (K, R + 2N, d_inner), ``dt_projs_weight``
    (K, d_inner, R), ``dt_projs_bias`` (K, d_inner), ``A_logs`` (K·d_inner, N), ``Ds`` (K·d_inner).

    This is VMamba v0's SS2D core (parameter names and initialisation) and MHS-VM's ``MambaEngine``.
    All routes run in one ``selective_scan`` call with grouped B/C (group k = route k); the op
    gathers along each route and scatters back, so inputs and outputs are in natural order.

    Args:
        d_inner: channels scanned per route. n_routes: K. d_state: N.
        dt_rank: R (SS2D uses ceil(d_model / 16), MHS-VM ceil(d_inner / 16)).
        dt_*: Mamba's Δ initialisation.
        ssm: False is the SSM ablation: every route's scan is the identity on its input (each of
            the K outputs is ``x``); x_proj/dt_projs/A_logs/Ds are kept but enter with weight 0
            (zero gradient; see ``medmamba.models.mamba.unused_parameters_term``).
    """

    has_selective_scan = True  # medmamba.models.mamba.set_ssm() switches its ``ssm``

    def __init__(
        self,
        d_inner: int,
        n_routes: int = 4,
        d_state: int = 16,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        ssm: bool = True,
    ) -> None:
        super().__init__()
        self.ssm = bool(ssm)
        self.d_inner = d_inner
        self.n_routes = n_routes
        self.d_state = d_state
        self.dt_rank = math.ceil(d_inner / 16) if dt_rank is None else int(dt_rank)
        K, R, N = n_routes, self.dt_rank, d_state
        # x_proj: stacked bias-free nn.Linear(d_inner, R + 2N) weights, with nn.Linear's default init.
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, d_inner).uniform_(-bound, bound))
        dt_std = R**-0.5 * dt_scale
        if dt_init == "constant":
            dt_weight = torch.full((K, d_inner, R), dt_std)
        elif dt_init == "random":
            dt_weight = torch.empty(K, d_inner, R).uniform_(-dt_std, dt_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        self.dt_projs_weight = nn.Parameter(dt_weight)
        # Δ ~ log-uniform in [dt_min, dt_max] at init; the bias is its softplus inverse.
        dt = torch.exp(torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_projs_bias._no_reinit = True
        # S4D-real: A[d, n] = -(n + 1), one copy per route.
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(K * d_inner, 1))
        self.A_logs._no_weight_decay = True
        self.Ds = nn.Parameter(torch.ones(K * d_inner))
        self.Ds._no_weight_decay = True

    def forward(self, x: torch.Tensor, routes: Sequence[Route]) -> torch.Tensor:
        """x (batch, d_inner, L) in natural order → (batch, K, d_inner, L), route k's output in
        natural order."""
        batch, channels, length = x.shape
        K, N = self.n_routes, self.d_state
        if channels != self.d_inner or len(routes) != K:
            raise ValueError(f"MultiRouteS6 expects {self.d_inner} channels and {K} routes, "
                             f"got {channels} and {len(routes)}")
        if not self.ssm:  # the ablation: every route's output is its input, in natural order
            zero = unused_parameters_term([self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias,
                                           self.A_logs, self.Ds], torch.float32, x.device)
            return x.float().unsqueeze(1).expand(batch, K, channels, length) + zero
        # Projections are per position, so computing them in natural order and letting the op gather
        # equals projecting each route's permuted copy (the released code's order). All K routes'
        # x_proj rows in one product on the channels-first layout, and dt_proj batched over
        # (batch, route): contiguous results, no transposing copies (einsum made them).
        rows = self.dt_rank + 2 * N
        x_dbl = torch.bmm(self.x_proj_weight.reshape(K * rows, channels).expand(batch, -1, -1), x)
        dts, Bs, Cs = torch.split(x_dbl.view(batch, K, rows, length), [self.dt_rank, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, D, R) @ (batch, K, R, L)
        # As released: the scan's inputs are cast to fp32 (stable under fp16/bf16 autocast).
        u = x.float().unsqueeze(1).expand(batch, K, channels, length).reshape(batch, K * channels, length)
        y = selective_scan(
            u, dts.float().reshape(batch, K * channels, length),
            -torch.exp(self.A_logs.float()), Bs.float(), Cs.float(),
            self.Ds.float(), delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
            routes=tuple(routes),
        )
        return y.view(batch, K, channels, length)


class ScanHead(nn.Module):
    """One MHS head: scans its ``d_head`` channels along the head's two routes and their reverses
    (K = 4) with a :class:`MultiRouteS6`, then fuses the four outputs with :func:`gated_fusion`.

    Input/output (batch, d_head, *grid), grid (H, W) or (D, H, W).
    """

    def __init__(self, d_head: int, head: str, d_state: int = 16, gfu_threshold: float = 0.5) -> None:
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown MHS head {head!r}; known: {', '.join(HEAD_KINDS)}")
        self.head = head
        self.gfu_threshold = gfu_threshold
        self.engine = MultiRouteS6(d_head, n_routes=4, d_state=d_state, dt_rank=math.ceil(d_head / 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[2:])
        y = self.engine(x.flatten(2), head_routes(self.head, grid))
        if not self.engine.ssm:
            # SSM ablation: the K identical route outputs have CV = 0, so the GFU would zero the
            # head whatever its input (ReLU(0 − t) = 0): fuse by the GFU's sum without its gate.
            return y.sum(1).view(x.shape)
        return gated_fusion(y, self.gfu_threshold, dim=1).view(x.shape)


class MHSM(nn.Module):
    """Multi-head scan module: (batch, *grid, d) → (batch, *grid, d), channels last.

    Subspace projection Linear d → h·s (s = d // h, no bias), split into heads in the order of
    :data:`HEAD_KINDS`; each head a :class:`ScanHead`; concat → LayerNorm(h·s) → ``y_proj`` Linear
    h·s → d (no bias). ``with_proj=False`` drops the LayerNorm and y_proj (then h·s must equal d).
    """

    def __init__(self, d_model: int, head_num: int = 4, d_state: int = 16, with_proj: bool = True,
                 gfu_threshold: float = 0.5) -> None:
        super().__init__()
        if not 1 <= head_num <= len(HEAD_KINDS):
            raise ValueError(f"head_num must be 1 to {len(HEAD_KINDS)} (heads {', '.join(HEAD_KINDS)}), got {head_num}")
        d_head = d_model // head_num
        if d_head < 1:
            raise ValueError(f"d_model {d_model} is too small for {head_num} heads")
        if not with_proj and d_head * head_num != d_model:
            raise ValueError(f"with_proj=False needs d_model ({d_model}) divisible by head_num ({head_num})")
        self.d_model, self.head_num, self.d_head, self.with_proj = d_model, head_num, d_head, with_proj
        self.subspace_proj = nn.Linear(d_model, head_num * d_head, bias=False)
        self.heads = nn.ModuleList(
            ScanHead(d_head, kind, d_state=d_state, gfu_threshold=gfu_threshold) for kind in HEAD_KINDS[:head_num])
        if with_proj:
            self.y_norm = nn.LayerNorm(head_num * d_head)
            self.y_proj = nn.Linear(head_num * d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.subspace_proj(x).movedim(-1, 1)  # (batch, h·s, *grid)
        y = torch.cat([head(part) for head, part in zip(self.heads, xs.split(self.d_head, dim=1))], dim=1)
        y = y.movedim(1, -1)
        if self.with_proj:
            y = self.y_proj(self.y_norm(y))
        return y


def _conv_op(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"MHS-VM supports spatial_dims 2 or 3, got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class VSSGate(nn.Module):
    """MHS-VM's mixer: (batch, *grid, d) → (batch, *grid, d), channels last.

    in_proj Linear d → 2d (no bias) → x, z (d each); depthwise conv 3 (bias) + SiLU on x; :class:`MHSM`;
    LayerNorm(d) · SiLU(z). No out_proj (MHSM's y_proj has that role).
    """

    def __init__(self, d_model: int, head_num: int = 4, d_state: int = 16, with_proj: bool = True,
                 gfu_threshold: float = 0.5, d_conv: int = 3, spatial_dims: int = 2) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.conv2d = _conv_op(spatial_dims)(d_model, d_model, d_conv, padding=(d_conv - 1) // 2,
                                             groups=d_model, bias=True)
        self.act = nn.SiLU()
        self.mhsm = MHSM(d_model, head_num=head_num, d_state=d_state, with_proj=with_proj,
                         gfu_threshold=gfu_threshold)
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.movedim(-1, 1))).movedim(1, -1)
        return self.out_norm(self.mhsm(x)) * F.silu(z)


class SS2D(MultiRouteS6):
    """VMamba v0's SS2D as VM-UNet uses it: (batch, H, W, d) → (batch, H, W, d), channels last.

    in_proj Linear d → 4d (no bias) → x, z (2d each); depthwise Conv2d 3 (bias) + SiLU on x; bare S6 over
    K = 4 routes (row-major, column-major, their reverses) with per-route parameters (the
    :class:`MultiRouteS6` parameters, under SS2D's names); sum → LayerNorm(2d) · SiLU(z) → out_proj
    Linear 2d → d (no bias). The baseline mixer of the VM-UNet host (``MHSVM(mixer="ss2d")``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2,
                 dt_rank: int | str = "auto", spatial_dims: int = 2) -> None:
        if spatial_dims != 2:
            raise ValueError("SS2D (the VM-UNet baseline mixer) is 2D only; use the MHS mixer for 3D")
        d_inner = int(expand * d_model)
        super().__init__(d_inner, n_routes=4, d_state=d_state,
                         dt_rank=math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank))
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.act = nn.SiLU()
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grid = tuple(x.shape[1:-1])
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.movedim(-1, 1)))
        first, second = _routes.raster(grid), _routes.axis_order(grid, (1, 0))
        y = super().forward(x.flatten(2), (first, second, first.reversed(), second.reversed())).sum(1)
        y = y.transpose(1, 2).reshape(*z.shape[:-1], -1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


# --------------------------------------------------------------------------------------------------
# VM-UNet host
# --------------------------------------------------------------------------------------------------


class VSSBlock(nn.Module):
    """x + DropPath(mixer(LayerNorm(x))), channels last; LayerNorm eps 1e-6; no MLP."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, mixer: str = "mhs", spatial_dims: int = 2,
                 **mixer_kwargs: Any) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        if mixer == "mhs":
            self.self_attention = VSSGate(hidden_dim, spatial_dims=spatial_dims, **mixer_kwargs)
        elif mixer == "ss2d":
            self.self_attention = SS2D(hidden_dim, spatial_dims=spatial_dims, **mixer_kwargs)
        else:
            raise ValueError(f"mixer must be 'mhs' (MHS-VM) or 'ss2d' (VM-UNet), got {mixer!r}")
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _depth_to_space(x: torch.Tensor, scale: Sequence[int]) -> torch.Tensor:
    """(batch, *grid, prod(scale)·c) → (batch, *(grid·scale), c), channel groups ordered
    (p_1, …, p_n, c) with p_1 slowest — einops' ``b h w (p1 p2 c) -> b (h p1) (w p2) c``."""
    batch, *grid, channels = x.shape
    n = len(grid)
    c = channels // math.prod(scale)
    x = x.reshape(batch, *grid, *scale, c)
    # (b, g1..gn, p1..pn, c) → (b, g1, p1, g2, p2, …, c)
    order = [0] + [i for a in range(n) for i in (1 + a, 1 + n + a)] + [1 + 2 * n]
    return x.permute(order).reshape(batch, *[g * s for g, s in zip(grid, scale)], c)


class PatchEmbed(nn.Module):
    """Conv k = stride = ``patch_size`` (in → embed_dim) → channels last → LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: Sequence[int], spatial_dims: int = 2) -> None:
        super().__init__()
        patch = tuple(int(p) for p in patch_size)
        self.proj = _conv_op(spatial_dims)(in_chans, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_chans, *S) → (batch, *S/patch, embed_dim)."""
        return self.norm(self.proj(x).movedim(1, -1))


class PatchMerging(nn.Module):
    """2× space-to-depth in every axis → LayerNorm(2^n·C) → Linear 2^n·C → 2C (no bias).

    Channel groups are ordered with the first axis's offset fastest, as the released 2D code
    concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2].
    """

    def __init__(self, dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.reduction = nn.Linear(2**spatial_dims * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2**spatial_dims * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, *grid, channels = x.shape
        n = len(grid)
        x = x.reshape(batch, *[v for g in grid for v in (g // 2, 2)], channels)
        # (b, g1, o1, …, gn, on, c) → (b, g1..gn, on, …, o1, c): o1 fastest among the offsets.
        order = [0] + [1 + 2 * a for a in range(n)] + [2 + 2 * a for a in reversed(range(n))] + [1 + 2 * n]
        x = x.permute(order).reshape(batch, *[g // 2 for g in grid], 2**n * channels)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Linear 2C → 2^n·C (no bias) → 2× depth-to-space in every axis → LayerNorm(C). ``dim`` is the
    output width C (the input has 2C), as in the released code."""

    def __init__(self, dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.dim = 2 * dim
        self.spatial_dims = spatial_dims
        self.expand = nn.Linear(self.dim, 2**spatial_dims * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_depth_to_space(self.expand(x), (2,) * self.spatial_dims))


class FinalPatchExpand(nn.Module):
    """Linear C → prod(scale)·(C // 4) (no bias) → depth-to-space by ``scale`` → LayerNorm(C // 4).
    With the 2D patch 4 this is the released Final_PatchExpand2D (96 → 384 → 4×4 → 24 channels)."""

    def __init__(self, dim: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        self.out_dim = dim // 4
        self.expand = nn.Linear(dim, math.prod(self.scale) * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_depth_to_space(self.expand(x), self.scale))


class VSSLayer(nn.Module):
    """Encoder stage: ``depth`` × :class:`VSSBlock`, then optionally :class:`PatchMerging`."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: bool,
                 spatial_dims: int = 2, mixer: str = "mhs", **mixer_kwargs: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=drop_path[i], mixer=mixer, spatial_dims=spatial_dims, **mixer_kwargs)
            for i in range(depth))
        self.downsample = PatchMerging(dim, spatial_dims) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class VSSLayerUp(nn.Module):
    """Decoder stage: optionally :class:`PatchExpand` (2C → C, 2× up), then ``depth`` × :class:`VSSBlock`."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], upsample: bool,
                 spatial_dims: int = 2, mixer: str = "mhs", **mixer_kwargs: Any) -> None:
        super().__init__()
        self.upsample = PatchExpand(dim, spatial_dims) if upsample else None
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=drop_path[i], mixer=mixer, spatial_dims=spatial_dims, **mixer_kwargs)
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class MHSVM(nn.Module):
    """MHS-VM on the VM-UNet host (2D as released, 3D generalised): (B, C_in, *S) → logits (B, classes, *S).

    Args:
        input_channels, num_classes: channels in and out (logits; no sigmoid).
        deep_supervision: must be False (the original has one output).
        spatial_dims: 2 (H, W) or 3 (D, H, W).
        depths, depths_decoder: blocks per encoder stage / per decoder stage (deepest first).
        dims: encoder widths, each twice the previous (PatchMerging doubles); the decoder mirrors them.
        head_num: MHS heads (3: C, X, S; 4: + Z). d_state: N.
        drop_path_rate: drop-path maximum (linear over the encoder blocks, reversed over the decoder).
        gfu_threshold: t of the gated fusion unit (0.5 ISIC18 training, 0.0 ISIC17, 0.4 released test.py).
        with_proj: MHSM's LayerNorm + y_proj after the heads.
        patch_size: patch embedding kernel = stride (int or one per axis); the final expansion undoes it.
        mixer: "mhs" (MHS-VM) or "ss2d" (VMamba v0's SS2D: the VM-UNet baseline, 2D only).
        ssm: False is the SSM ablation (every :class:`MultiRouteS6` scan is the identity, heads
            fuse by the plain sum; docs/networks.md); same parameters and state_dict.

    Every spatial size must be divisible by patch_size · 2^(stages − 1) (32 by default).
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        deep_supervision: bool = False,
        spatial_dims: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        dims: Sequence[int] = (96, 192, 384, 768),
        head_num: int = 4,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        gfu_threshold: float = 0.5,
        with_proj: bool = True,
        patch_size: int | Sequence[int] = 4,
        mixer: str = "mhs",
        ssm: bool = True,
    ) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError("MHS-VM has no deep supervision (its released code has one output); "
                             "pass deep_supervision=False")
        _conv_op(spatial_dims)
        depths, depths_decoder = [int(v) for v in depths], [int(v) for v in depths_decoder]
        dims = [int(v) for v in dims]
        if not (len(depths) == len(depths_decoder) == len(dims) >= 1):
            raise ValueError(f"depths, depths_decoder and dims need the same non-zero length, got {depths}, "
                             f"{depths_decoder} and {dims}")
        if any(b != 2 * a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"each of dims must be twice the previous (PatchMerging doubles the width), got {dims}")
        if dims[0] % 4:
            raise ValueError("dims[0] must be divisible by 4 (the final expansion outputs dims[0] // 4), "
                             f"got {dims[0]}")
        patch = [int(patch_size)] * spatial_dims if isinstance(patch_size, int) else [int(p) for p in patch_size]
        if len(patch) != spatial_dims or min(patch) < 1:
            raise ValueError(f"patch_size must be a positive int or {spatial_dims} positive ints, got {patch_size}")
        if mixer == "ss2d" and spatial_dims != 2:
            raise ValueError("mixer='ss2d' (the VM-UNet baseline) is 2D only")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.n_stages = len(dims)
        self.size_multiple = tuple(p * 2 ** (self.n_stages - 1) for p in patch)
        self.init_kwargs = {
            "spatial_dims": spatial_dims, "depths": depths, "depths_decoder": depths_decoder, "dims": dims,
            "head_num": int(head_num), "d_state": int(d_state), "drop_path_rate": float(drop_path_rate),
            "gfu_threshold": float(gfu_threshold), "with_proj": bool(with_proj),
            "patch_size": patch_size if isinstance(patch_size, int) else patch, "mixer": str(mixer),
        }
        self.kw_requires_import: tuple[str, ...] = ()
        if mixer == "mhs":
            mixer_kwargs = dict(head_num=head_num, d_state=d_state, with_proj=with_proj, gfu_threshold=gfu_threshold)
        else:
            mixer_kwargs = dict(d_state=d_state)

        dims_decoder = dims[::-1]
        # Plain Python, not torch.linspace(...).tolist(): the network must build on the meta device.
        dpr = _linspace(0.0, drop_path_rate, sum(depths))
        dpr_decoder = _linspace(0.0, drop_path_rate, sum(depths_decoder))[::-1]
        self.patch_embed = PatchEmbed(input_channels, dims[0], patch, spatial_dims)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < self.n_stages - 1,
                     spatial_dims=spatial_dims, mixer=mixer, **mixer_kwargs)
            for i in range(self.n_stages))
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_decoder[i], depths_decoder[i],
                       dpr_decoder[sum(depths_decoder[:i]):sum(depths_decoder[:i + 1])], upsample=i != 0,
                       spatial_dims=spatial_dims, mixer=mixer, **mixer_kwargs)
            for i in range(self.n_stages))
        self.final_up = FinalPatchExpand(dims_decoder[-1], patch)
        self.final_conv = _conv_op(spatial_dims)(dims_decoder[-1] // 4, num_classes, 1)
        self.apply(self._init_weights)
        if not ssm:  # the SSM ablation (architecture mhs_vm_nossm); recorded only when on
            set_ssm(self, False)
            self.init_kwargs["ssm"] = False

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # VMamba's init: only nn.Linear/LayerNorm modules; the stacked S6 parameters keep their own.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def stage_layout(self) -> StageLayout:
        return StageLayout(self.n_stages, tuple(self.size_multiple))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, input_channels, *S) with every side of S divisible by
        patch_size · 2^(stages − 1)."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"MHS-VM ({self.spatial_dims}D, {self.input_channels} input channels) expects input "
                             f"(B, {self.input_channels}, {', '.join('S' * self.spatial_dims)}), got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % m for s, m in zip(spatial, self.size_multiple)):
            raise InputSizeError(f"MHS-VM input spatial size {spatial} is invalid: each side must be divisible by "
                                 f"{self.size_multiple} (patch_size × 2^{self.n_stages - 1} for "
                                 f"{self.n_stages - 1} patch mergings)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, input_channels, *S) → logits (B, num_classes, *S)."""
        self.check_input(x)
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        for i, layer_up in enumerate(self.layers_up):
            # The deepest skip is the input of the last encoder stage, added at the same resolution.
            x = layer_up(x if i == 0 else x + skips[-i])
        # final_conv is 1×1: applied as a matrix to the channels-last tokens, then viewed
        # channels-first. (As a conv on that view it copied the full-resolution 16-channel volume
        # to contiguous memory, forward and backward: ~4% of the CPU training step.)
        weight = self.final_conv.weight.flatten(1)  # (num_classes, channels)
        return F.linear(self.final_up(x), weight, self.final_conv.bias).movedim(-1, 1)


_DEFAULT_DIMS = {2: [96, 192, 384, 768], 3: [64, 128, 256, 512]}


def build_mhs_vm(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any) -> MHSVM:
    """MHS-VM with the ISIC host configuration: depths [2, 2, 2, 2], decoder [2, 2, 2, 1], 4 heads,
    with_proj, drop-path 0.2, GFU threshold 0.5, patch 4, no deep supervision.

    Widths: 2D [96, 192, 384, 768] as released (17,257,129 parameters for 3 inputs and 1 class). 3D
    [64, 128, 256, 512], so that with 4 heads every head has at least 16 channels (s = 16 … 128);
    9,454,099 parameters for 4 inputs and 3 classes. Keywords are :class:`MHSVM`'s (``dims``,
    ``depths``, ``depths_decoder``, ``head_num``, ``gfu_threshold``, ``with_proj``, ``patch_size``,
    ``drop_path_rate``, ``d_state``, ``mixer``, ``deep_supervision`` (must stay False)).
    """
    kwargs.setdefault("dims", list(_DEFAULT_DIMS.get(spatial_dims, _DEFAULT_DIMS[2])))
    return MHSVM(in_channels, num_classes, spatial_dims=spatial_dims, **kwargs)


def _linspace(start: float, stop: float, count: int) -> list[float]:
    """``torch.linspace(start, stop, count).tolist()`` without a tensor."""
    return [start + (stop - start) * i / max(count - 1, 1) for i in range(count)]
