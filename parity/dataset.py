"""Fashion-MNIST for the comparisons: loaded once per process, shared by all.

Loading takes seconds (and preparing the TFDS cache, the first time, more), so every
comparison takes the data from here rather than loading its own copy.
"""

from __future__ import annotations

import functools
import logging

from lenet_jax.data import FashionMnist, load_fashion_mnist

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def fashion_mnist() -> FashionMnist:
    """Fashion-MNIST: images (N, 28, 28, 1) float32 in [0, 1], labels int32 (N,)."""
    data = load_fashion_mnist()
    log.info("Fashion-MNIST from %s", data.source)
    return data
