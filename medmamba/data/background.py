"""Constant backgrounds that are not 0: detected per case and channel, mapped to 0 the way nnU-Net needs.

Why: nnU-Net knows one background value, 0. Its ``crop_to_nonzero`` crops every case to the box of
voxels that are non-zero in any channel, and its z-score normalisation runs inside that mask when
cropping shrank the dataset's images (``use_mask_for_norm``, decided by the planner from the median
relative size after cropping < 0.75). Many real exports are z-scored inside the brain and keep a
constant **negative** value outside it (−μ/σ of the image, e.g. −1.71), or are CT scans padded with
−1024/−2048 outside the reconstruction circle. For nnU-Net such a background is foreground: nothing
is cropped (prediction slides over the whole volume, mostly air) and every channel is z-scored over
air and brain together.

Detection (:func:`detect_border`), per case and channel
    The border is the voxels of the six faces of the volume. The border value is the value held by
    **strictly more than half** of them, compared exactly in the stored type (integers or floats
    alike), or none. Why a strict majority: it makes the value unique, and it separates the two
    situations cleanly. An export's background covers nearly its whole border (the head touches a
    face in a few places at most; a BraTS 240×240×155 volume has > 95 % of its border outside the
    head), while an image whose air holds scanner noise (not skull-stripped MR, CT air at −1000 ± 20)
    has no value on even a few percent of its border. A value of 0 is nnU-Net's own background and is
    left as it is.

Treatment (:func:`treat_background`), per channel by the normalisation nnU-Net gives its name
    - **z-score** (any channel name but the ones below) and ``rescale_to_0_1``: per case
      ``x' = x − c``, c the case's border value (nothing when it has none, or 0). These
      normalisations are per image and shift-invariant (z-scoring inside the mask subtracts the mean
      of the same voxels), so the shift changes nothing but what nnU-Net takes for background: c
      becomes exactly 0 (in IEEE arithmetic ``x − c == 0`` only when ``x == c``), every other voxel
      stays non-zero. Voxels of the foreground that equal c exactly become 0 as well, as a brain
      voxel of exactly 0 does in BraTS data; inside the head nnU-Net's mask fills such holes
      (``binary_fill_holes``), so they are still cropped to and normalised. Foreground voxels that
      were exactly 0 before are no longer 0: the shift removes that source of holes.
    - **CT**: nnU-Net's CT normalisation is global (clip to the dataset's foreground percentiles,
      subtract its mean, divide by its sd), so a per-case shift would move each case differently.
      Instead the background of each case (the voxels of its border value connected to the border:
      the constant padding outside the reconstruction circle, e.g. −2048, or air clipped at −1024)
      becomes 0, and **every other voxel of every case** moves by one offset K for the whole
      dataset: ``x' = x + K`` there, with ``K = max(0, 1 − floor(m))`` and m the smallest voxel of
      the training cases, so that everything else is ≥ 1. A global shift moves the percentiles and
      the mean by K and leaves the sd alone, so CT normalisation gives the same numbers as before;
      the padding, now 0, lies below the lower percentile as it did and is clipped to the same
      value. Only the border-connected part becomes 0: a voxel inside the body that happens to hold
      the padding value (water at 0 HU when a scanner pads with 0, lung air at −1024) keeps its
      intensity, x + K. A case at prediction darker than every training case (x + K ≤ 0) is
      clipped to the lower percentile anyway. Applied only when some training case has a non-zero
      border value in that channel; a CT dataset whose air is noise (no constant border) needs
      nothing for its normalisation, which never uses a mask for CT: it only stays uncropped, which
      costs time, not accuracy.
    - ``noNorm`` and ``rgb_to_0_1``: the network sees the values as they are, so they are left
      alone (a shift would change them).

Integer data stays integer (widened when the shift would overflow its type); float data becomes
float32, what nnU-Net's readers return anyway, so the values nnU-Net reads from a converted copy are
the ones :meth:`DatasetBackground.transform` gives at prediction from the original file.

Where: :func:`medmamba.data.brats.validate` detects the border of every image while it reads it,
:func:`medmamba.data.brats.convert_to_nnunet` writes treated copies of the images that change into
the raw dataset's ``imagesTr`` (the user's files are never written to) and records the treatment in
``medmamba_dataset.json`` (:meth:`DatasetBackground.as_json`), and the predictor applies the same
treatment to each case after reading it (:meth:`DatasetBackground.from_record`,
:meth:`DatasetBackground.transform`). :meth:`DatasetBackground.summary` is the line the user reads;
docs/cpu.md explains all this to the user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Border", "ChannelTreatment", "DatasetBackground", "detect_border", "treat_background",
           "TREATMENTS"]

#: ``shift``: per-case x − c (per-image normalisations); ``ct``: c → 0 and one offset for every other
#: voxel (global CT normalisation); ``none``: left as it is.
TREATMENTS = ("shift", "ct", "none")


@dataclass(frozen=True)
class Border:
    """What the border (the six faces) of one channel of one case holds.

    Attributes:
        value: the value of strictly more than half of the border voxels, or None.
        share: the fraction of border voxels holding the most frequent value (0–1).
        minimum: the smallest voxel of the image (the CT offset is computed from it).
    """

    value: float | None
    share: float
    minimum: float

    @property
    def constant_not_zero(self) -> bool:
        """A constant background that nnU-Net would not take for background."""
        return self.value is not None and self.value != 0


def _border_voxels(data: np.ndarray) -> np.ndarray:
    """Every voxel of the six faces once (edges and corners are not counted twice)."""
    faces = (data[0], data[-1], data[1:-1, 0], data[1:-1, -1], data[1:-1, 1:-1, 0], data[1:-1, 1:-1, -1])
    return np.concatenate([f.ravel() for f in faces])


def detect_border(data: np.ndarray) -> Border:
    """The border of one 3D channel (module docstring: a value on strictly more than half of it).

    Args:
        data: (X, Y, Z) (or any axis order: the faces are the same), integer, float or bool.
    """
    if data.dtype == np.bool_:
        data = data.view(np.uint8)
    border = _border_voxels(data)
    values, counts = np.unique(border, return_counts=True)
    top = int(np.argmax(counts))
    share = float(counts[top]) / border.size
    value = _plain(values[top].item()) if 2 * int(counts[top]) > border.size else None
    return Border(value=value, share=share, minimum=_plain(data.min().item()))


def _plain(v) -> float | int:
    """A JSON-friendly Python number (ints stay ints, -0.0 becomes 0)."""
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)


@dataclass(frozen=True)
class ChannelTreatment:
    """How one channel's background is treated (one of :data:`TREATMENTS`).

    Attributes:
        name: the channel name (it chose nnU-Net's normalisation, and so the treatment).
        kind: ``"shift"``, ``"ct"`` or ``"none"``.
        offset: ``ct`` only: K, added to every voxel that is not the case's border value.
    """

    name: str
    kind: str
    offset: float | None = None

    def __post_init__(self):
        if self.kind not in TREATMENTS or (self.kind == "ct") != (self.offset is not None):
            raise ValueError(f"background treatment {self.kind!r} (offset {self.offset!r}) of channel "
                             f"{self.name!r} is not one of {', '.join(TREATMENTS)}")

    def changes(self, border: Border) -> bool:
        """Whether an image with this border is changed by the treatment."""
        if self.kind == "shift":
            return border.constant_not_zero
        return self.kind == "ct"

    def apply(self, data: np.ndarray, border: Border) -> np.ndarray:
        """The channel as nnU-Net should read it: (X, Y, Z) in, same shape out (the input when
        unchanged). Integers stay integers (widened if needed), floats become float32."""
        if not self.changes(border):
            return data
        if data.dtype == np.bool_:
            data = data.view(np.uint8)
        if self.kind == "shift":
            return _add(data, -border.value)
        out = _add(data, self.offset)
        if border.value is not None:
            out[_connected_to_border(data == border.value)] = 0
        return out


def _connected_to_border(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` connected (through faces) to a face of the volume."""
    from scipy import ndimage

    components, _ = ndimage.label(mask)
    touching = np.unique(_border_voxels(components))
    return np.isin(components, touching[touching > 0])


def _add(data: np.ndarray, offset: float) -> np.ndarray:
    """``data + offset``: exact in a wide enough integer type for integer data and offset, else in
    float32 (as nnU-Net reads it)."""
    if np.issubdtype(data.dtype, np.integer) and float(offset).is_integer():
        offset = int(offset)
        lo, hi = int(data.min()) + offset, int(data.max()) + offset
        dtype = next(t for t in (data.dtype, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
        return (data.astype(np.int64) + offset).astype(dtype)
    return data.astype(np.float32) + np.float32(offset)


def _normalisation_kind(channel_name: str) -> str:
    """The treatment nnU-Net's normalisation for this channel name calls for (its own mapping decides)."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        RescaleTo01Normalization,
        ZScoreNormalization,
    )
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    scheme = get_normalization_scheme(channel_name)
    if issubclass(scheme, CTNormalization):
        return "ct"
    if issubclass(scheme, (ZScoreNormalization, RescaleTo01Normalization)):
        return "shift"
    return "none"


@dataclass(frozen=True)
class DatasetBackground:
    """The treatment of every channel of a dataset and the border of every case it was decided from.

    Attributes:
        channels: one treatment per channel, in channel order.
        cases: case id → the border of each channel (training cases; empty when read from a record
            without them).
    """

    channels: tuple[ChannelTreatment, ...]
    cases: Mapping[str, tuple[Border, ...]]

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Prediction: treat one case as its training cases were (each channel's border detected on
        the case itself). ``data``: (C, ...) as nnU-Net's reader returns it; returns float32 (C, ...)."""
        if data.shape[0] != len(self.channels):
            raise ValueError(f"{data.shape[0]} channels given, the background treatment has {len(self.channels)}")
        out = np.empty(data.shape, np.float32)
        for c, treatment in enumerate(self.channels):
            out[c] = treatment.apply(data[c], detect_border(data[c]))
        return out

    def as_json(self) -> dict:
        """The ``background`` entry of ``medmamba_dataset.json``."""
        return {
            "rule": "border value: held by more than half of the 6 faces' voxels; shift: x - value per case; "
                    "ct: value -> 0, other voxels + offset; none: unchanged (medmamba.data.background)",
            "channels": [{"name": t.name, "treatment": t.kind, "offset": t.offset} for t in self.channels],
            "cases": {case: [{"value": b.value, "share": round(b.share, 4), "minimum": b.minimum} for b in borders]
                      for case, borders in self.cases.items()},
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, entry: Mapping) -> DatasetBackground:
        channels = tuple(ChannelTreatment(c["name"], c["treatment"], c.get("offset")) for c in entry["channels"])
        cases = {case: tuple(Border(b["value"], b["share"], b["minimum"]) for b in borders)
                 for case, borders in entry.get("cases", {}).items()}
        return cls(channels, cases)

    @classmethod
    def from_record(cls, record: Mapping | None) -> DatasetBackground | None:
        """The treatment recorded at conversion, or None (no record, or one written before medmamba
        treated backgrounds: its model was trained on the images as they were)."""
        if not record or "background" not in record:
            return None
        return cls.from_json(record["background"])

    def summary(self) -> str | None:
        """One line for the user, or None when no case has a constant background other than 0.

        e.g. ``background: constant -1.71 (FLAIR), -1.32 (T1c) at the border of 6/6 cases: mapped to 0,
        so nnU-Net crops to the foreground and normalises inside it, as it does for 0``.
        """
        n = len(self.cases)
        found = [[b[k] for b in self.cases.values() if b[k].constant_not_zero] for k in range(len(self.channels))]
        treated = [k for k, t in enumerate(self.channels) if found[k] and t.kind != "none"]
        untouched = [k for k, t in enumerate(self.channels) if found[k] and t.kind == "none"]
        if not treated and not untouched:
            return None
        counts = {len(found[k]) for k in treated + untouched}
        per_channel = len(counts) > 1

        def channel(k: int) -> str:
            where = f", {len(found[k])}/{n} cases" if per_channel else ""
            return f"{_values([b.value for b in found[k]])} ({self.channels[k].name}{where})"

        line = "background: constant " + ", ".join(channel(k) for k in treated + untouched)
        line += "" if per_channel else f" at the border of {counts.pop()}/{n} cases"
        if treated:
            ct = [k for k in treated if self.channels[k].kind == "ct"]
            line += ": mapped to 0"
            if ct:
                line += "".join(f", every other {self.channels[k].name} voxel {_signed(self.channels[k].offset)}"
                                for k in ct) + " (one offset for the dataset: CT normalisation is unchanged)"
            line += ", so nnU-Net crops to the foreground"
            line += " and normalises inside it, as it does for 0" if len(ct) < len(treated) else ", as it does for 0"
            uncropped = sum(not all(b.value is not None and (t.kind != "none" or b.value == 0)
                                    for t, b in zip(self.channels, borders)) for borders in self.cases.values())
            if uncropped:
                line += f"; {uncropped}/{n} cases have a channel without a constant background and stay uncropped"
        if untouched:
            names = ", ".join(self.channels[k].name for k in untouched)
            line += (f"{'; ' if treated else ': '}left as it is in {names} (its normalisation uses the values "
                     f"as they are)")
        return line


def _number(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if not float(v).is_integer() else str(int(v))


def _signed(v: float) -> str:
    return ("+" if v >= 0 else "") + _number(v)


def _values(values: Sequence[float]) -> str:
    """One value, or the range of the cases' values."""
    lo, hi = _number(min(values)), _number(max(values))
    return lo if lo == hi else f"{lo} to {hi}"


def treat_background(channel_names: Sequence[str], cases: Mapping[str, Sequence[Border]]) -> DatasetBackground:
    """Decide each channel's treatment from its name and the borders of the training cases (module
    docstring): ``shift`` for per-image normalisations, ``ct`` with its dataset offset when some case
    has a non-zero border value in a CT channel, ``none`` otherwise.

    Args:
        channel_names: nnU-Net channel names, in channel order.
        cases: case id → the border of each channel (:func:`detect_border`).
    """
    channels = []
    for k, name in enumerate(channel_names):
        kind = _normalisation_kind(name)
        borders = [b[k] for b in cases.values()]
        if kind == "ct":
            if any(b.constant_not_zero for b in borders):
                lowest = min(b.minimum for b in borders)
                channels.append(ChannelTreatment(name, "ct", float(max(0, 1 - math.floor(lowest)))))
                continue
            kind = "none"
        channels.append(ChannelTreatment(name, kind))
    return DatasetBackground(tuple(channels), {case: tuple(b) for case, b in cases.items()})
