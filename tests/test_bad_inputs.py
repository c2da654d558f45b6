"""Bad input, clear errors: each names the problem, exits non-zero, loses nothing."""

import gzip
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenet_jax import checkpoint, cli, training
from lenet_jax import data as fm
from tests import conftest


def run_train(args, env):
    return conftest.run_train(args, env, timeout=600)


def one_error_line(done) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def data_copy(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    for name in fm.FILES.values():
        shutil.copy(fm.DEBIAN_DIR / name, directory / name)
    return directory


def _labels_payload(path):
    return gzip.decompress(path.read_bytes())


BREAKAGES = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated gzip": lambda p: p.write_bytes(
        p.read_bytes()[: len(p.read_bytes()) // 2]
    ),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)),
    "wrong magic": lambda p: p.write_bytes(
        gzip.compress(b"\x00\x00\x08\x02" + _labels_payload(p)[4:])
    ),
    "wrong count": lambda p: p.write_bytes(gzip.compress(_labels_payload(p)[:-10])),
}
MESSAGES = {
    "empty": "too short for an IDX header",
    "truncated gzip": "not a complete gzip file",
    "random bytes": "not a complete gzip file",
    "wrong magic": "IDX magic number is 0x00000802, expected 0x00000801",
    "wrong count": "header says [60000] (60000 bytes) but holds 59990 bytes",
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_data_file_in_train_py(breakage, data_copy, subprocess_env, tmp_path):
    path = data_copy / fm.FILES["train_labels"]
    BREAKAGES[breakage](path)
    out = tmp_path / "run"
    done = run_train(
        ["--data-dir", str(data_copy), "--output-dir", str(out)], subprocess_env
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert line.startswith(f"train.py: error: {path}: ")
    assert MESSAGES[breakage] in line


def test_images_and_labels_disagree_in_train_py(data_copy, subprocess_env):
    """Test labels swapped for train labels: 10,000 images, 60,000 labels."""
    shutil.copy(
        fm.DEBIAN_DIR / fm.FILES["train_labels"], data_copy / fm.FILES["test_labels"]
    )
    done = run_train(["--data-dir", str(data_copy)], subprocess_env)
    assert done.returncode == 2
    assert "holds 10000 images but" in one_error_line(done)
    assert "holds 60000 labels" in one_error_line(done)


def _read_as_nobody(path: str, queue) -> None:
    """In a forked child: drop root, then read the file as another user would."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        fm.read_idx(Path(path), rank=1)
        queue.put("read without error")
    except fm.DataError as e:
        queue.put(str(e))


# The forked child only reads one file with the standard library; JAX's threads
# are not touched there, so the warning about forking a JAX process does not apply.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_unreadable_file_is_named():
    """chmod 000 stops every user but root, so as root the read runs as nobody."""
    directory = Path(tempfile.mkdtemp())
    try:
        directory.chmod(0o755)
        path = directory / fm.FILES["test_labels"]
        shutil.copy(fm.DEBIAN_DIR / fm.FILES["test_labels"], path)
        path.chmod(0o000)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_read_as_nobody, args=(str(path), queue))
        child.start()
        message = queue.get(timeout=60)
        child.join()
        assert message == f"{path}: cannot be read (Permission denied)"
    finally:
        shutil.rmtree(directory)


def test_nan_loss_stops_with_the_epoch_step_and_lr(subprocess_env, tmp_path):
    out = tmp_path / "run"
    args = ["--lr", "100", "--activation", "relu", "--output-dir", str(out)]
    done = run_train(args, subprocess_env)
    assert done.returncode == cli.EXIT_DIVERGED
    line = one_error_line(done)
    assert line.startswith("train.py: training diverged: the loss became nan")
    assert "at epoch 1, step " in line and "with lr 100.0" in line
    assert "no epoch completed, so no checkpoint was written" in line
    assert not (out / cli.CHECKPOINT).exists()


@pytest.mark.slow
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """Epoch 1 trains for real; epoch 2 reports a NaN at step 7."""
    real_epoch = training.Trainer.train_epoch

    def epoch_that_diverges_second(self, images, labels, order, batch_size, progress):
        totals, seconds = real_epoch(self, images, labels, order, batch_size, progress)
        if not hasattr(self, "_epochs_run"):
            self._epochs_run = 1
            return totals, seconds
        totals = totals.copy()
        totals[training.LOSS_SUM] = np.nan
        totals[training.FIRST_BAD_STEP] = 7
        return totals, seconds

    monkeypatch.setattr(training.Trainer, "train_epoch", epoch_that_diverges_second)
    out = tmp_path / "run"
    args = ["--epochs", "3", "--activation", "relu", "--lr", "0.1"]
    code = cli.main([*args, "--output-dir", str(out), "--quiet"])
    assert code == cli.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "at epoch 2, step 7, with lr 0.1" in err
    assert f"the checkpoint of epoch 1 in {out} is kept" in err
    _, _, meta = checkpoint.load_checkpoint(out / cli.CHECKPOINT)
    assert len(meta["history"]) == 1
    assert len((out / cli.METRICS).read_text().splitlines()) == 1


# ----------------------------------------------------------------------------------
# Fuzzing the command line: every value either parses or is a usage error (exit 2)
# ----------------------------------------------------------------------------------

OPTION_VALUES = {
    "--epochs": st.one_of(st.integers(-5, 5).map(str), st.text(max_size=4)),
    "--batch-size": st.one_of(st.integers(-300, 300).map(str), st.text(max_size=4)),
    "--lr": st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(str), st.text(max_size=4)
    ),
    "--seed": st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=4)),
    "--devices": st.one_of(st.integers(-3, 3).map(str), st.text(max_size=3)),
    "--activation": st.sampled_from(["sigmoid", "relu", "tanh", ""]),
    "--pool": st.sampled_from(["avg", "max", "min", ""]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(sorted(OPTION_VALUES)).flatmap(
            lambda name: OPTION_VALUES[name].map(lambda v: (name, v))
        ),
        max_size=4,
    )
)
def test_fuzzed_options_parse_or_fail_with_a_usage_error(pairs):
    argv = [f"{name}={value}" for name, value in pairs]
    try:
        args = cli.build_parser().parse_args(argv)
        config = cli.run_config(args)
        cli.check_options(args, config)
    except SystemExit as e:
        assert e.code == cli.EXIT_USAGE
        return
    except cli.UsageError:
        return
    assert config.epochs > 0 and config.batch_size > 0 and config.lr > 0
    assert np.isfinite(config.lr)


# ----------------------------------------------------------------------------------
# Findings of a new-user pass: runs, checkpoints and option combinations
# ----------------------------------------------------------------------------------


def _a_finished_run(path):
    """A directory that looks like a complete earlier run (its files' bytes known)."""
    from flax import nnx

    from lenet_jax.model import LeNet

    path.mkdir()
    checkpoint.save_checkpoint(
        path / cli.CHECKPOINT,
        LeNet(rngs=nnx.Rngs(0)),
        meta={"config": cli.RunConfig(epochs=1).__dict__, "history": [{}]},
    )
    for name in cli.RUN_FILES[1:]:
        (path / name).write_text(f"earlier {name}\n")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_early(
    data_copy, subprocess_env, tmp_path
):
    out = tmp_path / "run"
    before = _a_finished_run(out)
    (data_copy / fm.FILES["train_images"]).write_bytes(b"garbage")
    done = run_train(
        ["--overwrite", "--output-dir", str(out), "--data-dir", str(data_copy)],
        subprocess_env,
    )
    assert done.returncode == 2
    assert "not a complete gzip file" in one_error_line(done)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "3"], "--predict trains nothing; it takes no --epochs"),
        (["--seed", "0"], "--predict trains nothing; it takes no --seed"),
    ],
)
def test_predict_takes_no_training_options(extra, message, subprocess_env, tmp_path):
    _a_finished_run(tmp_path / "run")
    done = run_train(
        ["--predict", str(tmp_path / "run" / cli.CHECKPOINT), *extra], subprocess_env
    )
    assert done.returncode == 2
    assert message in one_error_line(done)


