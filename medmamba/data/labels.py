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

Label sets (any other dataset)
    Data that is not BraTS has its own labels, e.g. ``{0: background, 1: liver, 2: spleen}`` or a binary
    ``{0: background, 1: lesion}``. :func:`label_set` makes a :class:`LabelConvention` of them: label-based
    (no regions; nnU-Net trains softmax over the labels), its values mapped in increasing order onto
    nnU-Net's consecutive ``0 … N-1`` (nnU-Net requires consecutive labels; the user's values are written
    back). Names come from the user (``--label-names liver=1 spleen=2``) or from an nnU-Net
    ``dataset.json`` (:func:`convention_of_dataset_json`). Every convention lists the regions it is scored
    on (:attr:`LabelConvention.region_names`): WT, TC, ET for BraTS; each label of a label set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONVENTIONS", "CONVENTION_ALIASES", "LabelConvention", "get_convention", "to_nnunet_labels", "from_nnunet_labels",
    "present_values", "detect_convention", "BRATS_REGIONS", "short_region_name", "label_set",
    "parse_label_names", "convention_from_json", "convention_of_dataset_json",
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
        regions_class_order: the ``regions_class_order`` entry of dataset.json; empty for a label-based
            convention (a label set).
        et_label: the native value of enhancing tumour (MONAI's ``et_label``); None outside BraTS.
    """

    name: str
    description: str
    names: Mapping[int, str]
    to_nnunet: Mapping[int, int]
    nnunet_labels: Mapping[str, tuple[int, ...] | int]
    regions_class_order: tuple[int, ...]
    et_label: int | None

    @property
    def region_based(self) -> bool:
        """Whether nnU-Net trains it on (overlapping) regions, sigmoid per region (BraTS), rather than on
        its labels with a softmax."""
        return bool(self.regions_class_order)

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        """What it is scored on: region (or label) short name → the nnU-Net labels it covers, in
        dataset.json order, background left out (BraTS: ``{"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}``;
        a label set: one entry per label)."""
        out = {}
        for name, members in self.nnunet_labels.items():
            if name in ("background", "ignore"):
                continue
            out[short_region_name(name)] = (members,) if isinstance(members, int) else tuple(members)
        return out

    @property
    def title(self) -> str:
        """How reports name it: a BraTS convention's name (``brats2021``), or a label set with its labels
        (``labels (1 liver, 2 spleen)``)."""
        return self.name if CONVENTIONS.get(self.name) == self else f"{self.name} ({self.description})"

    @property
    def region_names(self) -> tuple[str, ...]:
        """The names of :attr:`regions`, in order (the columns of every score table)."""
        return tuple(self.regions)

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


#: Name of every label-set convention (its labels are in its record, not in ``CONVENTIONS``).
LABEL_SET = "labels"
_NAME_RE = r"[A-Za-z][A-Za-z0-9_ .-]*"


def label_set(names: Mapping[int, str], *, source: str = "") -> LabelConvention:
    """A label-based convention for any dataset: ``{1: "liver", 2: "spleen"}`` (background 0 is added
    when missing) → nnU-Net labels ``{"background": 0, "liver": 1, "spleen": 2}``.

    The user's values map in increasing order onto ``0 … N-1``; 0 must be background.

    Args:
        names: label value → name; names are letters, digits, ``_ .-`` and start with a letter.
        source: where the names come from, for messages (e.g. "--label-names").
    Raises:
        ValueError: a negative value, a value without a name, duplicate or invalid names, a name for 0
            other than "background", or no foreground label.
    """
    import re

    where = f" ({source})" if source else ""
    names = {int(v): str(n).strip() for v, n in names.items()}
    names.setdefault(0, "background")
    if names[0] != "background":
        raise ValueError(f"label 0 is the background, named {names[0]!r}{where}")
    if any(v < 0 or v > 255 for v in names):
        raise ValueError(f"label values must be 0-255, got {sorted(v for v in names if v < 0 or v > 255)}{where}")
    if len(names) < 2:
        raise ValueError(f"no foreground label named{where}")
    bad = [n for v, n in names.items() if v and (not re.fullmatch(_NAME_RE, n) or n in ("background", "ignore"))]
    if bad:
        raise ValueError(f"label name {bad[0]!r} is not usable{where}: letters, digits, '_', ' ', '.', '-', "
                         f"starting with a letter, not 'background' or 'ignore'")
    if len(set(names.values())) != len(names):
        dup = next(n for n in names.values() if list(names.values()).count(n) > 1)
        raise ValueError(f"label name {dup!r} is given to two values{where}")
    values = sorted(names)
    to_nnunet = {v: i for i, v in enumerate(values)}
    description = ", ".join(f"{v} {names[v]}" for v in values if v)
    return LabelConvention(
        name=LABEL_SET, description=description, names=dict(sorted(names.items())), to_nnunet=to_nnunet,
        nnunet_labels={names[v]: to_nnunet[v] for v in values}, regions_class_order=(), et_label=None)


def parse_label_names(items: Sequence[str]) -> LabelConvention:
    """``["liver=1", "spleen=2"]`` (the ``--label-names`` of the command line) → :func:`label_set`.

    Raises:
        ValueError: an item that is not ``NAME=VALUE`` with an integer value, or what ``label_set`` refuses.
    """
    names: dict[int, str] = {}
    for item in items:
        name, sep, value = str(item).rpartition("=")
        try:
            number = int(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise ValueError(f"--label-names: {item!r} is not NAME=VALUE (e.g. lesion=1)")
        if number in names:
            raise ValueError(f"--label-names: value {number} is named twice ({names[number]!r}, {name!r})")
        names[number] = name
    return label_set(names, source="--label-names")


def convention_from_json(record: Mapping) -> LabelConvention:
    """The convention of an :meth:`LabelConvention.as_json` record (as ``medmamba_dataset.json`` keeps it).

    Raises:
        ValueError: a BraTS convention whose stored mapping is not the one this medmamba knows, or a
            record that is not a convention.
    """
    try:
        name = record["name"]
        stored = {int(k): int(v) for k, v in record["to_nnunet"].items()}
        if name != LABEL_SET:
            conv = CONVENTIONS.get(name)
            if conv is None or dict(conv.to_nnunet) != stored:
                raise ValueError(f"label convention {name!r} recorded with mapping {stored} is not the one this "
                                 f"medmamba knows")
            return conv
        conv = label_set({int(k): v for k, v in record["names"].items()})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a label convention record ({exc!r})") from None
    if dict(conv.to_nnunet) != stored:
        raise ValueError(f"label set recorded with mapping {stored}, which is not its values in order")
    return conv


def convention_of_dataset_json(dataset_json: Mapping) -> LabelConvention:
    """The convention of an nnU-Net raw dataset that medmamba did not convert: its labels as they are
    (nnU-Net's values are the user's). Label-based: a :func:`label_set`; region-based: the regions of
    its ``labels``, each label value (``regions_class_order``) kept as it is.

    Raises:
        ValueError: labels nnU-Net would refuse (not consecutive from 0, no background).
    """
    labels = dict(dataset_json["labels"])
    order = tuple(int(v) for v in dataset_json.get("regions_class_order") or ())
    if not order:
        return label_set({int(v): n for n, v in labels.items() if n != "ignore"}, source="dataset.json")
    values = (0, *order)
    name = "dataset.json regions"
    names = {0: "background", **{v: f"label {v}" for v in order}}
    regions = {n: tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for n, v in labels.items()
               if n not in ("background", "ignore")}
    return LabelConvention(
        name=name, description=", ".join(f"{short_region_name(n)} = labels {list(m)}" for n, m in regions.items()),
        names=names, to_nnunet={v: v for v in values},
        nnunet_labels={"background": 0, **regions}, regions_class_order=order, et_label=None)


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
