"""parity.convert: weights move between PyTorch's LeNet and ours without change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

from lenet_jax.model import LeNet
from parity import lenet_from_torch, lenet_to_torch
from parity.compare_model import compare_round_trips
from parity.convert import params_from_torch, params_to_torch
from parity.reference import book_lenet, seeded_book_lenet
from parity.rows import all_passed, describe_failures


def test_round_trips_are_bit_identical():
    """torch -> ours -> torch and ours -> torch -> ours return identical arrays."""
    rows = compare_round_trips(seed=1)
    assert all_passed(rows), describe_failures(rows)


@pytest.mark.parametrize(("activation", "pool"), [("sigmoid", "avg"), ("relu", "max")])
def test_converted_model_keeps_the_variant(activation, pool):
    model = lenet_from_torch(seeded_book_lenet(0, activation, pool))
    assert (model.activation, model.pool) == (activation, pool)
    net = lenet_to_torch(model)
    assert [type(m).__name__ for m in net] == [
        type(m).__name__ for m in book_lenet(activation, pool)
    ]


def test_layouts_of_each_parameter():
    """Conv kernels OIHW -> HWIO, dense weights transposed, fc1 rows permuted."""
    net = seeded_book_lenet(0)
    state = net.state_dict()
    ours = params_from_torch(state)
    np.testing.assert_array_equal(
        ours["conv2"]["kernel"][1, 2, 3, 4], state["3.weight"][4, 3, 1, 2].numpy()
    )
    # fc1: torch column c*25 + h*5 + w is our row h*80 + w*16 + c.
    c, h, w, out = 7, 2, 4, 11
    np.testing.assert_array_equal(
        ours["fc1"]["kernel"][h * 80 + w * 16 + c, out],
        state["7.weight"][out, c * 25 + h * 5 + w].numpy(),
    )
    np.testing.assert_array_equal(ours["fc3"]["kernel"], state["11.weight"].numpy().T)


def test_gradients_convert_like_parameters():
    """A dict keyed like a state_dict (e.g. gradients) converts both ways."""
    model = LeNet(rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    back = params_from_torch(params_to_torch(params))
    for name, arrays in params.items():
        for kind, value in arrays.items():
            np.testing.assert_array_equal(back[name][kind], np.asarray(value))


def test_rejects_a_net_with_mixed_layers():
    net = book_lenet("sigmoid", "avg")
    net[4] = torch.nn.ReLU()
    with pytest.raises(ValueError, match="one kind of activation"):
        lenet_from_torch(net)
