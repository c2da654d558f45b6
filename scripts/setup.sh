#!/usr/bin/env bash
# Set up a fresh Debian-like machine (root or sudo) for lenet-jax:
#   - Debian's dataset-fashion-mnist, the original Fashion-MNIST files, where apt exists;
#   - a virtual environment in .venv with the package and its test tools.
# Safe to run again: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$data_dir/t10k-labels-idx1-ubyte.gz" ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: installing Debian's dataset-fashion-mnist"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done; the environment is .venv"
