"""The PyTorch reference itself: the book's network, init and training function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from parity.reference import (
    book_lenet,
    init_book_weights_,
    pool2d_loops,
    seeded_book_lenet,
)
from parity.reference_training import (
    accuracy,
    shuffled_orders,
    to_torch,
    train_book,
)

BOOK_LAYERS = [
    "Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid", "AvgPool2d", "Flatten",
    "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear",
]  # fmt: skip


def test_book_lenet_is_the_printed_network():
    net = book_lenet()
    assert [type(m).__name__ for m in net] == BOOK_LAYERS
    assert (net[0].kernel_size, net[0].padding) == ((5, 5), (2, 2))
    assert (net[2].kernel_size, net[2].stride) == (2, 2)
    assert sum(p.numel() for p in net.parameters()) == 61_706


def test_exercise_variant_swaps_activation_and_pooling():
    names = [type(m).__name__ for m in book_lenet("relu", "max")]
    assert names.count("ReLU") == 4 and names.count("MaxPool2d") == 2


def test_book_init_redraws_weights_and_keeps_biases():
    torch.manual_seed(0)
    net = book_lenet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_book_weights_(net)
    for key, value in net.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == key.endswith("weight"), key


def test_seeded_init_is_deterministic_and_leaves_the_global_rng():
    state = torch.random.get_rng_state()
    a, b = seeded_book_lenet(4), seeded_book_lenet(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (_, vb) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka


def test_pool2d_loops_by_hand():
    X = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(pool2d_loops(X, (2, 2)), [[4, 5], [7, 8]])
    np.testing.assert_array_equal(pool2d_loops(X, 2, "avg"), [[2, 3], [5, 6]])
    with pytest.raises(ValueError):
        pool2d_loops(X, 2, "median")


def test_shuffled_orders_are_seeded_permutations():
    a, b = shuffled_orders(50, seed=1), shuffled_orders(50, seed=1)
    np.testing.assert_array_equal(a(1), b(1))
    assert sorted(a(0)) == list(range(50))
    assert not np.array_equal(a(0), a(1))


def test_train_book_learns_a_tiny_problem():
    """Two classes told apart by brightness: the loop's loss falls, accuracy rises."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 512).astype(np.int32)
    images = rng.random((512, 28, 28, 1), dtype=np.float32) * 0.2
    images += labels[:, None, None, None].astype(np.float32) * 0.8
    torch.manual_seed(0)
    net = init_book_weights_(book_lenet("relu", "max"))
    records = train_book(
        net, (images, labels), (images, labels), num_epochs=3, lr=0.1, batch_size=32
    )
    assert [r.epoch for r in records] == [1, 2, 3]
    assert records[-1].train_loss < records[0].train_loss
    x, y = to_torch(images, labels)
    assert accuracy(net, x, y) == records[-1].test_acc > 0.9
    assert isinstance(net, nn.Sequential)
