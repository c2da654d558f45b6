"""Tests for lenet_jax.pooling: the chapter's examples, PyTorch's rules, errors.

Expected values come from the book or from the rules written out here by hand
(a loop over windows in NumPy), never from the code under test. Inputs are
channels-last, (N, H, W, C).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lenet_jax.pooling import AvgPool2d, MaxPool2d, avg_pool2d, max_pool2d, pool2d

X33 = jnp.arange(9.0).reshape(3, 3)
X44 = np.arange(16.0).reshape(4, 4)


def one_image(x2d) -> jnp.ndarray:
    """(H, W) -> (1, H, W, 1)."""
    return jnp.asarray(x2d, jnp.float32)[None, :, :, None]


def plane(y) -> np.ndarray:
    """(1, H, W, 1) -> (H, W) as NumPy."""
    return np.asarray(y)[0, :, :, 0]


# ---------------------------------------------------------------------------
# A reference written from PyTorch's rules: one window at a time
# ---------------------------------------------------------------------------


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _axis_windows(n, k, s, p, d, ceil_mode):
    """Start of every window along one axis, from PyTorch's output-size rule."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return [o * s - p for o in range(out)]


def reference(x, ct, op, k, s=None, p=0, d=1, ceil_mode=False, cip=True, div=None):
    """Value and input gradient (for cotangent ct, default 0) of pooling one
    (H, W) plane."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(k), _pair(p), _pair(d)
    sh, sw = _pair(s) if s is not None else (kh, kw)
    H, W = x.shape
    rows = _axis_windows(H, kh, sh, ph, dh, ceil_mode)
    cols = _axis_windows(W, kw, sw, pw, dw, ceil_mode)
    y = np.zeros((len(rows), len(cols)))
    ct = np.zeros_like(y) if ct is None else ct
    grad = np.zeros_like(x)
    for a, r0 in enumerate(rows):
        for b, c0 in enumerate(cols):
            cells = [(r0 + i * dh, c0 + j * dw) for i in range(kh) for j in range(kw)]
            real = [(r, c) for r, c in cells if 0 <= r < H and 0 <= c < W]
            if op == "max":
                # Scan in row-major order: a larger value or any NaN takes over.
                best, where = -np.inf, real[0]
                for r, c in real:
                    if x[r, c] > best or np.isnan(x[r, c]):
                        best, where = x[r, c], (r, c)
                y[a, b] = best
                grad[where] += ct[a, b]
            else:
                if div is not None:
                    divisor = div
                elif cip:
                    divisor = (min(r0 + kh, H + ph) - r0) * (min(c0 + kw, W + pw) - c0)
                else:
                    divisor = len(real)
                y[a, b] = sum(x[r, c] for r, c in real) / divisor
                for r, c in real:
                    grad[r, c] += ct[a, b] / divisor
    return y, grad


def ours(x, ct, op, k, s=None, p=0, d=1, ceil_mode=False, cip=True, div=None):
    """Value and input gradient of our pooling of one (H, W) plane."""
    if op == "max":
        f = functools.partial(
            max_pool2d,
            kernel_size=k,
            stride=s,
            padding=p,
            dilation=d,
            ceil_mode=ceil_mode,
        )
    else:
        f = functools.partial(
            avg_pool2d,
            kernel_size=k,
            stride=s,
            padding=p,
            ceil_mode=ceil_mode,
            count_include_pad=cip,
            divisor_override=div,
        )
    y, vjp = jax.vjp(f, one_image(x))
    (g,) = vjp(one_image(ct))
    return plane(y), plane(g)


# ---------------------------------------------------------------------------
# pool2d, the chapter's from-scratch version
# ---------------------------------------------------------------------------


def test_pool2d_book_example_max():
    np.testing.assert_array_equal(pool2d(X33, (2, 2)), [[4.0, 5.0], [7.0, 8.0]])


def test_pool2d_book_example_avg():
    np.testing.assert_array_equal(pool2d(X33, (2, 2), "avg"), [[2.0, 3.0], [5.0, 6.0]])


def test_pool2d_rectangular_window_matches_loop():
    X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
    got_max, got_avg = pool2d(X, (2, 3)), pool2d(X, (2, 3), "avg")
    assert got_max.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            window = X[i : i + 2, j : j + 3]
            assert got_max[i, j] == window.max()
            np.testing.assert_allclose(got_avg[i, j], window.mean(), rtol=1e-6)


def test_pool2d_int_pool_size_is_square():
    np.testing.assert_array_equal(pool2d(X33, 2), pool2d(X33, (2, 2)))


def test_pool2d_avg_gradient_counts_windows():
    """Each input's gradient is (windows covering it) / (p_h * p_w)."""
    H, W, p_h, p_w = 4, 5, 2, 3
    out_h, out_w = H - p_h + 1, W - p_w + 1
    grad = jax.grad(lambda X: pool2d(X, (p_h, p_w), "avg").sum())(jnp.ones((H, W)))

    def covering(i, p, out):
        return min(i, out - 1) - max(i - p + 1, 0) + 1

    expected = [
        [
            covering(i, p_h, out_h) * covering(j, p_w, out_w) / (p_h * p_w)
            for j in range(W)
        ]
        for i in range(H)
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_pool2d_max_gradient_goes_to_the_maximum():
    grad = jax.grad(lambda X: pool2d(X, 2).sum())(X33)
    np.testing.assert_array_equal(grad, [[0, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_pool2d_jit_matches_eager():
    f = jax.jit(pool2d, static_argnames=("pool_size", "mode"))
    np.testing.assert_array_equal(
        f(X33, pool_size=(2, 2), mode="avg"), [[2, 3], [5, 6]]
    )


@pytest.mark.parametrize(
    "X, pool_size, mode, fragment",
    [
        (X33, (4, 1), "max", "pool_size"),
        (X33, (1, 4), "avg", "pool_size"),
        (X33, 0, "max", "pool_size"),
        (X33, (2, -1), "max", "pool_size"),
        (X33, (1, 2, 3), "max", "pool_size"),
        (jnp.ones((1, 3, 3)), 2, "max", "X"),
        (jnp.ones(3), 2, "max", "X"),
        (X33, 2, "min", "mode"),
        (jnp.ones((0, 3)), 2, "max", r"X of shape \(0, 3\) is empty"),
    ],
)
def test_pool2d_rejects_bad_arguments(X, pool_size, mode, fragment):
    with pytest.raises(ValueError, match=fragment):
        pool2d(X, pool_size, mode)


# ---------------------------------------------------------------------------
# max_pool2d / avg_pool2d: the chapter's examples
# ---------------------------------------------------------------------------


def test_book_max_pool_whole_window():
    np.testing.assert_array_equal(plane(max_pool2d(one_image(X44), 3)), [[10.0]])


def test_book_max_pool_padding_and_stride():
    y = max_pool2d(one_image(X44), 3, padding=1, stride=2)
    np.testing.assert_array_equal(plane(y), [[5.0, 7.0], [13.0, 15.0]])


def test_book_max_pool_rectangular():
    y = max_pool2d(one_image(X44), (2, 3), stride=(2, 3), padding=(0, 1))
    np.testing.assert_array_equal(plane(y), [[5.0, 7.0], [13.0, 15.0]])


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_channels_are_pooled_independently(pool):
    """Stacking X and X + 1 as channels pools each as if it were alone."""
    X = jnp.asarray(X44)
    x = jnp.stack([X, X + 1], axis=-1)[None]
    y = pool(x, 3, padding=1, stride=2)
    assert y.shape == (1, 2, 2, 2)
    for c, channel in enumerate([X, X + 1]):
        alone = pool(one_image(channel), 3, padding=1, stride=2)
        np.testing.assert_array_equal(y[..., c], alone[..., 0])
    # Without padding, shifting a channel by 1 shifts its pooled values by 1.
    y = pool(x, 2, stride=1)
    np.testing.assert_allclose(y[..., 1], y[..., 0] + 1, rtol=1e-6)


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_unbatched_input_matches_batch_of_one(pool):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 6, 3)), jnp.float32)
    np.testing.assert_array_equal(pool(x[0], 2, padding=1), pool(x, 2, padding=1)[0])


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_empty_batch_is_allowed(pool):
    assert pool(jnp.ones((0, 4, 4, 3)), 2).shape == (0, 2, 2, 3)


# ---------------------------------------------------------------------------
# Hand-checked padding, ceil mode, dilation and divisors
# ---------------------------------------------------------------------------


def test_max_pool_ceil_mode_keeps_partial_windows():
    X = np.arange(25.0).reshape(5, 5)
    y = max_pool2d(one_image(X), 2, ceil_mode=True)
    np.testing.assert_array_equal(plane(y), [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    assert max_pool2d(one_image(X), 2).shape == (1, 2, 2, 1)


def test_ceil_mode_drops_a_window_starting_in_right_padding():
    """H=4, k=2, s=2, p=1: ceil gives 3 windows, not 4 (the 4th starts at 5)."""
    assert max_pool2d(one_image(X44), 2, padding=1, ceil_mode=True).shape[1:3] == (3, 3)


def test_max_pool_dilation():
    """Window cells (i, j), (i, j+2), (i+2, j), (i+2, j+2): the max is X[i+2, j+2]."""
    y = max_pool2d(one_image(X44), 2, stride=1, dilation=2)
    np.testing.assert_array_equal(plane(y), [[10, 11], [14, 15]])


def test_max_pool_pads_with_minus_infinity():
    """X decreases along rows and columns, so each window's max is its top-left
    real cell, never a padded zero."""
    X = -(X44 + 1)
    y = plane(max_pool2d(one_image(X), 3, stride=1, padding=1))
    expected = [[X[max(i - 1, 0), max(j - 1, 0)] for j in range(4)] for i in range(4)]
    np.testing.assert_array_equal(y, expected)
    assert (y < 0).all()


def test_avg_pool_ceil_mode_divisor_clipped_to_input():
    """3x3 input, k=2, ceil: edge windows hold 2 cells, the corner 1."""
    y = avg_pool2d(one_image(X33), 2, ceil_mode=True)
    np.testing.assert_allclose(plane(y), [[2.0, 3.5], [6.5, 8.0]], rtol=1e-6)


def test_avg_pool_divisor_override():
    y = avg_pool2d(one_image(X33), 2, ceil_mode=True, divisor_override=3)
    np.testing.assert_allclose(plane(y), [[8 / 3, 7 / 3], [13 / 3, 8 / 3]], rtol=1e-6)
    y = avg_pool2d(one_image(X33), 2, ceil_mode=True, divisor_override=-2)
    np.testing.assert_allclose(plane(y), [[-4, -3.5], [-6.5, -4]], rtol=1e-6)


# H=W=4, k=3, s=2, p=1, ceil: window rows {-1,0,1}, {1,2,3}, {3,4,5}; PyTorch
# clips the last at H + p = 5, so it counts 2 cells with padding, 1 without.
SUMS_4X4 = [[10, 24, 10], [51, 90, 33], [25, 42, 15]]


def test_avg_pool_count_include_pad_clipped_at_right_padding():
    y = avg_pool2d(one_image(X44), 3, stride=2, padding=1, ceil_mode=True)
    divisor = np.outer([3, 3, 2], [3, 3, 2])
    np.testing.assert_allclose(plane(y), np.divide(SUMS_4X4, divisor), rtol=1e-6)


def test_avg_pool_count_exclude_pad_counts_real_cells():
    y = avg_pool2d(
        one_image(X44), 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False
    )
    divisor = np.outer([2, 3, 1], [2, 3, 1])
    np.testing.assert_allclose(plane(y), np.divide(SUMS_4X4, divisor), rtol=1e-6)


CASES = [
    ("max", dict(k=2)),
    ("max", dict(k=3, s=1, p=1)),
    ("max", dict(k=(2, 3), s=(1, 2), p=(1, 1), ceil_mode=True)),
    ("max", dict(k=3, s=2, p=1, d=2, ceil_mode=True)),
    ("max", dict(k=(3, 2), s=(2, 3), p=(1, 0), d=(1, 3))),
    ("avg", dict(k=2)),
    ("avg", dict(k=3, s=2, p=1)),
    ("avg", dict(k=3, s=2, p=1, ceil_mode=True)),
    ("avg", dict(k=(2, 4), s=(3, 1), p=(1, 2), ceil_mode=True, cip=False)),
    ("avg", dict(k=3, s=(2, 1), p=1, ceil_mode=True, div=5)),
]


@pytest.mark.parametrize("op, cfg", CASES, ids=[f"{o}-{c}" for o, c in CASES])
@pytest.mark.parametrize("data", ["normal", "ties"])
def test_values_and_gradients_follow_pytorch_rules(op, cfg, data):
    rng = np.random.default_rng(2)
    if data == "normal":
        x = rng.standard_normal((7, 6))
    else:
        x = rng.integers(-1, 2, (7, 6)).astype(float)
    x = x.astype(np.float32)
    out_shape = reference(x, None, op, **cfg)[0].shape
    ct = rng.standard_normal(out_shape)
    want_y, want_g = reference(x, ct, op, **cfg)
    got_y, got_g = ours(x, ct, op, **cfg)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Max pooling's gradient: ties, NaN and infinities as PyTorch routes them
# ---------------------------------------------------------------------------


def test_max_pool_tie_sends_gradient_to_first_cell():
    grad = jax.grad(lambda x: max_pool2d(x, 2).sum())(jnp.ones((1, 4, 4, 1)))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(plane(grad), expected)


def test_max_pool_nan_wins_and_its_last_occurrence_gets_the_gradient():
    x = np.array([[np.nan, 1.0], [np.nan, 5.0]], np.float32)
    y, g = ours(x, np.ones((1, 1)), "max", 2)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(g, [[0, 0], [1, 0]])


def test_max_pool_all_minus_infinity_routes_to_first_real_cell():
    x = np.full((2, 2), -np.inf, np.float32)
    y, g = ours(x, np.ones((3, 3)), "max", 2, s=1, p=1)
    assert (y == -np.inf).all()
    # Window (a, b) starts at (a - 1, b - 1); its first real cell is clipped to 0.
    np.testing.assert_array_equal(g, [[4, 2], [2, 1]])


def test_max_pool_with_infinities_and_nan_matches_rules():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 2, (6, 6)).astype(np.float32)
    x[rng.random((6, 6)) < 0.2] = np.nan
    x[rng.random((6, 6)) < 0.2] = np.inf
    x[rng.random((6, 6)) < 0.2] = -np.inf
    ct = rng.standard_normal((4, 4))
    want_y, want_g = reference(x, ct, "max", 3, s=2, p=1, ceil_mode=True)
    got_y, got_g = ours(x, ct, "max", 3, s=2, p=1, ceil_mode=True)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-6)


def test_max_pool_first_maximum_keeps_its_sign_of_zero():
    """-0.0 comes first and 0.0 is not larger, so the output is -0.0."""
    y = max_pool2d(one_image([[-0.0, 0.0], [0.0, 0.0]]), 2)
    assert y.item() == 0 and np.signbit(y.item())


def test_max_pool_window_missing_the_input_gives_minus_infinity():
    """H=W=2, k=2, dilation 3, padding 1: the one window reads rows -1 and 2."""
    y, g = ours(np.ones((2, 2), np.float32), np.ones((1, 1)), "max", 2, s=1, p=1, d=3)
    np.testing.assert_array_equal(y, [[-np.inf]])
    np.testing.assert_array_equal(g, np.zeros((2, 2)))


# ---------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------


def test_max_pool_accepts_integers():
    x = jnp.asarray(-X44, jnp.int32)[None, :, :, None]
    y = max_pool2d(x, 3, stride=1, padding=1)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(plane(y)[0], [0, 0, -1, -2])


def test_avg_pool_of_int64_rounds_toward_zero():
    """PyTorch averages int64 with C++ integer division: -10 / 4 -> -2."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.array([[-1, -2], [-3, -4]], np.int64))[None, :, :, None]
        assert avg_pool2d(x, 2).dtype == jnp.int64
        assert avg_pool2d(x, 2).item() == -2
        assert avg_pool2d(x, 2, divisor_override=-3).item() == 3


def test_avg_pool_keeps_half_precision_dtype():
    x = one_image(X44).astype(jnp.bfloat16)
    y = avg_pool2d(x, 2)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        plane(y).astype(np.float32), [[2.5, 4.5], [10.5, 12.5]]
    )


# ---------------------------------------------------------------------------
# Errors: every configuration PyTorch rejects
# ---------------------------------------------------------------------------

IMG = jnp.ones((1, 4, 4, 1))


@pytest.mark.parametrize(
    "pool, x, kwargs, fragment",
    [
        (max_pool2d, IMG, dict(kernel_size=0), "kernel_size must be positive"),
        (avg_pool2d, IMG, dict(kernel_size=(2, -1)), "kernel_size must be positive"),
        (max_pool2d, IMG, dict(kernel_size=()), "kernel_size must be a single int"),
        (avg_pool2d, IMG, dict(kernel_size=(1, 2, 3)), "kernel_size must be a single"),
        (max_pool2d, IMG, dict(kernel_size=2.0), "kernel_size must be a single int"),
        (max_pool2d, IMG, dict(kernel_size=2, stride=0), "stride must be positive"),
        (avg_pool2d, IMG, dict(kernel_size=2, stride=(1, -1)), "stride must be pos"),
        (max_pool2d, IMG, dict(kernel_size=2, stride=(1, 2, 3)), "stride must be a"),
        (max_pool2d, IMG, dict(kernel_size=2, dilation=0), "dilation must be positive"),
        (max_pool2d, IMG, dict(kernel_size=2, dilation=()), "dilation must be a"),
        (max_pool2d, IMG, dict(kernel_size=3, padding=-1), "padding must be non-neg"),
        (avg_pool2d, IMG, dict(kernel_size=2, padding=()), "padding must be a single"),
        (max_pool2d, IMG, dict(kernel_size=3, padding=2), "padding must be at most"),
        (
            max_pool2d,
            IMG,
            dict(kernel_size=2, padding=2, dilation=3),
            "padding must be at most",
        ),
        (avg_pool2d, IMG, dict(kernel_size=(4, 2), padding=(0, 2)), "padding must be"),
        (max_pool2d, IMG, dict(kernel_size=5), "output size is too small"),
        (max_pool2d, IMG, dict(kernel_size=2, dilation=4), "output size is too small"),
        (avg_pool2d, IMG, dict(kernel_size=(1, 5)), "output size is too small"),
        (avg_pool2d, IMG, dict(kernel_size=2, divisor_override=0), "divisor_override"),
        (avg_pool2d, IMG, dict(kernel_size=2, divisor_override=2.5), "divisor_overr"),
        (max_pool2d, jnp.ones((4, 4)), dict(kernel_size=2), "x must be 3-D"),
        (avg_pool2d, jnp.ones((1, 1, 4, 4, 1)), dict(kernel_size=2), "x must be 3-D"),
        (max_pool2d, jnp.ones((1, 4, 4, 0)), dict(kernel_size=2), "non-zero H, W"),
        (avg_pool2d, jnp.ones((0, 4, 1)), dict(kernel_size=2), "non-zero H, W"),
        (avg_pool2d, jnp.ones((1, 4, 4, 1), jnp.int32), dict(kernel_size=2), "dtype"),
        (max_pool2d, jnp.ones((1, 4, 4, 1), bool), dict(kernel_size=2), "dtype"),
        (avg_pool2d, jnp.ones((1, 4, 4, 1), bool), dict(kernel_size=2), "dtype"),
    ],
)
def test_rejects_what_pytorch_rejects(pool, x, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        pool(x, **kwargs)
    assert info.value.args[0].startswith(pool.__name__)


@pytest.mark.parametrize("stride", [None, (), []])
def test_empty_stride_means_kernel_size(stride):
    y = max_pool2d(one_image(X44), 2, stride=stride)
    np.testing.assert_array_equal(plane(y), [[5, 7], [13, 15]])


def test_padding_rule_ignores_dilation():
    """PyTorch allows padding <= kernel_size // 2, whatever the dilation."""
    assert max_pool2d(IMG, 2, stride=1, padding=1, dilation=3).shape == (1, 3, 3, 1)


# ---------------------------------------------------------------------------
# jit, modules, and the LeNet fast path
# ---------------------------------------------------------------------------


def test_functions_work_under_jit():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 7, 7, 3)), jnp.float32)
    for pool, kwargs in [
        (max_pool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
        (avg_pool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ]:
        jitted = jax.jit(functools.partial(pool, **kwargs))
        np.testing.assert_allclose(jitted(x), pool(x, **kwargs), rtol=1e-6)
        with_static = jax.jit(pool, static_argnames=tuple(kwargs))
        np.testing.assert_allclose(
            with_static(x, **kwargs), pool(x, **kwargs), rtol=1e-6
        )


@pytest.mark.parametrize(
    "pool, kwargs",
    [
        (max_pool2d, dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2))),
        (avg_pool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
        (avg_pool2d, dict(kernel_size=2)),
    ],
)
def test_gradients_under_jit_match_eager(pool, kwargs):
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 7, 8, 3)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(8).standard_normal(pool(x, **kwargs).shape))

    def loss(x):
        return (pool(x, **kwargs) * ct).sum()

    np.testing.assert_allclose(
        jax.jit(jax.grad(loss))(x), jax.grad(loss)(x), rtol=1e-6, atol=1e-7
    )


