"""Scan routes: the order in which a selective scan visits the positions of a flattened volume.

A route of length L is a permutation ``perm`` of ``range(L)``: position ``i`` of the scanned sequence
reads the element at natural (C-order, flattened) index ``perm[i]``, and the scan output at ``i`` is
written back to ``perm[i]``. Routes whose permutation is an axis reordering of a 1D/2D/3D grid,
optionally reversed, are *strided*: a kernel can compute ``perm[i]`` from a 7-number descriptor and
never needs a permuted copy of its inputs. Every other route (snake, diagonal zigzag, spiral, Hilbert)
is an *index* route, read through an index table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "Route",
    "raster",
    "axis_order",
    "inter_slice",
    "snake",
    "diagonal_zigzag",
    "spiral",
    "hilbert",
    "ROUTE_FAMILIES",
    "route_for",
    "route_tables",
    "cached_route_tables",
    "register_route_kind",
]


@dataclass(frozen=True)
class Route:
    """One scan direction over a grid of ``shape`` (1, 2 or 3 dims, C-order flattening).

    ``kind`` is ``"axes"`` for an axis reordering (``axes`` lists the grid axes from slowest to
    fastest in the scan) or the name of an index route. ``reverse`` walks the route backwards.
    """

    shape: tuple[int, ...]
    kind: str = "axes"
    axes: tuple[int, ...] | None = None
    reverse: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.shape) <= 3 or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"route shape must have 1 to 3 positive sizes, got {self.shape}")
        if self.kind == "axes":
            axes = tuple(range(len(self.shape))) if self.axes is None else tuple(self.axes)
            if sorted(axes) != list(range(len(self.shape))):
                raise ValueError(f"axes {axes} is not a permutation of the {len(self.shape)} grid axes")
            object.__setattr__(self, "axes", axes)
        elif self.kind not in _INDEX_ROUTES:
            raise ValueError(f"unknown route kind {self.kind!r}; known: axes, {', '.join(_INDEX_ROUTES)}")

    @property
    def length(self) -> int:
        return int(np.prod(self.shape))

    @property
    def is_strided(self) -> bool:
        return self.kind == "axes"

    def reversed(self) -> "Route":
        """The same route walked from its end to its start."""
        return Route(self.shape, self.kind, self.axes, not self.reverse)

    def descriptor(self) -> tuple[int, int, int, int, int, int, int]:
        """``(reverse, P0, P1, P2, s0, s1, s2)``: sizes of the scan's axes (slowest first, padded
        with 1s to three) and their C-order strides in the natural layout. Position ``i`` maps to
        ``j = L-1-i`` if reversed else ``i``, then to ``(j // (P1*P2))*s0 + (j // P2 % P1)*s1 + (j % P2)*s2``."""
        if not self.is_strided:
            raise ValueError(f"a {self.kind} route has no stride descriptor")
        natural_strides = np.cumprod((self.shape[1:] + (1,))[::-1])[::-1]
        sizes = [self.shape[a] for a in self.axes]
        strides = [int(natural_strides[a]) for a in self.axes]
        pad = 3 - len(sizes)
        sizes, strides = [1] * pad + sizes, [0] * pad + strides
        return (int(self.reverse), *sizes, *strides)

    def permutation(self) -> np.ndarray:
        """``perm`` as int64, ``perm[i]`` = natural index visited at sequence position ``i``."""
        return _permutation(self.shape, self.kind, self.axes, self.reverse)


@lru_cache(maxsize=256)
def _permutation(shape, kind, axes, reverse) -> np.ndarray:
    if kind == "axes":
        perm = np.arange(int(np.prod(shape))).reshape(shape).transpose(axes).reshape(-1)
    else:
        perm = _INDEX_ROUTES[kind](shape)
    if reverse:
        perm = perm[::-1]
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    perm.setflags(write=False)
    return perm


def _snake(shape) -> np.ndarray:
    """Boustrophedon: raster order, every other row (and every other plane) walked backwards, so
    consecutive positions are always grid neighbours."""
    grid = np.arange(int(np.prod(shape))).reshape(shape)
    if grid.ndim == 1:
        return grid
    rows = grid.copy()
    rows[..., 1::2, :] = rows[..., 1::2, ::-1]  # alternate rows within each plane
    if grid.ndim == 2:
        return rows.reshape(-1)
    # Walking every other plane backwards as a whole starts it where the previous plane ended.
    planes = rows.reshape(shape[0], -1).copy()
    planes[1::2] = planes[1::2, ::-1]
    return planes.reshape(-1)


def _diagonal_zigzag(shape) -> np.ndarray:
    """Anti-diagonals of the last two axes (i + j constant), alternating direction as in JPEG's
    zigzag; a leading axis is walked plane by plane."""
    if len(shape) == 1:
        return np.arange(shape[0])
    h, w = shape[-2:]
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    diag = (i + j).reshape(-1)
    # Within a diagonal walk i upwards on odd diagonals, downwards on even ones.
    along = np.where(diag % 2 == 0, -i.reshape(-1), i.reshape(-1))
    plane = np.lexsort((along, diag))
    if len(shape) == 2:
        return plane
    return (np.arange(shape[0])[:, None] * (h * w) + plane[None, :]).reshape(-1)


def _spiral(shape) -> np.ndarray:
    """Clockwise spiral of the last two axes from the outer ring inwards; a leading axis is walked
    plane by plane."""
    if len(shape) == 1:
        return np.arange(shape[0])
    h, w = shape[-2:]
    grid = np.arange(h * w).reshape(h, w)
    order = []
    top, bottom, left, right = 0, h - 1, 0, w - 1
    while top <= bottom and left <= right:
        order.extend(grid[top, left : right + 1])
        order.extend(grid[top + 1 : bottom + 1, right])
        if top < bottom:
            order.extend(grid[bottom, left:right][::-1])
        if left < right:
            order.extend(grid[top + 1 : bottom, left][::-1])
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    plane = np.asarray(order, dtype=np.int64)
    if len(shape) == 2:
        return plane
    return (np.arange(shape[0])[:, None] * (h * w) + plane[None, :]).reshape(-1)


def _hilbert(shape) -> np.ndarray:
    """Hilbert curve (2D or 3D) over the smallest power-of-two cube that holds the grid, keeping
    the points inside it: consecutive positions stay close in space (grid neighbours where the grid
    is a power-of-two cube)."""
    if len(shape) == 1:
        return np.arange(shape[0])
    dims = len(shape)
    order = max(1, int(np.ceil(np.log2(max(shape)))))
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, dims)
    keys = _hilbert_keys(coords, order)
    return np.argsort(keys, kind="stable")


