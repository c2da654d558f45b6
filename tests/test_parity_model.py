"""LeNet against the book's PyTorch LeNet: shapes, parameter counts, logits, gradients.

Logits and gradients are taken on real Fashion-MNIST images.
"""

from __future__ import annotations

import pytest

from parity.compare_model import (
    VARIANTS,
    compare_forward_backward,
    compare_layer_shapes,
    compare_param_counts,
)
from parity.rows import all_passed, describe_failures


@pytest.mark.parametrize(("activation", "pool"), VARIANTS)
def test_layer_shapes_match_torch(activation, pool):
    """Our 12-row table equals PyTorch's, with (N, C, H, W) read as (N, H, W, C)."""
    rows = compare_layer_shapes(activation, pool)
    assert len(rows) == 13  # the count, then one row per layer
    assert all_passed(rows), describe_failures(rows)


def test_both_have_61706_parameters():
    rows = compare_param_counts()
    assert all_passed(rows), describe_failures(rows)


@pytest.mark.parametrize(("activation", "pool"), VARIANTS)
def test_logits_and_gradients_match_torch(activation, pool):
    """Same weights: logits on 1000 test images and every loss gradient to 1e-5."""
    rows = compare_forward_backward(activation, pool, seed=0)
    assert len(rows) == 12  # logits, loss, 10 gradients
    assert all_passed(rows), describe_failures(rows)
