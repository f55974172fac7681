"""Data that is not BraTS: label sets (``--label-names``, an nnU-Net dataset.json's labels), scored per
label, and the synthetic ``ct-organs`` and ``lesion`` tasks end to end."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from medmamba.data import DatasetError, discover, validate
from medmamba.data.brats import convert_to_nnunet, load_label_convention
from medmamba.data.labels import (
    convention_from_json,
    convention_of_dataset_json,
    from_nnunet_labels,
    label_set,
    parse_label_names,
    to_nnunet_labels,
)
from medmamba.evaluation import evaluate_folder
from medmamba.evaluation.metrics import case_metrics, region_masks


def _save(path, data, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([*spacing, 1.0])), str(path))


def test_a_label_set_maps_its_values_in_order_onto_nnunet_labels_and_back():
    conv = parse_label_names(["liver=1", "tumour=4"])
    assert dict(conv.to_nnunet) == {0: 0, 1: 1, 4: 2}
    assert dict(conv.nnunet_labels) == {"background": 0, "liver": 1, "tumour": 2}
    assert not conv.region_based and conv.region_names == ("liver", "tumour")
    native = np.array([[[0, 1, 4, 4]]], np.uint8)
    assert to_nnunet_labels(native, conv).tolist() == [[[0, 1, 2, 2]]]
    assert np.array_equal(from_nnunet_labels(to_nnunet_labels(native, conv), conv), native)
    assert convention_from_json(json.loads(json.dumps(conv.as_json()))) == conv
    assert conv.title == "labels (1 liver, 4 tumour)"


@pytest.mark.parametrize("items, says", [
    (["lesion"], "is not NAME=VALUE"),
    (["lesion=x"], "is not NAME=VALUE"),
    (["a=1", "b=1"], "value 1 is named twice"),
    (["a=1", "a=2"], "'a' is given to two values"),
    (["tissue=0"], "label 0 is the background"),
    (["background=0"], "no foreground label"),
    (["1st=1"], "is not usable"),
    (["big=300"], "0-255"),
])
def test_label_names_refuse_what_cannot_be_a_label_set(items, says):
    with pytest.raises(ValueError, match=says):
        parse_label_names(items)


def test_dataset_json_conventions_keep_nnunet_values():
    labels = convention_of_dataset_json({"labels": {"background": 0, "liver": 1, "spleen": 2}})
    assert dict(labels.to_nnunet) == {0: 0, 1: 1, 2: 2} and labels.region_names == ("liver", "spleen")
    regions = convention_of_dataset_json({"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                                     "enhancing tumor": 3}, "regions_class_order": [1, 2, 3]})
    assert regions.region_based and regions.regions == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


def test_scores_are_per_label_with_known_dice():
    conv = label_set({1: "liver", 2: "spleen"})
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:5, 1:5, 1:5] = 1  # 64 voxels
    gt[6:8, 6:8, 6:8] = 2  # 8 voxels
    pred = gt.copy()
    pred[1:3, 1:5, 1:5] = 0  # liver: 32 of 64 found → Dice 2·32 / (32 + 64)
    pred[6:8, 6:8, 6:8] = 1  # spleen predicted as liver → spleen Dice 0
    masks = region_masks(gt, conv)
    assert list(masks) == ["liver", "spleen"] and masks["spleen"].sum() == 8
    scores = case_metrics(pred, gt, (1, 1, 1), conv)
    assert scores["liver"]["dice"] == pytest.approx(2 * 32 / (40 + 64))
    assert scores["spleen"]["dice"] == 0.0


def _lesion_case(root, case, label, spacing=(1.0, 1.0, 4.0)):
    rng = np.random.default_rng(len(case))
    _save(root / case / f"{case}_FLAIR.nii.gz", rng.normal(100, 10, label.shape).astype(np.float32), spacing)
    _save(root / case / f"{case}_mask.nii.gz", label, spacing)


def test_a_generic_folder_with_label_names_converts_to_a_label_based_dataset(tmp_path):
    label = np.zeros((12, 12, 6), np.uint8)
    label[3:6, 3:6, 2:4] = 2
    for case in ("a", "b"):
        _lesion_case(tmp_path / "data", case, label)
    conv = parse_label_names(["lesion=2"])
    dataset = validate(discover(tmp_path / "data", modalities=["FLAIR"], label_suffix="mask", label_convention=conv))
    raw = convert_to_nnunet(dataset, tmp_path / "raw", 7, "Lesions")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "lesion": 1} and "regions_class_order" not in dataset_json
    written = np.asarray(nib.load(str(raw / "labelsTr" / "a.nii.gz")).dataobj)
    assert set(np.unique(written)) == {0, 1}  # the user's 2 is nnU-Net's 1
    assert load_label_convention(raw) == conv  # predictions are written back as 2


def test_a_label_value_without_a_name_is_one_error_naming_the_file(tmp_path):
    label = np.zeros((12, 12, 6), np.uint8)
    label[3:6, 3:6, 2:4] = 1
    label[8, 8, 3] = 5
    _lesion_case(tmp_path / "data", "a", label)
    with pytest.raises(DatasetError) as err:
        validate(discover(tmp_path / "data", modalities=["FLAIR"], label_suffix="mask",
                          label_convention=parse_label_names(["lesion=1"])))
    assert "a_mask.nii.gz" in str(err.value) and "[5] are not among the named labels" in str(err.value)


def test_evaluate_reads_an_nnunet_raw_dataset_as_ground_truth_with_its_labels(tmp_path):
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:5, 1:5, 1:5] = 1
    gt[6:9, 6:9, 6:9] = 2
    raw = tmp_path / "Dataset001_Organs"
    _save(raw / "labelsTr" / "c1.nii.gz", gt)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2},
                                                  "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                  "numTraining": 1}))
    pred = gt.copy()
    pred[pred == 2] = 0
    _save(tmp_path / "pred" / "c1.nii.gz", pred)
    for where in (raw, raw / "labelsTr"):
        evaluation = evaluate_folder(tmp_path / "pred", where)
        assert evaluation.regions == ("liver", "spleen")
        assert evaluation.values("liver", "dice").tolist() == [1.0]
        assert evaluation.values("spleen", "dice").tolist() == [0.0]
        assert "liver" in evaluation.describe() and "dataset.json" in evaluation.label_convention_source


@pytest.mark.parametrize("style, labels", [("ct-organs", {1, 2, 3}), ("lesion", {1})])
def test_task_styles_are_byte_identical_for_a_seed_and_hold_every_label(tmp_path, style, labels):
    from medmamba.data.synth import synth
    from medmamba.data.synth_tasks import TASK_STYLES

    digests = []
    for run in ("a", "b"):
        out = synth(tmp_path / run, cases=2, shape=(40, 40, 16), style=style, seed=5)
        digests.append({p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.rglob("*.nii.gz"))})
    assert digests[0] == digests[1] and len(digests[0]) == 4
    task = TASK_STYLES[style]
    for seg in sorted((tmp_path / "a").rglob(f"*_{task.label_suffix}.nii.gz")):
        img = nib.load(str(seg))
        assert set(np.unique(np.asarray(img.dataobj))) - {0} == labels
        assert np.allclose(np.abs(np.diag(img.affine))[:3], task.spacing)  # anisotropic, thick slices
    manifest = json.loads((tmp_path / "a" / "medmamba_synth.json").read_text())
    assert manifest["label_names"] == task.label_names


@pytest.mark.slow
@pytest.mark.parametrize("style, arch", [("lesion", "umamba_bot"), ("ct-organs", "lightm_unet")])
def test_task_styles_end_to_end_plan_train_predict_evaluate_compare(tmp_path, capsys, style, arch):
    from medmamba.cli import main
    from medmamba.data.synth_tasks import TASK_STYLES

    task = TASK_STYLES[style]
    data = tmp_path / "data"
    main(["synth", str(data), "--cases", "5", "--shape", "32", "32", "16", "--style", style, "--seed", "2"])
    work = tmp_path / "work"
    main(["plan-and-train", str(data), "--arch", "unet", "--arch", arch, "--out", str(work), "--fold", "0",
          "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--seed", "0",
          *task.command_hint().split()])
    printed = capsys.readouterr().out
    first = task.labels[1]
    assert f"whole-volume Dice {first}" in printed, printed
    raw = next((work / "nnUNet_raw").iterdir())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, **{n: v for v, n in task.labels.items()}}
    if style == "ct-organs":
        assert dataset_json["channel_names"] == {"0": "CT"}  # nnU-Net's CT normalisation
        plans = json.loads(next((work / "nnUNet_preprocessed").glob("*/medmambaPlans_unet.json")).read_text())
        assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]

    case = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    out = tmp_path / "pred"
    out.mkdir()
    main(["predict", "--model", str(work / arch), "-i", str(data / case), "-o", str(out / f"{case}.nii.gz"),
          "--device", "cpu"])
    written = nib.load(str(out / f"{case}.nii.gz"))
    source = nib.load(str(data / case / f"{case}_{task.modalities[0]}.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, *task.labels}

    main(["evaluate", "--pred", str(out), "--gt", str(data), "--modalities", *task.modalities, "--label-suffix",
          task.label_suffix, "--label-names", *task.label_names, "--cases", case, "--out", str(tmp_path / "m.csv")])
    printed = capsys.readouterr().out
    assert all(name in printed for name in task.labels.values()), printed

    main(["compare", str(work), "--out", str(tmp_path / "report"), "--device", "cpu"])
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["regions"] == list(task.labels.values())
    assert {row["architecture"] for row in summary["table"]} == {"unet", arch}
    assert (tmp_path / "report" / "plots" / "box_dice.png").is_file()
