#!/usr/bin/env bash
# Installs medmamba (scripts/setup.sh) and runs the main job: `medmamba demo` (synthetic BraTS-style
# data → plan and train unet and every Mamba architecture → predict, evaluate and compare on held-back
# cases → ./medmamba_demo/report/report.html). Extra arguments go to `medmamba demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec medmamba demo "$@"
