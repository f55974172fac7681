"""Lesion-wise Dice and HD95 as the BraTS 2023 challenges score them.

The whole-volume Dice and HD95 of :mod:`medmamba.evaluation.metrics` reward large lesions and barely notice
a missed small one or a spurious blob. The BraTS 2023 lesion-wise scores count every lesion once:

1. Lesions. The ground-truth region mask (WT, TC or ET) is dilated ``dilation`` times with the 3×3×3
   18-neighbourhood (``scipy.ndimage.generate_binary_structure(3, 2)``); the 26-connected components of
   the dilated mask group the ground-truth voxels: one lesion is the set of ground-truth voxels inside one
   dilated component, so blobs closer than about twice ``dilation`` voxels count as one lesion. Its
   *matching zone* is the lesion dilated again the same way, which is exactly its dilated component.
2. Predicted components: the 26-connected components of the predicted region mask.
3. Matching: a predicted component matches a lesion when it has a voxel in the lesion's matching zone (a
   component may match several lesions). A lesion's prediction is the union of the whole components
   matching it.
4. Per lesion: Dice = 2·|P∩L| / (|P| + |L|) in voxels; HD95 = the larger of the two directed 95th
   percentiles of the surface distances in mm, each percentile weighted by surface-element area
   (:func:`surface_hd95`; not MONAI's ``compute_hausdorff_distance``, which the whole-volume HD95 uses). A
   lesion without a matching component scores Dice 0 and HD95 374 mm.
5. False positives: predicted components matching no lesion (a lesion too small to count still absorbs
   its matches); each scores Dice 0 and HD95 374 mm.
6. Small lesions: a lesion whose volume (voxels × voxel volume, mm³) is at most ``min_volume_mm3`` is left
   out of the score, matched or not.
7. Case score: Dice = Σ lesion Dice / (L + FP), HD95 = (Σ lesion HD95 + 374·FP) / (L + FP), with L the
   lesions that count and FP the false-positive components. With nothing to count (L + FP = 0: both masks
   empty, or only small lesions and no false positive) the score is Dice 1, HD95 0; an empty ground truth
   with a non-empty prediction therefore gives Dice 0 and HD95 374.

``CHALLENGES`` holds the dilation and volume threshold of each BraTS 2023 challenge (the same for WT, TC and
ET). docs/evaluation.md names the source of these definitions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmamba.data.labels import LabelConvention

__all__ = [
    "CHALLENGES", "DEFAULT_CHALLENGE", "LesionWiseSettings", "LesionScore", "LesionWiseResult", "LESION_MISS_HD95_MM",
    "LESION_METRICS", "get_challenge", "surface_hd95", "lesion_wise_scores", "case_lesion_wise", "LesionWise",
]

#: The challenge whose settings are used when none is named: glioma, the BraTS task medmamba's data follow.
DEFAULT_CHALLENGE = "GLI"

#: HD95 (mm) of a missed lesion and of a false-positive component, as the BraTS 2023 evaluation scores them.
LESION_MISS_HD95_MM = 374.0

#: The per-region case scores, named as the per-case CSV names them.
LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95")


@dataclass(frozen=True)
class LesionWiseSettings:
    """How lesions are found and which count.

    Attributes:
        name: the challenge (a ``CHALLENGES`` key) or ``"custom"``.
        dilation: dilation iterations (voxels) grouping nearby ground-truth blobs into one lesion; 0: none.
        min_volume_mm3: lesions of at most this volume (mm³) are left out of the score.
    """

    name: str
    dilation: int
    min_volume_mm3: float


#: The BraTS 2023 challenges' settings: glioma (GLI), sub-Saharan Africa glioma (SSA), meningioma (MEN),
#: paediatric (PED), metastases (MET).
CHALLENGES: dict[str, LesionWiseSettings] = {
    "GLI": LesionWiseSettings("GLI", dilation=3, min_volume_mm3=50.0),
    "SSA": LesionWiseSettings("SSA", dilation=3, min_volume_mm3=50.0),
    "MEN": LesionWiseSettings("MEN", dilation=1, min_volume_mm3=50.0),
    "PED": LesionWiseSettings("PED", dilation=3, min_volume_mm3=50.0),
    "MET": LesionWiseSettings("MET", dilation=1, min_volume_mm3=2.0),
}


def get_challenge(challenge: str | LesionWiseSettings) -> LesionWiseSettings:
    """The settings of a ``CHALLENGES`` key (``"GLI"``; ``"BraTS-GLI"`` too); settings are returned as they are."""
    if isinstance(challenge, LesionWiseSettings):
        return challenge
    key = str(challenge).upper().removeprefix("BRATS-")
    if key not in CHALLENGES:
        raise ValueError(f"unknown BraTS 2023 challenge {challenge!r} for lesion-wise scores; known: "
                         f"{', '.join(CHALLENGES)}")
    return CHALLENGES[key]


@dataclass(frozen=True)
class LesionScore:
    """One ground-truth lesion.

    Attributes:
        voxels: its ground-truth voxels.
        volume_mm3: ``voxels`` × the voxel volume.
        matched_components: predicted components matching it.
        dice, hd95: its Dice and HD95 (mm); 0 and ``LESION_MISS_HD95_MM`` when nothing matches.
        counted: whether its volume exceeds the threshold (only those enter the case score).
    """

    voxels: int
    volume_mm3: float
    matched_components: int
    dice: float
    hd95: float
    counted: bool


@dataclass(frozen=True)
class LesionWiseResult:
    """The lesion-wise scores of one binary mask pair.

    Attributes:
        dice, hd95: the case's lesion-wise Dice and HD95 (mm) (module docstring, step 7).
        tp: counted lesions matched by a predicted component (the challenge's ``Num_TP``).
        fn: counted lesions matched by none (``Num_FN``).
        fp: predicted components matching no lesion (``Num_FP``).
        lesions: every ground-truth lesion, counted or not, in the order of the dilated components.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    lesions: tuple[LesionScore, ...]


_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # the 18-neighbourhood


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"voxel spacing must be three positive numbers (mm), got {list(np.ravel(spacing))}")
    return values  # type: ignore[return-value]


