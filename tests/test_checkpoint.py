"""Checkpoints: round trip, atomic replacement, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lenet_jax import checkpoint
from lenet_jax.model import LeNet


def test_round_trip_gives_the_same_network(tmp_path):
    model = LeNet(activation="relu", pool="max", rngs=nnx.Rngs(7))
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", model, meta={"epoch": 3})
    loaded = checkpoint.load_model(path)
    assert (loaded.activation, loaded.pool) == ("relu", "max")
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    np.testing.assert_array_equal(model(x), loaded(x))
    _, _, meta = checkpoint.load_checkpoint(path)
    assert meta["epoch"] == 3


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    first = LeNet(rngs=nnx.Rngs(1))
    checkpoint.save_checkpoint(path, first)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, LeNet(rngs=nnx.Rngs(2)))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left
    x = jnp.ones((1, 28, 28, 1))
    np.testing.assert_array_equal(checkpoint.load_model(path)(x), first(x))


@pytest.mark.parametrize(
    "content,message",
    [(None, "not found"), (b"", "not a readable"), (b"garbage" * 10, "not a readable")],
)
def test_bad_checkpoint_files_are_named(tmp_path, content, message):
    path = tmp_path / "c.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=message) as info:
        checkpoint.load_model(path)
    assert str(path) in str(info.value)


def test_a_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a lenet-jax checkpoint"):
        checkpoint.load_model(path)
