"""BraTS-style folders: discovery, validation and conversion to an nnU-Net raw dataset.

Layouts (``discover``)
    - **BraTS 2021**: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``.
    - **BraTS 2023**: ``BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (other 2023
      sub-challenge prefixes such as ``BraTS-MET-`` too).
    - **generic**: one subfolder per case (the case id is the folder name); the caller names the modality
      suffixes (``modalities=["t1", "flair"]``, any number, in channel order) and the label suffix
      (default ``"seg"``). A file matches suffix ``s`` when its name without ``.nii.gz``/``.nii`` is ``s`` or
      ends in ``_s``, ``-s`` or ``.s`` (so ``t1`` never matches ``..._t1ce``).
    The two BraTS namings are detected from the case-folder names when ``modalities`` is not given. Both
    keep the channel order of nnU-Net's Dataset137 (T1, T1ce, T2, Flair ↔ t1n, t1c, t2w, t2f), so a
    model trained on one naming predicts on the other. Hidden files (``.*``, e.g. macOS ``._x.nii.gz``) and
    files that are not images are ignored; subfolders that hold no image file are ignored.

Formats
    Every format of :mod:`medmamba.data.images`: NIfTI, NRRD, MHA, MHD (volumes, also mixed) or 2D
    PNG/BMP/TIFF (an RGB image is three channels), one kind per dataset, since one nnU-Net reader reads
    it all; suffixes are matched on the name without its ending. docs/formats.md has the details.

Label convention
    ``label_convention=`` forces one of :data:`medmamba.data.labels.CONVENTIONS`, or gives the labels of
    data that is not BraTS (a :func:`medmamba.data.labels.label_set`, e.g. ``--label-names liver=1
    spleen=2``: trained label-based, every label value checked against it). Otherwise: a BraTS naming
    fixes it (a 2021 folder is in the 2021 convention; a label outside it is a broken file, and the
    error says how to force another convention); the generic layout detects it from the label values of
    all valid cases (:func:`medmamba.data.labels.detect_convention`), falling back to ``brats2021`` with
    a warning when no enhancing label occurs (the conversion is then the same for every convention; only
    the value used when writing predictions back differs).

Validation (``validate``)
    Every file is read completely (one volume at a time): unreadable/truncated files, 4D images, 2D
    NIfTI files (2D data comes as PNG/BMP/TIFF or a 2D NRRD/MHA), files of both kinds in one case,
    NaN/Inf voxels, shape or affine differences between a case's files (tolerances in
    :mod:`medmamba.data.nifti`), non-integer labels and label values outside the convention each stop
    with one :class:`DatasetError` naming the case, the file and the problem; so do missing and unknown
    files, duplicate case ids and folders without recognisable cases. With ``skip_invalid=True`` a bad
    case is dropped with one :class:`DatasetWarning` (Python ``warnings``: testable, filterable, and the
    CLI can print them) and an error is raised only when no valid case remains. An image whose voxels
    are all 0 is accepted with a warning (it is almost always a broken export). A broken symbolic link
    is reported as one, not as a missing file.

Conversion (``convert_to_nnunet``)
    Writes ``<raw_root>/DatasetXXX_Name/`` with ``dataset.json`` whose ``dataset`` key references the
    image files in place (absolute paths), ``labelsTr/<case>.nii.gz`` with labels remapped to nnU-Net's
    region space (uint8, the source label's header; for other formats the label's own format and
    geometry, with the nnU-Net reader that reads every file named in ``overwrite_image_reader_writer``:
    :func:`_dataset_format`), and ``medmamba_dataset.json`` recording the source,
    channel order and label mapping so that predictions can be written back in the user's convention
    (:func:`load_label_convention`). Images with a constant background other than 0 (found by
    ``validate``, one value on more than half of the six faces) are the exception: nnU-Net would take
    that background for foreground, so a treated copy with it mapped to 0 goes to ``imagesTr`` and the
    treatment is recorded in ``medmamba_dataset.json`` (``background``) for prediction to repeat
    (:mod:`medmamba.data.background`, docs/cpu.md). The folder is assembled under a hidden temporary
    name beside it and renamed when complete; after any error nothing of it remains. Inputs are never
    written to.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from medmamba.data.background import Border, ChannelTreatment, DatasetBackground, detect_border, treat_background
from medmamba.data.labels import (
    CONVENTIONS,
    LabelConvention,
    convention_from_json,
    detect_convention,
    get_convention,
    present_values,
    to_nnunet_labels,
)
from medmamba.data.images import (
    GRID_POSITION_TOL_VOXELS,
    VOXEL_SIZE_RTOL,
    VolumeReadError,
    family_of,
    geometry_mismatch,
    image_format,
    missing_file_problem,
    nnunet_reader_name,
    nonfinite_voxels,
    read_volume,
    strip_ending,
    write_volume,
)
from medmamba.files import atomic_output_folder

__all__ = [
    "DatasetError", "DatasetWarning", "Problem", "Case", "Dataset", "Naming", "NAMINGS",
    "discover", "discover_case", "naming_of", "validate", "validate_case", "convert_to_nnunet",
    "ingest", "prepare", "raw_dataset_folder", "load_conversion_record",
    "load_label_convention", "background_summary",
    "RECORD_NAME",
]

RECORD_NAME = "medmamba_dataset.json"
_FILE_ENDING = ".nii.gz"  # of a converted NIfTI dataset; referenced images may also be .nii
# Other formats: the labels (and treated copies) are written in the dataset's own format; MHD (header
# plus data file) becomes single-file MHA; 2D images get PNG labels (lossless).
_LABEL_ENDING = {".nrrd": ".nrrd", ".mha": ".mha", ".mhd": ".mha", ".png": ".png", ".bmp": ".png",
                 ".tif": ".png", ".tiff": ".png"}


class DatasetError(ValueError):
    """Bad input or a refused output: one message naming the case, the file and the problem.

    Attributes:
        problem: what is wrong.
        case: the case id, or None for dataset-level problems.
        path: the file or folder concerned, or None.
    """

    def __init__(self, problem: str, *, case: str | None = None, path: Path | str | None = None):
        self.problem, self.case, self.path = problem, case, None if path is None else Path(path)
        where = [f"case {case}" if case else None, str(path) if path is not None else None]
        super().__init__(": ".join([w for w in where if w] + [problem]))

    def __reduce__(self):  # keep case and path when raised in a worker process
        return _rebuild_error, (self.problem, self.case, self.path)


def _rebuild_error(problem: str, case: str | None, path: Path | None) -> DatasetError:
    return DatasetError(problem, case=case, path=path)


class DatasetWarning(UserWarning):
    """An invalid case skipped (``skip_invalid=True``) or an assumption made during ingestion."""


@dataclass(frozen=True)
class Problem:
    """A problem found with one file (or folder) of a case."""

    path: Path
    message: str


@dataclass(frozen=True)
class Case:
    """One case as discovered.

    Attributes:
        case_id: the case folder's name, e.g. ``BraTS2021_00000``.
        folder: the case folder.
        images: one path per channel, in channel order (missing modalities are absent: see ``problems``).
        label: the label file, or None when the case has none.
        problems: what discovery found wrong (missing/unknown/duplicate files, a bad folder name).
    """

    case_id: str
    folder: Path
    images: tuple[Path, ...]
    label: Path | None
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Naming:
    """A file-naming scheme: case-folder pattern, separator, modality suffixes in channel order."""

    name: str
    title: str
    pattern: re.Pattern | None
    separator: str
    modalities: tuple[str, ...]
    channel_names: tuple[str, ...]
    label_suffix: str
    convention: str | None


NAMINGS: dict[str, Naming] = {
    "brats2021": Naming("brats2021", "BraTS 2021", re.compile(r"^BraTS2021_\d{5}$"), "_",
                        ("t1", "t1ce", "t2", "flair"), ("T1", "T1ce", "T2", "Flair"), "seg", "brats2021"),
    "brats2023": Naming("brats2023", "BraTS 2023", re.compile(r"^BraTS-[A-Z]{2,5}-\d{5}-\d{3}$"), "-",
                        ("t1n", "t1c", "t2w", "t2f"), ("T1n", "T1c", "T2w", "T2f"), "seg", "brats2023"),
}
_EXAMPLE = {"brats2021": "BraTS2021_XXXXX", "brats2023": "BraTS-GLI-XXXXX-XXX"}


@dataclass(frozen=True)
class Dataset:
    """A discovered (and possibly validated) dataset.

    Attributes:
        roots: the input folder(s).
        naming: ``"brats2021"``, ``"brats2023"`` or ``"generic"``.
        modalities: file suffixes in channel order, e.g. ``("t1", "t1ce", "t2", "flair")``.
        channel_names: nnU-Net channel names in the same order (they pick the normalisation: ``CT`` →
            CT normalisation, anything else → z-score).
        label_suffix: suffix of the label files.
        cases: the cases, sorted by id.
        label_convention: a ``CONVENTIONS`` key or a label set (:func:`medmamba.data.labels.label_set`), or
            None until validation detects it.
        convention_source: why that convention (``"given"``, the naming, or the detection rule).
        validated: True once ``validate`` accepted every remaining case.
        skipped: (case id, reason) of cases dropped by ``validate(skip_invalid=True)``.
        borders: case id → the border of each channel in channel order
            (:func:`medmamba.data.background.detect_border`), found by ``validate`` while it reads
            them; the conversion decides from them how to treat a constant background.
        channels: case id → the number of channels of each image file (3 for an RGB image, else 1),
            found by ``validate``.
    """

    roots: tuple[Path, ...]
    naming: str
    modalities: tuple[str, ...]
    channel_names: tuple[str, ...]
    label_suffix: str
    cases: tuple[Case, ...]
    label_convention: str | LabelConvention | None = None
    convention_source: str = "to be detected from the label values"
    validated: bool = False
    skipped: tuple[tuple[str, str], ...] = field(default=())
    borders: Mapping[str, tuple[Border, ...]] = field(default_factory=dict)
    channels: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def convention(self) -> LabelConvention:
        """The label convention (only once known)."""
        if self.label_convention is None:
            raise ValueError("the label convention is detected by validate(); call it first")
        return get_convention(self.label_convention)

    def summary(self) -> str:
        """A few readable lines for the command line."""
        title = NAMINGS[self.naming].title + " naming" if self.naming in NAMINGS else "generic layout"
        known = get_convention(self.label_convention) if self.label_convention else None
        conv = (f"{known.name} ({known.description}; {self.convention_source})" if known else "to be detected")
        lines = [f"{', '.join(map(str, self.roots))}: {title}, {len(self.cases)} cases"
                 + (f" ({len(self.skipped)} skipped)" if self.skipped else ""),
                 f"channels: {', '.join(f'{i}={n}' for i, n in enumerate(self.channel_names))}",
                 f"labels: {conv}"]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- discovery

def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    """The visible files in ``folder`` with a supported image ending (:mod:`medmamba.data.images`)."""
    return [p for p in _visible(folder.iterdir()) if p.is_file() and strip_ending(p.name)]


def _broken_links(folder: Path) -> list[Path]:
    """Image-named symbolic links whose target does not exist (reported as such, not as a missing file)."""
    return [p for p in _visible(folder.iterdir()) if p.is_symlink() and not p.exists() and strip_ending(p.name)]


def _normalise_suffix(suffix: str) -> str:
    parts = strip_ending(suffix)
    s = parts[0] if parts else suffix
    s = s.lstrip("_-.")
    if not s or "/" in s:
        raise DatasetError(f"invalid file suffix {suffix!r}")
    return s


def _generic_match(stem: str, suffixes: Sequence[str]) -> str | None:
    hits = [s for s in suffixes if stem == s or any(stem.endswith(sep + s) for sep in "_-.")]
    return max(hits, key=len) if hits else None


def _discover_case(folder: Path, naming: Naming | None, modalities: tuple[str, ...],
                   label_suffix: str) -> Case:
    case_id = folder.name
    problems: list[Problem] = [Problem(link, missing_file_problem(link)) for link in _broken_links(folder)]
    found: dict[str, list[Path]] = {}
    endings = []
    for f in _image_files(folder):
        stem, ending = strip_ending(f.name)
        endings.append(ending)
        if naming is not None:
            prefix = case_id + naming.separator
            if not stem.startswith(prefix):
                problems.append(Problem(f, f"file name does not start with the case id '{prefix}'"))
                continue
            suffix = stem[len(prefix):]
            if suffix not in modalities and suffix != label_suffix:
                problems.append(Problem(f, f"unknown modality '{suffix}': expected one of "
                                           f"{', '.join(modalities)} (images) or {label_suffix} (label)"))
                continue
        else:
            suffix = _generic_match(stem, list(modalities) + [label_suffix])
            if suffix is None:
                problems.append(Problem(f, f"unknown file: its name ends in none of the modality suffixes "
                                           f"({', '.join(modalities)}) nor the label suffix ({label_suffix})"))
                continue
        found.setdefault(suffix, []).append(f)
    for suffix, files in found.items():
        if len(files) > 1:
            what = "the label" if suffix == label_suffix else f"modality '{suffix}'"
            problems.append(Problem(files[1], f"two files for {what}: {files[0].name} and {files[1].name}"))
    images = []
    for m in modalities:
        if m in found:
            images.append(found[m][0])
        else:
            ending = endings[0] if endings else ".nii.gz"
            expected = (f"{case_id}{naming.separator}{m}{ending}" if naming is not None
                        else f"a file whose name ends in _{m}{ending}")
            problems.append(Problem(folder, f"missing modality '{m}' (expected {expected})"))
    label = found[label_suffix][0] if label_suffix in found else None
    return Case(case_id, folder, tuple(images), label, tuple(problems))


def discover_case(folder: str | Path, *, naming: str, modalities: Sequence[str] | None = None,
                  label_suffix: str | None = None) -> Case:
    """Find the files of one case folder in a known naming (for prediction, where the naming is the
    model's): ``naming`` is a ``NAMINGS`` key, or ``"generic"`` with ``modalities`` and ``label_suffix``.
    Problems are recorded in ``Case.problems`` (``validate_case`` reports them)."""
    folder = Path(folder).expanduser().absolute()
    if naming in NAMINGS:
        n = NAMINGS[naming]
        return _discover_case(folder, n, n.modalities, n.label_suffix)
    if not modalities:
        raise DatasetError("the generic layout needs the modality suffixes", path=folder)
    return _discover_case(folder, None, tuple(_normalise_suffix(m) for m in modalities),
                          _normalise_suffix(label_suffix or "seg"))


def naming_of(folder_name: str) -> str | None:
    """The BraTS naming a case folder name follows (``NAMINGS`` key), or None."""
    return next((name for name, n in NAMINGS.items() if n.pattern.match(folder_name)), None)


def _as_roots(folder: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    if isinstance(folder, (str, Path)):
        folder = [folder]
    roots = tuple(Path(f).expanduser().absolute() for f in folder)
    if not roots:
        raise DatasetError("no input folder given")
    return roots


def discover(folder: str | Path | Sequence[str | Path], *, modalities: Sequence[str] | None = None,
             label_suffix: str | None = None, label_convention: str | LabelConvention | None = None) -> Dataset:
    """Find the cases of a BraTS-style folder (or several folders forming one dataset).

    Reads only folder listings; per-case problems (missing or unknown files, duplicate ids) are recorded
    in ``Case.problems`` and reported by ``validate``. Dataset-level problems raise here.

    Args:
        folder: the folder holding one subfolder per case, or a list of such folders.
        modalities: modality suffixes in channel order for the generic layout; None detects a BraTS naming.
        label_suffix: label suffix for the generic layout (default ``"seg"``); with a BraTS naming it must
            be None or ``"seg"``.
        label_convention: force a convention (``"brats2021"``, ``"brats2023"``, ``"brats2015"``,
            ``"msd_task01"``), or give the labels of data that is not BraTS (a
            :func:`medmamba.data.labels.label_set`, CLI ``--label-names``); None: from the naming, or
            detected by ``validate`` for the generic layout.
    Returns:
        the ``Dataset`` (not yet validated).
    Raises:
        DatasetError: a folder that does not exist, is empty, holds no recognisable cases, or mixes namings.
    """
    roots = _as_roots(folder)
    if label_convention is not None:
        get_convention(label_convention)  # unknown names fail here, before any reading
    listings: list[tuple[Path, list[Path]]] = []
    for root in roots:
        if not root.exists():
            raise DatasetError("input folder does not exist", path=root)
        if not root.is_dir():
            raise DatasetError("input is not a folder (give the folder that holds one subfolder per case)",
                               path=root)
        entries = _visible(root.iterdir())
        if not entries:
            raise DatasetError("input folder is empty", path=root)
        listings.append((root, entries))

    naming: Naming | None
    if modalities is None:
        styles = {name for _, entries in listings for e in entries if e.is_dir()
                  for name, n in NAMINGS.items() if n.pattern.match(e.name)}
        if len(styles) > 1:
            raise DatasetError("case folders in both BraTS 2021 and BraTS 2023 naming; convert one dataset at "
                               "a time", path=roots[0])
        if not styles:
            loose = [e for _, entries in listings for e in entries if e.is_file() and strip_ending(e.name)]
            hint = (" It holds image files directly: give the folder that contains the case folders."
                    if loose else "")
            raise DatasetError(
                "no recognisable cases: no subfolder is named like BraTS 2021 (BraTS2021_XXXXX) or BraTS 2023 "
                "(BraTS-GLI-XXXXX-XXX). For another layout (one subfolder per case) name the modality "
                "suffixes and the label suffix (modalities=[...], label_suffix=...; CLI: --modalities, "
                "--label-suffix)." + hint, path=roots[0] if len(roots) == 1 else None)
        naming = NAMINGS[styles.pop()]
        if label_suffix not in (None, naming.label_suffix):
            raise DatasetError(f"label_suffix={label_suffix!r} does not apply to the {naming.title} naming "
                               f"(labels are *{naming.separator}{naming.label_suffix}.nii.gz)")
        mods, channel_names, lab = naming.modalities, naming.channel_names, naming.label_suffix
        naming_name = naming.name
    else:
        if isinstance(modalities, str):
            modalities = [modalities]
        mods = tuple(_normalise_suffix(m) for m in modalities)
        if not mods:
            raise DatasetError("modalities=[] names no modality")
        lab = _normalise_suffix(label_suffix if label_suffix is not None else "seg")
        if len(set(mods + (lab,))) != len(mods) + 1:
            raise DatasetError(f"modality and label suffixes must be distinct: {list(mods) + [lab]}")
        naming, channel_names, naming_name = None, mods, "generic"

    cases: list[Case] = []
    seen: dict[str, Path] = {}
    for root, entries in listings:
        for entry in entries:
            if not entry.is_dir():
                continue
            has_nifti = bool(_image_files(entry) or _broken_links(entry))
            if naming is not None and not naming.pattern.match(entry.name):
                if has_nifti:  # a case with a wrong name, not an unrelated folder
                    cases.append(Case(entry.name, entry, (), None, (Problem(
                        entry, f"folder holds image files but its name does not follow the {naming.title} "
                               f"naming ({_EXAMPLE[naming.name]})"),)))
                continue
            if not has_nifti:
                if naming is not None:
                    cases.append(Case(entry.name, entry, (), None, (Problem(entry, "case folder holds no image "
                                                                                   "file"),)))
                continue
            case = _discover_case(entry, naming, mods, lab)
            key = case.case_id.lower()  # ids differing only in case collide on macOS/Windows file systems
            if key in seen:
                case = replace(case, problems=(Problem(entry, f"duplicate case id {case.case_id}: also "
                                                              f"{seen[key]}"),) + case.problems)
            else:
                seen[key] = entry
            cases.append(case)
    loose = [e for _, entries in listings for e in entries if e.is_file() and strip_ending(e.name)]
    if cases and loose:
        kind = "NIfTI" if all(image_format(e) == "nifti" for e in loose) else "image"
        warnings.warn(DatasetWarning(f"ignoring {len(loose)} {kind} file(s) lying directly in the input folder, "
                                     f"e.g. {loose[0]} (cases are subfolders)"), stacklevel=2)
    if not cases:
        raise DatasetError(f"no case folders found (one subfolder per case, holding files ending in "
                           f"{', '.join('_' + m + '.nii.gz' for m in mods)})",
                           path=roots[0] if len(roots) == 1 else None)

    if label_convention is not None:
        conv, source = label_convention, "given"
    elif naming is not None:
        conv, source = naming.convention, f"the {naming.title} naming"
    else:
        conv, source = None, "to be detected from the label values"
    return Dataset(roots=roots, naming=naming_name, modalities=mods, channel_names=tuple(channel_names),
                   label_suffix=lab, cases=tuple(sorted(cases, key=lambda c: c.case_id)),
                   label_convention=conv, convention_source=source)


# ---------------------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class _Report:
    problem: Problem | None
    label_values: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()  # valid, but probably not what the user meant
    borders: tuple[Border, ...] = ()  # of each channel, in channel order
    channels: tuple[int, ...] = ()  # of each image file (3 for an RGB image)


# A natural (PNG/BMP/TIFF) image is used as nnU-Net reads it: its background is never treated.
_UNTREATED = Border(value=0, share=1.0, minimum=0)


def _dims_problem(shape: tuple[int, ...], two_d: bool = False) -> str | None:
    """Why a spatial shape is not one medmamba trains on: 3D volumes, and natively 2D files (PNG, BMP,
    TIFF, a 2D NRRD/MHA) read as (X, Y, 1)."""
    if two_d and len(shape) == 3 and shape[2] == 1:
        return None if min(shape[:2]) > 1 else f"is a single row or column of pixels (shape {shape[:2]})"
    if len(shape) < 3:
        return f"is {len(shape)}D (shape {shape}) where a 3D volume is expected"
    if len(shape) > 3:
        hint = ("; it holds several volumes: give one file per modality" if any(s > 1 for s in shape[3:])
                else "; re-save it as 3D (trailing axes of size 1)")
        return f"is {len(shape)}D (shape {shape}) where a 3D volume is expected{hint}"
    if min(shape) <= 1:
        return f"is a single slice (shape {shape}): 2D where a 3D volume is expected"
    return None


def _label_values_problem(values: Iterable[int], conv: LabelConvention, source: str) -> str | None:
    bad = sorted({int(v) for v in values} - set(conv.values))
    if not bad:
        return None
    if conv.name not in CONVENTIONS:
        return (f"label values {bad} are not among the named labels (0 background, {conv.description}); name "
                f"every value that occurs (--label-names NAME=VALUE …)")
    hint = ""
    detected, _ = detect_convention(set(values))
    if detected and detected != conv.name and source != "given":
        hint = (f"; if the whole dataset uses the {detected} convention ({get_convention(detected).description}), "
                f"pass label_convention='{detected}'")
    return (f"label values {bad} are outside the {conv.name} convention (valid: {list(conv.values)}, "
            f"{conv.description}){hint}")


def _check_case(case: Case, require_label: bool, convention: str | None, source: str,
                label_suffix: str) -> _Report:
    """Read every file of a case once, one volume at a time; the first problem found is returned."""
    if case.problems:
        return _Report(case.problems[0])
    if case.label is None and require_label:
        ending = strip_ending(case.images[0].name)[1] if case.images else ".nii.gz"
        return _Report(Problem(case.folder, f"no label file (expected a file whose name ends in "
                                            f"_{label_suffix}{ending})"))
    files = list(case.images) + ([case.label] if case.label is not None else [])
    if files and (why := _mixed_families(files)) is not None:
        return _Report(why)
    ref: tuple[Path, tuple[int, ...], object] | None = None
    notes: list[str] = []
    borders: list[Border] = []
    channels: list[int] = []
    for path in case.images:
        try:
            vol = read_volume(path)
        except VolumeReadError as exc:
            return _Report(Problem(path, str(exc)))
        shape = vol.spatial_shape
        if (why := _dims_problem(shape, vol.is_2d)) is not None:
            return _Report(Problem(path, why))
        count, first = nonfinite_voxels(vol.data)
        if count:
            return _Report(Problem(path, f"{count} NaN/Inf voxels (first at voxel {first})"))
        if ref is None:
            ref = (path, shape, vol.affine)
        elif (why := geometry_mismatch(ref[1], ref[2], shape, vol.affine)) is not None:
            return _Report(Problem(path, f"geometry differs from {ref[0].name}: {why}"))
        if not vol.data.any():
            notes.append(f"case {case.case_id}: {path}: every voxel is 0; an empty image is almost always a "
                         f"broken export (check the file)")
        channels.append(vol.channels)
        if vol.format == "natural":
            borders.extend([_UNTREATED] * vol.channels)
        else:
            borders.append(detect_border(vol.data))  # here, where every image is read anyway
        del vol
    if case.label is None:
        return _Report(None, warnings=tuple(notes), borders=tuple(borders), channels=tuple(channels))
    try:
        vol = read_volume(case.label)
    except VolumeReadError as exc:
        return _Report(Problem(case.label, str(exc)))
    if vol.channels > 1:
        return _Report(Problem(case.label, f"label is a {vol.channels}-channel (RGB) image; a label map holds "
                                           f"one value per pixel (save it as grey-scale)"))
    shape = vol.spatial_shape
    if (why := _dims_problem(shape, vol.is_2d)) is not None:
        return _Report(Problem(case.label, "label " + why))
    try:
        values = present_values(vol.data)
    except ValueError as exc:
        return _Report(Problem(case.label, str(exc)))
    if ref is not None and (why := geometry_mismatch(ref[1], ref[2], shape, vol.affine)) is not None:
        return _Report(Problem(case.label, f"label geometry differs from the image {ref[0].name}: {why}"))
    if convention is not None and (why := _label_values_problem(values, get_convention(convention),
                                                                   source)) is not None:
        return _Report(Problem(case.label, why))
    return _Report(None, tuple(int(v) for v in values), tuple(notes), tuple(borders), tuple(channels))


_FAMILY_TITLE = {"volume": "NIfTI/NRRD/MHA/MHD", "natural": "PNG/BMP/TIFF"}


def _mixed_families(files: Sequence[Path]) -> Problem | None:
    """A file that nnU-Net's reader of the first file cannot read (a PNG among NIfTI files)."""
    first = family_of(files[0])
    for path in files[1:]:
        if family_of(path) != first:
            return Problem(path, f"is a {_FAMILY_TITLE[family_of(path)]} file while {files[0].name} is "
                                 f"{_FAMILY_TITLE[first]}: one dataset is read by one nnU-Net reader, so its files "
                                 f"are all volumes (NIfTI, NRRD, MHA, MHD) or all 2D images (PNG, BMP, TIFF)")
    return None


def _warn_about(report: _Report) -> None:
    for note in report.warnings:
        warnings.warn(DatasetWarning(note), stacklevel=3)


def validate_case(case: Case, *, require_label: bool = False) -> None:
    """Check one case's files (readable, 3D, finite, one geometry) and raise the first problem.

    Raises:
        DatasetError: naming the case and the file.
    """
    report = _check_case(case, require_label, None, "given", "seg")
    if report.problem is not None:
        raise DatasetError(report.problem.message, case=case.case_id, path=report.problem.path)
    _warn_about(report)


R = TypeVar("R")


def _ordered_map(func: Callable[..., R], items: Sequence[tuple], num_workers: int) -> Iterator[R]:
    """``func(*item)`` for each item, in order; in spawned worker processes when ``num_workers > 1``."""
    if num_workers <= 1 or len(items) <= 1:
        for item in items:
            yield func(*item)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        futures = [pool.submit(func, *item) for item in items]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _fail_or_skip(err: DatasetError, skip_invalid: bool, skipped: list[tuple[str, str]]) -> None:
    if not skip_invalid:
        raise err
    warnings.warn(DatasetWarning(f"skipping {err}"), stacklevel=3)
    skipped.append((err.case or "", str(err)))


def validate(dataset: Dataset, *, skip_invalid: bool = False, require_labels: bool = True,
             num_workers: int = 1) -> Dataset:
    """Check every case completely before anything is written.

    Args:
        dataset: from ``discover``.
        skip_invalid: drop bad cases with one ``DatasetWarning`` each instead of raising.
        require_labels: a case without a label file is invalid (training data).
        num_workers: worker processes reading cases in parallel (memory: one case per worker).
    Returns:
        a ``Dataset`` with the valid cases, the label convention resolved, ``validated=True``.
    Raises:
        DatasetError: the first bad case (``skip_invalid=False``), or no valid case left.
    """
    skipped: list[tuple[str, str]] = list(dataset.skipped)
    conv, source = dataset.label_convention, dataset.convention_source
    items = [(c, require_labels, conv, source, dataset.label_suffix) for c in dataset.cases]
    good: list[tuple[Case, tuple[int, ...]]] = []
    borders: dict[str, tuple[Border, ...]] = {}
    channels: dict[str, tuple[int, ...]] = {}
    for case, report in zip(dataset.cases, _ordered_map(_check_case, items, num_workers)):
        if report.problem is not None:
            _fail_or_skip(DatasetError(report.problem.message, case=case.case_id, path=report.problem.path),
                          skip_invalid, skipped)
        else:
            _warn_about(report)
            good.append((case, report.label_values))
            borders[case.case_id] = report.borders
            channels[case.case_id] = report.channels

    if conv is None:
        conv, why = detect_convention({v for _, values in good for v in values})
        if conv is None:
            conv = "brats2021"
            if any(values for _, values in good):
                warnings.warn(DatasetWarning(
                    f"{why}: assuming label convention brats2021 (1 and 2 mean the same in every BraTS "
                    f"convention, so the conversion is unaffected; predictions written back will use 4 for "
                    f"enhancing tumour). Pass label_convention= to choose; for data that is not BraTS, name "
                    f"its labels (CLI: --label-names lesion=1 …)."), stacklevel=2)
            source = f"assumed: {why}"
        else:
            source = f"detected: {why}"
        remaining = []
        for case, values in good:  # values outside every convention (e.g. 5) are caught here
            if case.label is not None and (why := _label_values_problem(values, get_convention(conv),
                                                                          source)) is not None:
                _fail_or_skip(DatasetError(why, case=case.case_id, path=case.label), skip_invalid, skipped)
            else:
                remaining.append(case)
    else:
        remaining = [case for case, _ in good]

    if not remaining:
        raise DatasetError(f"no valid case remains ({len(skipped)} skipped: "
                           f"{'; '.join(reason for _, reason in skipped[:3])}"
                           f"{'; …' if len(skipped) > 3 else ''})",
                           path=dataset.roots[0] if len(dataset.roots) == 1 else None)
    return replace(dataset, cases=tuple(remaining), label_convention=conv, convention_source=source,
                   validated=True, skipped=tuple(skipped),
                   borders={case.case_id: borders[case.case_id] for case in remaining},
                   channels={case.case_id: channels[case.case_id] for case in remaining})


# ---------------------------------------------------------------------------------------- conversion

def _convert_label(case: Case, out_file: Path, convention: LabelConvention) -> None:
    """Read, check and remap one label file into the temporary dataset folder."""
    try:
        vol = read_volume(case.label)
        if (why := _dims_problem(vol.spatial_shape, vol.is_2d)) is not None:
            raise DatasetError("label " + why, case=case.case_id, path=case.label)
        mapped = to_nnunet_labels(vol.data, convention)
    except VolumeReadError as exc:
        raise DatasetError(str(exc), case=case.case_id, path=case.label) from None
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(str(exc), case=case.case_id, path=case.label) from None
    write_volume(out_file, mapped, affine=vol.affine, header=vol.header, like=vol)


def _write_treated_image(case_id: str, source: Path, out_file: Path, treatment: ChannelTreatment,
                         border: Border) -> None:
    """Write the copy of one image whose constant background nnU-Net must see as 0
    (:mod:`medmamba.data.background`), with the source's header."""
    try:
        vol = read_volume(source)
    except VolumeReadError as exc:
        raise DatasetError(str(exc), case=case_id, path=source) from None
    if detect_border(vol.data) != border:
        raise DatasetError("changed since it was validated (its border differs); convert again", case=case_id,
                           path=source)
    write_volume(out_file, treatment.apply(vol.data, border), affine=vol.affine, header=vol.header, like=vol)


def _dataset_folder_name(dataset_id: int, name: str) -> str:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise DatasetError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r} (CLI: --dataset-id)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise DatasetError(f"dataset name {name!r} must be ASCII letters, digits, '_', '-' or '.', starting with a "
                           f"letter or digit; choose one with name= (CLI: --name)")
    return f"Dataset{dataset_id:03d}_{name}"


