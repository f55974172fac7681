"""Dice, HD95 and normalised surface Dice per region (BraTS) or per label, with explicit conventions for
empty masks.

Regions
    The masks scored are those of the label convention's :attr:`~medmamba.data.labels.LabelConvention.regions`,
    built from a label map in the user's values through nnU-Net's label space, so the definitions live in
    one place (``LabelConvention.nnunet_labels``). BraTS: WT (whole tumour), TC (tumour core) and ET
    (enhancing tumour), e.g. BraTS 2017–2021 WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; BraTS 2023
    WT = {1, 2, 3}, TC = {1, 3}, ET = {3}. Any other dataset (a label set, e.g. ``liver=1 spleen=2``): one
    mask per label, named by it.

Metrics (MONAI, physical units)
    - Dice: ``monai.metrics.compute_dice`` (2·|P∩G| / (|P| + |G|)).
    - HD95 (mm): ``monai.metrics.compute_hausdorff_distance(percentile=95, spacing=...)``, i.e. the
      larger of the two directed 95th percentiles of the distances between the masks' surface voxels
      (voxel centres, Euclidean, scaled by the voxel spacing). medpy's ``hd95`` (used by SegMamba) takes
      the 95th percentile of both directions pooled instead, which can give slightly smaller values.
    - NSD: ``monai.metrics.compute_surface_dice(class_thresholds=[tol], spacing=..., use_subvoxels=True)``,
      the surface-area fraction within ``tol`` mm of the other surface (DeepMind's surface-distance
      definition).
    The voxel spacing is that of the ground truth (the column norms of its affine, so oblique grids are
    measured correctly).
    2D images are scored in 2D, in their pixel spacing: 2D masks (X, Y), and 3D arrays of a single
    slice (as nnU-Net reads a 2D image: one slice, spacing 999 across it), whose slice axis is dropped —
    a one-slice 3D mask would otherwise have surfaces on its two faces, and distances across the slice.

Empty masks (``EMPTY_CONVENTIONS``; "one empty" = exactly one of prediction and ground truth is empty)

============  ==========================  ==========================================================
name          both empty (Dice/HD95/NSD)  exactly one empty (Dice/HD95/NSD)
============  ==========================  ==========================================================
``brats``     1 / 0 / 1                   0 / 373.13 mm / 0
``monai``     NaN / NaN / NaN             Dice 0 (prediction empty) or NaN (ground truth empty) /
                                          NaN / 0 — MONAI's raw values (``ignore_empty=True``)
``nan``       NaN / NaN / NaN             0 / NaN / 0
``segmamba``  0 / 50 mm / 0               0 / 50 mm / 0
============  ==========================  ==========================================================

``brats`` (the default) is the BraTS 2017–2021 legacy convention of the CBICA evaluation: 373.13 mm is
the diagonal of the 240×240×155 1 mm BraTS volume, sqrt(240² + 240² + 155²) = 373.1287, rounded as the
challenge publishes it. ``nan`` drops both-empty cases from the means, as nnU-Net's ``summary.json``
does. ``segmamba`` is SegMamba's released evaluation (medpy, either mask empty → Dice 0 and HD95 50);
it has no NSD, which is scored 0 like its Dice. When both masks are non-empty every convention gives
MONAI's values. NaN is never dropped silently: summaries report how many values are not NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medmamba.data.labels import LabelConvention, get_convention, to_nnunet_labels

__all__ = [
    "REGIONS", "METRICS", "EMPTY_CONVENTIONS", "BRATS_EMPTY_HD95_MM", "SEGMAMBA_EMPTY_HD95_MM",
    "region_masks", "mask_metrics", "case_metrics", "spacing_from_affine", "check_empty_convention",
]

#: The BraTS regions, in the order tables show them (other datasets: ``LabelConvention.region_names``).
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
METRICS: tuple[str, ...] = ("dice", "hd95", "nsd")

BRATS_EMPTY_HD95_MM = 373.13  # sqrt(240² + 240² + 155²) = 373.1287, as the BraTS challenge publishes it
SEGMAMBA_EMPTY_HD95_MM = 50.0

EMPTY_CONVENTIONS: dict[str, str] = {
    "brats": "BraTS 2017-2021 legacy: both empty -> Dice 1, HD95 0, NSD 1; exactly one empty -> Dice 0, "
             f"HD95 {BRATS_EMPTY_HD95_MM} mm, NSD 0",
    "monai": "MONAI raw values: ground truth empty -> Dice NaN; either empty -> HD95 NaN; exactly one empty "
             "-> NSD 0; both empty -> NSD NaN",
    "nan": "both empty -> NaN for every metric (excluded from means, like nnU-Net's summary); exactly one "
           "empty -> Dice 0, HD95 NaN, NSD 0",
    "segmamba": "SegMamba's released evaluation: either empty (even both) -> Dice 0, "
                f"HD95 {SEGMAMBA_EMPTY_HD95_MM:g} mm, NSD 0",
}

_NAN = float("nan")
# Values replacing MONAI's when (both masks are empty, exactly one is empty); metrics not named keep
# MONAI's raw value.
_OVERRIDES: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "brats": ({"dice": 1.0, "hd95": 0.0, "nsd": 1.0}, {"dice": 0.0, "hd95": BRATS_EMPTY_HD95_MM, "nsd": 0.0}),
    "monai": ({}, {}),
    "nan": ({"dice": _NAN, "hd95": _NAN, "nsd": _NAN}, {"dice": 0.0, "hd95": _NAN, "nsd": 0.0}),
    "segmamba": ({"dice": 0.0, "hd95": SEGMAMBA_EMPTY_HD95_MM, "nsd": 0.0},
                 {"dice": 0.0, "hd95": SEGMAMBA_EMPTY_HD95_MM, "nsd": 0.0}),
}

# MONAI 1.6 warns on every call (a deprecated argument inside its own code) and on every empty mask,
# which the conventions above handle explicitly.
_QUIET = (
    (FutureWarning, r".*always_return_as_numpy"),
    (UserWarning, r"the (ground truth|prediction) of class .* is all 0"),
)


def check_empty_convention(empty: str) -> str:
    """Return ``empty`` if it names an ``EMPTY_CONVENTIONS`` entry, else raise ValueError listing them."""
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"unknown empty-mask convention {empty!r}; known: {', '.join(EMPTY_CONVENTIONS)}")
    return empty


def _check_tolerance(nsd_tolerance_mm: float) -> float:
    tol = float(nsd_tolerance_mm)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"the NSD tolerance must be a finite number of mm >= 0, got {nsd_tolerance_mm!r}")
    return tol


def _check_spacing(spacing: Sequence[float], ndim: int = 3) -> tuple[float, ...]:
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"voxel spacing must be {ndim} positive numbers (mm), got {list(spacing)}")
    return values


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of a 4×4 voxel → world affine."""
    return _check_spacing(np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0))


