"""Evaluation: regions, Dice/HD95/NSD on hand-built masks, empty-mask conventions, folder evaluation, CLI."""

from __future__ import annotations

import csv
import json
import math
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from medmamba.cli import main
from medmamba.data import DatasetError
from medmamba.evaluation import (
    BRATS_EMPTY_HD95_MM,
    EMPTY_CONVENTIONS,
    Evaluation,
    case_metrics,
    evaluate_folder,
    mask_metrics,
    region_masks,
)

NAN = float("nan")


def same(a: float, b: float, rel: float = 1e-6) -> bool:
    """Equal within float32 precision (MONAI computes in float32), NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-6)


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ------------------------------------------------------------------------------------------- regions

def test_regions_in_the_2021_and_2023_conventions():
    labels_2021 = np.array([0, 1, 2, 4, 0]).reshape(5, 1, 1)
    m = region_masks(labels_2021, "brats2021")
    assert m["WT"].ravel().tolist() == [False, True, True, True, False]
    assert m["TC"].ravel().tolist() == [False, True, False, True, False]
    assert m["ET"].ravel().tolist() == [False, False, False, True, False]
    labels_2023 = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    m = region_masks(labels_2023, "brats2023")
    assert m["WT"].ravel().tolist() == [False, True, True, True]
    assert m["TC"].ravel().tolist() == [False, True, False, True]
    assert m["ET"].ravel().tolist() == [False, False, False, True]
    m = region_masks(np.array([3, 4]).reshape(2, 1, 1), "brats2015")  # 3 = non-enhancing: TC and WT, not ET
    assert m["TC"].ravel().tolist() == [True, True] and m["ET"].ravel().tolist() == [False, True]
    with pytest.raises(ValueError, match=r"values \[3\] are outside"):
        region_masks(labels_2023, "brats2021")


# ------------------------------------------------------------------------------------- known numbers

def test_dice_of_two_overlapping_cubes_is_exact():
    shape = (12, 12, 12)
    a, b = box(shape, (2, 2, 2), (6, 6, 6)), box(shape, (3, 2, 2), (7, 6, 6))  # overlap 3·4·4 = 48 of 64 each
    got = mask_metrics({"r": a}, {"r": b}, (1.0, 1.0, 1.0))["r"]
    assert same(got["dice"], 2 * 48 / (64 + 64))
    assert same(got["hd95"], 1.0)  # every surface voxel of one cube lies 0 or 1 voxel from the other's surface


@pytest.mark.parametrize("axis, k, spacing", [(2, 3, (0.8, 1.0, 2.5)), (0, 2, (0.8, 1.0, 2.5)),
                                               (1, 4, (1.0, 1.5, 3.0))])
def test_hd95_of_a_shifted_voxel_is_the_shift_in_mm(axis, k, spacing):
    shape = (10, 10, 10)
    gt = np.zeros(shape, bool)
    gt[2, 2, 2] = True
    pred = np.roll(gt, k, axis=axis)
    got = mask_metrics({"r": pred}, {"r": gt}, spacing, nsd_tolerance_mm=0.5)["r"]
    assert same(got["hd95"], k * spacing[axis])
    assert got["dice"] == 0.0 and got["nsd"] == 0.0  # every surface element is ≥ one voxel from the other


def test_hd95_is_monais_interpolated_95th_percentile_in_mm():
    # Two voxels each; one pair coincides, the other is 2 voxels (3 mm each) apart along z: the
    # distances in each direction are [0, 6] mm, whose 95th percentile (linear) is 0.95·6 = 5.7 mm.
    shape = (12, 12, 12)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[2, 2, 2] = pred[2, 2, 2] = True
    gt[9, 9, 3], pred[9, 9, 5] = True, True
    got = mask_metrics({"r": pred}, {"r": gt}, (1.0, 1.0, 3.0))["r"]
    assert same(got["dice"], 0.5) and same(got["hd95"], 5.7)


def test_identical_masks_and_nsd_tolerance():
    shape = (16, 16, 16)
    gt = box(shape, (3, 3, 3), (11, 11, 9))
    same_masks = mask_metrics({"r": gt}, {"r": gt}, (1.0, 1.0, 2.0))["r"]
    assert same_masks == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    pred = np.roll(gt, 1, axis=2)  # one 2 mm slice up
    loose = mask_metrics({"r": pred}, {"r": gt}, (1.0, 1.0, 2.0), nsd_tolerance_mm=2.0)["r"]
    tight = mask_metrics({"r": pred}, {"r": gt}, (1.0, 1.0, 2.0), nsd_tolerance_mm=0.5)["r"]
    assert loose["nsd"] == pytest.approx(1.0)  # no surface element is farther than one slice
    assert 0.0 < tight["nsd"] < 1.0  # the side faces still match, the top and bottom do not
    assert same(loose["hd95"], 2.0) and same(loose["dice"], 2 * 5 / (6 + 6))  # 6 slices, 5 shared


def test_cropping_leaves_the_metrics_unchanged():
    """Our union-box crop must give MONAI's numbers on the whole arrays, masks touching the edge included."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    shape, spacing = (20, 18, 14), (0.9, 1.3, 2.7)
    gt = box(shape, (0, 0, 8), (9, 7, 14)) & (rng.random(shape) > 0.3)  # touches three faces of the array
    gt[0:5, 0:4, 10:14] = True
    pred = box(shape, (3, 2, 5), (13, 10, 12)) & (rng.random(shape) > 0.3)  # reaches beyond gt's box
    ours = mask_metrics({"r": pred}, {"r": gt}, spacing, nsd_tolerance_mm=1.5)["r"]
    p, g = (torch.from_numpy(x.astype(np.float32))[None, None] for x in (pred, gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        full = {"dice": compute_dice(p, g, include_background=True).item(),
                "hd95": compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                                   spacing=list(spacing)).item(),
                "nsd": compute_surface_dice(p, g, [1.5], include_background=True, spacing=list(spacing),
                                            use_subvoxels=True).item()}
    assert 0 < full["dice"] < 1 and full["hd95"] > 0 and 0 < full["nsd"] < 1
    for metric in full:
        assert ours[metric] == pytest.approx(full[metric], rel=1e-6), metric


# ----------------------------------------------------------------------------------- empty conventions

# (both empty, ground truth empty only, prediction empty only) → (Dice, HD95, NSD), written out by hand
EXPECTED_EMPTY = {
    "brats": [(1, 0, 1), (0, BRATS_EMPTY_HD95_MM, 0), (0, BRATS_EMPTY_HD95_MM, 0)],
    "monai": [(NAN, NAN, NAN), (NAN, NAN, 0), (0, NAN, 0)],
    "nan": [(NAN, NAN, NAN), (0, NAN, 0), (0, NAN, 0)],
    "segmamba": [(0, 50, 0), (0, 50, 0), (0, 50, 0)],
}


@pytest.mark.parametrize("empty", sorted(EMPTY_CONVENTIONS))
def test_empty_mask_conventions(empty):
    assert BRATS_EMPTY_HD95_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)
    shape = (8, 8, 8)
    none, some = np.zeros(shape, bool), box(shape, (2, 2, 2), (5, 5, 5))
    masks_pred = {"both": none, "gt_empty": some, "pred_empty": none, "present": some}
    masks_gt = {"both": none, "gt_empty": none, "pred_empty": some, "present": some}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's warnings about empty masks are expected and filtered
        got = mask_metrics(masks_pred, masks_gt, (1.0, 1.0, 2.0), empty=empty)
    for name, expected in zip(["both", "gt_empty", "pred_empty"], EXPECTED_EMPTY[empty]):
        values = (got[name]["dice"], got[name]["hd95"], got[name]["nsd"])
        assert all(same(v, e) for v, e in zip(values, expected)), (name, values, expected)
    assert got["present"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}  # non-empty masks: MONAI's values