def _check_settings(dilation: int, min_volume_mm3: float) -> tuple[int, float]:
    if isinstance(dilation, bool) or not float(dilation).is_integer() or dilation < 0:
        raise ValueError(f"the lesion dilation must be a whole number of voxels >= 0, got {dilation!r}")
    threshold = float(min_volume_mm3)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"the lesion volume threshold must be a finite number of mm³ >= 0, got {min_volume_mm3!r}")
    return int(dilation), threshold


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The first distance, in ascending order, whose cumulative share of the surface area reaches
    ``percent`` %. Ties in distance are ordered by area, so the float sums, and with them a share that
    lands exactly on the percentile, come out as in the challenge code."""
    order = np.lexsort((areas, distances))
    distances, areas = distances[order], areas[order]
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


@functools.lru_cache(maxsize=16)
def _surface_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Surface area (mm²) of each of the 256 2×2×2 neighbourhood codes for a voxel spacing, in float64.

    MONAI keeps the marching-cubes surface normals of each code (its ``compute_surface_dice`` measures
    surfaces with them) but builds its area table in float32; the sums here are taken in float64, normal by
    normal, so that areas, and the percentiles weighted by them, are exact to the last bit.
    """
    from monai.metrics.utils import _get_neighbour_code_to_normals_table

    normals = np.asarray(_get_neighbour_code_to_normals_table().cpu().numpy(), dtype=np.float64)  # (256, 4, 3)
    sx, sy, sz = spacing
    table = np.zeros(256, dtype=np.float64)
    for code in range(256):
        total = 0.0
        for nx, ny, nz in normals[code]:
            if nx or ny or nz:
                total += np.linalg.norm(np.array([nx * sy * sz, ny * sx * sz, nz * sx * sy]))
        table[code] = total
    return table


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The code of every 2×2×2 neighbourhood of ``mask`` padded with one empty voxel on every side:
    bit 7 − (4a + 2b + c) is set when the neighbourhood's voxel at offset (a, b, c) is inside. Shape: that of
    ``mask`` plus one along each axis."""
    padded = np.pad(np.asarray(mask, np.uint8), 1)
    n0, n1, n2 = (size - 1 for size in padded.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                codes |= padded[a:a + n0, b:b + n1, c:c + n2] << np.uint8(7 - (4 * a + 2 * b + c))
    return codes


def surface_hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 (mm) of two non-empty 3D masks, the surface elements weighted by their area.

    A surface element is a 2×2×2 voxel neighbourhood that is neither empty nor full, placed at the
    neighbourhood's centre, with the surface area the marching-cubes triangles of its configuration have at
    this voxel spacing (the surface measure of MONAI's ``compute_surface_dice(use_subvoxels=True)``). For
    each mask the distances (mm) of its elements to the nearest element of the other mask are sorted, and
    the first whose cumulative share of the mask's surface area reaches 95 % is taken; HD95 is the larger of
    the two.

    Args:
        pred, gt: bool masks (X, Y, Z) of one shape, both non-empty.
        spacing: voxel size in mm along X, Y, Z.
    Raises:
        ValueError: a mask is empty, the shapes differ, or the spacing is not three positive numbers.
    """
    spacing = _check_spacing(spacing)
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"surface_hd95 needs two 3D masks of one shape, got {pred.shape} and {gt.shape}")
    union = pred | gt
    box = tuple(slice(int(hit[0]), int(hit[-1]) + 1) for hit in
                (np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)))
    if not pred.any() or not gt.any():
        raise ValueError("surface_hd95 needs two non-empty masks")
    table = _surface_area_table(spacing)
    distances, areas = {}, {}
    surfaces = {}
    for name, mask in (("pred", pred), ("gt", gt)):
        codes = _neighbour_codes(mask[box])
        surfaces[name] = (codes != 0) & (codes != 255)
        areas[name] = table[codes[surfaces[name]]]
    for name, other in (("pred", "gt"), ("gt", "pred")):
        to_other = ndimage.distance_transform_edt(~surfaces[other], sampling=spacing)
        distances[name] = to_other[surfaces[name]]
    return max(_weighted_percentile(distances["gt"], areas["gt"], 95.0),
               _weighted_percentile(distances["pred"], areas["pred"], 95.0))


