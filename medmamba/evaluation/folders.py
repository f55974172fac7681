"""Evaluate a folder of predicted label maps against ground truth: per-case CSV and summary JSON.

Inputs
    - Predictions: ``<pred_dir>/<case_id><ending>`` in any format of :mod:`medmamba.data.images`
      (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, ``.png``, ``.bmp``, ``.tif``), as ``medmamba
      predict`` writes them in folder mode; other files in the folder are ignored.
    - Ground truth, either a BraTS-style dataset folder (2021 or 2023 naming, or a generic layout with
      ``modalities``/``label_suffix``; :func:`medmamba.data.discover` finds each case's label file; only
      the label is read), or a plain folder of label maps ``<case_id><ending>`` in any of those formats
      (e.g. another model's predictions), named like the predictions. A folder holding image files
      directly is taken as a plain folder. Prediction and ground truth may be in different formats:
      their voxel grids are compared through their affines.
      An nnU-Net raw dataset that medmamba did not convert (``dataset.json`` with ``labelsTr``; its labels
      are the user's) or its ``labelsTr`` folder is a ground truth too, scored on its ``dataset.json``
      labels (or regions).
    - Label convention: given (a BraTS convention, or a label set such as ``--label-names liver=1
      spleen=2``), else that of the BraTS naming or of the nnU-Net ``dataset.json``, else detected from
      the ground-truth values (:func:`medmamba.data.labels.detect_convention`; when no enhancing label
      occurs there, from the predictions' values too; when none occurs anywhere, ``brats2021``, whose
      regions are then the same as every other convention's). Scores are per region for BraTS (WT, TC,
      ET) and per label for a label set (``Evaluation.regions``).

Checks (each a :class:`medmamba.data.DatasetError` naming the file)
    a prediction without ground truth; a case listed in ``cases`` without prediction or ground truth; a
    prediction whose shape or affine differs from its ground truth's (tolerances of
    :mod:`medmamba.data.nifti`; nothing is resampled); label values outside the convention; unreadable or
    non-3D files; ground-truth cases without a prediction, unless ``cases`` names the ones to evaluate or
    ``allow_missing`` says a partial evaluation is intended (the summary then counts and names them): a
    mean over half the cases must not pass for the whole test set's.

Outputs
    One row per (case, region) in ``Evaluation.rows``; ``write_csv`` and ``write_summary_json`` write
    them atomically (temporary name, then rename), ``write`` both together (both or neither). Every CSV
    row and the JSON state the empty-mask convention, the NSD tolerance and the label convention.

Lesion-wise scores (``lesion_challenge``)
    With a BraTS 2023 challenge named, each row also holds the lesion-wise Dice and HD95 of
    :mod:`medmamba.evaluation.lesionwise` (``LESION_CSV_COLUMNS``, after the usual columns, which stay as
    they are) and the summary summarises ``lesion_dice`` and ``lesion_hd95`` like the other metrics. These
    scores follow the challenge's own conventions for empty masks, whatever ``empty`` says.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmamba.data.brats import DatasetError, _ordered_map, discover
from medmamba.data.brats import RECORD_NAME
from medmamba.data.labels import (
    LabelConvention,
    convention_of_dataset_json,
    detect_convention,
    get_convention,
    present_values,
)
from medmamba.data.images import VolumeReadError, geometry_mismatch, read_volume, strip_ending
from medmamba.files import atomic_output_file, check_writable, lies_within, write_text_atomically
from medmamba.evaluation.lesionwise import LESION_METRICS, get_challenge, lesion_wise_scores
from medmamba.evaluation.metrics import (
    EMPTY_CONVENTIONS,
    METRICS,
    _check_tolerance,
    _metrics_of_masks,
    check_empty_convention,
    region_masks,
    spacing_from_affine,
)

__all__ = ["Evaluation", "evaluate_folder", "evaluate_to_files", "default_summary_path", "CSV_COLUMNS",
           "LESION_CSV_COLUMNS", "SUMMARY_FORMAT"]

SUMMARY_FORMAT = "medmamba-evaluation/1"
CSV_COLUMNS: tuple[str, ...] = (
    "case", "region", "dice", "hd95", "nsd", "gt_voxels", "pred_voxels", "pred_file", "gt_file",
    "empty_convention", "nsd_tolerance_mm", "label_convention",
)
HD95_DEFINITION = ("MONAI compute_hausdorff_distance(percentile=95): the larger of the two directed 95th "
                   "percentiles of surface-voxel distances, in mm (ground-truth voxel spacing)")
NSD_DEFINITION = "MONAI compute_surface_dice(use_subvoxels=True): surface-area fraction within the tolerance"
#: Columns the CSV gains with lesion-wise scores: the two scores, the counted lesions found (tp) and missed
#: (fn), the false-positive predicted components (fp), and the challenge whose settings were used.
LESION_CSV_COLUMNS: tuple[str, ...] = (*LESION_METRICS, "lesion_tp", "lesion_fn", "lesion_fp", "lesion_challenge")
LESION_DEFINITION = ("BraTS 2023 lesion-wise scores: ground-truth lesions grouped by dilation, predicted 26-connected "
                     "components matched by overlap with a lesion's dilated zone; missed lesions and false-positive "
                     "components score Dice 0 and HD95 374 mm; lesions at or below the volume threshold are not "
                     "scored; per case sum / (lesions + false positives), 1 / 0 when both are 0")


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    """mean, sample sd (ddof 1), median and count of the non-NaN values; n_nan counts the others."""
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    n = int(ok.size)
    return {"mean": float(ok.mean()) if n else _nan(), "sd": float(ok.std(ddof=1)) if n > 1 else _nan(),
            "median": float(np.median(ok)) if n else _nan(), "n": n, "n_nan": int(arr.size - n)}


def _nan() -> float:
    return float("nan")


def _json_ready(obj):
    """NaN/Inf → None (JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


@dataclass
class Evaluation:
    """The result of :func:`evaluate_folder`.

    Attributes:
        rows: one dict per (case, region), sorted by case then region (WT, TC, ET; or the labels in
            order): ``case``, ``region``, ``dice``,
            ``hd95`` (mm), ``nsd`` (floats, NaN where the convention says so), ``gt_voxels``,
            ``pred_voxels`` (region sizes), ``pred_file``, ``gt_file``.
        empty_convention: the ``EMPTY_CONVENTIONS`` key used.
        nsd_tolerance_mm: the NSD tolerance.
        label_convention: the label convention of predictions and ground truth.
        label_convention_source: why that convention (given, the naming, or the detection rule).
        gt_without_prediction: ground-truth cases that had no prediction (not evaluated).
        pred_dir, gt: the inputs, for the record.
        lesion_challenge: the ``CHALLENGES`` key whose lesion-wise scores the rows hold (``lesion_dice``,
            ``lesion_hd95``, ``lesion_tp``, ``lesion_fn``, ``lesion_fp``); None when they were not computed.
    """

    rows: list[dict]
    empty_convention: str
    nsd_tolerance_mm: float
    label_convention: str | None = None
    label_convention_source: str = ""
    gt_without_prediction: list[str] = field(default_factory=list)
    pred_dir: str | None = None
    gt: str | None = None
    lesion_challenge: str | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The per-case metrics the rows hold: ``METRICS``, then ``LESION_METRICS`` when computed."""
        return METRICS + (LESION_METRICS if self.lesion_challenge is not None else ())

    @property
    def regions(self) -> tuple[str, ...]:
        """The scored regions (BraTS: WT, TC, ET) or labels, in row order."""
        return tuple(dict.fromkeys(row["region"] for row in self.rows))

    @property
    def cases(self) -> list[str]:
        """The evaluated case ids, in row order."""
        return list(dict.fromkeys(row["case"] for row in self.rows))

    def values(self, region: str, metric: str) -> np.ndarray:
        """One float per case (row order) of ``metric`` for ``region``; ``region="mean"`` gives each case's
        mean over the regions whose value is not NaN (NaN when all are)."""
        if metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(self.metrics)}")
        if region == "mean":
            table = np.array([self.values(r, metric) for r in self.regions])  # (regions, cases)
            counts = (~np.isnan(table)).sum(axis=0)
            sums = np.nansum(table, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        if region not in self.regions:
            raise ValueError(f"unknown region {region!r}; known: {', '.join(self.regions)}, mean")
        return np.array([row[metric] for row in self.rows if row["region"] == region], dtype=np.float64)

    def describe(self) -> str:
        """The console summary: conventions, then mean ± sd of Dice, HD95 and NSD per region."""
        stats = self.summary()

        def cell(s: dict, digits: int) -> str:
            if s["n"] == 0:
                return "n/a"
            sd = "" if s["n"] < 2 else f" ± {s['sd']:.{digits}f}"
            return f"{s['mean']:.{digits}f}{sd}" + (f" ({s['n_nan']} NaN)" if s["n_nan"] else "")

        width = max(7, *(len(r) + 2 for r in self.regions))
        lines = [f"{stats['cases']} cases, label convention {self.label_convention} ({self.label_convention_source}); "
                 f"empty masks: {self.empty_convention} ({stats['empty_convention_description']})",
                 f"{'region':<{width}}{'Dice':<24}{'HD95 (mm)':<24}NSD@{self.nsd_tolerance_mm:g}mm"]
        for region in (*self.regions, "mean"):
            row = stats[region]
            lines.append(f"{region:<{width}}{cell(row['dice'], 4):<24}{cell(row['hd95'], 2):<24}{cell(row['nsd'], 4)}")
        if self.lesion_challenge is not None:
            settings = get_challenge(self.lesion_challenge)
            lines.append(f"lesion-wise (BraTS 2023 {settings.name}: dilation {settings.dilation}, lesions over "
                         f"{settings.min_volume_mm3:g} mm³)")
            lines.append(f"{'region':<{width}}{'lesion Dice':<24}{'lesion HD95 (mm)':<24}lesions found/missed, FP")
            for region in (*self.regions, "mean"):
                row = stats[region]
                counts = ""
                if region in self.regions:
                    picked = [r for r in self.rows if r["region"] == region]
                    counts = "/".join(str(sum(int(r[k]) for r in picked)) for k in ("lesion_tp", "lesion_fn"))
                    counts += f", {sum(int(r['lesion_fp']) for r in picked)}"
                lines.append(f"{region:<{width}}{cell(row['lesion_dice'], 4):<24}{cell(row['lesion_hd95'], 2):<24}"
                             f"{counts}".rstrip())
        if stats["gt_cases_without_prediction"]:
            missing = stats["gt_without_prediction"]
            lines.append(f"{len(missing)} ground-truth cases have no prediction and were not evaluated: "
                         f"{', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}")
        return "\n".join(lines)

    def summary(self) -> dict:
        """Per region and for ``"mean"``: ``{metric: {mean, sd, median, n, n_nan}}`` over cases, plus the
        conventions and counts.

        ``sd`` is the sample standard deviation (ddof 1; NaN below two values); NaN values are left out
        of the statistics and counted in ``n_nan``. ``"mean"`` summarises each case's mean over the
        regions that are not NaN in that case, and adds ``mean_of_region_means`` (the average of the
        regions' means, e.g. WT, TC and ET, the number papers usually quote; equal to ``mean`` when nothing
        is NaN). ``regions`` lists the regions (or labels) in order.
        """
        out: dict = {
            "format": SUMMARY_FORMAT,
            "empty_convention": self.empty_convention,
            "empty_convention_description": EMPTY_CONVENTIONS.get(self.empty_convention, ""),
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "label_convention": self.label_convention,
            "label_convention_source": self.label_convention_source,
            "hd95": HD95_DEFINITION,
            "nsd": NSD_DEFINITION,
            "cases": len(self.cases),
            "gt_cases_without_prediction": len(self.gt_without_prediction),
            "gt_without_prediction": list(self.gt_without_prediction),
            "pred_dir": self.pred_dir,
            "gt": self.gt,
            "regions": list(self.regions),
        }
        if self.lesion_challenge is not None:
            settings = get_challenge(self.lesion_challenge)
            out["lesion_wise"] = {"challenge": settings.name, "dilation": settings.dilation,
                                  "min_volume_mm3": settings.min_volume_mm3, "definition": LESION_DEFINITION}
        for region in self.regions:
            out[region] = {m: _stats(self.values(region, m)) for m in self.metrics}
        out["mean"] = {}
        for m in self.metrics:
            stats = _stats(self.values("mean", m))
            stats["mean_of_region_means"] = float(np.mean([out[r][m]["mean"] for r in self.regions]))
            out["mean"][m] = stats
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write the rows (columns ``CSV_COLUMNS``; NaN as ``nan``) to a temporary file, then rename it."""
        constant = {"empty_convention": self.empty_convention, "nsd_tolerance_mm": repr(float(self.nsd_tolerance_mm)),
                    "label_convention": self.label_convention or ""}

        columns = list(CSV_COLUMNS)
        if self.lesion_challenge is not None:
            constant["lesion_challenge"] = self.lesion_challenge
            columns += LESION_CSV_COLUMNS
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            cells = {k: (repr(float(v)) if k in self.metrics else v) for k, v in row.items()}
            writer.writerow({**cells, **constant})
        return write_text_atomically(path, text.getvalue())

    def write_summary_json(self, path: str | Path) -> Path:
        """Write ``summary()`` as JSON (NaN as null) to a temporary file, then rename it."""
        text = json.dumps(_json_ready(self.summary()), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
        return write_text_atomically(path, text)

    def write(self, csv_path: str | Path, summary_path: str | Path) -> None:
        """Write the CSV and the summary JSON as a pair: both are complete under temporary names before
        either is renamed, so a full disk or a Ctrl-C leaves neither (nor half of one)."""
        with atomic_output_file(csv_path) as csv_tmp, atomic_output_file(summary_path) as summary_tmp:
            self.write_csv(csv_tmp)
            self.write_summary_json(summary_tmp)

    @classmethod
    def read_csv(cls, path: str | Path) -> Evaluation:
        """Load a CSV written by ``write_csv`` (e.g. for comparing several models' evaluations)."""
        path = Path(path)
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in ("case", "region", *METRICS, "empty_convention", "nsd_tolerance_mm")
                           if c not in (reader.fieldnames or [])]
                if missing:
                    raise DatasetError(f"not a medmamba metrics CSV: columns {missing} are missing", path=path)
                raw = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"cannot be read as CSV ({exc})", path=path) from None
        if not raw:
            raise DatasetError("metrics CSV holds no rows", path=path)
        conventions = {r["empty_convention"] for r in raw}
        tolerances = {r["nsd_tolerance_mm"] for r in raw}
        labels = {r.get("label_convention", "") for r in raw}
        challenges = {r.get("lesion_challenge") or "" for r in raw}
        if len(conventions) > 1 or len(tolerances) > 1 or len(labels) > 1 or len(challenges) > 1:
            raise DatasetError("rows mix empty-mask conventions, NSD tolerances, label conventions or lesion-wise "
                               "challenges", path=path)
        challenge = challenges.pop() or None
        rows = []
        try:
            for r in raw:
                row = {"case": r["case"], "region": r["region"], **{m: float(r[m]) for m in METRICS}}
                if challenge is not None:
                    row.update({m: float(r[m]) for m in LESION_METRICS})
                    row.update({k: int(r[k]) for k in ("lesion_tp", "lesion_fn", "lesion_fp")})
                for k in ("gt_voxels", "pred_voxels"):
                    if r.get(k) not in (None, ""):
                        row[k] = int(r[k])
                row.update({k: r[k] for k in ("pred_file", "gt_file") if k in r})
                rows.append(row)
            tolerance = float(tolerances.pop())
            if challenge is not None:
                challenge = get_challenge(challenge).name
        except (ValueError, KeyError) as exc:
            raise DatasetError(f"bad value in metrics CSV ({exc})", path=path) from None
        return cls(rows=rows, empty_convention=conventions.pop(), nsd_tolerance_mm=tolerance,
                   label_convention=labels.pop() or None, label_convention_source=f"read from {path}",
                   lesion_challenge=challenge)


