"""parity: evidence that lenet-jax computes what the book's PyTorch LeNet computes.

    python -m parity            # the full comparison, report in parity-report/
    python -m parity --quick    # the reduced set for CI

The converters move weights between the two frameworks:

    from parity import lenet_from_torch, lenet_to_torch
    model = lenet_from_torch(torch_net)   # lenet_jax.LeNet with the same weights
"""

from parity.convert import lenet_from_torch, lenet_to_torch

__all__ = ["lenet_from_torch", "lenet_to_torch"]