def test_predict_does_not_overwrite_another_runs_pictures(subprocess_env, tmp_path):
    _a_finished_run(tmp_path / "model")
    before = _a_finished_run(tmp_path / "other")
    done = run_train(
        [
            "--predict",
            str(tmp_path / "model" / cli.CHECKPOINT),
            "--output-dir",
            str(tmp_path / "other"),
        ],
        subprocess_env,
    )
    assert done.returncode == 2
    assert "holds another run's" in one_error_line(done)
    assert {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir()} == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "1"], "the run has already completed 1 epochs"),
        ([], "the run has already completed 1 epochs"),
        (["--output-dir", "elsewhere"], "it takes no --output-dir or --overwrite"),
        (["--overwrite"], "it takes no --output-dir or --overwrite"),
    ],
)
def test_resume_refuses_what_it_cannot_do(extra, message, subprocess_env, tmp_path):
    before = _a_finished_run(tmp_path / "run")
    done = run_train(["--resume", str(tmp_path / "run"), *extra], subprocess_env)
    assert done.returncode == 2
    assert message in one_error_line(done)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


@pytest.mark.parametrize(
    "meta,message",
    [
        (b"not json{", "its 'meta' record is not JSON"),
        (b"[1, 2]", "format 'list'"),
        (b'{"format": "lenet-jax-checkpoint/1"}', "no usable model options"),
    ],
)
def test_corrupt_checkpoints_are_refused_in_one_line(
    meta, message, subprocess_env, tmp_path
):
    path = tmp_path / cli.CHECKPOINT
    np.savez(path, meta=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_model(path)
    done = run_train(["--predict", str(path)], subprocess_env)
    assert done.returncode == 2
    assert message in one_error_line(done)


def test_a_checkpoint_with_extra_parameters_is_refused(tmp_path):
    from flax import nnx

    from lenet_jax.model import LeNet

    path = checkpoint.save_checkpoint(tmp_path / "c.npz", LeNet(rngs=nnx.Rngs(0)))
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["params/extra/kernel"] = np.zeros(3, np.float32)
    np.savez(path, **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="missing or extra"):
        checkpoint.load_model(path)


def test_lr_beyond_float32_is_a_usage_error(subprocess_env):
    done = run_train(["--lr", "1e39"], subprocess_env)
    assert done.returncode == 2
    assert "argument --lr: must be a positive float, got 1e39" in one_error_line(done)
