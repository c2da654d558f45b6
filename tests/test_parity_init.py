"""Our initialisation is distributed as the book's PyTorch init."""

from __future__ import annotations

import math

import pytest
import torch

from parity.compare_init import FANS, bound, compare_init
from parity.reference import PARAM_LAYERS, book_lenet
from parity.rows import all_passed, describe_failures


@pytest.mark.parametrize("name", list(FANS))
def test_fans_are_torchs(name):
    """The fans behind each bound are the ones PyTorch computes for the layer."""
    layer = book_lenet()[PARAM_LAYERS[name]]
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
    assert FANS[name] == (fan_in, fan_out)
    assert bound(name, "kernel") == pytest.approx(math.sqrt(6 / (fan_in + fan_out)))
    assert bound(name, "bias") == pytest.approx(1 / math.sqrt(fan_in))


def test_init_distributions_match():
    """Over 200 draws a side: range, mean, std and KS statistic per tensor."""
    rows, stats = compare_init(draws=200)
    assert len(stats) == 10
    assert all_passed(rows), describe_failures(rows)
