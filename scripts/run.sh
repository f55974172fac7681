#!/usr/bin/env bash
# Installs medmamba (scripts/setup.sh) and runs the main job. For now that is the selective-scan
# benchmark on this machine's defaults; it becomes `medmamba demo` once the networks and the
# training pipeline land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec medmamba benchmark scan "$@"