def _union_slices(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def lesion_wise_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], *, dilation: int = 3,
                       min_volume_mm3: float = 50.0) -> LesionWiseResult:
    """Lesion-wise Dice and HD95 of one region's binary masks (module docstring for the definitions).

    Args:
        pred: predicted mask (X, Y, Z), bool or 0/1.
        gt: ground-truth mask (X, Y, Z), the same shape and voxel grid.
        spacing: voxel size in mm along X, Y, Z.
        dilation: dilation iterations grouping ground-truth blobs into lesions (default 3, BraTS-GLI's).
        min_volume_mm3: lesions of at most this volume are not scored (default 50, BraTS-GLI's).
    Returns:
        the :class:`LesionWiseResult`.
    Raises:
        ValueError: masks that differ in shape or are not 3D, a bad spacing, dilation or threshold.
    """
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction shape {np.shape(pred)} differs from ground-truth shape {np.shape(gt)}")
    if np.ndim(gt) != 3:
        raise ValueError(f"masks must be 3D (X, Y, Z), got shape {np.shape(gt)}")
    spacing = _check_spacing(spacing)
    dilation, threshold = _check_settings(dilation, min_volume_mm3)
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    union = pred | gt
    if not union.any():
        return LesionWiseResult(dice=1.0, hd95=0.0, tp=0, fn=0, fp=0, lesions=())
    # Everything below happens within `dilation` voxels of the union's bounding box (each dilation step moves
    # at most one voxel along each axis), so cropping to that box changes no component and no score.
    box = tuple(slice(max(int(hit[0]) - dilation, 0), min(int(hit[-1]) + dilation + 1, union.shape[axis]))
                for axis, hit in enumerate(np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
                                           for axis in range(3)))
    pred, gt = pred[box], gt[box]

    pred_components, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    pred_boxes = ndimage.find_objects(pred_components)
    zone = ndimage.binary_dilation(gt, structure=_DILATION_STRUCTURE, iterations=dilation) if dilation else gt
    # Each dilated component is one lesion's matching zone: dilating the lesion's own voxels again, as the
    # challenge code does, gives back exactly that component, since every point of it lies within the
    # dilation distance of a ground-truth voxel that is 26-connected to it through the dilation.
    zones, n_lesions = ndimage.label(zone, structure=_CONNECTIVITY_26)
    zone_boxes = ndimage.find_objects(zones)

    lesions: list[LesionScore] = []
    matched_anywhere: set[int] = set()
    for number, zone_box in enumerate(zone_boxes, start=1):
        in_zone = zones[zone_box] == number
        lesion_in_box = gt[zone_box] & in_zone
        voxels = int(np.count_nonzero(lesion_in_box))
        matched = np.unique(pred_components[zone_box][in_zone])
        matched = matched[matched != 0]
        matched_anywhere.update(int(m) for m in matched)
        if matched.size:
            crop = _union_slices([zone_box, *(pred_boxes[m - 1] for m in matched)])
            lesion = (zones[crop] == number) & gt[crop]
            predicted = np.isin(pred_components[crop], matched)
            overlap = int(np.count_nonzero(lesion & predicted))
            dice = 2.0 * overlap / (voxels + int(np.count_nonzero(predicted)))
            hd95 = surface_hd95(predicted, lesion, spacing)
        else:
            dice, hd95 = 0.0, LESION_MISS_HD95_MM
        volume = voxels * spacing[0] * spacing[1] * spacing[2]  # left to right, as the challenge code multiplies
        lesions.append(LesionScore(voxels=voxels, volume_mm3=volume, matched_components=int(matched.size),
                                   dice=dice, hd95=hd95, counted=volume > threshold))

    counted = [les for les in lesions if les.counted]
    fp = n_pred - len(matched_anywhere)
    total = len(counted) + fp
    if total == 0:
        case_dice, case_hd95 = 1.0, 0.0
    else:
        case_dice = sum(les.dice for les in counted) / total
        case_hd95 = (sum(les.hd95 for les in counted) + LESION_MISS_HD95_MM * fp) / total
    tp = sum(1 for les in counted if les.matched_components)
    return LesionWiseResult(dice=float(case_dice), hd95=float(case_hd95), tp=tp, fn=len(counted) - tp, fp=fp,
                            lesions=tuple(lesions))


