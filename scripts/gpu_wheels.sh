#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh, fetched here (with network) for the GPU machine, which has
# Python 3.12, torch 2.11 and Triton 3.6 but no network and none of the packages below.
#
#   bash scripts/gpu_wheels.sh      ->  .whl/wheels.tar.xz (ignored by git), about 40 MB
#
# cp312 manylinux x86_64 wheels, without their dependencies: the list is what a plan-and-train and
# the benchmarks import that the machine lacks (everything else, numpy, scipy, scikit-image, pandas,
# matplotlib, numba, timm …, is there), at the versions this repository is tested with. torch and
# triton are the machine's own.
#
# Why one tar.xz of uncompressed wheels: the device tool carries at most 64 MiB with the working
# tree, and SimpleITK's wheel alone is 53 MB zip-compressed. The wheels are re-stored without
# compression (still valid wheels, same files and RECORD) and xz-compressed together: about 40 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

# Any Python with pip can fetch wheels for another platform; the project's venv if there is one.
python="${PYTHON:-python3}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  python=.venv/bin/python
fi
dest=.whl
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

binary=(
  nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
  blosc2==4.15.0 ndindex==1.10.1 connected-components-3d==4.1.1 SimpleITK==2.5.7 nibabel==5.4.2
  monai==1.6.1 mambapy==1.2.0
)
# Published as a source distribution only; pure Python, so the wheel built here runs there.
source_only=(acvl-utils==0.2.6)

"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work/wheels" "${binary[@]}"
"$python" -m pip wheel --quiet --no-deps -w "$work/wheels" "${source_only[@]}"
for wheel in "$work"/wheels/acvl_utils-*.whl; do
  case "$wheel" in
    *-py3-none-any.whl) ;;
    *) echo "gpu_wheels: $wheel is not a pure-Python wheel; it would not run on the GPU machine" >&2; exit 1 ;;
  esac
done

"$python" - "$work/wheels" <<'PY'
import pathlib
import sys
import zipfile

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
    stored.replace(wheel)
PY

mkdir -p "$dest"
tar -C "$work/wheels" -cf - . | xz -9 -T0 > "$dest/wheels.tar.xz.part"
mv "$dest/wheels.tar.xz.part" "$dest/wheels.tar.xz"
size=$(stat -c %s "$dest/wheels.tar.xz")
echo "gpu_wheels: $dest/wheels.tar.xz, $((size / 1048576)) MiB, $(find "$work/wheels" -name '*.whl' | wc -l) wheels"
if [ "$size" -gt $((60 * 1048576)) ]; then
  echo "gpu_wheels: over 60 MiB: with the working tree it would not fit the device tool's 64 MiB" >&2
  exit 1
fi
