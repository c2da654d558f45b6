"""Training from the same weights on the same batches: ours against the book's loop."""

from __future__ import annotations

import numpy as np
import pytest

from lenet_jax.training import batch_plan, epoch_permutation
from parity.compare_training import (
    compare_same_weights,
    compare_sgd_steps,
    plan_batches,
    same_weights_runs,
)
from parity.reference_training import batches_of
from parity.rows import all_passed, describe_failures


def test_plan_batches_drop_only_the_padding():
    """The reference's batches are our batch plan's rows without masked entries."""
    order = epoch_permutation(1000, seed=2, epoch=1)
    batches = plan_batches(order, 256)
    assert [len(b) for b in batches] == [256, 256, 256, 232]
    np.testing.assert_array_equal(np.concatenate(batches), order)
    for ours, theirs in zip(batches, batches_of(order, 256), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    indices, _ = batch_plan(order, 256)
    assert indices.shape == (4, 256)


def test_one_sgd_step():
    rows = compare_sgd_steps(1)
    assert all_passed(rows), describe_failures(rows)


def test_one_sgd_step_on_a_short_batch():
    """100 examples with batch size 256: our padded, masked step equals PyTorch's."""
    rows = compare_sgd_steps(1, num_examples=100)
    assert all_passed(rows), describe_failures(rows)


def test_one_hundred_sgd_steps():
    """Every parameter within 1e-4 after 100 steps of SGD at lr 0.9."""
    rows = compare_sgd_steps(100, seed=1)
    assert all_passed(rows), describe_failures(rows)


@pytest.mark.slow
def test_one_epoch_from_the_same_weights():
    """A whole epoch (235 steps, short last batch): test accuracies within 0.01."""
    torch_run, our_run = same_weights_runs(epochs=1, seed=0)
    rows = compare_same_weights(torch_run, our_run)
    assert all_passed(rows), describe_failures(rows)
    assert abs(torch_run.records[0].train_loss - our_run.records[0].train_loss) < 1e-3
