"""Shared fixtures: the real Fashion-MNIST, loaded once per test session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lenet_jax.data import DEBIAN_DIR, load_fashion_mnist, missing_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real data from Debian's files; the tests need them, so none is faked."""
    missing = missing_files(DEBIAN_DIR)
    assert not missing, (
        f"{DEBIAN_DIR} lacks {missing}: run scripts/setup.sh, which installs Debian's "
        "dataset-fashion-mnist"
    )
    return load_fashion_mnist()


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for running train.py in a subprocess, with the shared TFDS cache."""
    env = dict(os.environ)
    env.setdefault("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))
    return env


def run_train(args, env, timeout=900):
    """Run `python train.py ARGS` in the repository and capture what it prints."""
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
