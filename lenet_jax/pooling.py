"""Pooling layers in JAX, exact against PyTorch.

What pooling is
---------------
A pooling layer slides a small window over each channel of a feature map and
summarises the values under the window by one number: the largest (max pooling)
or the mean (average pooling). Unlike a convolution it has no parameters, and it
never mixes channels: a (N, H, W, C) input gives a (N, H', W', C) output, each
channel pooled on its own. Pooling makes a network less sensitive to exactly where
a feature sits, and with a stride larger than one it also shrinks the feature map,
so later layers see a wider part of the image for the same cost.

This module holds two versions:

* ``pool2d`` is the chapter's from-scratch pooling of one 2-D array, stride 1 and
  no padding: the idea with nothing around it.
* ``max_pool2d`` / ``avg_pool2d`` and the Flax NNX modules ``MaxPool2d`` /
  ``AvgPool2d`` mirror ``torch.nn.functional.max_pool2d`` / ``avg_pool2d``:
  same arguments, same defaults, same values and gradients, and a ``ValueError``
  wherever PyTorch refuses a configuration.

Layout
------
JAX and XLA favour channels-last, so our inputs are (N, H, W, C), or (H, W, C)
without a batch axis. PyTorch's are (N, C, H, W); to compare, transpose ours with
``x.transpose(0, 3, 1, 2)``. Every size argument (``kernel_size``, ``stride``,
``padding``, ``dilation``) is an int, used for both height and width, or a pair
``(h, w)``.

PyTorch's rules, which we follow
--------------------------------
* ``stride`` defaults to ``kernel_size`` (``None`` or an empty tuple).
* Padding adds ``padding`` cells on each side; it may be at most half the window,
  ``padding <= kernel_size // 2``, in each dimension (dilation does not relax it).
* Output size along one axis of length ``L``, with kernel ``k``, stride ``s``,
  padding ``p`` and dilation ``d``::

      out = floor((L + 2p - d*(k - 1) - 1) / s) + 1     # ceil with ceil_mode

  and in ceil mode the last window must still start inside the input or its left
  padding: if ``(out - 1) * s >= L + p`` then ``out -= 1``. An output smaller than
  1x1 is an error.
* Max pooling pads with -inf, so padding is never the maximum. Its gradient goes
  to one element per window: the first maximal element in row-major window order,
  or, if the window holds a NaN, to its last NaN (the output is then NaN).
  ``jax.lax.reduce_window`` routes NaN gradients differently, so we run PyTorch's
  scan of the window ourselves: one ``jnp.where`` per window cell, each over all
  windows at once. With dilation a window can miss the input altogether; it gives
  -inf (the dtype's minimum for integers) and no gradient, where PyTorch writes its
  gradient out of bounds.
* Average pooling pads with zeros and divides the window sum by
  ``divisor_override`` if given; else, with ``count_include_pad``, by the window
  size clipped to the padded input (a ceil-mode window that runs past the right
  padding counts only up to it); else by the number of real elements in the
  window.
* Max pooling takes floating and integer inputs; average pooling takes floating
  inputs and int64 (summed with wrap-around, divided rounding toward zero), as
  PyTorch does on CPU.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

__all__ = [
    "AvgPool2d",
    "MaxPool2d",
    "avg_pool2d",
    "max_pool2d",
    "pool2d",
]

IntOrPair = int | Sequence[int]


# ---------------------------------------------------------------------------
# The chapter's pooling, from scratch
# ---------------------------------------------------------------------------


def pool2d(X: jax.Array, pool_size: IntOrPair, mode: str = "max") -> jax.Array:
    """Pools a 2-D array with a (p_h, p_w) window, stride 1 and no padding.

    Args:
      X: array of shape (H, W).
      pool_size: ``p`` for a square window or a pair ``(p_h, p_w)``; each at least
        1 and no larger than the matching side of ``X``.
      mode: ``"max"`` for the largest value under the window, ``"avg"`` for the
        mean.

    Returns:
      Array of shape (H - p_h + 1, W - p_w + 1).

    Rather than looping over output cells, we loop over the p_h * p_w offsets of
    the window: the slice of ``X`` shifted by (i, j) holds, for every output cell
    at once, the value that sits at offset (i, j) of its window. Reducing the
    stacked slices gives the whole output. Under ``mode="max"`` a tie shares the
    gradient equally between the tied elements (``jnp.max``'s rule).
    """
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"pool2d: X must be 2-D (H, W), got shape {X.shape}")
    if mode not in ("max", "avg"):
        raise ValueError(f"pool2d: mode must be 'max' or 'avg', got {mode!r}")
    p_h, p_w = _pair(pool_size, "pool_size", "pool2d")
    if p_h < 1 or p_w < 1:
        raise ValueError(f"pool2d: pool_size must be positive, got {(p_h, p_w)}")
    H, W = X.shape
    if H == 0 or W == 0:
        raise ValueError(f"pool2d: X of shape {(H, W)} is empty, nothing to pool")
    if p_h > H or p_w > W:
        raise ValueError(
            f"pool2d: pool_size {(p_h, p_w)} is larger than X of shape {(H, W)}"
        )

    out_h, out_w = H - p_h + 1, W - p_w + 1
    shifted = [X[i : i + out_h, j : j + out_w] for i in range(p_h) for j in range(p_w)]
    stacked = jnp.stack(shifted)  # (p_h * p_w, out_h, out_w)
    if mode == "max":
        return stacked.max(axis=0)
    return stacked.sum(axis=0) / (p_h * p_w)


# ---------------------------------------------------------------------------
# Argument checks, shared by the functions and the modules
# ---------------------------------------------------------------------------


class _Config(NamedTuple):
    """A pooling configuration with every size as an (h, w) pair of ints."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(value, name: str, fn: str) -> tuple[int, int]:
    """Reads an int or a sequence of one or two ints as an (h, w) pair."""
    if _is_int(value):
        return int(value), int(value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) in (1, 2)
        and all(_is_int(v) for v in value)
    ):
        h, w = value[0], value[-1]
        return int(h), int(w)
    raise ValueError(
        f"{fn}: {name} must be a single int or a tuple of two ints, got {value!r}"
    )


