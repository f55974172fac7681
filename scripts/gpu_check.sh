#!/usr/bin/env bash
# The GPU check in one call, at most 8 minutes on one NVIDIA H200 (Python 3.12, torch 2.11,
# Triton 3.6, no network):
#
#   here, once, with network:   bash scripts/gpu_wheels.sh           (-> .whl/wheels.tar.xz)
#   there, with the device tool: command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 540
#
# Steps, each under its own time limit (together 470 s), each run even when an earlier one failed:
#   setup   a venv over the machine's torch and Triton (its site-packages stay visible), the carried
#           wheels and medmamba installed offline
#   triton  tests/test_triton_scan.py, compiled for the GPU (pytest-xdist spreads the compiles)
#   scan    medmamba benchmark scan --device cuda: Triton against the reference and mambapy, and
#           each case's forward+backward as a multiple of the roofline bound
#   models  medmamba benchmark models --device cuda, 128³, under autocast (as nnU-Net trains)
#   train   synthetic BraTS-style cases, then one short plan-and-train of U-Mamba Enc on the GPU
#           (--verbose: nnU-Net's whole log in train.log)
#
# Output under $OUT (the device tool sets it; default ./gpu_check_out): a log per step, scan.json,
# models.json and summary.json (exit status and seconds per step, GPU and versions): eight files,
# the most the device tool brings back. The script's exit status is the number of failed steps.
#
# GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU at toy sizes (Triton in its interpreter, a
# few tests), to test this script where there is no GPU (tests/test_gpu_check.py). GPU_CHECK_PYTHON
# is the Python whose packages the venv sees (default python3); GPU_CHECK_WHEELS the archive
# (default .whl/wheels.tar.xz; without it, in a dry run, the venv gets medmamba only).
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-./gpu_check_out}"
dry_run="${GPU_CHECK_DRY_RUN:-0}"
base_python="${GPU_CHECK_PYTHON:-python3}"
wheels_archive="${GPU_CHECK_WHEELS:-.whl/wheels.tar.xz}"
# Each step runs as `bash gpu_check.sh --step NAME` (so that `timeout` can stop it with everything it
# started); the steps share this scratch folder: the venv, the wheels, the training data.
if [ -z "${GPU_CHECK_SCRATCH:-}" ]; then
  GPU_CHECK_SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
  export GPU_CHECK_SCRATCH
fi
scratch="$GPU_CHECK_SCRATCH"
venv="$scratch/venv"
python="$venv/bin/python"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "$dry_run" = 1 ]; then
  device=cpu
else
  device=cuda
  unset TRITON_INTERPRET  # compile for the GPU; conftest would leave it unset there anyway
fi

steps_json="$scratch/steps.jsonl"
failed=0

# run_step NAME SECONDS: the step's output goes to $out/NAME.log; its exit status and time to the
# summary.
run_step() {
  local name=$1 limit=$2 started status
  started=$(date +%s)
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" bash "$0" --step "$name" >"$out/$name.log" 2>&1
  status=$?
  local seconds=$(($(date +%s) - started))
  [ "$status" -eq 124 ] && echo "   stopped at its time limit" >>"$out/$name.log"
  echo "   exit $status after ${seconds} s"
  printf '{"step": "%s", "exit": %d, "seconds": %d, "limit": %d}\n' "$name" "$status" "$seconds" "$limit" >>"$steps_json"
  [ "$status" -eq 0 ] || failed=$((failed + 1))
  return 0
}