def region_masks(labels: np.ndarray, convention: str | LabelConvention) -> dict[str, np.ndarray]:
    """The masks of a label map's regions (BraTS: WT, TC and ET) or labels (a label set).

    Args:
        labels: label map (X, Y, Z) (any shape works) with integer values of ``convention``.
        convention: a ``CONVENTIONS`` key (``"brats2021"``, ``"brats2023"``, ``"brats2015"``,
            ``"msd_task01"``) or a ``LabelConvention`` (e.g. a ``label_set``).
    Returns:
        ``{"WT": mask, "TC": mask, "ET": mask}`` (``{"liver": mask, …}`` for a label set), bool arrays
        of the shape of ``labels``, in ``convention.region_names`` order.
    Raises:
        ValueError: a value outside the convention (the message lists them), or non-integer values.
    """
    conv = get_convention(convention)
    nnunet = to_nnunet_labels(labels, conv)  # validates the values
    masks = {}
    for region, members in conv.regions.items():
        lut = np.zeros(max(max(conv.to_nnunet.values()) + 1, max(members) + 1), dtype=bool)
        lut[list(members)] = True
        masks[region] = lut[nnunet]
    return masks



def paired_region_masks(pred: np.ndarray, gt: np.ndarray, convention: str | LabelConvention
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`region_masks` of a prediction and its ground truth (same shape), each error saying
    which of the two it is about."""
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction shape {np.shape(pred)} differs from ground-truth shape {np.shape(gt)}")
    try:
        pred_masks = region_masks(pred, convention)
    except ValueError as exc:
        raise ValueError(f"prediction: {exc}") from None
    try:
        gt_masks = region_masks(gt, convention)
    except ValueError as exc:
        raise ValueError(f"ground truth: {exc}") from None
    return pred_masks, gt_masks

def _union_box(masks: Sequence[np.ndarray], margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of the union of ``masks`` plus ``margin`` voxels, clipped to the array.

    Cropping both masks to it leaves every metric unchanged: MONAI itself crops each mask pair to its
    union box with a 1-voxel margin (padding where the box meets the array's edge) before finding
    surfaces. Cropping first only spares converting whole volumes to float tensors.
    """
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        if hit.size == 0:
            return tuple(slice(0, 1) for _ in range(union.ndim))  # all empty: one voxel suffices
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, union.shape[axis])))
    return tuple(box)


def _in_plane_axes(shape: Sequence[int]) -> tuple[int, ...]:
    """The axes a mask is scored on: all of them, except the one of a 3D array holding a single slice
    (a 2D image as nnU-Net reads it, one slice with spacing 999 across it), which is scored in 2D."""
    if len(shape) == 3 and sorted(shape)[0] == 1 and sorted(shape)[1] > 1:
        return tuple(a for a in range(3) if a != list(shape).index(1))
    return tuple(range(len(shape)))


