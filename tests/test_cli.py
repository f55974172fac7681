"""The command line: the scan benchmark runs, reports ratios and writes its JSON atomically."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medmamba.cli import main


def test_benchmark_scan_quick_writes_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    main(["benchmark", "scan", "--quick", "--device", "cpu", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "reference" in printed
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["reference", "cpu"]
    fast = rows[1]
    assert fast["fwd_ms"] > 0 and fast["fwd_bwd_ms"] > 0 and fast["speedup_vs_reference"] > 0
    assert fast["speedup_vs_reference"] == pytest.approx(
        fast["fwd_bwd_melem_per_s"] / rows[0]["fwd_bwd_melem_per_s"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_bad_arguments_stop_with_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--repeats must be at least 1"):
        main(["benchmark", "scan", "--quick", "--repeats", "0"])
    with pytest.raises(SystemExit, match="is a folder"):
        main(["benchmark", "scan", "--quick", "--json", str(tmp_path)])


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "medmamba.cli", "benchmark", "scan", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--device" in result.stdout and "--quick" in result.stdout
