"""LeNet-5 as printed in the book, as a Flax NNX module.

The network, layer by layer (channels-last, so shapes are (N, H, W, C)):

    input                    (N, 28, 28, 1)
    Conv2d 1->6, 5x5, pad 2  (N, 28, 28, 6)    sigmoid
    AvgPool2d 2, stride 2    (N, 14, 14, 6)
    Conv2d 6->16, 5x5        (N, 10, 10, 16)   sigmoid
    AvgPool2d 2, stride 2    (N, 5, 5, 16)
    Flatten                  (N, 400)
    Linear 400->120          (N, 120)          sigmoid
    Linear 120->84           (N, 84)           sigmoid
    Linear 84->10            (N, 10)           logits

Initialisation follows the book's training function: every weight Xavier-uniform,
every bias uniform in +-1/sqrt(fan_in) as PyTorch draws it by default. PyTorch
flattens (C, H, W) where we flatten (H, W, C): weights converted between the two must
permute the rows of the first Linear layer (see `parity.convert`).

How the layers are computed depends on the backend, never what they compute: on
the CPU, each Conv2d + activation + AvgPool2d triple runs as one native kernel
(`lenet_jax.native`) where one serves it, else layer by layer, the convolutions in
the exact form `lenet_jax.convolution` picks; `layers()` always lists the 12 layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lenet_jax import native
from lenet_jax.convolution import conv2d
from lenet_jax.pooling import AvgPool2d, MaxPool2d

ACTIVATIONS = {"sigmoid": ("Sigmoid", jax.nn.sigmoid), "relu": ("ReLU", jax.nn.relu)}
POOLS = {"avg": ("AvgPool2d", AvgPool2d), "max": ("MaxPool2d", MaxPool2d)}
INPUT_SHAPE = (28, 28, 1)
BLOCK_STARTS = {0: "conv1", 3: "conv2"}  # where each conv block starts in layers()

# Full float32 precision: on GPUs the default lets XLA use TF32 for convolutions and
# matmuls, which would break agreement with PyTorch to 1e-5. The CPU ignores it.
PRECISION = jax.lax.Precision.HIGHEST


def torch_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias draw for Conv2d and Linear: U(-1/sqrt(fan_in), +...)."""
    bound = 1.0 / fan_in**0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _conv(in_ch: int, out_ch: int, padding: int, rngs: nnx.Rngs) -> nnx.Conv:
    """A 5x5 convolution, kernel (5, 5, in_ch, out_ch) drawn as the book draws it."""
    return nnx.Conv(
        in_ch,
        out_ch,
        kernel_size=(5, 5),
        padding=((padding, padding), (padding, padding)),
        kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=torch_bias_init(in_ch * 5 * 5),
        precision=PRECISION,
        rngs=rngs,
    )


def _linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer, kernel (in, out) drawn as the book draws it."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=torch_bias_init(in_features),
        precision=PRECISION,
        rngs=rngs,
    )


def conv_layer(conv: nnx.Conv) -> Callable[[jax.Array], jax.Array]:
    """The layer that applies conv's kernel and bias with `convolution.conv2d`.

    The parameters stay in the nnx.Conv (so checkpoints and converters see the usual
    kernel (k_h, k_w, C, O) and bias); only the computation is swapped for the form
    the backend runs fastest, which equals XLA's convolution to float rounding.
    """

    def apply(x: jax.Array) -> jax.Array:
        return conv2d(x, conv.kernel[...], conv.bias[...], conv.padding)

    return apply


def flatten(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H*W*C), in channels-last order."""
    return x.reshape(x.shape[0], -1)


class LeNet(nnx.Module):
    """The book's LeNet: two conv blocks and three dense layers, 61,706 parameters.

    Args:
      activation: "sigmoid" (the book) or "relu" (the chapter's exercise).
      pool: "avg" (the book) or "max" (the chapter's exercise).
      rngs: where the initial weights are drawn from, e.g. `nnx.Rngs(0)`.

    Call it on float images (N, 28, 28, 1) in [0, 1]; it returns logits (N, 10).
    """

    def __init__(
        self, *, activation: str = "sigmoid", pool: str = "avg", rngs: nnx.Rngs
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
        self.activation = activation
        self.pool = pool
        self.conv1 = _conv(1, 6, padding=2, rngs=rngs)
        self.conv2 = _conv(6, 16, padding=0, rngs=rngs)
        self.fc1 = _linear(16 * 5 * 5, 120, rngs=rngs)
        self.fc2 = _linear(120, 84, rngs=rngs)
        self.fc3 = _linear(84, 10, rngs=rngs)

    def layers(self) -> list[tuple[str, Callable[[jax.Array], jax.Array]]]:
        """The 12 layers in order, each named as PyTorch names the book's layer."""
        act_name, act = ACTIVATIONS[self.activation]
        pool_name, pool_cls = POOLS[self.pool]
        pool = pool_cls(kernel_size=2, stride=2)
        return [
            ("Conv2d", conv_layer(self.conv1)),
            (act_name, act),
            (pool_name, pool),
            ("Conv2d", conv_layer(self.conv2)),
            (act_name, act),
            (pool_name, pool),
            ("Flatten", flatten),
            ("Linear", self.fc1),
            (act_name, act),
            ("Linear", self.fc2),
            (act_name, act),
            ("Linear", self.fc3),
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Images (N, 28, 28, 1) float -> logits (N, 10)."""
        check_input(x)
        layers = self.layers()
        i = 0
        while i < len(layers):
            conv = getattr(self, BLOCK_STARTS[i]) if i in BLOCK_STARTS else None
            if conv is not None and native.block_available(
                x.shape,
                conv.kernel.shape,
                conv.padding,
                self.activation,
                self.pool,
                (x.dtype, conv.kernel.dtype, conv.bias.dtype),
            ):
                # Conv2d, activation and pool as one native call; see native.py.
                kernel, bias = conv.kernel[...], conv.bias[...]
                x = native.conv_block(x, kernel, bias, conv.padding, self.activation)
                i += 3
            else:
                x = layers[i][1](x)
                i += 1
        return x


def check_input(x: jax.Array) -> None:
    """Raise ValueError unless x is a float batch (N, 28, 28, 1).

    Shapes and dtypes are static under `jax.jit`, so this check works there too.
    """
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[1:] != INPUT_SHAPE:
        hint = ""
        if len(shape) == 4 and shape[1] == 1 and shape[2:] == (28, 28):
            hint = " (this looks channels-first; transpose to (N, H, W, C))"
        elif len(shape) == 3 and shape == INPUT_SHAPE:
            hint = " (add a batch axis: x[None])"
        raise ValueError(
            f"LeNet expects images of shape (N, 28, 28, 1), got {shape}{hint}"
        )
    if shape[0] == 0:
        raise ValueError("LeNet needs at least one image, got a batch of 0")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"LeNet expects floating-point images in [0, 1], got dtype {x.dtype}"
        )


def layer_shapes(model: LeNet, x: jax.Array) -> list[tuple[str, tuple[int, ...]]]:
    """The chapter's per-layer table: (layer name, output shape) for each layer.

    Shapes come from `jax.eval_shape`, so no arithmetic is done.
    """
    check_input(x)
    table = []
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    for name, layer in model.layers():
        spec = jax.eval_shape(layer, spec)
        table.append((name, tuple(spec.shape)))
    return table


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars in the model (61,706 for LeNet)."""
    params = nnx.state(model, nnx.Param)
    return sum(leaf.size for leaf in jax.tree.leaves(params))