def _monai_raw(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
               tolerance: float, metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """MONAI's raw Dice (ignore_empty=True), HD95 and NSD of (C, X, Y, Z) or (C, X, Y) bool stacks, one
    value per channel; only ``metrics`` are computed (the surface metrics cost far more than Dice)."""
    from monai.metrics import (
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None]
    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[None]
    channels = pred.shape[0]
    raw = {}
    with warnings.catch_warnings():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        if "dice" in metrics:
            raw["dice"] = compute_dice(p, g, include_background=True, ignore_empty=True)
        if "hd95" in metrics:
            raw["hd95"] = compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                                     spacing=list(spacing))
        if "nsd" in metrics:
            raw["nsd"] = compute_surface_dice(p, g, [tolerance] * channels, include_background=True,
                                              spacing=list(spacing), use_subvoxels=True)
    return {name: value[0].double().numpy() for name, value in raw.items()}


def _metrics_of_masks(pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray], spacing: Sequence[float],
                      empty: str, tolerance: float, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    names = list(gt)
    if set(pred) != set(names):
        raise ValueError(f"prediction regions {sorted(pred)} differ from ground-truth regions {sorted(names)}")
    shapes = {tuple(np.shape(m)) for m in list(pred.values()) + list(gt.values())}
    if len(shapes) != 1:
        raise ValueError(f"masks differ in shape: {sorted(shapes)}")
    shape = next(iter(shapes))
    if len(shape) not in (2, 3):
        raise ValueError(f"masks must be 3D (X, Y, Z) or 2D (X, Y), got shape {shape}")
    spacing = _check_spacing(spacing, len(shape))
    keep = _in_plane_axes(shape)
    box = _union_box([*pred.values(), *gt.values()])
    p = np.stack([np.asarray(pred[n], bool)[box].squeeze(tuple(a for a in range(len(shape)) if a not in keep))
                  for n in names])
    g = np.stack([np.asarray(gt[n], bool)[box].squeeze(tuple(a for a in range(len(shape)) if a not in keep))
                  for n in names])
    spacing = tuple(spacing[a] for a in keep)
    raw = _monai_raw(p, g, spacing, tolerance, metrics)
    both, one = _OVERRIDES[empty]
    out = {}
    for i, name in enumerate(names):
        p_empty, g_empty = not p[i].any(), not g[i].any()
        values = {m: float(raw[m][i]) for m in metrics}
        if p_empty and g_empty:
            values.update({m: v for m, v in both.items() if m in metrics})
        elif p_empty or g_empty:
            values.update({m: v for m, v in one.items() if m in metrics})
        out[name] = values
    return out


def mask_metrics(pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray], spacing: Sequence[float], *,
                 empty: str = "brats", nsd_tolerance_mm: float = 1.0,
                 metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm) and NSD of binary masks, paired by name (e.g. the output of ``region_masks``).

    Args:
        pred, gt: name → bool mask (X, Y, Z); the same names and one shape throughout.
        spacing: voxel size in mm along X, Y, Z.
        empty: an ``EMPTY_CONVENTIONS`` key (module docstring: what each gives for empty masks).
        nsd_tolerance_mm: NSD tolerance in mm.
        metrics: which of ``METRICS`` to compute (default all).
    Returns:
        name → ``{"dice": float, "hd95": float (mm), "nsd": float}`` (NaN where the convention says so),
        with the keys of ``metrics``.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"metrics must be some of {', '.join(METRICS)}, got {list(metrics)}")
    return _metrics_of_masks(pred, gt, spacing, check_empty_convention(empty), _check_tolerance(nsd_tolerance_mm),
                             tuple(metrics))


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], convention: str | LabelConvention, *,
                 empty: str = "brats", nsd_tolerance_mm: float = 1.0) -> dict[str, dict[str, float]]:
    """Dice, HD95 and NSD of one case for each region (BraTS: WT, TC and ET) or label of ``convention``.

    Args:
        pred: predicted label map (X, Y, Z) in ``convention``.
        gt: ground-truth label map (X, Y, Z) in ``convention``, the same shape and voxel grid.
        spacing: voxel size in mm along X, Y, Z (that of the ground truth).
        convention: label convention of both maps (a ``CONVENTIONS`` key or a ``LabelConvention``).
        empty: an ``EMPTY_CONVENTIONS`` key (module docstring).
        nsd_tolerance_mm: NSD tolerance in mm.
    Returns:
        ``{"WT": {"dice": .., "hd95": .., "nsd": ..}, "TC": {...}, "ET": {...}}``; HD95 in mm.
    Raises:
        ValueError: shapes differ, label values outside the convention, bad spacing/tolerance/convention.
    """
    empty = check_empty_convention(empty)
    tolerance = _check_tolerance(nsd_tolerance_mm)
    pred_masks, gt_masks = paired_region_masks(pred, gt, convention)
    return _metrics_of_masks(pred_masks, gt_masks, spacing, empty, tolerance)
