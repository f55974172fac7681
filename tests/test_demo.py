"""``medmamba demo`` end to end, and the learning test: the unet baseline trained by the pipeline
reaches whole-tumour Dice ≥ 0.8 on held-back synthetic cases (issue 4), scored by predict + evaluate
inside the demo's comparison."""

from __future__ import annotations

import csv

import pytest

from medmamba.cli import main
from medmamba.demo import DemoSettings, run_demo

pytestmark = pytest.mark.slow


def _table(report):
    with (report / "table.csv").open() as f:
        return {row["architecture"]: row for row in csv.DictReader(f)}


def test_unet_learns_the_synthetic_tumour(tmp_path):
    # The demo's kind of data at its default size, more of it, and unet alone with 250 iterations of
    # the demo's recipe (the default demo gives every architecture 280 on 10 cases: 0.92 there).
    settings = DemoSettings(archs=("unet",), train_cases=16, test_cases=6, epochs=10, iters_per_epoch=25)
    report = run_demo(tmp_path / "demo", settings, device="cpu")
    row = _table(report)["unet"]
    assert int(row["cases"]) == settings.test_cases
    assert float(row["dice_WT_mean"]) >= 0.8, row


def test_reduced_demo_writes_a_report_and_resumes(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--arch", "mhs_vm", "--train-cases", "4",
            "--test-cases", "2", "--epochs", "1", "--iters-per-epoch", "2"]
    main(args)
    report = tmp_path / "demo" / "report"
    for name in ("report.html", "table.md", "table.csv", "summary.json", "plots/box_dice.png"):
        assert (report / name).is_file(), name
    assert set(_table(report)) == {"unet", "mhs_vm"}
    printed = capsys.readouterr().out
    assert "report.html" in printed
    # The console has medmamba's lines; nnU-Net's go to their log files, complete.
    for noise in ("Please cite", "np.float32", "Yayy", "hiddenlayer", "'data_identifier'", "Using device"):
        assert noise not in printed, noise
    assert len(printed.splitlines()) < 40, printed
    logs = sorted((tmp_path / "demo" / "work" / "nnUNet_results").rglob("training_log_*.txt"))
    assert len(logs) == 2 and all("Please cite" in log.read_text() for log in logs)
    assert "'data_identifier'" in next((tmp_path / "demo" / "work").rglob("preprocessing_log.txt")).read_text()
    # again with more epochs: the data are kept, training continues from the checkpoints
    data_files = sorted(p for p in (tmp_path / "demo" / "data").rglob("*.nii.gz"))
    stamps = [p.stat().st_mtime_ns for p in data_files]
    main(args[:-3] + ["2", "--iters-per-epoch", "2"])
    assert [p.stat().st_mtime_ns for p in data_files] == stamps
    assert int(_table(report)["unet"]["epochs"]) == 2
    with pytest.raises(SystemExit, match="other data settings"):
        main(args + ["--shape", "48", "48", "48"])
    with pytest.raises(SystemExit, match="not a demo folder"):
        main(["demo", "--out", str(tmp_path / "demo" / "data")])
