"""``plan-and-train --configuration``: the 2d configuration the planners write, trained and predicted
(MHS-VM is a 2D method; 3D volumes are predicted slice by slice), and the refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


@pytest.mark.slow
def test_2d_configuration_trains_and_predicts_3d_volumes_slice_by_slice(tmp_path, capsys):
    from medmamba.cli import main

    data = tmp_path / "data"
    main(["synth", str(data), "--cases", "2", "--shape", "32", "32", "32", "--style", "brats2023", "--seed", "3"])
    work = tmp_path / "work"
    main(["plan-and-train", str(data), "--arch", "unet", "--arch", "mhs_vm", "--out", str(work), "--fold", "all",
          "--device", "cpu", "--configuration", "2d", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
          "--seed", "0"])
    printed = capsys.readouterr().out
    assert "(2d, " in printed and "whole-volume Dice" in printed, printed
    for arch in ("unet", "mhs_vm"):
        (model,) = (work / "nnUNet_results").glob(f"*/*__medmambaPlans_{arch}__2d")
        assert (model / "fold_all" / "checkpoint_final.pth").is_file()
        out = tmp_path / f"pred_{arch}"
        main(["predict", "--model", str(work / arch), "-i", str(data), "-o", str(out), "--device", "cpu"])
        for case in sorted(p.name for p in data.iterdir() if p.is_dir()):
            src = next((data / case).glob("*t2f.nii.gz"))
            dst = nib.load(str(out / f"{case}.nii.gz"))
            assert dst.shape == nib.load(str(src)).shape and np.array_equal(dst.affine, nib.load(str(src)).affine)
    assert not list((work / "nnUNet_results").glob("*/*__3d_fullres"))


@pytest.mark.parametrize("argv, says", [
    (["--arch", "segmamba", "--configuration", "2d", "--epochs", "1"], "segmamba has no 2D form"),
    (["--arch", "unet", "--configuration", "2d", "--time-budget", "3"], "not both"),
    (["--arch", "unet", "--configuration", "3d_lowres", "--epochs", "1"], "invalid choice"),
])
def test_configuration_refusals_are_one_line_before_anything_is_written(tmp_path, capsys, argv, says):
    from medmamba.cli import main

    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["plan-and-train", str(data), "--out", str(tmp_path / "w"), "--device", "cpu", *argv])
    message = str(stop.value) + capsys.readouterr().err
    assert says in message and "Traceback" not in message
    assert not (tmp_path / "w").exists()
