"""BraTS label conventions and their mapping to nnU-Net's region-based label space.

Every convention maps onto one nnU-Net label space, the one of nnU-Net's ``Dataset137_BraTS21``:

=====  =====================================  ===============================
value  meaning                                regions it belongs to
=====  =====================================  ===============================
0      background                             —
1      edema (ED / SNFH)                      WT
2      tumour core that does not enhance      WT, TC
       (NCR, NCR/NET)
3      enhancing tumour (ET)                  WT, TC, ET
4      non-enhancing tumour (2013/2015 only)  WT, TC
=====  =====================================  ===============================

with ``labels = {background: 0, whole tumor: (1, 2, 3), tumor core: (2, 3), enhancing tumor: (3,)}`` and
``regions_class_order = (1, 2, 3)``, exactly as Dataset137 (the 2013/2015 space adds label 4 to WT and TC).
One shared space means a model trained on data in one convention can write its predictions in any other.

Conventions (``CONVENTIONS``):

- ``brats2021`` (2017–2021): 1 NCR, 2 ED, 4 ET. To nnU-Net: 2 → 1, 1 → 2, 4 → 3 (Dataset137's remap).
- ``brats2023`` (2023 GLI): 1 NCR, 2 SNFH, 3 ET. To nnU-Net: 2 → 1, 1 → 2, 3 → 3 (the 1 ↔ 2 swap that lets
  the 2023 data reuse Dataset137's regions).
- ``brats2015`` (2013/2015): 1 necrosis, 2 edema, 3 non-enhancing tumour, 4 enhancing. The reference rule is
  "3 → 1 before applying the 2017+ region rules", i.e. non-enhancing tumour belongs to TC and WT but not ET.
  Merging 3 into 1 would lose it, so it gets its own nnU-Net label 4 instead (2 → 1, 1 → 2, 4 → 3, 3 → 4),
  placed in the WT and TC regions: the regions are those of the 3 → 1 rule and the mapping stays a bijection.
  Region-based predictions cannot tell necrosis from non-enhancing tumour (both are "TC without ET"), so
  predictions written back in this convention use 1 for the whole non-enhancing core, never 3.
- ``msd_task01`` (Medical Segmentation Decathlon Task01, the MONAI tutorial data): 1 edema, 2 non-enhancing
  tumour, 3 enhancing; already nnU-Net's space. Never auto-detected (its values are those of ``brats2023``
  with another meaning): pass it explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONVENTIONS", "CONVENTION_ALIASES", "LabelConvention", "get_convention", "to_nnunet_labels", "from_nnunet_labels",
    "present_values", "detect_convention", "BRATS_REGIONS", "short_region_name",
]

# nnU-Net label values shared by every convention (Dataset137's remapped space).
NNUNET_BACKGROUND, NNUNET_EDEMA, NNUNET_CORE, NNUNET_ENHANCING, NNUNET_NONENHANCING = 0, 1, 2, 3, 4
REGIONS_CLASS_ORDER: tuple[int, ...] = (1, 2, 3)



#: The BraTS regions by their short names and the dataset.json label name of each in nnU-Net's space.
BRATS_REGIONS: dict[str, str] = {"WT": "whole tumor", "TC": "tumor core", "ET": "enhancing tumor"}


def short_region_name(nnunet_name: str) -> str:
    """"whole tumor" → "WT" (the BraTS regions); any other dataset.json label name is returned as it is."""
    return {v: k for k, v in BRATS_REGIONS.items()}.get(nnunet_name, nnunet_name)

@dataclass(frozen=True)
class LabelConvention:
    """One label convention: what its values mean and how they map to nnU-Net's label space.

    Attributes:
        name: registry key, e.g. ``"brats2021"``.
        description: one line for summaries.
        names: native label value → meaning, background included.
        to_nnunet: native label value → nnU-Net label value; a bijection onto ``range(len(to_nnunet))``.
        nnunet_labels: the ``labels`` entry of nnU-Net's dataset.json (name → region tuple).
        regions_class_order: the ``regions_class_order`` entry of dataset.json.
        et_label: the native value of enhancing tumour (MONAI's ``et_label``).
    """

    name: str
    description: str
    names: Mapping[int, str]
    to_nnunet: Mapping[int, int]
    nnunet_labels: Mapping[str, tuple[int, ...] | int]
    regions_class_order: tuple[int, ...]
    et_label: int

    @property
    def values(self) -> tuple[int, ...]:
        """The valid native label values, sorted."""
        return tuple(sorted(self.to_nnunet))

    @property
    def from_nnunet(self) -> dict[int, int]:
        """nnU-Net label value → native label value (the inverse of ``to_nnunet``)."""
        return {v: k for k, v in self.to_nnunet.items()}

    def as_json(self) -> dict:
        """A JSON-ready record of the convention (written beside dataset.json)."""
        return {
            "name": self.name,
            "description": self.description,
            "names": {str(k): v for k, v in sorted(self.names.items())},
            "to_nnunet": {str(k): v for k, v in sorted(self.to_nnunet.items())},
            "from_nnunet": {str(k): v for k, v in sorted(self.from_nnunet.items())},
            "nnunet_labels": {k: list(v) if isinstance(v, tuple) else v for k, v in self.nnunet_labels.items()},
            "regions_class_order": list(self.regions_class_order),
            "et_label": self.et_label,
        }


_REGIONS_137 = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}

CONVENTIONS: dict[str, LabelConvention] = {
    "brats2021": LabelConvention(
        name="brats2021", description="BraTS 2017–2021: 1 NCR, 2 ED, 4 ET",
        names={0: "background", 1: "NCR", 2: "ED", 4: "ET"},
        to_nnunet={0: 0, 1: 2, 2: 1, 4: 3},
        nnunet_labels=_REGIONS_137, regions_class_order=REGIONS_CLASS_ORDER, et_label=4),
    "brats2023": LabelConvention(
        name="brats2023", description="BraTS 2023 GLI: 1 NCR, 2 SNFH, 3 ET",
        names={0: "background", 1: "NCR", 2: "SNFH", 3: "ET"},
        to_nnunet={0: 0, 1: 2, 2: 1, 3: 3},
        nnunet_labels=_REGIONS_137, regions_class_order=REGIONS_CLASS_ORDER, et_label=3),
    "brats2015": LabelConvention(
        name="brats2015", description="BraTS 2013/2015: 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing",
        names={0: "background", 1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"},
        to_nnunet={0: 0, 1: 2, 2: 1, 3: 4, 4: 3},
        nnunet_labels={"background": 0, "whole tumor": (1, 2, 3, 4), "tumor core": (2, 3, 4),
                       "enhancing tumor": (3,)},
        regions_class_order=REGIONS_CLASS_ORDER, et_label=4),
    "msd_task01": LabelConvention(
        name="msd_task01", description="MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour",
        names={0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        to_nnunet={0: 0, 1: 1, 2: 2, 3: 3},
        nnunet_labels=_REGIONS_137, regions_class_order=REGIONS_CLASS_ORDER, et_label=3),
}


#: Short names accepted for the BraTS conventions (the year alone).
CONVENTION_ALIASES = {"2015": "brats2015", "2021": "brats2021", "2023": "brats2023"}


def get_convention(convention: str | LabelConvention) -> LabelConvention:
    """Look a convention up by name (``CONVENTIONS`` keys, or a year of :data:`CONVENTION_ALIASES`); a
    ``LabelConvention`` is returned as is."""
    if isinstance(convention, LabelConvention):
        return convention
    try:
        return CONVENTIONS[CONVENTION_ALIASES.get(convention, convention)]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; known: {', '.join(CONVENTIONS)}") from None


def present_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of an integer-valued label array, sorted (int64).

    Args:
        array: label map of any shape, integer dtype or float with integral values.
    Raises:
        ValueError: non-finite or non-integral values.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.bool_:
            raise ValueError(f"label voxels have type {arr.dtype}, not a number")
        if arr.dtype != np.bool_:
            if not np.isfinite(arr).all():
                raise ValueError("label map contains NaN or Inf")
            if not (arr == np.round(arr)).all():
                bad = arr[arr != np.round(arr)]
                raise ValueError(f"label map contains non-integer values, e.g. {bad.flat[0]:g}")
        arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo < 1 << 20:  # a histogram is much faster than np.unique's sort on whole volumes
        counts = np.bincount((arr.ravel() - lo).astype(np.intp, copy=False), minlength=hi - lo + 1)
        return np.flatnonzero(counts).astype(np.int64) + lo
    return np.unique(arr).astype(np.int64)


def _apply_mapping(array: np.ndarray, mapping: Mapping[int, int], what: str) -> np.ndarray:
    values = present_values(array)
    bad = [int(v) for v in values if int(v) not in mapping]
    if bad:
        raise ValueError(f"{what}: values {bad} are outside the valid set {sorted(mapping)}")
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int64)
    if values.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo = int(values[0])
    lut = np.zeros(int(values[-1]) - lo + 1, np.uint8)
    for v in values:
        lut[int(v) - lo] = mapping[int(v)]
    return lut[(arr - lo).astype(np.intp, copy=False)]


def to_nnunet_labels(array: np.ndarray, convention: str | LabelConvention) -> np.ndarray:
    """Map a label map in a BraTS convention to nnU-Net's label space (module docstring).

    Args:
        array: label map, any shape (typically (X, Y, Z)), integer values of the convention.
        convention: a ``CONVENTIONS`` key or a ``LabelConvention``.
    Returns:
        uint8 array of the same shape with nnU-Net labels.
    Raises:
        ValueError: a value outside the convention (the message lists them).
    """
    conv = get_convention(convention)
    return _apply_mapping(array, conv.to_nnunet, f"label convention {conv.name}")


def from_nnunet_labels(array: np.ndarray, convention: str | LabelConvention) -> np.ndarray:
    """Map an nnU-Net label map (e.g. a prediction) back to a BraTS convention.

    The exact inverse of ``to_nnunet_labels`` on valid values.

    Args:
        array: nnU-Net label map, any shape, values in ``range(len(convention.to_nnunet))``.
        convention: a ``CONVENTIONS`` key or a ``LabelConvention``.
    Returns:
        uint8 array of the same shape in the convention's values.
    """
    conv = get_convention(convention)
    return _apply_mapping(array, conv.from_nnunet, f"nnU-Net labels of convention {conv.name}")


def detect_convention(values: set[int] | frozenset[int]) -> tuple[str | None, str]:
    """Guess the convention from the label values present in a whole dataset.

    Rules: both 3 and 4 present → ``brats2015``; 4 without 3 → ``brats2021``; 3 without 4 → ``brats2023``;
    neither → ``None`` (ambiguous: 1 and 2 mean the same in every BraTS convention, only the enhancing
    label differs). ``msd_task01`` is never guessed.

    Returns:
        (name or None, a sentence explaining the choice).
    """
    vals = {int(v) for v in values}
    if {3, 4} <= vals:
        return "brats2015", "labels 3 and 4 both occur (2013/2015: 3 non-enhancing, 4 enhancing)"
    if 4 in vals:
        return "brats2021", "label 4 occurs and label 3 does not (2017–2021: 4 enhancing)"
    if 3 in vals:
        return "brats2023", "label 3 occurs and label 4 does not (2023: 3 enhancing)"
    return None, "no enhancing-tumour label (3 or 4) occurs in any label file"
