#!/usr/bin/env bash
# The Python packages the lent H200's image lacks (docs/device.md, "Installing on the GPU machine"),
# as wheels in .wheels/ (git-ignored; a device call carries it): SimpleITK's 52.8 MB wheel is
# repacked as simpleitk.tar.xz (~29 MB) so that the folder and the working tree fit the 64 MiB a
# call carries. Needs a registry (run it here, not on the device machine).
#   bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
rm -rf .wheels
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform any -d .wheels \
  jsonargparse docstring-parser typeshed-client monai diffusers torchio SimpleITK nibabel \
  deprecated importlib-metadata importlib-resources
wheel=$(ls .wheels/simpleitk-*.whl)
unpacked=$(mktemp -d)
"$PYTHON" -m zipfile -e "$wheel" "$unpacked"
tar -C "$unpacked" -cf - . | xz -6 -T0 > .wheels/simpleitk.tar.xz
rm -rf "$unpacked" "$wheel"
du -sh .wheels
