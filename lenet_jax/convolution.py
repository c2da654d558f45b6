"""Exact 2-D convolutions (stride 1, channels-last) in the form each backend runs best.

`conv2d(x, kernel, bias, padding)` computes what `jax.lax.conv_general_dilated` does
for NHWC images and an HWIO kernel, plus a bias, in float32:

    y[n, h, w, o] = bias[o] + sum_{i, j, c} xp[n, h + i, w + j, c] * kernel[i, j, c, o]

where xp is x zero-padded by `padding`. Which computation gives it depends on the
backend (`jax.default_backend()` when the function is traced):

- GPU and TPU: `lax.conv_general_dilated` at HIGHEST precision; cuDNN does well.
- CPU ("taps" and "band"): XLA:CPU's convolutions with few channels are 5-8x slower
  than PyTorch's, and inside a `lax.scan` their backward passes fall back to naive
  loops (see docs/performance.md). So on the CPU:

  * one input channel (LeNet's conv1), "taps": the k_h * k_w shifted copies of the
    image times one kernel tap each, summed in one fused loop. Its VJP is written by
    hand: the kernel gradient is one matrix product with a banded (Toeplitz) matrix,
    the input gradient is again a sum of shifted taps.
  * several input channels (LeNet's conv2), "band": each output row is one matrix
    product of k_h input rows, (N * H_out, k_h * W_p * C) @ (k_h * W_p * C, W_out *
    O), with a banded weight matrix built from the kernel. Autodiff turns both
    gradients into matrix products too.

Both are the same sums as the convolution (in another order, so equal to float
rounding); the band matrices only add products with exact zeros.

On the CPU, LeNet itself mostly bypasses this module: where `lenet_jax.native`
serves a block (convolution, activation and average pooling as one native kernel,
about 3x faster again), the model calls that. These forms remain the path for
max pooling, for machines without a C++ compiler, and for `native.disabled()`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PRECISION = lax.Precision.HIGHEST
METHODS = ("xla", "taps", "band")

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv_method(in_channels: int, backend: str | None = None) -> str:
    """The fastest exact method for a backend: "xla" off the CPU, else by channels."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "xla"
    return "taps" if in_channels == 1 else "band"


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    padding: Padding,
    method: str | None = None,
) -> jax.Array:
    """Stride-1 convolution plus bias: (N, H, W, C) * (k_h, k_w, C, O) -> NHWC.

    Args:
      x: images (N, H, W, C).
      kernel: (k_h, k_w, C, O), as `nnx.Conv` stores it.
      bias: (O,).
      padding: ((top, bottom), (left, right)) zeros added around each image.
      method: "xla", "taps" (C must be 1) or "band"; None picks `conv_method`.

    Returns:
      (N, H + top + bottom - k_h + 1, W + left + right - k_w + 1, O).
    """
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    method = method or conv_method(x.shape[-1])
    if method == "xla":
        return xla_conv2d(x, kernel, bias, padding)
    if method == "taps":
        if x.shape[-1] != 1:
            raise ValueError(f"method 'taps' needs 1 input channel, got {x.shape[-1]}")
        return _taps_conv(padding, x, kernel, bias)
    if method == "band":
        return band_conv2d(x, kernel, bias, padding)
    raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")


def xla_conv2d(x, kernel, bias, padding: Padding) -> jax.Array:
    """The reference: XLA's convolution at full float32 precision, plus bias."""
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=PRECISION,
    )
    return y + bias


def _pad_hw(x: jax.Array, padding: Padding) -> jax.Array:
    """Zero-pad the two spatial axes of (N, H, W, ...)."""
    pads = [(0, 0), *padding] + [(0, 0)] * (x.ndim - 3)
    return jnp.pad(x, pads)


def _band_selector(width_in: int, width_out: int, k: int) -> np.ndarray:
    """(width_in, width_out, k) with 1 where input column p = output column w + j."""
    p = np.arange(width_in)[:, None, None]
    w = np.arange(width_out)[None, :, None]
    j = np.arange(k)[None, None, :]
    return (p == w + j).astype(np.float32)


def _row_windows(xp: jax.Array, k_h: int, h_out: int) -> jax.Array:
    """(N, H_p, ...) -> (N, h_out, k_h, ...): the k_h input rows under each row."""
    return jnp.stack([xp[:, i : i + h_out] for i in range(k_h)], axis=2)


