"""The training loop: batching, the masked step, SGD's update, pmap, real accuracy."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lenet_jax import training
from lenet_jax.model import LeNet
from tests.conftest import REPO


def test_batch_plan_covers_every_example_once_and_pads_the_last_batch():
    order = np.random.default_rng(0).permutation(1000)
    indices, mask = training.batch_plan(order, 256)
    assert indices.shape == mask.shape == (4, 256)  # ceil(1000 / 256) steps
    assert mask.sum() == 1000
    assert mask[-1].sum() == 1000 - 3 * 256
    np.testing.assert_array_equal(indices[mask == 1], order)


def test_epoch_permutation_is_seeded_and_changes_every_epoch():
    a = training.epoch_permutation(500, seed=1, epoch=1)
    np.testing.assert_array_equal(a, training.epoch_permutation(500, 1, 1))
    assert not np.array_equal(a, training.epoch_permutation(500, 1, 2))
    assert not np.array_equal(a, training.epoch_permutation(500, 2, 1))
    np.testing.assert_array_equal(np.sort(a), np.arange(500))


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return images, labels


def test_padded_step_equals_sgd_on_the_real_examples_alone():
    """A short batch padded with masked rows takes w - lr * grad(mean loss of rows)."""
    images, labels = _data()
    model = LeNet(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    lr = 0.9

    def mean_loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    real = np.arange(40)
    grads = jax.grad(mean_loss)(params, images[real], labels[real])
    expected = jax.tree.map(lambda w, g: w - lr * g, params, grads)

    tx = optax.sgd(lr)
    step = jax.jit(training.make_train_step(graphdef, tx))
    indices, mask = training.batch_plan(real, 64)
    got, _, totals = step(
        params,
        tx.init(params),
        training.new_totals(),
        images,
        labels,
        indices[0],
        mask[0],
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert totals[training.COUNT] == 40
    assert totals[training.STEPS] == 1
    assert totals[training.FIRST_BAD_STEP] == -1
    loss = mean_loss(params, images[real], labels[real])
    np.testing.assert_allclose(totals[training.LOSS_SUM] / 40, loss, rtol=1e-5)


def test_trainer_epoch_counts_every_example_and_matches_manual_steps():
    images, labels = _data(300)
    order = training.epoch_permutation(300, 0, 1)
    trainer = training.Trainer(LeNet(rngs=nnx.Rngs(0)), lr=0.5)
    totals, seconds = trainer.train_epoch(images, labels, order, 128)
    assert totals[training.COUNT] == 300 and totals[training.STEPS] == 3
    assert seconds > 0

    graphdef, params = nnx.split(LeNet(rngs=nnx.Rngs(0)))

    def mean_loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    for batch in np.array_split(order, [128, 256]):
        g = jax.grad(mean_loss)(params, images[batch], labels[batch])
        params = jax.tree.map(lambda w, g: w - 0.5 * g, params, g)
    for a, b in zip(
        jax.tree.leaves(trainer.host_params()), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_divergence_is_caught_on_the_device_with_its_step():
    images, labels = _data(512)
    trainer = training.Trainer(LeNet(activation="relu", rngs=nnx.Rngs(0)), lr=1e4)
    order = training.epoch_permutation(512, 0, 1)
    totals, _ = trainer.train_epoch(images, labels, order, 64)
    assert totals[training.FIRST_BAD_STEP] >= 1
    assert not np.isfinite(totals[training.LOSS_SUM])


PMAP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from flax import nnx
    from lenet_jax import training
    from lenet_jax.data import load_fashion_mnist
    from lenet_jax.model import LeNet

    data = load_fashion_mnist()
    images, labels = data.train_images[:2000], data.train_labels[:2000]
    order = training.epoch_permutation(len(images), 0, 1)
    result = {"devices": jax.local_device_count()}
    params = {}
    for n in (1, 2):
        trainer = training.Trainer(
            LeNet(rngs=nnx.Rngs(0)), lr=0.9, devices=jax.local_devices()[:n]
        )
        totals, _ = trainer.train_epoch(images, labels, order, 256)
        params[n] = jax.tree.leaves(trainer.host_params())
        result[f"loss_{n}"] = float(totals[0] / totals[2])
    result["max_diff"] = max(
        float(np.abs(a - b).max()) for a, b in zip(params[1], params[2])
    )
    json.dump(result, sys.stdout)
    """
)


def test_pmap_on_two_simulated_devices_equals_one_device(subprocess_env):
    """8 SGD steps (2000 real images, last batch short) with pmap over 2 CPU devices."""
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run(
        [sys.executable, "-c", PMAP_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["max_diff"] < 1e-5
    assert result["loss_1"] == pytest.approx(result["loss_2"], abs=1e-5)


def test_evaluate_accuracy_counts_correct_predictions():
    images, labels = _data(100)
    model = LeNet(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    predicted = np.asarray(jnp.argmax(model(jnp.asarray(images)), axis=-1))
    expected = float(np.mean(predicted == labels))
    got = training.evaluate_accuracy(graphdef, params, images, labels, batch_size=30)
    assert got == pytest.approx(expected)
