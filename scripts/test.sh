#!/usr/bin/env bash
# Installs medmamba (scripts/setup.sh) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# The Triton tests run the GPU kernels' logic on the CPU through Triton's interpreter.
exec python -m pytest -q -p no:cacheprovider "$@"