# --------------------------------------------------------------------------------------
# "band": several input channels, one matrix product per layer
# --------------------------------------------------------------------------------------


def band_matrix(kernel: jax.Array, width_in: int, width_out: int) -> jax.Array:
    """The kernel as a banded matrix (k_h * W_p * C, W_out * O).

    Entry [(i, p, c), (w, o)] is kernel[i, p - w, c, o] where 0 <= p - w < k_w, else
    zero, so that one row window of the padded input times it is one output row.
    """
    k_h, k_w, c, o = kernel.shape
    select = _band_selector(width_in, width_out, k_w)
    band = jnp.einsum("pwj,ijco->ipcwo", select, kernel, precision=PRECISION)
    return band.reshape(k_h * width_in * c, width_out * o)


def band_conv2d(x, kernel, bias, padding: Padding) -> jax.Array:
    """The convolution as (N * H_out, k_h * W_p * C) @ band_matrix; see module doc."""
    n = x.shape[0]
    k_h, k_w, c, o = kernel.shape
    xp = _pad_hw(x, padding)
    h_out, w_out = xp.shape[1] - k_h + 1, xp.shape[2] - k_w + 1
    rows = _row_windows(xp, k_h, h_out).reshape(n * h_out, -1)
    band = band_matrix(kernel, xp.shape[2], w_out)
    y = jnp.dot(rows, band, precision=PRECISION) + jnp.tile(bias, w_out)
    return y.reshape(n, h_out, w_out, o)


# --------------------------------------------------------------------------------------
# "taps": one input channel, a fused sum of shifted images, and a hand-written VJP
# --------------------------------------------------------------------------------------


def _tap_sum(xp: jax.Array, kernel: jax.Array, h_out: int, w_out: int) -> jax.Array:
    """sum_{i, j, c} xp[:, i:i+h_out, j:j+w_out, c, None] * kernel[i, j, c]: NHWO."""
    k_h, k_w = kernel.shape[:2]
    total = None
    for i in range(k_h):
        for j in range(k_w):
            window = xp[:, i : i + h_out, j : j + w_out, :, None]
            term = jnp.sum(window * kernel[i, j], axis=3)
            total = term if total is None else total + term
    return total


def _taps_forward(padding: Padding, x, kernel, bias):
    k_h, k_w = kernel.shape[:2]
    xp = _pad_hw(x, padding)
    h_out, w_out = xp.shape[1] - k_h + 1, xp.shape[2] - k_w + 1
    return bias + _tap_sum(xp, kernel, h_out, w_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _taps_conv(padding: Padding, x, kernel, bias):
    return _taps_forward(padding, x, kernel, bias)


def _taps_fwd(padding: Padding, x, kernel, bias):
    return _taps_forward(padding, x, kernel, bias), (x, kernel)


def _taps_bwd(padding: Padding, residuals, g):
    """Cotangents of (x, kernel, bias) for the output cotangent g (N, H_o, W_o, O)."""
    x, kernel = residuals
    n, h_out, w_out, o = g.shape
    k_h, k_w = kernel.shape[:2]
    xp = _pad_hw(x[..., 0], padding)  # (N, H_p, W_p)

    # Kernel: d[i, p, (w, o)] = sum_{n, h} xp[n, h + i, p] g[n, h, w, o] is one
    # matrix product over batch and rows; d_kernel[i, j, o] = sum_w d[i, w+j, w, o].
    rows = _row_windows(xp, k_h, h_out).reshape(n * h_out, -1)
    d = jnp.dot(rows.T, g.reshape(n * h_out, w_out * o), precision=PRECISION)
    d = d.reshape(k_h, xp.shape[2], w_out, o)
    select = _band_selector(xp.shape[2], w_out, k_w)
    d_kernel = jnp.einsum("pwj,ipwo->ijo", select, d, precision=PRECISION)[:, :, None]

    # Input: the transposed convolution, again as shifted taps (flipped kernel).
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # (k_h, k_w, O, 1)
    gp = _pad_hw(g, ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)))
    dxp = _tap_sum(gp, flipped, xp.shape[1], xp.shape[2])
    (top, _), (left, _) = padding
    d_x = dxp[:, top : top + x.shape[1], left : left + x.shape[2]]

    return (
        d_x.astype(x.dtype),
        d_kernel.astype(kernel.dtype),
        jnp.sum(g, axis=(0, 1, 2)),
    )


_taps_conv.defvjp(_taps_fwd, _taps_bwd)