def test_jit_still_raises_value_error():
    with pytest.raises(ValueError, match="output size is too small"):
        jax.jit(lambda x: max_pool2d(x, 5))(IMG)


def test_modules_equal_functions_and_have_no_parameters():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6, 6, 2)), jnp.float32)
    max_layer = MaxPool2d(3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)
    avg_layer = AvgPool2d((3, 2), stride=2, padding=1, divisor_override=4)
    assert isinstance(max_layer, nnx.Module) and isinstance(avg_layer, nnx.Module)
    np.testing.assert_array_equal(
        max_layer(x), max_pool2d(x, 3, 2, 1, (1, 2), ceil_mode=True)
    )
    np.testing.assert_array_equal(
        avg_layer(x), avg_pool2d(x, (3, 2), 2, 1, divisor_override=4)
    )
    for layer in (max_layer, avg_layer):
        assert not jax.tree.leaves(nnx.state(layer, nnx.Param))


def test_modules_check_arguments_at_construction():
    with pytest.raises(ValueError, match="MaxPool2d: dilation must be positive"):
        MaxPool2d(2, dilation=0)
    with pytest.raises(ValueError, match="AvgPool2d: padding must be at most half"):
        AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match="AvgPool2d: divisor_override must not be"):
        AvgPool2d(2, divisor_override=0)
    with pytest.raises(ValueError, match="output size is too small"):
        MaxPool2d(5)(IMG)


def test_lenet_avg_pool_matches_stride_one_pooling_subsampled():
    """2x2 stride 2 (LeNet's layer) = the chapter's pool2d, every other cell."""
    x = jnp.asarray(
        np.random.default_rng(6).standard_normal((3, 28, 28, 6)), jnp.float32
    )
    y = avg_pool2d(x, 2, stride=2)
    assert y.shape == (3, 14, 14, 6)
    expected = jax.vmap(jax.vmap(lambda p: pool2d(p, 2, "avg")[::2, ::2], 0), 3, 3)(x)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    k_h=st.integers(1, 3),
    k_w=st.integers(1, 3),
    mode=st.sampled_from(["max", "avg"]),
)
def test_stride_one_no_padding_equals_pool2d(H, W, k_h, k_w, mode):
    """With stride 1 and no padding, both APIs compute the same thing."""
    if k_h > H or k_w > W:
        return
    X = jnp.arange(H * W, dtype=jnp.float32).reshape(H, W) % 5
    pool = max_pool2d if mode == "max" else avg_pool2d
    y = pool(one_image(X), (k_h, k_w), stride=1)
    np.testing.assert_allclose(plane(y), pool2d(X, (k_h, k_w), mode), rtol=1e-6)
