"""The command line: the scan benchmark runs, reports ratios and writes its JSON atomically."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from medmamba.benchmarks.scan import mambapy_scan
from medmamba.cli import main


def test_benchmark_scan_quick_writes_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    main(["benchmark", "scan", "--quick", "--device", "cpu", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "reference" in printed
    rows = json.loads(out.read_text())
    peer = ["mambapy"] if mambapy_scan() is not None else []  # the optional peer row (bench extra)
    assert [r["backend"] for r in rows] == ["reference", *peer, "cpu"]
    fast = rows[-1]
    assert fast["fwd_ms"] > 0 and fast["fwd_bwd_ms"] > 0 and fast["speedup_vs_reference"] > 0
    assert fast["speedup_vs_reference"] == pytest.approx(
        fast["fwd_bwd_melem_per_s"] / rows[0]["fwd_bwd_melem_per_s"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_bad_arguments_stop_with_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match="medmamba benchmark scan: argument --repeats: must be at least 1, got 0"):
        main(["benchmark", "scan", "--quick", "--repeats", "0"])
    with pytest.raises(SystemExit, match="--json: .* is a folder"):
        main(["benchmark", "scan", "--quick", "--json", str(tmp_path)])
    assert capsys.readouterr().err == ""  # the message is the exit's one line, no usage dump


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "medmamba.cli", "benchmark", "scan", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--device" in result.stdout and "--quick" in result.stdout


def test_models_lists_parameters_flops_and_memory(capsys):
    main(["models", "--arch", "unet", "--arch", "umamba_bot", "--patch", "64", "64", "64", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["unet"]["params"] == 31_205_254  # the patch does not change the U-Net's size
    assert rows["unet"]["scan_gflops"] == 0 and rows["unet"]["forward_gflops"] > 0
    bot = rows["umamba_bot"]
    assert bot["scan_gflops"] > 0 and bot["forward_gflops"] > bot["scan_gflops"]
    assert 0 < bot["train_activation_gib"] <= bot["train_peak_gib"]


def test_models_table_reports_skipped_architectures(capsys):
    main(["models", "--arch", "segmamba", "--patch", "64", "64"])
    assert "skipped" in capsys.readouterr().out


def test_benchmark_models_reports_ratios_to_unet(capsys):
    main(["benchmark", "models", "--device", "cpu", "--arch", "unet", "--patch", "32", "32", "32",
          "--in-channels", "1", "--num-classes", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "ratios are to unet" in out and "unet" in out.splitlines()[-1]


def test_synth_writes_a_brats_folder_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "synth"
    main(["synth", str(out), "--cases", "2", "--shape", "32", "32", "32", "--style", "brats2023", "--seed", "3"])
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(cases) == 2 and all(c.startswith("BraTS-GLI-") for c in cases)
    assert len(list((out / cases[0]).glob("*.nii.gz"))) == 5
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.nii.gz"))
    with pytest.raises(SystemExit, match="not an empty folder"):
        main(["synth", str(out), "--cases", "1"])
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")) == before  # inputs untouched


def test_synth_rejects_bad_spacing():
    with pytest.raises(SystemExit):
        main(["synth", "unused", "--spacing", "1,2"])


@pytest.mark.slow
def test_plan_ingests_once_and_writes_plans(tmp_path, capsys):
    data = tmp_path / "brats"
    main(["synth", str(data), "--cases", "2", "--shape", "32", "32", "32"])
    work = tmp_path / "work"
    for _ in range(2):  # the second run reuses the converted dataset
        main(["plan", str(data), "--arch", "unet", "--out", str(work)])
    printed = capsys.readouterr().out
    plans = work / "nnUNet_preprocessed" / "Dataset500_brats" / "medmambaPlans_unet.json"
    assert plans.is_file() and "3d_fullres" in json.loads(plans.read_text())["configurations"]
    assert "patch" in printed and "batch" in printed
    assert len(list((work / "nnUNet_raw").iterdir())) == 1


def test_plan_stops_with_one_message_for_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="medmamba plan: .*empty"):
        main(["plan", str(empty), "--arch", "unet", "--out", str(tmp_path / "work")])
    with pytest.raises(SystemExit, match="not a folder"):
        main(["plan", str(tmp_path / "missing"), "--arch", "unet"])
    assert not (tmp_path / "work" / "nnUNet_raw" / "Dataset500_empty").exists()


def test_benchmark_predict_reports_ratios_to_unet(tmp_path, capsys):
    from medmamba.benchmarks.predict import run_predict_benchmark

    rows = run_predict_benchmark(torch.device("cpu"), (64, 64, 64), step_size=1.0, shape=(64, 64, 40),
                                 names=["mhs_vm"], log=lambda _: None)
    assert [r["name"] for r in rows] == ["unet", "mhs_vm"]
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["time_ratio"] == rows[1]["seconds"] / rows[0]["seconds"]
    assert all(r["seconds"] > 0 and r["peak_mib"] >= 0 for r in rows)
    with pytest.raises(SystemExit, match=r"--step-size: must be positive, got 0"):
        main(["benchmark", "predict", "--step-size", "0"])
    with pytest.raises(SystemExit, match=r"--step-size: must be in \(0, 1\], got 1.5"):
        main(["benchmark", "predict", "--step-size", "1.5"])


def test_options_mean_the_same_in_every_command(tmp_path):
    from medmamba.cli import build_parser

    parser = build_parser()
    # --label-convention everywhere (predict's --labels is its old spelling); years are short names.
    for argv in (["predict", "-m", "m", "-i", "i", "-o", "o", "--label-convention", "2021"],
                 ["predict", "-m", "m", "-i", "i", "-o", "o", "--labels", "2021"],
                 ["evaluate", "--pred", "p", "--gt", "g", "--label-convention", "2021"],
                 ["plan", "data", "--arch", "unet", "--label-convention", "2021"]):
        assert parser.parse_args(argv).label_convention == "2021", argv
    from medmamba.data import get_convention

    assert get_convention("2021").name == "brats2021"
    # --json [PATH] everywhere: a file, or the standard output without one.
    for command in (["models"], ["benchmark", "scan"], ["benchmark", "models"], ["benchmark", "predict"]):
        assert parser.parse_args([*command, "--json"]).json == "-", command
        assert parser.parse_args([*command, "--json", str(tmp_path / "rows.json")]).json == tmp_path / "rows.json"
        assert parser.parse_args(command).json is None
    # Counts are positive integers in every command, checked by one type.
    for argv in (["synth", "out", "--cases", "0"], ["evaluate", "--pred", "p", "--gt", "g", "--num-workers", "0"],
                 ["demo", "--epochs", "0"], ["models", "--batch-size", "0"], ["compare", "r", "--out", "o",
                                                                             "--bootstrap-resamples", "0"]):
        with pytest.raises(SystemExit, match="must be at least 1, got 0"):
            parser.parse_args(argv)


def test_models_json_goes_to_a_file_when_given_one(tmp_path, capsys):
    out = tmp_path / "rows.json"
    main(["models", "--arch", "segmamba", "--patch", "64", "64", "--json", str(out)])  # 3D only: skipped, fast
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert json.loads(out.read_text()) == [{"name": "segmamba", "skipped": "2D patches not supported"}]
