"""Pooling against torch.nn.functional: the report's quick grid, and random configs.

Every expected value, and whether a configuration is legal at all, comes from
PyTorch (see parity.compare_pooling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenet_jax import pooling
from parity.compare_pooling import compare_case, compare_pool2d_loops
from parity.pooling_cases import KINDS, PoolCase, quick_grid
from parity.rows import all_passed, describe_failures, max_abs_diff

QUICK = quick_grid()


@pytest.mark.parametrize("case", QUICK, ids=[c.label() for c in QUICK])
def test_quick_grid_case_matches_torch(case):
    """Values 1e-6, gradients 1e-5, modules, jit, or ValueError where torch raises."""
    rows = compare_case(case)
    assert rows
    assert all_passed(rows), describe_failures(rows)


def test_quick_grid_covers_the_issue():
    """The grid holds every kind of case the issue lists."""
    labels = " ".join(c.label() for c in QUICK)
    for needle in ("ceil", "no-pad-count", "div=", " d=", "nonfinite", "negative"):
        assert needle in labels
    assert {c.mode for c in QUICK} == {"max", "avg"}
    assert any(len(c.shape) == 3 for c in QUICK)  # unbatched (C, H, W)
    assert any(c.shape[0] > 1 and c.shape[1] > 1 for c in QUICK if len(c.shape) == 4)


def test_pool2d_equals_the_loop_version_and_torch():
    """The chapter's pool2d: ours against the loops, the loops against PyTorch."""
    rows = compare_pool2d_loops(seed=3)
    assert all_passed(rows), describe_failures(rows)


def test_avg_pool2d_gradient_under_jit():
    """jax.grad of a padded avg_pool2d works under jax.jit (it does eagerly).

    A training step is jitted, so an AvgPool2d with padding or overlapping windows
    must be differentiable there.
    """
    x = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32).reshape(1, 4, 4, 1)

    def loss(a):
        return pooling.avg_pool2d(a, 2, stride=2, padding=1).sum()

    eager = jax.grad(loss)(x)
    jitted = jax.jit(jax.grad(loss))(x)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))


def test_max_abs_diff_is_nan_aware():
    nan, inf = np.nan, np.inf
    assert max_abs_diff([1.0, nan, inf], [1.0, nan, inf]) == 0.0
    assert max_abs_diff([1.0, nan], [1.0, 2.0]) == inf
    assert max_abs_diff([inf], [-inf]) == inf
    assert max_abs_diff([1.0, 2.0], [1.0, 2.5]) == 0.5
    assert max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2))) == inf


# --------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------


def numeric_rows(rows):
    """Values, gradients and rejections; jit is tested on its own above."""
    return [r for r in rows if "under jax.jit" not in r.case]


@st.composite
def legal_cases(draw) -> PoolCase:
    """A configuration PyTorch accepts, on an input just large enough or larger."""
    mode = draw(st.sampled_from(["max", "avg"]))
    kh = draw(st.integers(1, 5))
    square = draw(st.booleans())
    kw = kh if square else draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (1, 1)
    if mode == "max":
        dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(
        st.one_of(
            st.none(),
            st.integers(1, 4),
            st.tuples(st.integers(1, 4), st.integers(1, 4)),
        )
    )
    # The dilated window must fit the padded input: H + 2p >= d (k - 1) + 1.
    min_h, min_w = (
        max(1, dh * (kh - 1) + 1 - 2 * ph),
        max(1, dw * (kw - 1) + 1 - 2 * pw),
    )
    h = draw(st.integers(min_h, min_h + 7))
    w = draw(st.integers(min_w, min_w + 7))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (n, c, h, w) if draw(st.booleans()) else (c, h, w)
    avg_options = {}
    if mode == "avg":
        avg_options = dict(
            count_include_pad=draw(st.booleans()),
            divisor_override=draw(st.one_of(st.none(), st.integers(1, 9))),
        )
    return PoolCase(
        mode,
        kh if square else (kh, kw),
        stride,
        (ph, pw),
        dilation=(dh, dw),
        ceil_mode=draw(st.booleans()),
        shape=shape,
        kind=draw(st.sampled_from(KINDS)),
        seed=draw(st.integers(0, 2**16)),
        **avg_options,
    )


@st.composite
def any_cases(draw) -> PoolCase:
    """Sizes from small illegal values to legal ones, on small inputs."""
    mode = draw(st.sampled_from(["max", "avg"]))
    size = st.integers(-1, 5)
    pair = st.one_of(size, st.tuples(size, size))
    shape = draw(
        st.one_of(
            st.tuples(
                st.integers(0, 2),
                st.integers(0, 2),
                st.integers(0, 7),
                st.integers(0, 7),
            ),
            st.tuples(st.integers(1, 2), st.integers(0, 7), st.integers(0, 7)),
        )
    )
    extra = {}
    if mode == "max":
        extra["dilation"] = draw(st.one_of(st.integers(0, 3), st.tuples(size, size)))
    else:
        extra["count_include_pad"] = draw(st.booleans())
        extra["divisor_override"] = draw(st.one_of(st.none(), st.integers(-2, 3)))
    return PoolCase(
        mode,
        draw(pair),
        draw(st.one_of(st.none(), pair)),
        draw(
            st.one_of(
                st.integers(-1, 3), st.tuples(st.integers(-1, 3), st.integers(-1, 3))
            )
        ),
        ceil_mode=draw(st.booleans()),
        shape=shape,
        seed=draw(st.integers(0, 2**16)),
        **extra,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=legal_cases())
def test_random_legal_configs_match_torch(case):
    """Any legal config and shape: PyTorch accepts it, ours agrees, grads too."""
    rows = numeric_rows(compare_case(case))
    assert not any("rejects" in r.case for r in rows), describe_failures(rows)
    assert all_passed(rows), describe_failures(rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=any_cases())
def test_random_configs_rejected_exactly_where_torch_rejects(case):
    """Ours raises ValueError exactly where PyTorch raises, and agrees elsewhere."""
    rows = numeric_rows(compare_case(case))
    assert all_passed(rows), describe_failures(rows)
