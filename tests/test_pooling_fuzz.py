"""Fuzzing the pooling arguments: any value works or raises our own ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenet_jax.pooling import AvgPool2d, MaxPool2d, avg_pool2d, max_pool2d, pool2d

ODD_VALUES = st.one_of(
    st.integers(-3, 8),
    st.tuples(st.integers(-2, 6), st.integers(-2, 6)),
    st.lists(st.integers(-1, 5), max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, "2", (2.5, 1), (), "same"]),
)
SHAPES = st.sampled_from(
    [(1, 5, 5, 1), (2, 7, 4, 3), (5, 5, 1), (5, 5), (1, 2, 5, 5, 1), (1, 0, 4, 1)]
)
DTYPES = st.sampled_from([jnp.float32, jnp.int32, jnp.bool_, jnp.float16])


def assert_works_or_value_error(fn, *args, **kwargs):
    try:
        out = fn(*args, **kwargs)
    except ValueError as e:
        assert str(e), "a ValueError must say what is wrong"
        return
    assert np.all(np.asarray(out.shape) >= 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=SHAPES,
    dtype=DTYPES,
    kernel_size=ODD_VALUES,
    stride=ODD_VALUES,
    padding=ODD_VALUES,
    dilation=ODD_VALUES,
    ceil_mode=st.sampled_from([False, True, 0, "yes"]),
    module=st.booleans(),
)
def test_max_pool_with_random_arguments(
    shape, dtype, kernel_size, stride, padding, dilation, ceil_mode, module
):
    x = jnp.ones(shape, dtype)
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    args.update(dilation=dilation, ceil_mode=ceil_mode)
    if module:
        assert_works_or_value_error(lambda: MaxPool2d(**args)(x))
    else:
        assert_works_or_value_error(max_pool2d, x, **args)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=SHAPES,
    dtype=DTYPES,
    kernel_size=ODD_VALUES,
    stride=ODD_VALUES,
    padding=ODD_VALUES,
    count_include_pad=st.sampled_from([False, True]),
    divisor_override=st.one_of(st.none(), st.integers(-2, 5), st.floats()),
    module=st.booleans(),
)
def test_avg_pool_with_random_arguments(
    shape,
    dtype,
    kernel_size,
    stride,
    padding,
    count_include_pad,
    divisor_override,
    module,
):
    x = jnp.ones(shape, dtype)
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    args.update(count_include_pad=count_include_pad, divisor_override=divisor_override)
    if module:
        assert_works_or_value_error(lambda: AvgPool2d(**args)(x))
    else:
        assert_works_or_value_error(avg_pool2d, x, **args)


@settings(max_examples=100, deadline=None)
@given(
    shape=st.sampled_from([(3, 3), (4, 2), (1, 1), (3,), (2, 2, 2), (0, 3)]),
    pool_size=ODD_VALUES,
    mode=st.sampled_from(["max", "avg", "min", "", None]),
)
def test_pool2d_with_random_arguments(shape, pool_size, mode):
    assert_works_or_value_error(pool2d, jnp.ones(shape), pool_size, mode)


def test_validation_also_runs_under_jit():
    x = jnp.ones((1, 4, 4, 1))
    try:
        jax.jit(lambda a: max_pool2d(a, 3, padding=2))(x)
    except ValueError as e:
        assert "padding" in str(e)
    else:
        raise AssertionError("padding 2 with kernel 3 must be refused")
