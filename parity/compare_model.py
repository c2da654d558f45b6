"""The network: layer shapes, parameter counts, converters, logits and gradients.

Each function builds the book's PyTorch LeNet, moves its weights into ours with
`lenet_from_torch` where weights matter, and returns rows. PyTorch supplies every
expected value.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch import nn

from lenet_jax.model import LeNet, count_params, layer_shapes
from parity.convert import (
    lenet_from_torch,
    lenet_to_torch,
    params_from_torch,
)
from parity.dataset import fashion_mnist
from parity.paths import conv_path, current_path
from parity.reference import book_lenet, seeded_book_lenet
from parity.rows import Row, compare, exact

VARIANTS = (("sigmoid", "avg"), ("relu", "max"))  # the book's, and the exercise's
BOOK_PARAMS = 61_706
LOGIT_TOL = 1e-5
GRAD_TOL = 1e-5


def variant_name(activation: str, pool: str) -> str:
    return f"{activation}/{pool}"


def nchw_to_nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A PyTorch activation shape in our layout; 2-D shapes are the same in both."""
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    return shape


def torch_layer_shapes(net: nn.Sequential) -> list[tuple[str, tuple[int, ...]]]:
    """The chapter's table: each layer's class and output shape for (1, 1, 28, 28)."""
    x = torch.zeros(1, 1, 28, 28)
    table = []
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            table.append((type(layer).__name__, tuple(x.shape)))
    return table


def compare_layer_shapes(activation: str = "sigmoid", pool: str = "avg") -> list[Row]:
    """Our 12-row shape table against PyTorch's, NCHW mapped to NHWC."""
    variant = variant_name(activation, pool)
    theirs = torch_layer_shapes(book_lenet(activation, pool))
    model = LeNet(activation=activation, pool=pool, rngs=nnx.Rngs(0))
    ours = layer_shapes(model, jnp.zeros((1, 28, 28, 1), jnp.float32))
    rows = [exact(f"{variant}: number of layers", len(ours), len(theirs))]
    for i, ((t_name, t_shape), (o_name, o_shape)) in enumerate(
        zip(theirs, ours, strict=False), start=1
    ):
        case = f"{variant}: layer {i} {t_name} {t_shape} -> {nchw_to_nhwc(t_shape)}"
        rows.append(
            exact(case, (o_name, tuple(o_shape)), (t_name, nchw_to_nhwc(t_shape)))
        )
    return rows


def compare_param_counts() -> list[Row]:
    """Both networks hold the book's 61,706 parameters."""
    rows = []
    for activation, pool in VARIANTS:
        variant = variant_name(activation, pool)
        net = book_lenet(activation, pool)
        model = LeNet(activation=activation, pool=pool, rngs=nnx.Rngs(0))
        theirs = sum(p.numel() for p in net.parameters())
        rows.append(exact(f"{variant}: PyTorch parameters", theirs, BOOK_PARAMS))
        rows.append(exact(f"{variant}: our parameters", count_params(model), theirs))
    return rows


def compare_round_trips(seed: int = 0) -> list[Row]:
    """Converting either way and back returns bit-identical arrays."""
    rows = []
    for activation, pool in VARIANTS:
        variant = variant_name(activation, pool)
        net = seeded_book_lenet(seed, activation, pool)
        back = lenet_to_torch(lenet_from_torch(net)).state_dict()
        for key, value in net.state_dict().items():
            case = f"{variant}: torch -> ours -> torch, {key}"
            rows.append(compare(case, back[key].numpy(), value.numpy(), 0.0))

        model = LeNet(activation=activation, pool=pool, rngs=nnx.Rngs(seed))
        again = lenet_from_torch(lenet_to_torch(model))
        start = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        end = nnx.to_pure_dict(nnx.state(again, nnx.Param))
        for name, arrays in start.items():
            for kind, array in arrays.items():
                case = f"{variant}: ours -> torch -> ours, {name}.{kind}"
                rows.append(compare(case, end[name][kind], array, 0.0))
    return rows


def _torch_loss_and_grads(net: nn.Module, x: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of net on (x, y) and its gradients in our layout."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    net.zero_grad()
    loss = nn.CrossEntropyLoss()(net(xt), yt)
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    return float(loss.detach()), params_from_torch(grads)


def _our_loss_and_grads(model: LeNet, x: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of our model on (x, y) and its gradients (pure dict)."""

    def loss_fn(m):
        logits = m(jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return float(loss), nnx.to_pure_dict(grads)


def compare_forward_backward(
    activation: str = "sigmoid",
    pool: str = "avg",
    seed: int = 0,
    num_images: int = 1000,
    batch_size: int = 256,
    path: str | None = None,
) -> list[Row]:
    """Same weights: logits on real test images, loss and every gradient.

    With `path` ("native" or "xla-ops", see parity.paths), our model computes its
    convolution blocks that way, and the cases are labelled with it.

    The logits are taken on the first `num_images` test images; the loss and its
    gradients on the first `batch_size` training images and labels.
    """
    if path is not None:
        with conv_path(path):
            return compare_forward_backward(
                activation, pool, seed, num_images, batch_size
            )
    variant = f"{variant_name(activation, pool)} [{current_path(activation, pool)}]"
    data = fashion_mnist()
    net = seeded_book_lenet(seed, activation, pool)
    model = lenet_from_torch(net)

    x = data.test_images[:num_images]
    with torch.no_grad():
        expected = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    rows = [
        compare(
            f"{variant}: logits on {num_images} test images",
            np.asarray(model(jnp.asarray(x))),
            expected.numpy(),
            LOGIT_TOL,
        )
    ]

    xb, yb = data.train_images[:batch_size], data.train_labels[:batch_size]
    t_loss, t_grads = _torch_loss_and_grads(net, xb, yb)
    o_loss, o_grads = _our_loss_and_grads(model, xb, yb)
    rows.append(
        compare(
            f"{variant}: loss on {batch_size} train images", o_loss, t_loss, GRAD_TOL
        )
    )
    for name, arrays in t_grads.items():
        for kind, expected_grad in arrays.items():
            case = f"{variant}: gradient of {name}.{kind} {expected_grad.shape}"
            rows.append(compare(case, o_grads[name][kind], expected_grad, GRAD_TOL))
    return rows
