#!/usr/bin/env bash
# Creates .venv (if missing) and installs medmamba into it with a PyTorch that fits the machine.
#   CPU (default):  torch==2.13.0, the CPU build on these machines.
#   CUDA GPU:       MEDMAMBA_TORCH="torch==2.13.0" MEDMAMBA_TORCH_INDEX=<your CUDA wheel index> bash scripts/setup.sh
#                   (see README, "Install"). An already installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
  torch_spec="${MEDMAMBA_TORCH:-torch==2.13.0}"
  if [ -n "${MEDMAMBA_TORCH_INDEX:-}" ]; then
    pip install -q "$torch_spec" --index-url "$MEDMAMBA_TORCH_INDEX"
  else
    pip install -q "$torch_spec"
  fi
fi

# Pin the installed torch so that no dependency (nnunetv2 -> dynamic_network_architectures -> timm)
# can swap it for another build with gigabytes of CUDA packages.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
# bench: mambapy, the scan benchmark's peer, so that its tests run here too.
pip install -q -c "$constraints" -e ".[test,bench]"
