"""Nothing lost: kill -9 mid-epoch, resume, and get the uninterrupted run's result."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lenet_jax import checkpoint, cli
from tests.conftest import REPO, run_train

ARGS = ["--epochs", "2", "--activation", "relu", "--lr", "0.1", "--seed", "5"]


def start_train(args, env):
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(out, epochs, process, timeout=600):
    """Block until metrics.jsonl lists `epochs` epochs (the checkpoint is older)."""
    deadline = time.monotonic() + timeout
    metrics = out / cli.METRICS
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return json.loads(metrics.read_text().splitlines()[epochs - 1])
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"no epoch {epochs} in {metrics} after {timeout} s")


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    subprocess_env, tmp_path
):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = run_train([*ARGS, "--output-dir", str(whole)], subprocess_env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    process = start_train([*ARGS, "--output-dir", str(broken)], subprocess_env)
    first = wait_for_epochs(broken, 1, process)
    time.sleep(first["train_seconds"] / 2)  # well inside the second epoch
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert len((broken / cli.METRICS).read_text().splitlines()) == 1

    resumed = run_train(
        ["--resume", str(broken)], subprocess_env, timeout=900
    )  # options saved
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in resumed.stdout

    params_whole, _, meta_whole = checkpoint.load_checkpoint(whole / cli.CHECKPOINT)
    params_broken, _, meta_broken = checkpoint.load_checkpoint(broken / cli.CHECKPOINT)
    flat_whole = checkpoint._flatten(params_whole, "p")
    flat_broken = checkpoint._flatten(params_broken, "p")
    assert flat_whole.keys() == flat_broken.keys()
    for name in flat_whole:  # to the bit, on the CPU
        np.testing.assert_array_equal(flat_whole[name], flat_broken[name], name)
    for a, b in zip(meta_whole["history"], meta_broken["history"], strict=True):
        for key in ("train_loss", "train_acc", "test_acc", "examples"):
            assert a[key] == b[key], key


def test_resume_refuses_a_different_config(subprocess_env, tmp_path):
    from flax import nnx

    from lenet_jax.model import LeNet

    config = cli.RunConfig(epochs=2, lr=0.5)
    checkpoint.save_checkpoint(
        tmp_path / cli.CHECKPOINT,
        LeNet(rngs=nnx.Rngs(0)),
        meta={"config": config.__dict__, "history": []},
    )
    done = run_train(
        ["--resume", str(tmp_path), "--lr", "0.9"], subprocess_env, timeout=300
    )
    assert done.returncode == 2
    assert "the run used lr=0.5, this command asks for 0.9" in done.stderr


def test_resume_without_a_checkpoint(subprocess_env, tmp_path):
    done = run_train(["--resume", str(tmp_path)], subprocess_env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"train.py: error: --resume {tmp_path}: no checkpoint.npz in it"
    )