def _hilbert_keys(coords: np.ndarray, order: int) -> np.ndarray:
    """Distance along the Hilbert curve of each point, by Skilling's transpose algorithm
    ("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004), vectorised over points."""
    x = coords.astype(np.int64).T.copy()  # (dims, points)
    dims = x.shape[0]
    m = 1 << (order - 1)
    # Inverse undo of excess work: axes to transposed Hilbert index.
    q = m
    while q > 1:
        p = q - 1
        for i in range(dims):
            bit = (x[i] & q) != 0
            x[0] = np.where(bit, x[0] ^ p, x[0])
            t = np.where(bit, 0, (x[0] ^ x[i]) & p)
            x[0] ^= t
            x[i] ^= t
        q >>= 1
    for i in range(1, dims):
        x[i] ^= x[i - 1]
    t = np.zeros_like(x[0])
    q = m
    while q > 1:
        t = np.where((x[dims - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x ^= t
    # Interleave the transposed bits, most significant first, into one key.
    key = np.zeros(x.shape[1], dtype=np.int64)
    for b in range(order - 1, -1, -1):
        for i in range(dims):
            key = (key << 1) | ((x[i] >> b) & 1)
    return key


_INDEX_ROUTES = {
    "snake": _snake,
    "diagonal_zigzag": _diagonal_zigzag,
    "spiral": _spiral,
    "hilbert": _hilbert,
}


def register_route_kind(name: str, builder, family_names: bool = True) -> None:
    """Add an index route kind: ``builder(shape) -> int array``, a permutation of the C-order
    flattened grid. With ``family_names`` it is also addressable as route families ``name`` and
    ``name + "_reverse"``. Kinds are global; registering the same name twice is an error."""
    if name in _INDEX_ROUTES or name == "axes":
        raise ValueError(f"route kind {name!r} is already registered")
    _INDEX_ROUTES[name] = builder
    if family_names:
        ROUTE_FAMILIES[name] = lambda shape: Route(tuple(int(s) for s in shape), name, None, False)
        ROUTE_FAMILIES[name + "_reverse"] = lambda shape: Route(tuple(int(s) for s in shape), name, None, True)


def raster(shape: Sequence[int], reverse: bool = False) -> Route:
    """C-order raster of the grid (the flattening U-Mamba and SegMamba use), optionally reversed."""
    return Route(tuple(int(s) for s in shape), "axes", None, reverse)


def axis_order(shape: Sequence[int], axes: Sequence[int], reverse: bool = False) -> Route:
    """Raster over the grid with its axes visited in ``axes`` order (slowest first)."""
    return Route(tuple(int(s) for s in shape), "axes", tuple(axes), reverse)


def inter_slice(shape: Sequence[int], reverse: bool = False) -> Route:
    """SegMamba's inter-slice order over a (S, H, W) grid: slice index fastest, so the scan steps
    through all S slices at one in-plane position before moving to the next position
    (``perm[i] = (i mod S)·H·W + i div S``)."""
    shape = tuple(int(s) for s in shape)
    axes = tuple(range(1, len(shape))) + (0,)
    return Route(shape, "axes", axes, reverse)


def snake(shape: Sequence[int], reverse: bool = False) -> Route:
    return Route(tuple(int(s) for s in shape), "snake", None, reverse)


def diagonal_zigzag(shape: Sequence[int], reverse: bool = False) -> Route:
    return Route(tuple(int(s) for s in shape), "diagonal_zigzag", None, reverse)


def spiral(shape: Sequence[int], reverse: bool = False) -> Route:
    return Route(tuple(int(s) for s in shape), "spiral", None, reverse)


def hilbert(shape: Sequence[int], reverse: bool = False) -> Route:
    return Route(tuple(int(s) for s in shape), "hilbert", None, reverse)


ROUTE_FAMILIES = {
    "raster": raster,
    "raster_reverse": lambda shape: raster(shape, reverse=True),
    "inter_slice": inter_slice,
    "inter_slice_reverse": lambda shape: inter_slice(shape, reverse=True),
    "snake": snake,
    "snake_reverse": lambda shape: snake(shape, reverse=True),
    "diagonal_zigzag": diagonal_zigzag,
    "diagonal_zigzag_reverse": lambda shape: diagonal_zigzag(shape, reverse=True),
    "spiral": spiral,
    "spiral_reverse": lambda shape: spiral(shape, reverse=True),
    "hilbert": hilbert,
    "hilbert_reverse": lambda shape: hilbert(shape, reverse=True),
}
"""Route families by name: each builds the route for a given grid shape, so a layer can name its
directions once and apply them to whatever spatial size its input has."""


def route_for(family: str, shape: Sequence[int]) -> Route:
    """The route of the named ``family`` over a grid of ``shape``."""
    if family not in ROUTE_FAMILIES:
        raise ValueError(f"unknown route family {family!r}; known: {', '.join(ROUTE_FAMILIES)}")
    return ROUTE_FAMILIES[family](tuple(int(s) for s in shape))


def route_tables(routes: Sequence[Route], length: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Index table (K, L) int64 for ``routes`` on ``device``, and their stride descriptors (K, 7)
    int64 when every route is strided (None otherwise)."""
    if len(routes) == 0:
        raise ValueError("routes must name at least one route")
    for route in routes:
        if route.length != length:
            raise ValueError(f"route over grid {route.shape} has length {route.length}, "
                             f"but the sequence has L={length}")
    index = torch.from_numpy(np.stack([r.permutation() for r in routes])).to(device)
    if all(r.is_strided for r in routes):
        desc = torch.tensor([r.descriptor() for r in routes], dtype=torch.int64, device=device)
    else:
        desc = None
    return index, desc


def cached_route_tables(routes: tuple[Route, ...], length: int, device: str):
    """``route_tables`` memoised per (routes, L, device): layers call it every step with the same
    routes, and the tables are small. The memo must only hold plain tensors, as every later call
    shares them: never memoised under a FakeTensorMode (memory estimates trace the networks with fake
    tensors), and made outside inference mode (a table first made while predicting would otherwise
    be an inference tensor, which a later training step cannot save for backward)."""
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None:
        return route_tables(routes, length, torch.device(device))
    with torch.inference_mode(False):
        return _memoised_route_tables(routes, length, device)


@lru_cache(maxsize=64)
def _memoised_route_tables(routes: tuple[Route, ...], length: int, device: str):
    return route_tables(routes, length, torch.device(device))
