"""2D data: the synthetic ``skin`` task (RGB PNG, an nnU-Net raw dataset), the 2d configuration chosen
for it, MHS-VM, LightM-UNet and U-Mamba Bot trained in 2D, and 2D scoring."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from medmamba.evaluation.metrics import mask_metrics


def test_a_single_slice_is_scored_in_2d_in_its_pixel_spacing():
    gt = np.zeros((1, 20, 20), bool)
    gt[0, 5:10, 5:10] = True
    pred = np.zeros_like(gt)
    pred[0, 5:10, 7:12] = True  # shifted by 2 pixels of 0.5 mm
    as_2d = mask_metrics({"lesion": pred[0]}, {"lesion": gt[0]}, (0.5, 0.5))["lesion"]
    as_slice = mask_metrics({"lesion": pred}, {"lesion": gt}, (999.0, 0.5, 0.5))["lesion"]
    assert as_slice == pytest.approx(as_2d)
    assert as_2d["dice"] == pytest.approx(2 * 15 / 50) and as_2d["hd95"] == pytest.approx(1.0)


def test_skin_style_is_an_nnunet_raw_dataset_of_pngs_identical_for_a_seed(tmp_path):
    from skimage import io

    from medmamba.data.synth import synth
    from medmamba.pipeline import is_2d_dataset

    digests = []
    for run in ("a", "b"):
        out = synth(tmp_path / run, cases=3, shape=(40, 48, 1), style="skin", seed=4)
        digests.append({p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.rglob("*.png"))})
    assert digests[0] == digests[1] and len(digests[0]) == 6
    dataset_json = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert dataset_json["file_ending"] == ".png" and dataset_json["labels"] == {"background": 0, "lesion": 1}
    image = io.imread(tmp_path / "a" / "imagesTr" / "Skin_00000_0000.png")
    label = io.imread(tmp_path / "a" / "labelsTr" / "Skin_00000.png")
    assert image.shape == (40, 48, 3) and label.shape == (40, 48) and set(np.unique(label)) == {0, 1}
    assert is_2d_dataset(tmp_path / "a")


def test_3d_fullres_on_2d_images_is_one_clear_error(tmp_path, capsys):
    from medmamba.cli import main
    from medmamba.data.synth import synth

    synth(tmp_path / "skin", cases=2, shape=(32, 32, 1), style="skin")
    with pytest.raises(SystemExit) as stop:
        main(["plan-and-train", str(tmp_path / "skin"), "--arch", "unet", "--out", str(tmp_path / "w"),
              "--device", "cpu", "--configuration", "3d_fullres", "--epochs", "1"])
    message = str(stop.value) + capsys.readouterr().err
    assert "2D images (.png)" in message and "only the 2d" in message and "Traceback" not in message


@pytest.mark.slow
def test_2d_images_train_in_2d_by_default_with_mhs_vm_lightm_unet_and_umamba_bot(tmp_path, capsys):
    from medmamba.cli import main
    from medmamba.data.synth import synth

    data = synth(tmp_path / "skin", cases=5, shape=(64, 64, 1), style="skin", seed=1)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    work = tmp_path / "work"
    main(["plan-and-train", str(data), "--out", str(work), "--fold", "0", "--device", "cpu", "--epochs", "1",
          "--iters-per-epoch", "2", "--val-iters", "1", "--seed", "0",
          "--arch", "mhs_vm", "--arch", "lightm_unet", "--arch", "umamba_bot"])
    printed = capsys.readouterr().out
    assert "(2d, " in printed and printed.count("whole-image Dice lesion") == 3, printed
    for arch in ("mhs_vm", "lightm_unet", "umamba_bot"):
        (model,) = (work / "nnUNet_results").glob(f"*/*__medmambaPlans_{arch}__2d")
        assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (work / "nnUNet_raw" / "Dataset500_skin").is_symlink()  # the user's folder, linked, not copied
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before  # and never written to


def test_the_2d_demo_leaves_out_segmamba_and_refuses_it_by_name():
    from medmamba.demo import DemoSettings

    settings = DemoSettings(task="2d")
    assert settings.shape == (96, 96, 1) and "segmamba" not in settings.archs and "mhs_vm" in settings.archs
    with pytest.raises(ValueError, match="segmamba has no 2D form"):
        DemoSettings(task="2d", archs=("segmamba",))
    with pytest.raises(ValueError, match="X Y 1"):
        DemoSettings(task="2d", shape=(32, 32, 32))


def test_overlay_slices_centre_on_the_largest_foreground_slice():
    from medmamba.evaluation.plots import axial_slices

    mask = np.zeros((8, 8, 10), bool)
    mask[2:4, 2:4, 1:9] = True
    mask[:, :, 6] = True  # the widest slice
    assert 6 in axial_slices(mask, 3) and axial_slices(mask, 1) == [6]
    assert axial_slices(np.zeros((4, 4, 6), bool)) == [3]


@pytest.mark.slow
def test_demo_2d_scores_a_raw_test_dataset_and_draws_the_rgb_image(tmp_path, capsys):
    from matplotlib import image as mpimg

    from medmamba.cli import main

    main(["demo", "--task", "2d", "--out", str(tmp_path / "demo"), "--device", "cpu", "--arch", "mhs_vm",
          "--train-cases", "4", "--test-cases", "2", "--shape", "40", "40", "1", "--epochs", "1",
          "--iters-per-epoch", "2"])
    printed = capsys.readouterr().out
    assert "(2d, " in printed and "comparing unet, mhs_vm on every case of" in printed, printed
    report = tmp_path / "demo" / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert "lesion" in json.dumps(summary)
    rows = (report / "table.csv").read_text().splitlines()
    assert len(rows) == 3 and "dice_lesion_mean" in rows[0]
    for arch in ("unet", "mhs_vm"):  # predictions in the test images' format, one per test image
        assert sorted(p.name for p in (report / "predictions" / arch).glob("*.png")) == ["Skin_00000.png",
                                                                                      "Skin_00001.png"]
    (overlay,) = (report / "plots").glob("overlay_*.png")
    picture = mpimg.imread(overlay)[..., :3]
    # the skin image is drawn in colour: some pixels are far from grey
    assert (picture.max(axis=-1) - picture.min(axis=-1)).max() > 0.2