# --------------------------------------------------------------------------------------------- inputs

def _image_listing(folder: Path, what: str) -> dict[str, Path]:
    """case id → file for the visible image files (any supported format) lying directly in ``folder``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or not p.is_file():
            continue
        parts = strip_ending(p.name)
        if parts is None:
            continue
        if parts[0] in found:
            raise DatasetError(f"two {what} files for case {parts[0]}: {found[parts[0]].name} and {p.name}",
                               path=p)
        found[parts[0]] = p
    return found


def _nnunet_raw_labels(dataset: Path, convention: LabelConvention | None
                       ) -> tuple[dict[str, Path], LabelConvention, str, str]:
    """The ground truth of an nnU-Net raw dataset folder: its ``labelsTr`` and the labels (or regions)
    of its ``dataset.json``."""
    if (dataset / RECORD_NAME).is_file():
        raise DatasetError("this nnU-Net raw dataset was converted by medmamba: its labelsTr are in nnU-Net's "
                           "label space, not the user's; give the original folder it was converted from",
                           path=dataset)
    try:
        dataset_json = json.loads((dataset / "dataset.json").read_text())
        own = convention_of_dataset_json(dataset_json)
        ending = str(dataset_json.get("file_ending", ".nii.gz"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"dataset.json cannot be used ({exc})", path=dataset / "dataset.json") from None
    labels = {p.name[: -len(ending)]: p for p in sorted((dataset / "labelsTr").glob(f"*{ending}"))
              if not p.name.startswith(".")} if (dataset / "labelsTr").is_dir() else {}
    if not labels:
        raise DatasetError(f"no label files labelsTr/*{ending} in this nnU-Net raw dataset", path=dataset)
    if convention is not None:
        return labels, convention, "given", "nnU-Net raw dataset"
    return labels, own, f"the labels of {dataset / 'dataset.json'}", "nnU-Net raw dataset"


def _ground_truth(gt: Path, modalities: Sequence[str] | None, label_suffix: str | None,
                  convention: LabelConvention | None
                  ) -> tuple[dict[str, Path], LabelConvention | str | None, str, str]:
    """(case id → label file, convention or None, its source, a description of the layout)."""
    if not gt.exists():
        raise DatasetError("ground-truth folder does not exist", path=gt)
    if not gt.is_dir():
        raise DatasetError("ground truth must be a folder (BraTS-style dataset or label maps <case>.nii.gz)",
                           path=gt)
    if (gt / "dataset.json").is_file():
        return _nnunet_raw_labels(gt, convention)
    if gt.name == "labelsTr" and (gt.parent / "dataset.json").is_file():
        return _nnunet_raw_labels(gt.parent, convention)
    plain = _image_listing(gt, "ground-truth")
    if plain:
        source = "given" if convention is not None else "to be detected from the label values"
        return plain, convention, source, "label maps"
    dataset = discover(gt, modalities=modalities, label_suffix=label_suffix, label_convention=convention)
    labels = {c.case_id: c.label for c in dataset.cases if c.label is not None}
    if not labels:
        raise DatasetError(f"no case folder holds a label file (*{dataset.label_suffix}.nii.gz)", path=gt)
    return labels, dataset.label_convention, dataset.convention_source, f"{dataset.naming} dataset"


def _detect(files: Sequence[Path], more: Sequence[Path]) -> tuple[str, str]:
    """The convention of the label values in ``files`` (then ``more`` too if no enhancing label occurs)."""
    values: set[int] = set()
    for group, what in ((files, "ground truth"), (more, "ground truth and predictions")):
        for path in group:
            data = _read_label(path, "label map").data
            try:
                values |= {int(v) for v in present_values(data)}
            except ValueError as exc:  # NaN or non-integer voxels
                raise DatasetError(f"label map: {exc}", path=path) from None
        name, why = detect_convention(values)
        if name is not None:
            return name, f"detected from the {what}: {why}"
    return "brats2021", (f"assumed: {why}; WT, TC and ET are then the same in every BraTS convention "
                         f"(ET is empty throughout); for data that is not BraTS name its labels "
                         f"(--label-names lesion=1 …)")


def _read_label(path: Path, what: str):
    try:
        vol = read_volume(path)
    except VolumeReadError as exc:
        raise DatasetError(str(exc), path=path) from None
    if vol.channels > 1:
        raise DatasetError(f"{what} is a {vol.channels}-channel (RGB) image where a label map (one value per pixel) "
                           f"is expected", path=path)
    if vol.data.ndim != 3:
        raise DatasetError(f"{what} is {vol.data.ndim}D (shape {tuple(vol.data.shape)}) where a 3D label map is "
                           f"expected", path=path)
    return vol


def _evaluate_case(case_id: str, pred_path: Path, gt_path: Path, convention: LabelConvention, empty: str,
                   tolerance: float, lesion_challenge: str | None = None) -> list[dict]:
    """Rows of one case (runs in a worker process when ``num_workers > 1``)."""
    gt = _read_label(gt_path, "ground truth")
    pred = _read_label(pred_path, "prediction")
    why = geometry_mismatch(gt.data.shape, gt.affine, pred.data.shape, pred.affine)
    if why is not None:
        raise DatasetError(f"prediction {pred_path} does not lie on the voxel grid of its ground truth {gt_path}: "
                           f"{why} (nothing is resampled: predict on the ground truth's grid)",
                           case=case_id, path=pred_path)
    masks = {}
    for what, vol, path in (("prediction", pred, pred_path), ("ground truth", gt, gt_path)):
        try:
            masks[what] = region_masks(vol.data, convention)
        except ValueError as exc:
            raise DatasetError(f"{what}: {exc}", case=case_id, path=path) from None
    try:
        spacing = spacing_from_affine(gt.affine)
    except ValueError as exc:
        raise DatasetError(f"ground truth: {exc}", case=case_id, path=gt_path) from None
    del pred, gt
    metrics = _metrics_of_masks(masks["prediction"], masks["ground truth"], spacing, empty, tolerance)
    rows = [{"case": case_id, "region": region, **metrics[region],
             "gt_voxels": int(np.count_nonzero(masks["ground truth"][region])),
             "pred_voxels": int(np.count_nonzero(masks["prediction"][region])),
             "pred_file": str(pred_path), "gt_file": str(gt_path)} for region in convention.region_names]
    if lesion_challenge is not None:
        settings = get_challenge(lesion_challenge)
        for row in rows:
            result = lesion_wise_scores(masks["prediction"][row["region"]], masks["ground truth"][row["region"]],
                                        spacing, dilation=settings.dilation, min_volume_mm3=settings.min_volume_mm3)
            row.update({"lesion_dice": result.dice, "lesion_hd95": result.hd95, "lesion_tp": result.tp,
                        "lesion_fn": result.fn, "lesion_fp": result.fp})
    return rows


def evaluate_folder(pred_dir: str | Path, gt: str | Path, *, convention: str | LabelConvention | None = None,
                    empty: str = "brats",
                    nsd_tolerance_mm: float = 1.0, cases: Sequence[str] | None = None, allow_missing: bool = False,
                    num_workers: int = 1, modalities: Sequence[str] | None = None, label_suffix: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None,
                    lesion_challenge: str | None = None) -> Evaluation:
    """Dice, HD95 and NSD per region (BraTS: WT, TC and ET) or label of every prediction in ``pred_dir``
    (module docstring).

    Args:
        pred_dir: folder of predicted label maps ``<case_id>.nii.gz``.
        gt: BraTS-style dataset folder, an nnU-Net raw dataset (or its ``labelsTr``), or a folder of label
            maps ``<case_id>.nii.gz``.
        convention: label convention of predictions and ground truth (``CONVENTIONS`` key or a
            ``LabelConvention`` such as a ``label_set``); None: from the BraTS naming or the dataset.json,
            or detected from the values.
        empty: empty-mask convention, an ``EMPTY_CONVENTIONS`` key (default ``"brats"``).
        nsd_tolerance_mm: NSD tolerance in mm (default 1).
        cases: evaluate only these case ids; each must have a prediction and ground truth.
        allow_missing: evaluate the predicted cases when some ground-truth cases have no prediction
            (default: that is an error, unless ``cases`` is given).
        num_workers: worker processes (one case in memory per worker: two label maps and six masks).
        modalities, label_suffix: for a ground-truth folder in a generic layout (see ``discover``).
        progress: called as ``progress(done, total, case_id)`` after each case.
        lesion_challenge: also compute the BraTS 2023 lesion-wise Dice and HD95 with this challenge's
            settings (a :data:`medmamba.evaluation.lesionwise.CHALLENGES` key, e.g. ``"GLI"``); None: not.
    Returns:
        the :class:`Evaluation`.
    Raises:
        DatasetError: any problem with the inputs, naming the file (module docstring).
        ValueError: an unknown convention or challenge name or a bad tolerance.
    """
    empty = check_empty_convention(empty)
    tolerance = _check_tolerance(nsd_tolerance_mm)
    if lesion_challenge is not None:
        lesion_challenge = get_challenge(lesion_challenge).name
    if convention is not None:
        convention = get_convention(convention)
    pred_dir = Path(pred_dir).expanduser().absolute()
    gt = Path(gt).expanduser().absolute()
    if not pred_dir.is_dir():
        raise DatasetError("prediction folder does not exist or is not a folder", path=pred_dir)
    preds = _image_listing(pred_dir, "prediction")
    if not preds:
        raise DatasetError("no predictions here (expected label maps named <case_id>.nii.gz, or .nrrd, .mha, .mhd, "
                           ".png, …)", path=pred_dir)
    labels, convention, source, layout = _ground_truth(gt, modalities, label_suffix, convention)

    if cases is not None:
        wanted = list(dict.fromkeys(cases))
        if not wanted:
            raise DatasetError("the list of cases to evaluate is empty")
        for case_id in wanted:
            if case_id not in preds:
                raise DatasetError(f"no prediction for case {case_id} (expected {pred_dir / (case_id + '.nii.gz')} "
                                   f"or another image ending)",
                                   case=case_id, path=pred_dir)
            if case_id not in labels:
                raise DatasetError(f"no ground truth for case {case_id} in the {layout} {gt}", case=case_id, path=gt)
        selected = sorted(wanted)
    else:
        for case_id, path in preds.items():
            if case_id not in labels:
                raise DatasetError(f"prediction without ground truth: no case {case_id} in the {layout} {gt}",
                                   case=case_id, path=path)
        selected = sorted(preds)
    without = sorted(set(labels) - set(preds))
    if without and cases is None and not allow_missing:
        raise DatasetError(f"{len(without)} of {len(labels)} ground-truth cases have no prediction here (e.g. "
                           f"{without[0]}); to evaluate only the {len(preds)} predicted ones, name them "
                           f"(cases=...) or allow a partial evaluation (allow_missing=True; CLI: --cases, "
                           f"--allow-missing)", path=pred_dir)

    if convention is None:
        convention, source = _detect([labels[c] for c in selected], [preds[c] for c in selected])
    convention = get_convention(convention)

    items = [(c, preds[c], labels[c], convention, empty, tolerance, lesion_challenge) for c in selected]
    rows: list[dict] = []
    for done, case_rows in enumerate(_ordered_map(_evaluate_case, items, num_workers), start=1):
        rows.extend(case_rows)
        if progress is not None:
            progress(done, len(items), case_rows[0]["case"])
    return Evaluation(rows=rows, empty_convention=empty, nsd_tolerance_mm=tolerance,
                      label_convention=convention.title,
                      label_convention_source=source, gt_without_prediction=without, pred_dir=str(pred_dir),
                      gt=str(gt), lesion_challenge=lesion_challenge)


def default_summary_path(csv_path: str | Path) -> Path:
    """Where the summary JSON goes when none is named: beside the CSV, ``<stem>_summary.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}_summary.json")


