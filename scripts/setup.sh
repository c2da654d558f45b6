#!/usr/bin/env bash
# Set up a fresh Debian-like machine (root or sudo) for lenet-jax:
#   - Debian's dataset-fashion-mnist, the original Fashion-MNIST files, and g++ for the
#     native CPU kernels, where apt exists;
#   - a virtual environment in .venv with the package and its test tools.
# Safe to run again: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=/usr/share/datasets/fashion-mnist
packages=()
if [ ! -f "$data_dir/t10k-labels-idx1-ubyte.gz" ]; then
    packages+=(dataset-fashion-mnist)
fi
# g++ compiles lenet_jax's native CPU kernels on first use (lenet_jax/native.py);
# without it LeNet still runs, through XLA operations, about 3x slower on the CPU.
if ! command -v g++ >/dev/null && [ -z "${CXX:-}" ]; then
    packages+=(g++)
fi
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: installing ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done; the environment is .venv"
