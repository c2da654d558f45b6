"""The book's PyTorch LeNet, its weight initialisation and its from-scratch pooling.

This is the reference everything in lenet-jax is compared with. The network is the
chapter's `nn.Sequential`, layer for layer (channels-first, shapes (N, C, H, W)):

    Conv2d(1, 6, 5, padding=2), Sigmoid, AvgPool2d(2, 2),
    Conv2d(6, 16, 5), Sigmoid, AvgPool2d(2, 2), Flatten,
    Linear(400, 120), Sigmoid, Linear(120, 84), Sigmoid, Linear(84, 10)

with ReLU and MaxPool2d as the chapter's exercises swap them in. The book's training
function initialises every Conv2d and Linear weight with `xavier_uniform_` and leaves
the biases at PyTorch's default draw; `init_book_weights_` does the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}

# Positions of the layers with parameters in the Sequential, by our module's names.
PARAM_LAYERS = {"conv1": 0, "conv2": 3, "fc1": 7, "fc2": 9, "fc3": 11}


def book_lenet(activation: str = "sigmoid", pool: str = "avg") -> nn.Sequential:
    """The chapter's LeNet as an `nn.Sequential` of 12 layers, PyTorch's default init.

    Args:
      activation: "sigmoid" (the book) or "relu".
      pool: "avg" (the book) or "max".
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    act, pool_cls = ACTIVATIONS[activation], POOLS[pool]
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        act(),
        pool_cls(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        act(),
        pool_cls(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, 10),
    )


def init_book_weights_(net: nn.Module) -> nn.Module:
    """The book's init, in place: Xavier-uniform weights for Conv2d and Linear.

    Biases keep the draw PyTorch made when the layer was built, U(+-1/sqrt(fan_in)).
    """
    for layer in net.modules():
        if type(layer) in (nn.Conv2d, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return net


def seeded_book_lenet(
    seed: int, activation: str = "sigmoid", pool: str = "avg"
) -> nn.Sequential:
    """A LeNet built and initialised as the book does, from `torch.manual_seed(seed)`.

    The draws come from a generator forked from the global one, so the global
    PyTorch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_book_weights_(book_lenet(activation, pool))


def layer_kinds(net: nn.Sequential) -> tuple[str, str]:
    """(activation, pool) of a LeNet built by `book_lenet`, read off its layers."""
    acts = {type(m) for m in net if type(m) in ACTIVATIONS.values()}
    pools = {type(m) for m in net if type(m) in POOLS.values()}
    if len(acts) != 1 or len(pools) != 1:
        raise ValueError(
            "expected one kind of activation and one kind of pooling, got "
            f"{sorted(t.__name__ for t in acts | pools)}"
        )
    (act,), (pool,) = acts, pools
    activation = next(k for k, v in ACTIVATIONS.items() if v is act)
    pool_name = next(k for k, v in POOLS.items() if v is pool)
    return activation, pool_name


def pool2d_loops(X: np.ndarray, pool_size, mode: str = "max") -> np.ndarray:
    """The chapter's from-scratch pooling: one 2-D array, stride 1, no padding.

    Args:
      X: array of shape (H, W).
      pool_size: an int p or a pair (p_h, p_w).
      mode: "max" or "avg".

    Returns:
      float32 array of shape (H - p_h + 1, W - p_w + 1); output cell (i, j) reduces
      the window X[i : i + p_h, j : j + p_w], computed one cell at a time.
    """
    p_h, p_w = (pool_size, pool_size) if np.isscalar(pool_size) else pool_size
    X = np.asarray(X, dtype=np.float32)
    out_h, out_w = X.shape[0] - p_h + 1, X.shape[1] - p_w + 1
    Y = np.zeros((out_h, out_w), dtype=np.float32)
    for i in range(out_h):
        for j in range(out_w):
            window = X[i : i + p_h, j : j + p_w]
            if mode == "max":
                Y[i, j] = window.max()
            elif mode == "avg":
                Y[i, j] = window.mean(dtype=np.float32)
            else:
                raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    return Y