def test_case_metrics_on_label_maps_and_bad_arguments():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:8, 2:8, 2:8] = 2
    gt[4:6, 4:6, 4:6] = 4
    pred = gt.copy()
    pred[pred == 4] = 1  # ET predicted as necrosis: WT and TC still perfect, ET empty in the prediction
    got = case_metrics(pred, gt, (1.0, 1.0, 1.0), "brats2021")
    assert got["WT"] == got["TC"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    assert got["ET"] == {"dice": 0.0, "hd95": BRATS_EMPTY_HD95_MM, "nsd": 0.0}
    with pytest.raises(ValueError, match="prediction: .*values \\[3\\]"):
        case_metrics(np.where(pred == 1, 3, pred), gt, (1, 1, 1), "brats2021")
    with pytest.raises(ValueError, match="shape"):
        case_metrics(pred[:-1], gt, (1, 1, 1), "brats2021")
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(pred, gt, (1, 0, 1), "brats2021")
    with pytest.raises(ValueError, match="empty-mask convention"):
        case_metrics(pred, gt, (1, 1, 1), "brats2021", empty="zero")
    with pytest.raises(ValueError, match="tolerance"):
        case_metrics(pred, gt, (1, 1, 1), "brats2021", nsd_tolerance_mm=-1)


# -------------------------------------------------------------------------------------------- folders

SPACING = (1.0, 1.5, 3.0)
SHAPE = (14, 12, 10)


def _affine() -> np.ndarray:
    """An oblique, shifted grid with anisotropic voxels: the column norms are SPACING."""
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(SPACING)
    affine[:3, 3] = (-20.0, 7.5, 31.0)
    return affine


def _save(path, data, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), _affine() if affine is None else affine), path)


