"""Whole-volume validation: the result of a training run, scored the way a user will use the model.

nnU-Net's pseudo-Dice, shown while training, is computed on patches drawn with foreground
oversampling; it says little about a whole scan (a model can show 0.85 on patches and label a third
of the brain as tumour). At the end of training :func:`validate_whole_volumes` therefore does what
nnU-Net's final validation does, in the trainer's process and with its network in memory: every
validation case of the fold is predicted whole with nnU-Net's Gaussian sliding window, resampled and
un-cropped back to the original image grid with nnU-Net's export, written to ``fold_*/validation/``,
and compared with the ground truth nnU-Net copied at preprocessing (``gt_segmentations``).

Differences from nnU-Net's ``perform_actual_validation``, and why:

- no test-time mirroring by default (8× the compute in 3D; ``medmamba predict`` and ``compare``
  predict without it unless asked), and no worker pool (the export runs in process);
- fold ``all`` has no held-out cases: nnU-Net then validates on the training cases, and so does
  this, on at most :data:`FOLD_ALL_MAX_CASES` of them, saying so in the result;
- Dice per region (BraTS: WT, TC, ET) or per label, with MONAI's Dice and the BraTS empty-mask
  convention (both empty: 1), as ``medmamba evaluate`` scores; label-based training (SegMamba's CE
  recipe) is scored on the same regions, taken from the label map.

The result is a :class:`WholeVolumeValidation`, stored as ``fold_*/validation/medmamba_summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FOLD_ALL_MAX_CASES", "SUMMARY_NAME", "WholeVolumeValidation", "validate_whole_volumes",
           "validation_regions"]

#: With fold "all" every case was trained on; validation then scores at most this many of them.
FOLD_ALL_MAX_CASES = 10
#: The result file in the fold folder's ``validation/``.
SUMMARY_NAME = "medmamba_summary.json"
_FORMAT = "medmamba-validation/1"


@dataclass
class WholeVolumeValidation:
    """Whole-volume Dice of one trained fold.

    Attributes:
        fold: the fold ("0"–"4" or "all").
        cases_source: which cases were scored, in words (held out, or training cases for fold all).
        regions: region (or label) names, e.g. ("WT", "TC", "ET").
        per_case: case → region → Dice (BraTS convention: both masks empty → 1).
        foreground_in_truth: case → region → whether the ground truth has that region.
        epochs: epochs the model was trained for. seconds: time the validation took.
        empty_convention, mirroring: how the scores were made.
        single_slice: every scored case is one slice deep (2D images): the scores are whole-image.
    """

    fold: str
    cases_source: str
    regions: tuple[str, ...]
    per_case: dict[str, dict[str, float]]
    foreground_in_truth: dict[str, dict[str, bool]]
    epochs: int
    seconds: float
    empty_convention: str = "brats"
    mirroring: bool = False
    single_slice: bool = False
    format: str = field(default=_FORMAT)

    @property
    def cases(self) -> list[str]:
        return list(self.per_case)

    def mean(self, region: str) -> float:
        """Mean Dice of ``region`` over the cases (NaN without cases)."""
        values = [self.per_case[c][region] for c in self.per_case]
        return float(np.mean(values)) if values else math.nan

    @property
    def collapsed(self) -> bool:
        """The model found none of what it should have found: Dice 0 in every case and region where
        the ground truth has foreground (the all-background state a slow start leaves behind)."""
        scored = [self.per_case[c][r] for c in self.per_case for r in self.regions
                  if self.foreground_in_truth[c][r]]
        return bool(scored) and all(v == 0 for v in scored)

    def describe(self) -> str:
        """One line: the Dice per region and what it was measured on."""
        dice = " · ".join(f"{r} {self.mean(r):.3f}" for r in self.regions)
        return f"whole-{'image' if self.single_slice else 'volume'} Dice {dice} on {len(self.per_case)} {self.cases_source}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["regions"] = list(self.regions)
        out["mean"] = {r: self.mean(r) for r in self.regions}
        out["collapsed"] = self.collapsed
        return out

    @classmethod
    def from_json(cls, data: dict) -> WholeVolumeValidation:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} record (format {data.get('format')!r})")
        fields = {k: data[k] for k in ("fold", "cases_source", "per_case", "foreground_in_truth", "epochs",
                                       "seconds", "empty_convention", "mirroring")}
        return cls(regions=tuple(data["regions"]), single_slice=bool(data.get("single_slice", False)), **fields)

    def write(self, path: str | Path) -> Path:
        from medmamba.files import atomic_output_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> WholeVolumeValidation:
        return cls.from_json(json.loads(Path(path).read_text()))


def validation_regions(dataset_json: dict) -> dict[str, tuple[int, ...]]:
    """Region (or label) name → the nnU-Net label values it contains.

    Region-based datasets give their regions (BraTS: WT, TC, ET); a label-based copy of one made for
    a CE recipe keeps the original regions under ``medmamba_regions``; any other dataset scores each
    foreground label on its own.
    """
    from medmamba.data.labels import short_region_name

    labels = dataset_json.get("medmamba_regions") or dataset_json["labels"]
    regions = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        regions[short_region_name(name)] = tuple(int(v) for v in values)
    return regions


def _cases_to_score(trainer) -> tuple[list[str], str]:
    _, keys = trainer.do_split()
    keys = sorted(keys)
    if trainer.fold != "all":
        return keys, f"held-out validation cases of fold {trainer.fold}"
    if len(keys) > FOLD_ALL_MAX_CASES:
        picks = np.linspace(0, len(keys) - 1, FOLD_ALL_MAX_CASES).round().astype(int)
        keys = [keys[i] for i in sorted(set(picks))]
    return keys, "training cases (fold all holds none out)"


def validate_whole_volumes(trainer, *, mirroring: bool = False, log=None) -> WholeVolumeValidation:
    """Predict and score the fold's validation cases with the trainer's network (after training).

    Writes the label maps (nnU-Net's label space, the original image grid) and the result to
    ``<fold folder>/validation/`` and returns the result. Only the first DDP rank should call it.
    """
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medmamba.files import atomic_output_file
    from medmamba.evaluation.metrics import mask_metrics

    start = time.perf_counter()
    network = trainer.network.module if trainer.is_ddp else trainer.network
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=trainer.device.type == "cuda",
                                device=trainer.device, verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    regions = validation_regions(trainer.dataset_json)
    keys, source = _cases_to_score(trainer)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    io = trainer.plans_manager.image_reader_writer_class()
    ending = trainer.dataset_json["file_ending"]
    truth_folder = os.path.join(trainer.preprocessed_dataset_folder_base, "gt_segmentations")
    out_folder = Path(trainer.output_folder) / "validation"
    out_folder.mkdir(parents=True, exist_ok=True)
    per_case, in_truth, single_slice = {}, {}, True
    for key in keys:
        data, _, _, properties = dataset.load_case(key)
        with torch.no_grad():
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:])))
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.cpu(), trainer.plans_manager, trainer.configuration_manager, trainer.label_manager, properties,
            num_threads_torch=torch.get_num_threads())
        with atomic_output_file(out_folder / f"{key}{ending}") as tmp:
            io.write_seg(segmentation, str(tmp), properties)
        truth, truth_properties = io.read_seg(os.path.join(truth_folder, f"{key}{ending}"))
        truth = truth[0]
        # nnU-Net reads 2D images as 3D with a single slice, (1, X, Y): the masks are 3D either way,
        # and a case one slice deep is a whole image
        single_slice &= truth.shape[0] == 1
        pred_masks = {r: np.isin(segmentation, values) for r, values in regions.items()}
        truth_masks = {r: np.isin(truth, values) for r, values in regions.items()}
        scores = mask_metrics(pred_masks, truth_masks, list(truth_properties["spacing"]), metrics=("dice",))
        per_case[key] = {r: scores[r]["dice"] for r in regions}
        in_truth[key] = {r: bool(truth_masks[r].any()) for r in regions}
        if log is not None:
            log(f"validation {key}: " + " ".join(f"{r} {per_case[key][r]:.3f}" for r in regions))
    result = WholeVolumeValidation(fold=str(trainer.fold), cases_source=source, regions=tuple(regions),
                                   per_case=per_case, foreground_in_truth=in_truth,
                                   epochs=int(trainer.current_epoch), seconds=round(time.perf_counter() - start, 2),
                                   mirroring=mirroring, single_slice=single_slice and bool(keys))
    result.write(out_folder / SUMMARY_NAME)
    return result
