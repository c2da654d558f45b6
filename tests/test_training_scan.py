"""The scanned epoch (CHUNK_STEPS steps per call) equals one jitted step per batch."""

import jax
import numpy as np
import optax
from flax import nnx

from lenet_jax import training
from lenet_jax.model import LeNet


def test_scanned_epoch_equals_per_step_training_to_float_rounding(fashion_mnist):
    """Real images, 23 steps of 16 (two full chunks, a short chunk, a short batch)."""
    n, batch = 16 * 22 + 5, 16
    images = fashion_mnist.train_images[:n]
    labels = fashion_mnist.train_labels[:n]
    order = training.epoch_permutation(n, 0, 1)
    trainer = training.Trainer(LeNet(rngs=nnx.Rngs(0)), lr=0.9)
    seen = []
    totals, _ = trainer.train_epoch(
        images, labels, order, batch, progress=lambda k, s, t: seen.append((k, s))
    )
    assert seen == [(10, 23), (20, 23), (23, 23)]

    graphdef, params = nnx.split(LeNet(rngs=nnx.Rngs(0)))
    tx = optax.sgd(0.9)
    step = jax.jit(training.make_train_step(graphdef, tx))
    opt_state, expected = tx.init(params), training.new_totals()
    indices, mask = training.batch_plan(order, batch)
    for k in range(len(indices)):
        params, opt_state, expected = step(
            params, opt_state, expected, images, labels, indices[k], mask[k]
        )
    np.testing.assert_allclose(totals, np.asarray(expected), rtol=1e-5)
    assert totals[training.COUNT] == n and totals[training.STEPS] == 23
    for a, b in zip(
        jax.tree.leaves(trainer.host_params()), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_warm_up_leaves_the_parameters_alone(fashion_mnist):
    images, labels = fashion_mnist.train_images[:100], fashion_mnist.train_labels[:100]
    trainer = training.Trainer(LeNet(rngs=nnx.Rngs(0)), lr=0.9)
    before = jax.tree.map(np.asarray, trainer.host_params())
    assert trainer.warm_up(images, labels, 8) > 0  # compiles chunks of 10 and 3
    for a, b in zip(
        jax.tree.leaves(trainer.host_params()), jax.tree.leaves(before), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_after_warm_up_an_epoch_compiles_nothing(fashion_mnist, caplog):
    """Epochs time training only: warm_up must compile exactly what they call.

    (It once compiled the chunk for host totals, and the first epoch compiled it
    again for device totals, at a third of the speed.)
    """
    images, labels = fashion_mnist.train_images[:104], fashion_mnist.train_labels[:104]
    trainer = training.Trainer(LeNet(rngs=nnx.Rngs(0)), lr=0.9)
    trainer.warm_up(images, labels, 8)
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        order = training.epoch_permutation(104, 0, 1)
        trainer.train_epoch(images, labels, order, 8)
    compiled = [r.getMessage()[:40] for r in caplog.records if "Compiling" in r.msg]
    assert compiled == []


def test_evaluate_batches_the_test_set_in_one_call(fashion_mnist):
    images, labels = fashion_mnist.test_images[:1000], fashion_mnist.test_labels[:1000]
    model = LeNet(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    predicted = np.asarray(model(images).argmax(-1))
    expected = float(np.mean(predicted == labels))
    for batch_size in (1000, 300, 4096):  # exact, padded last batch, larger than N
        got = training.evaluate_accuracy(graphdef, params, images, labels, batch_size)
        assert got == expected