def evaluate_to_files(pred_dir: str | Path, gt: str | Path, csv_path: str | Path,
                      summary_path: str | Path | None = None, *, force: bool = False,
                      **options) -> tuple[Evaluation, Path, Path]:
    """``medmamba evaluate``: :func:`evaluate_folder` written to a per-case CSV and a summary JSON.

    The inputs must exist and the outputs are checked before any volume is read: two different
    files, neither a NIfTI name nor a folder, not inside an input folder (inputs are never written
    to), in a writable folder, and not existing already unless ``force``. Both are written as a pair
    (:meth:`Evaluation.write`).

    Args:
        pred_dir, gt: as :func:`evaluate_folder`'s.
        csv_path: the per-case CSV; ``summary_path``: the summary JSON (default
            :func:`default_summary_path`).
        force: replace existing output files.
        options: :func:`evaluate_folder`'s keywords.
    Returns:
        (the evaluation, the CSV, the summary JSON).
    Raises:
        DatasetError: a missing input, a refused output, and whatever :func:`evaluate_folder` raises.
    """
    pred_dir, gt, csv_path = Path(pred_dir), Path(gt), Path(csv_path)
    summary_path = Path(summary_path) if summary_path is not None else default_summary_path(csv_path)
    if not pred_dir.is_dir():
        raise DatasetError(f"--pred {pred_dir} is not a folder (give the folder of predicted label maps "
                           f"<case_id>.nii.gz)")
    if not gt.exists():
        raise DatasetError(f"--gt {gt} does not exist")
    if csv_path.expanduser().absolute() == summary_path.expanduser().absolute():
        raise DatasetError(f"--out and --summary are the same file {csv_path}")
    for path, option in ((csv_path, "--out"), (summary_path, "--summary")):
        if strip_ending(path.name) is not None:
            raise DatasetError(f"{option} {path} names an image file; give a .csv/.json path")
        if path.is_dir():
            raise DatasetError(f"{option} {path} is a folder; give a file path")
        if path.exists() and not force:
            raise DatasetError(f"{option} {path} already exists; pass --force to overwrite it")
        for folder, input_option in ((pred_dir, "--pred"), (gt, "--gt")):
            if lies_within(path.parent, folder):
                raise DatasetError(f"{option} {path} lies inside the {input_option} folder {folder}; inputs are "
                                   f"never written to, choose a place outside it")
        check_writable(path.parent)
    evaluation = evaluate_folder(pred_dir, gt, **options)
    evaluation.write(csv_path, summary_path)
    return evaluation, csv_path, summary_path
