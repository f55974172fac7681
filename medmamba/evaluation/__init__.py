"""Evaluation: Dice, HD95 and NSD per BraTS region with explicit empty-mask conventions.

Typical use (what ``medmamba evaluate`` does)::

    from medmamba.evaluation import evaluate_folder
    ev = evaluate_folder("predictions/", "BraTS2021_Training_Data", empty="brats")
    ev.write_csv("metrics.csv"); ev.write_summary_json("metrics_summary.json")
    ev.summary()["ET"]["dice"]["mean"]

    from medmamba.evaluation import case_metrics
    case_metrics(pred, gt, spacing=(1.0, 1.0, 1.0), convention="brats2023")   # {"WT": {"dice": ..}, ..}

    from medmamba.evaluation import case_lesion_wise
    case_lesion_wise(pred, gt, spacing=(1.0, 1.0, 1.0), convention="brats2023")["ET"].dice   # BraTS 2023 lesion-wise

Details: :mod:`medmamba.evaluation.metrics` (regions, MONAI metrics, the empty-mask conventions table),
:mod:`medmamba.evaluation.lesionwise` (the BraTS 2023 lesion-wise scores),
:mod:`medmamba.evaluation.folders` (folder pairing, checks, CSV and JSON outputs).
"""

from medmamba.evaluation.folders import CSV_COLUMNS, LESION_CSV_COLUMNS, Evaluation, evaluate_folder, evaluate_to_files
from medmamba.evaluation.lesionwise import (
    CHALLENGES,
    LesionWise,
    LesionWiseResult,
    case_lesion_wise,
    lesion_wise_scores,
)
from medmamba.evaluation.metrics import (
    BRATS_EMPTY_HD95_MM,
    EMPTY_CONVENTIONS,
    METRICS,
    REGIONS,
    SEGMAMBA_EMPTY_HD95_MM,
    case_metrics,
    mask_metrics,
    region_masks,
    spacing_from_affine,
)

__all__ = [
    "REGIONS", "METRICS", "EMPTY_CONVENTIONS", "BRATS_EMPTY_HD95_MM", "SEGMAMBA_EMPTY_HD95_MM", "CSV_COLUMNS",
    "region_masks", "mask_metrics", "case_metrics", "spacing_from_affine", "Evaluation", "evaluate_folder",
    "evaluate_to_files", "LESION_CSV_COLUMNS", "CHALLENGES", "LesionWise", "LesionWiseResult", "case_lesion_wise",
    "lesion_wise_scores",
]