def _check_target(raw_root: Path, dataset_id: int, name: str) -> Path:
    folder_name = _dataset_folder_name(dataset_id, name)
    if raw_root.is_dir():
        clash = [p.name for p in raw_root.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_")
                 and p.name != folder_name]
        if clash:
            raise DatasetError(f"dataset id {dataset_id} is already used by {clash[0]} (nnU-Net finds a dataset "
                               f"by its id); choose another id", path=raw_root)
    return raw_root / folder_name


def _dataset_format(dataset: Dataset) -> tuple[str, str | None]:
    """The ``file_ending`` of the converted dataset (its labels are written in it) and the nnU-Net
    reader that must read every file (None: nnU-Net's choice for ``.nii.gz``, as before other formats).

    NIfTI data keeps ``.nii.gz``; other volumes get their label's format (MHD as single-file MHA), read
    by ``SimpleITKIO`` (which reads every volume format, also mixed); 2D images get PNG labels, read by
    ``NaturalImage2DIO``.

    Raises:
        DatasetError: files of both reader families in one dataset.
    """
    files = [p for case in dataset.cases for p in (*case.images, *([case.label] if case.label else []))]
    if (problem := _mixed_families(files)) is not None:
        raise DatasetError(problem.message, path=problem.path)
    if all(image_format(p) == "nifti" for p in files):
        return _FILE_ENDING, None
    family = family_of(files[0])
    first = next(p for p in ([dataset.cases[0].label] + list(dataset.cases[0].images))
                 if image_format(p) != "nifti")
    ending = _LABEL_ENDING[strip_ending(first.name)[1].lower()]
    return ending, nnunet_reader_name(family)