def _cases():
    """Three BraTS 2021 cases (ground truth, prediction) with hand-computable metrics."""
    a = np.zeros(SHAPE, np.uint8)  # A: perfect prediction
    a[3:9, 3:9, 2:7] = 2
    a[5:7, 5:7, 3:5] = 4
    a[5:7, 5:7, 5] = 1
    b_gt = a.copy()  # B: enhancing tumour predicted as necrosis → ET empty in the prediction
    b_pred = np.where(a == 4, 1, a).astype(np.uint8)
    c_gt = np.zeros(SHAPE, np.uint8)  # C: two voxels; the edema voxel is 2 slices (6 mm) off; no ET anywhere
    c_gt[2, 2, 2], c_gt[10, 9, 7] = 2, 1
    c_pred = np.zeros(SHAPE, np.uint8)
    c_pred[2, 2, 4], c_pred[10, 9, 7] = 2, 1
    return {"BraTS2021_00001": (a, a), "BraTS2021_00002": (b_gt, b_pred), "BraTS2021_00003": (c_gt, c_pred)}


@pytest.fixture
def folders(tmp_path):
    gt_root, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for case, (gt, pred) in _cases().items():
        _save(gt_root / case / f"{case}_seg.nii.gz", gt)
        _save(gt_root / case / f"{case}_t1.nii.gz", np.zeros(SHAPE))
        _save(pred_dir / f"{case}.nii.gz", pred)
    (pred_dir / "notes.txt").write_text("not a prediction")  # ignored
    return gt_root, pred_dir


def _by_case(ev: Evaluation) -> dict:
    return {(r["case"], r["region"]): (r["dice"], r["hd95"], r["nsd"]) for r in ev.rows}