def _is_default(stride) -> bool:
    return stride is None or (
        isinstance(stride, Sequence) and not isinstance(stride, str) and not stride
    )


def _check_config(
    fn: str,
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair = 1,
    divisor_override: int | None = None,
) -> _Config:
    """Checks the arguments that do not depend on the input, in PyTorch's terms."""
    kernel = _pair(kernel_size, "kernel_size", fn)
    stride_hw = kernel if _is_default(stride) else _pair(stride, "stride", fn)
    pad = _pair(padding, "padding", fn)
    dil = _pair(dilation, "dilation", fn)

    if min(kernel) < 1:
        raise ValueError(f"{fn}: kernel_size must be positive, got {kernel_size!r}")
    if min(stride_hw) < 1:
        raise ValueError(f"{fn}: stride must be positive, got {stride!r}")
    if min(dil) < 1:
        raise ValueError(f"{fn}: dilation must be positive, got {dilation!r}")
    if min(pad) < 0:
        raise ValueError(f"{fn}: padding must be non-negative, got {padding!r}")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"{fn}: padding must be at most half of kernel_size "
            f"(padding <= kernel_size // 2 in each dimension), got "
            f"padding={padding!r}, kernel_size={kernel_size!r}"
        )
    if divisor_override is not None:
        if not _is_int(divisor_override):
            raise ValueError(
                f"{fn}: divisor_override must be an int or None, "
                f"got {divisor_override!r}"
            )
        if divisor_override == 0:
            raise ValueError(f"{fn}: divisor_override must not be zero, got 0")
    return _Config(kernel, stride_hw, pad, dil)