_RGB = "RGBA"


def _channel_names(dataset: Dataset) -> tuple[str, ...]:
    """nnU-Net's channel names: one per channel, so an RGB image file gives three (``R``, ``G``, ``B``;
    ``<modality>_R`` … when a case has several files).

    Raises:
        DatasetError: a case whose files have other channel counts than the first case's.
    """
    first = dataset.cases[0]
    counts = tuple(dataset.channels.get(first.case_id, ()))
    if not counts or all(c == 1 for c in counts):
        for case in dataset.cases:
            if any(c != 1 for c in dataset.channels.get(case.case_id, ())):
                k = next(i for i, c in enumerate(dataset.channels[case.case_id]) if c != 1)
                raise DatasetError(f"has {dataset.channels[case.case_id][k]} channels (RGB) where "
                                   f"{first.images[k].name} of case {first.case_id} has 1; every case needs the "
                                   f"same channels", case=case.case_id, path=case.images[k])
        return tuple(dataset.channel_names)
    names: list[str] = []
    for k, (name, count) in enumerate(zip(dataset.channel_names, counts)):
        if count == 1:
            names.append(name)
        else:
            names.extend(_RGB[c] if len(counts) == 1 else f"{name}_{_RGB[c]}" for c in range(count))
    for case in dataset.cases:
        other = tuple(dataset.channels[case.case_id])
        if other != counts:
            k = next(i for i, (a, b) in enumerate(zip(counts, other)) if a != b)
            raise DatasetError(f"has {other[k]} channel(s) where {first.images[k].name} of case {first.case_id} "
                               f"has {counts[k]}; every case needs the same channels", case=case.case_id,
                               path=case.images[k])
    return tuple(names)


