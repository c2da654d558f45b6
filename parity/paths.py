"""The ways our model can compute its convolution blocks, so each can be checked.

On the CPU, LeNet runs a block (convolution, activation, average pooling) as one
native kernel where `lenet_jax.native` serves it ("native"), else layer by layer as
XLA operations ("xla-ops", what GPUs and machines without a C++ compiler run).
The suite checks every path this machine can take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from lenet_jax import native

NATIVE, XLA_OPS = "native", "xla-ops"


def current_path(activation: str = "sigmoid", pool: str = "avg") -> str:
    """The path a model of this variant traced now takes."""
    served = native.block_available(
        (1, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), activation, pool
    )
    return NATIVE if served else XLA_OPS


def available_paths(activation: str = "sigmoid", pool: str = "avg") -> list[str]:
    """The paths a model of this variant can take here: "xla-ops", maybe "native"."""
    return sorted({current_path(activation, pool), XLA_OPS})


@contextlib.contextmanager
def conv_path(path: str) -> Iterator[None]:
    """Models traced inside run their blocks by `path`."""
    if path == XLA_OPS:
        with native.disabled():
            yield
    elif path == NATIVE:
        yield
    else:
        raise ValueError(f"path must be {NATIVE!r} or {XLA_OPS!r}, got {path!r}")