def _out_size(length: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's output length along one axis (see the module docstring)."""
    span = length + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= length + p:
        out -= 1
    return out


def _check_input(fn: str, x: jax.Array, cfg: _Config, ceil_mode: bool):
    """Checks x against the configuration; returns (out_h, out_w)."""
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{fn}: x must be 3-D (H, W, C) or 4-D (N, H, W, C), got shape {x.shape}"
        )
    if 0 in x.shape[-3:]:
        raise ValueError(
            f"{fn}: x must have non-zero H, W and C (only N may be 0), "
            f"got shape {x.shape}"
        )
    H, W = x.shape[-3], x.shape[-2]
    out_h, out_w = (
        _out_size(n, k, s, p, d, ceil_mode)
        for n, k, s, p, d in zip((H, W), *cfg, strict=True)
    )
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{fn}: output size is too small: input (H, W)={(H, W)} with "
            f"kernel_size={cfg.kernel}, stride={cfg.stride}, padding={cfg.padding}, "
            f"dilation={cfg.dilation}, ceil_mode={ceil_mode} gives output "
            f"{(out_h, out_w)}; both sides must be at least 1"
        )
    return out_h, out_w


# ---------------------------------------------------------------------------
# Shared machinery: pad, then slice out the window cells
# ---------------------------------------------------------------------------


def _pad(x: jax.Array, cfg: _Config, out_hw, value) -> jax.Array:
    """Pads (N, H, W, C) so that exactly out_hw windows fit.

    The left side gets ``padding``; the right side gets what the last window
    needs, which may be more than ``padding`` in ceil mode, or negative (a crop)
    when the windows stop short of the end.
    """
    config = [(0, 0, 0)]
    for n, k, s, p, d, out in zip(x.shape[1:3], *cfg, out_hw, strict=True):
        needed = (out - 1) * s + d * (k - 1) + 1
        config.append((p, needed - n - p, 0))
    config.append((0, 0, 0))
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _window_cells(xp: jax.Array, cfg: _Config, out_hw) -> list[jax.Array]:
    """The window cells of a padded (N, Hp, Wp, C) array, one array per offset.

    Returns k_h * k_w arrays of shape (N, out_h, out_w, C); entry i * k_w + j
    holds the cell at offset (i, j) of every window (a strided, dilated slice).
    Row-major, the order in which PyTorch scans a window.
    """
    (k_h, k_w), (s_h, s_w), _, (d_h, d_w) = cfg
    out_h, out_w = out_hw
    N, _, _, C = xp.shape
    cells = []
    for i in range(k_h):
        for j in range(k_w):
            start = (0, i * d_h, j * d_w, 0)
            limit = (
                N,
                i * d_h + (out_h - 1) * s_h + 1,
                j * d_w + (out_w - 1) * s_w + 1,
                C,
            )
            cells.append(lax.slice(xp, start, limit, (1, s_h, s_w, 1)))
    return cells


def _inside(length: int, k: int, s: int, p: int, d: int, out: int) -> np.ndarray:
    """(out, k) booleans: is cell i of window o inside the unpadded axis?"""
    pos = np.arange(out)[:, None] * s - p + np.arange(k)[None, :] * d
    return (pos >= 0) & (pos < length)


def _batched(fn, x: jax.Array) -> jax.Array:
    """Applies fn, written for (N, H, W, C), to a 3-D or 4-D x."""
    if x.ndim == 3:
        return fn(x[None])[0]
    return fn(x)


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


