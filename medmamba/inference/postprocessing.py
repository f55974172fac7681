"""nnU-Net's postprocessing: keep only the largest connected component (of the foreground, then of
each label or region) where that raised the Dice of the cross-validation.

The decision is nnU-Net's own (``nnunetv2.postprocessing.remove_connected_components.
determine_postprocessing``) on nnU-Net's own pooled cross-validation folder
(``nnunetv2.evaluation.accumulate_cv_results``: every fold's whole-volume validation predictions,
``fold_*/validation/``, against the preprocessed dataset's ``gt_segmentations``). medmamba keeps the
result as JSON beside the model (:data:`POSTPROCESSING_FILE`) rather than nnU-Net's pickle of
functions, and :func:`apply_postprocessing` replays it with nnU-Net's
``remove_all_but_largest_component_from_segmentation`` on every label map ``predict`` writes.

A label set in the file is a list of label values: nnU-Net's step "the foreground labels [1, 2, 3]"
and its step "the region (1, 2, 3)" select the same voxels (a voxel is in the region when its label is
one of the values), so a list replays both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medmamba.files import write_json_atomically

__all__ = ["POSTPROCESSING_FILE", "Postprocessing", "apply_postprocessing", "determine_postprocessing",
           "read_postprocessing"]

#: In the trainer output folder: the decision, its folds and the Dice before and after.
POSTPROCESSING_FILE = "medmamba_postprocessing.json"


class Postprocessing(dict):
    """The decision as read from :data:`POSTPROCESSING_FILE`: ``steps`` (label sets whose largest
    component is kept, in order), ``folds``, ``cases``, ``dice_before``, ``dice_after``."""

    @property
    def steps(self) -> list[list[int]]:
        return [list(map(int, s)) for s in self.get("steps", [])]

    def describe(self) -> str:
        if not self.steps:
            return "postprocessing: none (keeping only the largest component did not help on the cross-validation)"
        what = "; ".join(f"labels {', '.join(map(str, s))}" for s in self.steps)
        return f"postprocessing: keep the largest connected component of {what}"


def _steps_of(kwargs: Sequence[dict]) -> list[list[int]]:
    steps = []
    for k in kwargs:
        value = k["labels_or_regions"]
        flat: list[int] = []
        for v in value if isinstance(value, (list, tuple)) else [value]:
            flat += [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
        steps.append(sorted(set(flat)))
    return steps


def determine_postprocessing(trainer_folder: str | Path, gt_segmentations: str | Path, folds: Sequence[int | str],
                             *, raw_root: str | Path | None = None,
                             log: Callable[[str], None] = print) -> Postprocessing:
    """Decide the postprocessing of one model on the cross-validation of ``folds`` (each fold's
    whole-volume validation predictions) against ``gt_segmentations`` (the preprocessed dataset's)
    and write :data:`POSTPROCESSING_FILE` into ``trainer_folder``. ``raw_root``: the nnUNet_raw
    folder (nnU-Net's accumulation scores against its ``labelsTr`` when there is one).

    Raises:
        ValueError: a fold without validation predictions (train it, or train without skipping
            the final validation).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing as nnunet_determine
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string

    from medmamba.console import nnunet_prints
    from medmamba.planning import nnunet_paths

    trainer_folder = Path(trainer_folder)
    folds = [int(f) for f in folds]
    dataset_json = load_json(str(trainer_folder / "dataset.json"))
    ending = dataset_json["file_ending"]
    for fold in folds:
        validation = trainer_folder / f"fold_{fold}" / "validation"
        if not any(validation.glob(f"*{ending}")):
            raise ValueError(f"{validation}: no validation predictions; the postprocessing is decided on every "
                             f"fold's held-out cases")
    merged = trainer_folder / f"crossval_results_folds_{folds_tuple_to_string(folds)}"
    preprocessed_root = Path(gt_segmentations).parent.parent
    with nnunet_paths(raw=raw_root or preprocessed_root, preprocessed=preprocessed_root), \
            nnunet_prints(trainer_folder / "postprocessing_log.txt"):
        accumulate_cv_results(str(trainer_folder), str(merged), folds, num_processes=1, overwrite=True)
        _, kwargs = nnunet_determine(str(merged), str(gt_segmentations), load_json(str(trainer_folder / "plans.json")),
                                     dataset_json, num_processes=1, keep_postprocessed_files=False)
    summary = json.loads((merged / "postprocessing.json").read_text())
    cases = sorted(p.name[:-len(ending)] for p in merged.glob(f"*{ending}"))
    result = Postprocessing(
        steps=_steps_of(kwargs), folds=folds, cases=len(cases),
        dice_before=summary["input_folder"]["foreground_mean"]["Dice"],
        dice_after=summary["postprocessed"]["foreground_mean"]["Dice"],
        decided_by="nnunetv2.postprocessing.remove_connected_components.determine_postprocessing",
        cross_validation=str(merged.name))
    write_json_atomically(trainer_folder / POSTPROCESSING_FILE, dict(result))
    shutil.rmtree(merged / "postprocessed", ignore_errors=True)
    log(f"  {result.describe()} (decided on the cross-validation of folds {', '.join(map(str, folds))}, "
        f"{len(cases)} cases: mean Dice {result['dice_before']:.5f} → {result['dice_after']:.5f})")
    return result


def read_postprocessing(trainer_folder: str | Path) -> Postprocessing | None:
    """The model's postprocessing decision, or None when none was made."""
    path = Path(trainer_folder) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        return Postprocessing(json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None


def apply_postprocessing(segmentation: np.ndarray, postprocessing: Postprocessing | None) -> np.ndarray:
    """``segmentation`` (nnU-Net label values) with each step applied in order (a new array)."""
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    if postprocessing is None:
        return segmentation
    for step in postprocessing.steps:
        segmentation = remove_all_but_largest_component_from_segmentation(np.asarray(segmentation), list(step))
    return segmentation