def test_evaluate_folder_brats_convention(folders, tmp_path):
    gt_root, pred_dir = folders
    ev = evaluate_folder(pred_dir, gt_root)
    assert ev.label_convention == "brats2021" and ev.empty_convention == "brats" and ev.gt_without_prediction == []
    got = _by_case(ev)
    assert got[("BraTS2021_00001", "WT")] == got[("BraTS2021_00001", "ET")] == (1.0, 0.0, 1.0)
    assert got[("BraTS2021_00002", "TC")] == (1.0, 0.0, 1.0)
    assert got[("BraTS2021_00002", "ET")] == (0.0, BRATS_EMPTY_HD95_MM, 0.0)
    dice, hd95, nsd = got[("BraTS2021_00003", "WT")]
    # WT: one voxel shared of two each → Dice 0.5; distances [0, 6 mm] each way → HD95 0.95·6 (z spacing 3 mm)
    assert same(dice, 0.5) and same(hd95, 0.95 * 2 * SPACING[2])
    assert got[("BraTS2021_00003", "TC")] == (1.0, 0.0, 1.0)
    assert got[("BraTS2021_00003", "ET")] == (1.0, 0.0, 1.0)  # both empty

    s = ev.summary()
    assert s["empty_convention"] == "brats" and "373.13" in s["empty_convention_description"]
    assert s["cases"] == 3 and s["WT"]["dice"]["n"] == 3
    assert same(s["WT"]["dice"]["mean"], (1 + 1 + 0.5) / 3) and same(s["WT"]["dice"]["median"], 1.0)
    assert same(s["WT"]["dice"]["sd"], float(np.std([1, 1, 0.5], ddof=1)))
    assert same(s["ET"]["hd95"]["mean"], BRATS_EMPTY_HD95_MM / 3)
    per_case_mean = [1.0, 2 / 3, (0.5 + 1 + 1) / 3]
    assert same(s["mean"]["dice"]["mean"], float(np.mean(per_case_mean)))
    assert same(s["mean"]["dice"]["mean_of_region_means"], float(np.mean(per_case_mean)))

    csv_path, json_path = ev.write_csv(tmp_path / "m.csv"), ev.write_summary_json(tmp_path / "m.json")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["empty_convention"] for r in rows} == {"brats"}
    assert rows[0]["case"] == "BraTS2021_00001" and [r["region"] for r in rows[:3]] == ["WT", "TC", "ET"]
    assert rows[5]["pred_file"].endswith("BraTS2021_00002.nii.gz") and rows[5]["gt_file"].endswith("_seg.nii.gz")
    assert float(rows[5]["hd95"]) == BRATS_EMPTY_HD95_MM and int(rows[5]["gt_voxels"]) == 8
    assert json.loads(json_path.read_text())["WT"]["dice"]["mean"] == pytest.approx(2.5 / 3)
    back = Evaluation.read_csv(csv_path)
    assert back.empty_convention == "brats" and back.label_convention == "brats2021"
    assert _by_case(back) == _by_case(ev)  # repr() of each float: exact
    assert not list(tmp_path.glob(".*tmp"))


def test_evaluate_folder_nan_convention_reports_counts(folders, tmp_path):
    gt_root, pred_dir = folders
    ev = evaluate_folder(pred_dir, gt_root, empty="nan", nsd_tolerance_mm=2.0)
    et = ev.summary()["ET"]
    assert et["dice"]["n"] == 2 and et["dice"]["n_nan"] == 1  # case C (both empty) is left out, and counted
    assert same(et["dice"]["mean"], 0.5) and et["hd95"]["n"] == 1 and same(et["hd95"]["mean"], 0.0)
    path = ev.write_summary_json(tmp_path / "s.json")
    saved = json.loads(path.read_text())
    assert saved["empty_convention"] == "nan" and saved["nsd_tolerance_mm"] == 2.0
    assert saved["ET"]["hd95"]["sd"] is None  # one value: no sd, written as null (JSON has no NaN)
    ev.write_csv(tmp_path / "m.csv")
    assert "nan" in (tmp_path / "m.csv").read_text().splitlines()[9]  # case C, ET: NaN written, not dropped


def test_geometry_mismatch_is_an_error_naming_both_files(folders):
    gt_root, pred_dir = folders
    shifted = _affine()
    shifted[:3, 3] += (0.0, 0.0, 1.5)  # half a slice
    pred_file = pred_dir / "BraTS2021_00002.nii.gz"
    _save(pred_file, _cases()["BraTS2021_00002"][1], shifted)
    with pytest.raises(DatasetError, match="affine differs") as err:
        evaluate_folder(pred_dir, gt_root)
    assert str(pred_file) in str(err.value) and "BraTS2021_00002_seg.nii.gz" in str(err.value)
    _save(pred_file, np.zeros((14, 12, 9)))
    with pytest.raises(DatasetError, match="shape"):
        evaluate_folder(pred_dir, gt_root)