def max_pool2d(
    x: jax.Array,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> jax.Array:
    """2-D max pooling, as ``torch.nn.functional.max_pool2d`` on channels-last data.

    Args:
      x: array of shape (N, H, W, C) or (H, W, C); floating or integer.
      kernel_size: window size, an int or an (h, w) pair.
      stride: step between windows; None (or ``()``) means ``kernel_size``.
      padding: -inf cells added on each side, at most ``kernel_size // 2``.
      dilation: spacing between the cells of a window.
      ceil_mode: round the output size up instead of down.

    Returns:
      Array of shape (N, H_out, W_out, C) (or (H_out, W_out, C)), same dtype as x.

    Raises:
      ValueError: for every configuration PyTorch rejects, naming the argument.

    Each output is the window cell chosen by PyTorch's scan: the first maximal
    cell in row-major order, or the last NaN if the window holds one. Its value is
    the output and its position receives the gradient.
    """
    fn = "max_pool2d"
    cfg = _check_config(fn, kernel_size, stride, padding, dilation)
    x = jnp.asarray(x)
    _check_dtype(fn, x, integers=True)
    out_hw = _check_input(fn, x, cfg, ceil_mode)
    return _batched(lambda x4: _max_pool(x4, cfg, out_hw), x)


# Compiled as one program per configuration: called outside jit, a pooling runs
# as a single XLA computation rather than one dispatch per operation.
@functools.partial(jax.jit, static_argnames=("cfg", "out_hw"))
def _max_pool(x: jax.Array, cfg: _Config, out_hw) -> jax.Array:
    """Max pooling of a checked (N, H, W, C) array; see ``max_pool2d``.

    Runs PyTorch's scan of a window, for all windows at once: visit the cells in
    row-major order and keep a cell if it is the first real (non-padding) cell, is
    larger than the best so far, or is NaN. The kept cell gives the value, and,
    since each step is a ``jnp.where``, it alone receives the gradient.
    """
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    lowest = -jnp.inf if floating else jnp.iinfo(x.dtype).min
    cells = _window_cells(_pad(x, cfg, out_hw, lowest), cfg, out_hw)

    # Static masks from the shapes: is cell (i, j) of a window real input, and is
    # it the window's first real cell? in_h is (out_h, k_h), in_w is (out_w, k_w).
    in_h, in_w = (
        _inside(n, k, s, p, d, out)
        for n, k, s, p, d, out in zip(x.shape[1:3], *cfg, out_hw, strict=True)
    )
    first_h, first_w = in_h.argmax(axis=1), in_w.argmax(axis=1)
    k_h, k_w = cfg.kernel

    # A window with no real cell (possible with dilation) keeps `lowest`, as in
    # PyTorch, and passes no gradient.
    best = jnp.full(cells[0].shape, lowest, x.dtype)
    for i in range(k_h):
        for j in range(k_w):
            cell = cells[i * k_w + j]
            real = in_h[:, None, i, None] & in_w[None, :, j, None]  # (out_h, out_w, 1)
            first = real & (first_h == i)[:, None, None] & (first_w == j)[None, :, None]
            wins = cell > best
            if floating:
                wins = wins | jnp.isnan(cell)
            best = jnp.where(first | (real & wins), cell, best)
    return best


# ---------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------


def avg_pool2d(
    x: jax.Array,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> jax.Array:
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``, channels-last.

    Args:
      x: array of shape (N, H, W, C) or (H, W, C); floating, or int64 as in
        PyTorch (integer division, rounding toward zero).
      kernel_size: window size, an int or an (h, w) pair.
      stride: step between windows; None (or ``()``) means ``kernel_size``.
      padding: zero cells added on each side, at most ``kernel_size // 2``.
      ceil_mode: round the output size up instead of down.
      count_include_pad: count padding cells in the divisor.
      divisor_override: if given (non-zero), divide every window sum by it.

    Returns:
      Array of shape (N, H_out, W_out, C) (or (H_out, W_out, C)), same dtype as x.

    Raises:
      ValueError: for every configuration PyTorch rejects, naming the argument.
    """
    fn = "avg_pool2d"
    cfg = _check_config(fn, kernel_size, stride, padding, 1, divisor_override)
    x = jnp.asarray(x)
    _check_dtype(fn, x, integers=False)
    out_hw = _check_input(fn, x, cfg, ceil_mode)
    return _batched(
        lambda x4: _avg_pool(
            x4, cfg, out_hw, bool(count_include_pad), divisor_override
        ),
        x,
    )


def _avg_divisor(
    in_hw, cfg: _Config, out_hw, count_include_pad: bool, divisor_override
) -> np.ndarray:
    """The divisor of every output cell, shape (out_h, out_w, 1), from shapes."""
    if divisor_override is not None:
        return np.full((*out_hw, 1), divisor_override, dtype=np.int64)
    counts = []
    sizes = zip(in_hw, cfg.kernel, cfg.stride, cfg.padding, out_hw, strict=True)
    for n, k, s, p, out in sizes:
        start = np.arange(out) * s - p
        end = np.minimum(start + k, n + p)  # PyTorch clips at the right padding
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        counts.append(end - start)
    count_h, count_w = counts
    return (count_h[:, None] * count_w[None, :])[..., None]


@functools.partial(
    jax.jit, static_argnames=("cfg", "out_hw", "count_include_pad", "divisor_override")
)
def _avg_pool(
    x: jax.Array, cfg: _Config, out_hw, count_include_pad: bool, divisor_override
) -> jax.Array:
    """Average pooling of a checked (N, H, W, C) array; see ``avg_pool2d``.

    Sums the window cells of the zero-padded input and divides by the divisor
    that PyTorch's rules give each window.
    """
    divisor = _avg_divisor(
        x.shape[1:3], cfg, out_hw, count_include_pad, divisor_override
    )
    # Half-precision sums accumulate in float32, as PyTorch's do.
    acc_dtype = (
        jnp.promote_types(x.dtype, jnp.float32) if x.dtype != jnp.int64 else x.dtype
    )
    acc = x.astype(acc_dtype)

    # Add the window cells one after another in row-major order, as PyTorch's
    # loop does, so the sums agree bit for bit; padding cells add zero. XLA fuses
    # the slices and adds into one pass, as fast as a reshape for LeNet's 2x2.
    cells = _window_cells(_pad(acc, cfg, out_hw, 0), cfg, out_hw)
    sums = cells[0]
    for cell in cells[1:]:
        sums = sums + cell

    # XLA turns division by a constant into multiplication by its reciprocal, so a
    # quotient may differ from PyTorch's by one unit in the last place (never for
    # divisors that are powers of two, such as LeNet's 4).
    if jnp.issubdtype(acc_dtype, jnp.integer):
        # lax.div rounds toward zero, like C++ integer division in PyTorch.
        return lax.div(
            sums, jnp.broadcast_to(jnp.asarray(divisor, acc_dtype), sums.shape)
        )
    return (sums / jnp.asarray(divisor, acc_dtype)).astype(x.dtype)


def _check_dtype(fn: str, x: jax.Array, integers: bool) -> None:
    """Floating dtypes always pass; integers as PyTorch's CPU kernels allow."""
    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return
    if integers and jnp.issubdtype(dtype, jnp.integer):
        return
    if not integers and dtype == jnp.int64:
        return
    allowed = "a floating or integer dtype" if integers else "a floating dtype or int64"
    raise ValueError(f"{fn}: x must have {allowed} (as in PyTorch), got {dtype}")


# ---------------------------------------------------------------------------
# Flax NNX modules
# ---------------------------------------------------------------------------


class MaxPool2d(nnx.Module):
    """Max pooling layer, as ``torch.nn.MaxPool2d``; input (N, H, W, C).

    Has no parameters. The arguments are those of ``max_pool2d``, checked here
    as far as they can be without an input.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        ceil_mode: bool = False,
    ):
        cfg = _check_config("MaxPool2d", kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = cfg
        self.ceil_mode = bool(ceil_mode)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Pools x of shape (N, H, W, C) or (H, W, C)."""
        return max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
        )


class AvgPool2d(nnx.Module):
    """Average pooling layer, as ``torch.nn.AvgPool2d``; input (N, H, W, C).

    Has no parameters. The arguments are those of ``avg_pool2d``, checked here
    as far as they can be without an input.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ):
        cfg = _check_config(
            "AvgPool2d", kernel_size, stride, padding, 1, divisor_override
        )
        self.kernel_size, self.stride, self.padding, _ = cfg
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def __call__(self, x: jax.Array) -> jax.Array:
        """Pools x of shape (N, H, W, C) or (H, W, C)."""
        return avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