def convert_to_nnunet(dataset: Dataset, raw_root: str | Path, dataset_id: int, name: str, *,
                      skip_invalid: bool = False, num_workers: int = 1) -> Path:
    """Write an nnU-Net v2 raw dataset that references the images in place, except those with a
    constant background other than 0, whose treated copies it writes to ``imagesTr``
    (:mod:`medmamba.data.background`).

    Args:
        dataset: from ``discover`` (validated here first unless ``validate`` already ran).
        raw_root: the ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id, 1–999.
        name: dataset name; the folder is ``DatasetXXX_<name>``.
        skip_invalid: passed to ``validate``.
        num_workers: worker processes for validation and label conversion.
    Returns:
        the dataset folder.
    Raises:
        DatasetError: invalid input (see ``validate``), an output inside an input folder, an existing
            non-empty output, an id already used by another dataset folder. Nothing is left behind.
    """
    if not dataset.validated or any(case.case_id not in dataset.borders for case in dataset.cases):
        dataset = validate(dataset, skip_invalid=skip_invalid, num_workers=num_workers)
    for case in dataset.cases:
        if case.label is None:
            raise DatasetError("no label file: an nnU-Net training dataset needs one per case",
                               case=case.case_id, path=case.folder)
    conv = dataset.convention
    file_ending, reader = _dataset_format(dataset)
    channel_names = _channel_names(dataset)
    target = _check_target(Path(raw_root).expanduser().absolute(), dataset_id, name)

    def refuse(message: str) -> DatasetError:
        return DatasetError(message)

    with atomic_output_folder(target, refuse_inside=dataset.roots, error=refuse) as tmp:
        labels_dir = tmp / "labelsTr"
        labels_dir.mkdir()
        items = [(case, labels_dir / f"{case.case_id}{file_ending}", conv) for case in dataset.cases]
        for _ in _ordered_map(_convert_label, items, num_workers):
            pass
        background = treat_background(channel_names, {c.case_id: dataset.borders[c.case_id]
                                                      for c in dataset.cases})
        # natural images are never treated, so k is both the file and the channel index here
        treated = {(case.case_id, k): f"imagesTr/{case.case_id}_{k:04d}{file_ending}"
                   for case in dataset.cases for k, treatment in enumerate(background.channels)
                   if treatment.changes(dataset.borders[case.case_id][k])}
        if treated:
            (tmp / "imagesTr").mkdir()
        by_id = {case.case_id: case for case in dataset.cases}
        items = [(case_id, by_id[case_id].images[k], tmp / copy, background.channels[k], dataset.borders[case_id][k])
                 for (case_id, k), copy in treated.items()]
        for _ in _ordered_map(_write_treated_image, items, num_workers):
            pass
        entries = {case.case_id: {"images": [treated.get((case.case_id, k), str(p))
                                             for k, p in enumerate(case.images)],
                                  "label": f"labelsTr/{case.case_id}{file_ending}"}
                   for case in dataset.cases}
        dataset_json = {
            "name": target.name,
            "description": f"converted by medmamba from {', '.join(map(str, dataset.roots))} "
                           f"({dataset.naming} naming, label convention {conv.title}); images referenced in place"
                           + (f", except {len(treated)} with a constant background, copied to imagesTr with it "
                              f"mapped to 0 (medmamba_dataset.json: background)" if treated else ""),
            "channel_names": {str(i): n for i, n in enumerate(channel_names)},
            "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in conv.nnunet_labels.items()},
            **({"regions_class_order": list(conv.regions_class_order)} if conv.region_based else {}),
            "numTraining": len(dataset.cases),
            "file_ending": file_ending,
            **({"overwrite_image_reader_writer": reader} if reader else {}),
            "dataset": entries,
        }
        record = {
            "format": "medmamba-dataset/1",
            "nnunet_dataset": target.name,
            "source": {"roots": [str(r) for r in dataset.roots], "naming": dataset.naming,
                       "modalities": list(dataset.modalities), "label_suffix": dataset.label_suffix},
            "channel_names": list(channel_names),
            **({"file_ending": file_ending, "channels_per_file": list(dataset.channels[dataset.cases[0].case_id])}
               if reader else {}),
            "label_convention": conv.as_json(),
            "label_convention_source": dataset.convention_source,
            "cases": {case.case_id: {"images": [str(p) for p in case.images], "label": str(case.label)}
                      for case in dataset.cases},
            "skipped": [{"case": c, "reason": r} for c, r in dataset.skipped],
            "background": background.as_json(),
            "geometry_tolerance": {"voxel_size_rtol": VOXEL_SIZE_RTOL,
                                   "grid_position_voxels": GRID_POSITION_TOL_VOXELS},
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return target


def ingest(folder: str | Path | Sequence[str | Path], raw_root: str | Path, dataset_id: int, name: str, *,
           modalities: Sequence[str] | None = None, label_suffix: str | None = None,
           label_convention: str | LabelConvention | None = None, skip_invalid: bool = False,
           num_workers: int = 1) -> Path:
    """``discover`` + ``validate`` + ``convert_to_nnunet`` in one call (what ``plan-and-train`` needs).

    Returns:
        the nnU-Net dataset folder ``<raw_root>/DatasetXXX_<name>``.
    """
    dataset = discover(folder, modalities=modalities, label_suffix=label_suffix,
                       label_convention=label_convention)
    dataset = validate(dataset, skip_invalid=skip_invalid, num_workers=num_workers)
    return convert_to_nnunet(dataset, raw_root, dataset_id, name, num_workers=num_workers)


def load_conversion_record(dataset_folder: str | Path) -> dict:
    """The ``medmamba_dataset.json`` written beside ``dataset.json`` by ``convert_to_nnunet``."""
    path = Path(dataset_folder) / RECORD_NAME
    if not path.is_file():
        raise DatasetError(f"no {RECORD_NAME} here: not a dataset converted by medmamba", path=dataset_folder)
    return json.loads(path.read_text())


def background_summary(dataset_folder: str | Path) -> str | None:
    """The one line that tells the user which constant background the conversion of ``dataset_folder``
    mapped to 0 (:meth:`medmamba.data.background.DatasetBackground.summary`), or None: no background
    other than 0, or a dataset medmamba did not convert."""
    path = Path(dataset_folder) / RECORD_NAME
    if not path.is_file():
        return None
    background = DatasetBackground.from_record(json.loads(path.read_text()))
    return None if background is None else background.summary()


def load_label_convention(dataset_folder: str | Path) -> LabelConvention:
    """The user's label convention of a converted dataset, for writing predictions back
    (``from_nnunet_labels(prediction, load_label_convention(folder))``)."""
    record = load_conversion_record(dataset_folder)["label_convention"]
    try:
        return convention_from_json(record)
    except ValueError as exc:
        raise DatasetError(str(exc), path=Path(dataset_folder) / RECORD_NAME) from None


def prepare(folder: str | Path, raw_root: str | Path, dataset_id: int, name: str, **ingest_kwargs) -> Path:
    """The nnU-Net raw dataset for ``folder``, for commands that may run more than once:

    - ``folder`` itself when it already is an nnU-Net raw dataset (has a ``dataset.json``) named as
      nnU-Net needs (``DatasetXXX_Name``); a raw dataset with another folder name gets a link
      ``<raw_root>/DatasetXXX_<name>`` to it (nothing is copied or written into it);
    - the dataset ``<raw_root>/DatasetXXX_<name>`` converted earlier from the same folder (its
      ``medmamba_dataset.json`` names it as the source), so a second run does not convert again;
    - otherwise a fresh :func:`ingest` with ``ingest_kwargs``.
    """
    folder = Path(folder).expanduser().absolute()
    target = raw_dataset_folder(folder, raw_root, dataset_id, name)
    if target == folder:
        return folder
    if (folder / "dataset.json").is_file():  # an nnU-Net raw dataset whose folder name nnU-Net cannot use
        if target.is_symlink() and target.resolve() == folder.resolve():
            return target
        if target.exists() or target.is_symlink():
            raise DatasetError(f"{target} already exists and is not a link to {folder}; choose another "
                               f"--dataset-id or output", path=target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(folder, target_is_directory=True)
        return target
    if (target / RECORD_NAME).is_file():
        if load_conversion_record(target)["source"]["roots"] == [str(folder)]:
            return target
        raise DatasetError(f"{target} was converted from another folder; choose another --dataset-id or output",
                           path=target)
    return ingest(folder, raw_root, dataset_id, name, **ingest_kwargs)


def raw_dataset_folder(folder: str | Path, raw_root: str | Path, dataset_id: int, name: str) -> Path:
    """Where :func:`prepare` finds or puts the nnU-Net raw dataset of ``folder``: ``folder`` itself when
    it is one named ``DatasetXXX_Name``, else ``<raw_root>/DatasetXXX_<name>``. Reads and writes nothing, so commands call it to
    check the id and the name before their first write.

    Raises:
        DatasetError: an id outside 1-999 or a name nnU-Net cannot use.
    """
    folder = Path(folder).expanduser().absolute()
    if (folder / "dataset.json").is_file() and re.fullmatch(r"Dataset\d{3}_.+", folder.name):
        return folder
    return Path(raw_root).expanduser().absolute() / _dataset_folder_name(dataset_id, name)