setup() {
  "$base_python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
  # Without pip of its own (ensurepip may be missing there): the base Python's pip installs into it.
  "$base_python" -m venv --system-site-packages --without-pip "$venv"
  # The machine's python3 is itself a venv: --system-site-packages would show the interpreter's
  # own site-packages, not the ones holding torch and Triton. A .pth file adds those. medmamba's
  # packages come from this checkout through links named as pyproject.toml installs them (no
  # build step: the venv may have no setuptools that could build an editable install).
  local site
  site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$scratch/src"
  ln -s "$PWD/medmamba" "$scratch/src/medmamba"
  ln -s "$PWD/kernels" "$scratch/src/medmamba_kernels"
  ln -s "$PWD/plans" "$scratch/src/medmamba_plans"
  echo "$scratch/src" >"$site/gpu_check_0_medmamba.pth"
  "$base_python" -c 'import site; print("\n".join(site.getsitepackages()))' >"$site/gpu_check_1_base.pth"
  if [ -f "$wheels_archive" ]; then
    mkdir -p "$scratch/wheels"
    tar -xJf "$wheels_archive" -C "$scratch/wheels"
    "$base_python" -m pip --python "$python" install --quiet --no-index --no-deps --no-cache-dir \
      --find-links "$scratch/wheels" "$scratch"/wheels/*.whl
    echo "installed: $(cd "$scratch/wheels" && echo *.whl)"
  elif [ "$dry_run" != 1 ]; then
    echo "no $wheels_archive: run scripts/gpu_wheels.sh where there is network, and carry .whl" >&2
    return 1
  fi
  "$python" - "$device" <<'PY'
import sys

import medmamba_kernels
import monai
import nibabel
import nnunetv2
import SimpleITK
import torch
import triton

print("torch", torch.__version__, "triton", triton.__version__, "monai", monai.__version__,
      "nibabel", nibabel.__version__, "SimpleITK", SimpleITK.Version_VersionString(), "nnunetv2 imported")
if sys.argv[1] == "cuda":
    print("GPU:", torch.cuda.get_device_name(0))
print("medmamba_kernels from", medmamba_kernels.__file__)
PY
}

triton_tests() {
  if [ "$dry_run" = 1 ]; then
    "$python" -m pytest -q -p no:cacheprovider "tests/test_triton_scan.py::test_lengths[7]" \
      "tests/test_triton_scan.py::test_forward_without_chunk_states_keeps_only_the_last[100]"
  else
    "$python" -m pytest -q -p no:cacheprovider -n 8 tests/test_triton_scan.py
  fi
}

scan_benchmark() {
  if [ "$dry_run" = 1 ]; then
    "$python" -m medmamba benchmark scan --device cpu --quick --repeats 1 --json "$out/scan.json"
  else
    "$python" -m medmamba benchmark scan --device cuda --json "$out/scan.json"
  fi
}

models_benchmark() {
  if [ "$dry_run" = 1 ]; then
    "$python" -m medmamba benchmark models --device cpu --patch 32 32 32 --arch mhs_vm --repeats 1 --amp \
      --json "$out/models.json"
  else
    "$python" -m medmamba benchmark models --device cuda --patch 128 128 128 --amp --json "$out/models.json"
  fi
}

train() {
  local shape=(64 64 64) arch=umamba_enc epochs=2 iters=10 cases=6
  if [ "$dry_run" = 1 ]; then
    shape=(32 32 32) arch=umamba_bot epochs=1 iters=2 cases=4
  fi
  "$python" -m medmamba synth "$scratch/data" --cases "$cases" --shape "${shape[@]}" --seed 0
  "$python" -m medmamba plan-and-train "$scratch/data" --arch "$arch" --out "$scratch/work" --fold 0 \
    --device "$device" --epochs "$epochs" --iters-per-epoch "$iters" --val-iters 2 --seed 0 --verbose
}

if [ "${1:-}" = --step ]; then
  set -e
  case "$2" in
    setup) setup ;;
    triton) triton_tests ;;
    scan) scan_benchmark ;;
    models) models_benchmark ;;
    train) train ;;
    *) echo "gpu_check: unknown step $2" >&2; exit 2 ;;
  esac
  exit 0
fi

started=$(date +%s)
run_step setup 60
if [ -x "$python" ]; then
  run_step triton 120
  run_step scan 75
  run_step models 135
  run_step train 80
fi

"$base_python" - "$steps_json" "$out/summary.json" "$device" "$(($(date +%s) - started))" <<'PY'
import json
import subprocess
import sys

steps_file, summary_file, device, seconds = sys.argv[1:]
steps = [json.loads(line) for line in open(steps_file)]
summary = {"device": device, "seconds": int(seconds), "steps": steps}
try:
    import torch
    import triton

    summary.update(torch=torch.__version__, triton=triton.__version__)
    if device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except Exception as error:  # the summary must be written whatever is missing
    summary["environment_error"] = repr(error)
with open(summary_file, "w") as f:
    json.dump(summary, f, indent=1)
for step in steps:
    print(f"{step['step']:<8} exit {step['exit']:>3}  {step['seconds']:>4} s (limit {step['limit']} s)")
print(f"total {seconds} s; output in the folder of {summary_file}")
PY
rm -rf "$scratch"
exit "$failed"
