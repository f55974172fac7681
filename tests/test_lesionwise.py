"""BraTS 2023 lesion-wise Dice and HD95 on hand-built masks whose scores are worked out here by hand."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medmamba.cli import main
from medmamba.evaluation import CSV_COLUMNS, Evaluation, evaluate_folder
from medmamba.evaluation.folders import LESION_CSV_COLUMNS
from medmamba.evaluation.lesionwise import (
    CHALLENGES,
    LESION_MISS_HD95_MM,
    LesionWise,
    case_lesion_wise,
    get_challenge,
    lesion_wise_scores,
    surface_hd95,
)

ISO = (1.0, 1.0, 1.0)


def mask(shape, *boxes) -> np.ndarray:
    """A bool mask with the given boxes, each ((x0, x1), (y0, y1), (z0, z1)) (end exclusive), set."""
    out = np.zeros(shape, bool)
    for box in boxes:
        out[tuple(slice(lo, hi) for lo, hi in box)] = True
    return out


CUBE_A = ((2, 6), (2, 6), (2, 6))  # 64 voxels: counts under the 50 mm³ threshold at 1 mm
CUBE_B = ((2, 6), (2, 6), (20, 24))  # 64 voxels, 14 slices from A: its own lesion


def test_one_found_one_missed_one_false_positive():
    gt = mask((10, 10, 40), CUBE_A, CUBE_B)
    fp = ((2, 4), (2, 4), (32, 34))  # 9 slices from B: outside B's zone (3 voxels of dilation)
    pred = mask((10, 10, 40), CUBE_A, fp)
    result = lesion_wise_scores(pred, gt, ISO)
    # A: Dice 1, HD95 0; B missed: 0 / 374; the false positive: 0 / 374; three in the denominator.
    assert result.dice == pytest.approx((1 + 0 + 0) / 3, abs=1e-12)
    assert result.hd95 == pytest.approx((0 + 374 + 374) / 3, abs=1e-9)
    assert (result.tp, result.fn, result.fp) == (1, 1, 1)
    assert [(les.voxels, les.dice, les.hd95, les.counted) for les in result.lesions] == [
        (64, 1.0, 0.0, True), (64, 0.0, LESION_MISS_HD95_MM, True)]


def test_small_lesions_are_not_scored_and_the_threshold_is_a_volume_in_mm3():
    small = ((2, 5), (2, 5), (20, 23))  # 27 voxels
    gt = mask((10, 10, 40), CUBE_A, small)
    pred = mask((10, 10, 40), CUBE_A)
    at_1mm = lesion_wise_scores(pred, gt, ISO)  # 27 mm³ ≤ 50: the missed lesion does not count
    assert (at_1mm.dice, at_1mm.hd95, at_1mm.tp, at_1mm.fn, at_1mm.fp) == (1.0, 0.0, 1, 0, 0)
    assert [les.counted for les in at_1mm.lesions] == [True, False]
    # A prediction of the small lesion is not a false positive either.
    both = lesion_wise_scores(mask((10, 10, 40), CUBE_A, small), gt, ISO)
    assert (both.dice, both.hd95, both.fp) == (1.0, 0.0, 0)
    # 2 mm slices: 27 voxels are 54 mm³ > 50, so the missed lesion counts: (1 + 0) / 2 and (0 + 374) / 2.
    thick = lesion_wise_scores(pred, gt, (1.0, 1.0, 2.0))
    assert (thick.dice, thick.hd95, thick.tp, thick.fn) == (0.5, 187.0, 1, 1)
    # Exactly at the threshold does not count: 50 voxels of 1 mm³.
    fifty = mask((10, 10, 40), ((2, 7), (2, 7), (20, 22)))
    alone = lesion_wise_scores(np.zeros_like(fifty), fifty, ISO)
    assert (alone.dice, alone.hd95, alone.fn) == (1.0, 0.0, 0)  # nothing counts: 1 / 0
    assert lesion_wise_scores(np.zeros_like(fifty), fifty, ISO, min_volume_mm3=49.0).dice == 0.0


@pytest.mark.parametrize("gap, lesions", [(6, 1), (7, 2)])
def test_blobs_within_the_dilation_are_one_lesion(gap, lesions):
    # Dilation 3 reaches 3 slices from each blob: a gap of 6 empty slices leaves the dilated blobs touching
    # (one component), a gap of 7 leaves one dilated-free slice between them (two lesions).
    second = ((2, 6), (2, 6), (6 + gap, 10 + gap))
    gt = mask((10, 10, 30), CUBE_A, second)
    pred = mask((10, 10, 30), CUBE_A)  # only the first blob predicted
    result = lesion_wise_scores(pred, gt, ISO)
    assert len(result.lesions) == lesions
    if lesions == 1:  # one 128-voxel lesion, half found: Dice 2·64 / (64 + 128)
        assert result.lesions[0].voxels == 128
        assert result.dice == pytest.approx(2 / 3, abs=1e-12)
        assert (result.tp, result.fn, result.fp) == (1, 0, 0)
        # Prediction → lesion: 0. Lesion → prediction: the second blob's top face lies 10 slices above the
        # first blob's top face (z 15.5 vs 5.5 between voxel centres) and holds 1/12 of the lesion's surface,
        # more than the 5 % above the 95th percentile, and nothing lies farther.
        assert result.hd95 == 10.0
    else:  # first found (1, 0), second missed (0, 374)
        assert (result.dice, result.hd95, result.tp, result.fn) == (0.5, 187.0, 1, 1)
    # With dilation 1 (MEN, MET) even the 6-slice gap separates them.
    assert len(lesion_wise_scores(pred, gt, ISO, dilation=1).lesions) == 2


def test_a_component_inside_the_zone_but_off_the_lesion_is_matched_not_a_false_positive():
    gt = mask((10, 10, 20), CUBE_A)
    pred = mask((10, 10, 20), ((2, 6), (2, 6), (8, 10)))  # 2 empty slices from the lesion, in its zone
    result = lesion_wise_scores(pred, gt, ISO)
    assert (result.dice, result.tp, result.fn, result.fp) == (0.0, 1, 0, 0)
    assert result.hd95 == surface_hd95(pred, gt, ISO) < LESION_MISS_HD95_MM


def test_empty_masks():
    empty = np.zeros((8, 8, 8), bool)
    both = lesion_wise_scores(empty, empty, ISO)
    assert (both.dice, both.hd95, both.tp, both.fn, both.fp, both.lesions) == (1.0, 0.0, 0, 0, 0, ())
    # Ground truth empty, two predicted components: two false positives, 0 / 374 each.
    pred = mask((8, 8, 8), ((0, 2), (0, 2), (0, 2)), ((5, 7), (5, 7), (5, 7)))
    only_pred = lesion_wise_scores(pred, empty, ISO)
    assert (only_pred.dice, only_pred.hd95, only_pred.fp) == (0.0, 374.0, 2)
    # Prediction empty, one lesion that counts: missed.
    gt = mask((8, 8, 8), ((1, 6), (1, 6), (1, 6)))
    only_gt = lesion_wise_scores(empty, gt, ISO)
    assert (only_gt.dice, only_gt.hd95, only_gt.fn, only_gt.fp) == (0.0, 374.0, 1, 0)


def test_anisotropic_spacing_scales_hd95():
    # A 14×14×2 slab and the same slab one voxel further: every surface element lies within one voxel step
    # of the other surface, and the elements that are a full step away (the far faces) hold well over 5 % of
    # the area, so HD95 is exactly that step in mm.
    gt = mask((18, 18, 8), ((2, 16), (2, 16), (3, 5)))
    up_z = mask((18, 18, 8), ((2, 16), (2, 16), (4, 6)))
    along_x = mask((18, 18, 8), ((3, 17), (2, 16), (3, 5)))
    assert lesion_wise_scores(up_z, gt, ISO).hd95 == 1.0
    assert lesion_wise_scores(up_z, gt, (1.0, 1.0, 3.0)).hd95 == 3.0
    assert lesion_wise_scores(along_x, gt, (1.0, 1.0, 3.0)).hd95 == 1.0
    assert lesion_wise_scores(along_x, gt, (2.5, 1.0, 3.0)).hd95 == 2.5
    # Dice is a voxel count: half the slab overlaps after the z shift, 13 of 14 columns after the x shift.
    assert lesion_wise_scores(up_z, gt, (1.0, 1.0, 3.0)).dice == 0.5
    assert lesion_wise_scores(along_x, gt, ISO).dice == pytest.approx(13 / 14, abs=1e-12)


def test_label_maps_are_split_into_the_brats_regions():
    # BraTS 2023: 1 NCR, 2 SNFH, 3 ET; WT {1,2,3}, TC {1,3}, ET {3}.
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:7, 2:7, 2:7] = 2  # edema only: a WT lesion, TC and ET empty
    pred = np.where(gt > 0, 3, 0).astype(np.uint8)  # the same voxels called enhancing
    scores = case_lesion_wise(pred, gt, ISO, "brats2023")
    assert {r: (s.dice, s.hd95, s.fp) for r, s in scores.items()} == {
        "WT": (1.0, 0.0, 0), "TC": (0.0, 374.0, 1), "ET": (0.0, 374.0, 1)}
    with pytest.raises(ValueError, match="ground truth: .*values \\[4\\] are outside"):
        case_lesion_wise(pred, np.full_like(gt, 4), ISO, "brats2023")


def test_settings_and_bad_input():
    assert {k: (s.dilation, s.min_volume_mm3) for k, s in CHALLENGES.items()} == {
        "GLI": (3, 50.0), "SSA": (3, 50.0), "MEN": (1, 50.0), "PED": (3, 50.0), "MET": (1, 2.0)}
    assert get_challenge("BraTS-MET") is CHALLENGES["MET"] and get_challenge("gli") is CHALLENGES["GLI"]
    with pytest.raises(ValueError, match="unknown BraTS 2023 challenge 'XYZ'.*GLI, SSA, MEN, PED, MET"):
        get_challenge("XYZ")
    small = mask((10, 10, 10), ((2, 4), (2, 4), (2, 4)))  # 8 voxels: counts for MET only
    assert LesionWise("MET")(np.zeros_like(small), small, ISO).dice == 0.0
    assert LesionWise("GLI")(np.zeros_like(small), small, ISO).dice == 1.0
    with pytest.raises(ValueError, match="shape"):
        lesion_wise_scores(small[:-1], small, ISO)
    with pytest.raises(ValueError, match="3D"):
        lesion_wise_scores(small[0], small[0], ISO)
    with pytest.raises(ValueError, match="spacing"):
        lesion_wise_scores(small, small, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="dilation"):
        lesion_wise_scores(small, small, ISO, dilation=-1)
    with pytest.raises(ValueError, match="non-empty"):
        surface_hd95(np.zeros_like(small), small, ISO)


# ------------------------------------------------------------------------------------ evaluate --lesion-wise

def _save(path, data, spacing=ISO) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), np.diag([*spacing, 1.0])), path)


@pytest.fixture
def label_folders(tmp_path):
    """Two BraTS 2023 cases as plain label-map folders.

    case1: two edema cubes (WT lesions) with enhancing cores of 8 voxels (TC/ET lesions under 50 mm³); the
    prediction finds the first cube exactly (its core too), misses the second and adds an edema blob.
    case2: a perfect prediction.
    """
    gt1 = np.zeros((10, 10, 40), np.uint8)
    gt1[2:6, 2:6, 2:6] = 2
    gt1[2:6, 2:6, 20:24] = 2
    gt1[3:5, 3:5, 3:5] = 3
    gt1[3:5, 3:5, 21:23] = 3
    pred1 = np.zeros_like(gt1)
    pred1[2:6, 2:6, 2:6] = gt1[2:6, 2:6, 2:6]
    pred1[2:4, 2:4, 32:34] = 2
    gt2 = np.zeros((10, 10, 40), np.uint8)
    gt2[3:8, 3:8, 10:15] = 1
    gt2[4:7, 4:7, 11:14] = 3
    for name, gt, pred in (("case1", gt1, pred1), ("case2", gt2, gt2)):
        _save(tmp_path / "gt" / f"{name}.nii.gz", gt)
        _save(tmp_path / "pred" / f"{name}.nii.gz", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_cli_evaluate_lesion_wise(label_folders, tmp_path, capsys):
    pred_dir, gt_dir = label_folders
    out = tmp_path / "out" / "m.csv"
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--label-convention", "brats2023",
          "--out", str(out), "--lesion-wise"])
    printed = capsys.readouterr().out
    assert "lesion-wise (BraTS 2023 GLI: dilation 3, lesions over 50 mm³)" in printed
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS + LESION_CSV_COLUMNS
        rows = {(r["case"], r["region"]): r for r in reader}
    got = {key: (float(r["lesion_dice"]), float(r["lesion_hd95"]), int(r["lesion_tp"]), int(r["lesion_fn"]),
                 int(r["lesion_fp"]), r["lesion_challenge"]) for key, r in rows.items()}
    assert got == {
        # WT: found (1, 0), missed (0, 374), false positive (0, 374)
        ("case1", "WT"): (1 / 3, 748 / 3, 1, 1, 1, "GLI"),
        # TC, ET: two 8-voxel lesions, too small to count; the prediction of one is no false positive
        ("case1", "TC"): (1.0, 0.0, 0, 0, 0, "GLI"),
        ("case1", "ET"): (1.0, 0.0, 0, 0, 0, "GLI"),
        # case2: WT 125 voxels and TC 125 voxels found exactly; ET 27 voxels too small
        ("case2", "WT"): (1.0, 0.0, 1, 0, 0, "GLI"),
        ("case2", "TC"): (1.0, 0.0, 1, 0, 0, "GLI"),
        ("case2", "ET"): (1.0, 0.0, 0, 0, 0, "GLI"),
    }
    assert float(rows[("case1", "WT")]["dice"]) == pytest.approx(2 * 64 / (128 + 72))  # whole-volume Dice kept
    summary = json.loads(out.with_name("m_summary.json").read_text())
    assert summary["lesion_wise"]["challenge"] == "GLI" and summary["lesion_wise"]["min_volume_mm3"] == 50.0
    assert summary["WT"]["lesion_dice"]["mean"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    assert summary["WT"]["lesion_hd95"]["mean"] == pytest.approx(748 / 6, abs=1e-9)
    assert summary["mean"]["lesion_dice"]["n"] == 2
    again = Evaluation.read_csv(out)  # the CSV reads back with its lesion-wise scores
    assert again.lesion_challenge == "GLI"
    assert again.values("WT", "lesion_hd95").tolist() == pytest.approx([748 / 3, 0.0])

    # MET settings: dilation 1, lesions over 2 mm³, so the 8-voxel cores count: case1's second core is missed.
    met = tmp_path / "met.csv"
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--label-convention", "brats2023",
          "--out", str(met), "--lesion-challenge", "MET"])
    with open(met, newline="") as f:
        tc = [r for r in csv.DictReader(f) if r["region"] == "TC"]
    assert [(float(r["lesion_dice"]), float(r["lesion_hd95"]), r["lesion_challenge"]) for r in tc] == [
        (0.5, 187.0, "MET"), (1.0, 0.0, "MET")]


def test_cli_evaluate_without_lesion_wise_keeps_its_columns_and_bad_challenge_is_one_message(label_folders,
                                                                                            tmp_path):
    pred_dir, gt_dir = label_folders
    plain = tmp_path / "plain.csv"
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(plain)])
    with open(plain, newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == CSV_COLUMNS
    assert "lesion_wise" not in json.loads(tmp_path.joinpath("plain_summary.json").read_text())
    assert evaluate_folder(pred_dir, gt_dir).lesion_challenge is None
    with pytest.raises(SystemExit, match=r"^medmamba evaluate: unknown BraTS 2023 challenge 'XYZ'"):
        main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "x.csv"),
              "--lesion-challenge", "XYZ"])
    assert not (tmp_path / "x.csv").exists()