def test_missing_predictions_and_ground_truth(folders):
    gt_root, pred_dir = folders
    (pred_dir / "BraTS2021_00003.nii.gz").unlink()
    with pytest.raises(DatasetError, match="1 of 3 ground-truth cases have no prediction here .*BraTS2021_00003"):
        evaluate_folder(pred_dir, gt_root)  # a partial evaluation must be asked for
    ev = evaluate_folder(pred_dir, gt_root, allow_missing=True)
    assert ev.cases == ["BraTS2021_00001", "BraTS2021_00002"]
    assert ev.summary()["gt_cases_without_prediction"] == 1 and ev.gt_without_prediction == ["BraTS2021_00003"]
    with pytest.raises(DatasetError, match="no prediction for case BraTS2021_00003") as err:
        evaluate_folder(pred_dir, gt_root, cases=["BraTS2021_00001", "BraTS2021_00003"])
    assert "BraTS2021_00003.nii.gz" in str(err.value)
    assert evaluate_folder(pred_dir, gt_root, cases=["BraTS2021_00002"]).cases == ["BraTS2021_00002"]
    _save(pred_dir / "BraTS2021_00009.nii.gz", np.zeros(SHAPE))
    with pytest.raises(DatasetError, match="prediction without ground truth") as err:
        evaluate_folder(pred_dir, gt_root)
    assert "BraTS2021_00009.nii.gz" in str(err.value)


def test_plain_label_folder_detects_the_convention_and_checks_values(tmp_path):
    gt_dir, pred_dir = tmp_path / "model_a", tmp_path / "model_b"
    gt = np.zeros(SHAPE, np.uint8)
    gt[3:9, 3:9, 2:7], gt[5:7, 5:7, 3:5] = 2, 3  # 3 and no 4: the 2023 convention
    _save(gt_dir / "BraTS-GLI-00001-000.nii.gz", gt)
    _save(pred_dir / "BraTS-GLI-00001-000.nii.gz", gt)
    ev = evaluate_folder(pred_dir, gt_dir)
    assert ev.label_convention == "brats2023" and "detected" in ev.label_convention_source
    assert all(r["dice"] == 1.0 for r in ev.rows) and ev.rows[2]["gt_voxels"] == 8
    with pytest.raises(DatasetError, match=r"prediction: .*values \[3\] are outside") as err:
        evaluate_folder(pred_dir, gt_dir, convention="brats2021")
    assert "model_b" in str(err.value)


@pytest.mark.slow
def test_worker_processes_give_the_same_rows(folders):
    gt_root, pred_dir = folders
    assert _by_case(evaluate_folder(pred_dir, gt_root, num_workers=2)) == _by_case(evaluate_folder(pred_dir, gt_root))


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_evaluate_writes_csv_and_summary_and_refuses_to_overwrite(folders, tmp_path, monkeypatch, capsys):
    gt_root, pred_dir = folders
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_root), "--empty-convention", "segmamba"])
    out = capsys.readouterr().out
    assert "segmamba" in out and "WT" in out and "metrics.csv" in out and "metrics_summary.json" in out
    assert json.loads((work / "metrics_summary.json").read_text())["empty_convention"] == "segmamba"
    rows = list(csv.DictReader(open(work / "metrics.csv", newline="")))
    assert len(rows) == 9 and float(rows[-1]["hd95"]) == 50.0  # case C's ET: both empty → 50 under segmamba
    assert sorted(p.name for p in pred_dir.iterdir()) == sorted(  # nothing written into the input folder
        ["BraTS2021_00001.nii.gz", "BraTS2021_00002.nii.gz", "BraTS2021_00003.nii.gz", "notes.txt"])
    before = (work / "metrics.csv").read_text()
    with pytest.raises(SystemExit, match="already exists; pass --force"):
        main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_root)])
    assert (work / "metrics.csv").read_text() == before
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_root), "--force", "--out", "metrics.csv"])
    assert (work / "metrics.csv").read_text() != before  # brats convention now: ET of case C is 0, not 50


def test_cli_evaluate_errors_are_one_message(folders, tmp_path):
    gt_root, pred_dir = folders
    with pytest.raises(SystemExit, match="medmamba evaluate: --pred .*nowhere is not a folder"):
        main(["evaluate", "--pred", str(tmp_path / "nowhere"), "--gt", str(gt_root)])
    (pred_dir / "BraTS2021_00001.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(SystemExit, match="medmamba evaluate: .*BraTS2021_00001.nii.gz") as err:
        main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_root), "--out", str(tmp_path / "m.csv")])
    assert not (tmp_path / "m.csv").exists()
    assert "not a NIfTI" in str(err.value) or "cannot be read" in str(err.value)