def case_lesion_wise(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                     convention: str | LabelConvention, *,
                     challenge: str | LesionWiseSettings = DEFAULT_CHALLENGE) -> dict[str, LesionWiseResult]:
    """Lesion-wise scores of one case for WT, TC and ET.

    Args:
        pred: predicted label map (X, Y, Z) in ``convention``.
        gt: ground-truth label map (X, Y, Z) in ``convention``, the same shape and voxel grid.
        spacing: voxel size in mm along X, Y, Z (that of the ground truth).
        convention: label convention of both maps (a ``CONVENTIONS`` key or a ``LabelConvention``); the
            regions are those of :func:`medmamba.evaluation.metrics.region_masks`.
        challenge: a ``CHALLENGES`` key (default ``"GLI"``) or ``LesionWiseSettings``.
    Returns:
        ``{"WT": LesionWiseResult, "TC": ..., "ET": ...}``.
    Raises:
        ValueError: shapes differ, label values outside the convention, a bad spacing or challenge.
    """
    from medmamba.evaluation.metrics import paired_region_masks

    settings = get_challenge(challenge)
    pred_masks, gt_masks = paired_region_masks(pred, gt, convention)
    return {region: lesion_wise_scores(pred_masks[region], gt_masks[region], spacing, dilation=settings.dilation,
                                       min_volume_mm3=settings.min_volume_mm3) for region in gt_masks}


class LesionWise:
    """Callable form of :func:`lesion_wise_scores` with the settings fixed, as MONAI pairs its metric
    classes with ``compute_*`` functions.

    Example::

        score = LesionWise("GLI")
        result = score(pred_mask, gt_mask, spacing=(1.0, 1.0, 1.0))  # LesionWiseResult
    """

    def __init__(self, challenge: str | LesionWiseSettings = DEFAULT_CHALLENGE) -> None:
        self.settings = get_challenge(challenge)
        _check_settings(self.settings.dilation, self.settings.min_volume_mm3)

    def __call__(self, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> LesionWiseResult:
        """Score binary masks (X, Y, Z) with spacing in mm (see :func:`lesion_wise_scores`)."""
        return lesion_wise_scores(pred, gt, spacing, dilation=self.settings.dilation,
                                  min_volume_mm3=self.settings.min_volume_mm3)
