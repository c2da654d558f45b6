"""Move LeNet weights between the book's PyTorch network and `lenet_jax.LeNet`.

The two hold the same numbers in different layouts:

    layer  PyTorch (state_dict key, shape)    ours (pure dict path, shape)
    conv1  0.weight  (6, 1, 5, 5)    OIHW     conv1/kernel (5, 5, 1, 6)    HWIO
    conv2  3.weight  (16, 6, 5, 5)   OIHW     conv2/kernel (5, 5, 6, 16)   HWIO
    fc1    7.weight  (120, 400)      out, in  fc1/kernel   (400, 120)      in, out
    fc2    9.weight  (84, 120)                fc2/kernel   (120, 84)
    fc3    11.weight (10, 84)                 fc3/kernel   (84, 10)
    each   <i>.bias  (out,)                   <name>/bias  (out,)

PyTorch flattens the (C, H, W) = (16, 5, 5) feature map where we flatten (H, W, C),
so the 400 input rows of fc1 are also permuted: torch column c*25 + h*5 + w is our
row h*80 + w*16 + c. Every step is a transpose or reshape, so a round trip returns
bit-identical arrays. The same functions convert gradients, which share the
parameters' layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from lenet_jax.model import LeNet
from parity.reference import PARAM_LAYERS, book_lenet, layer_kinds

FC1_MAP = (16, 5, 5)  # (C, H, W) of the feature map that fc1 reads


def _kernel_from_torch(name: str, weight: np.ndarray) -> np.ndarray:
    """One torch weight -> our kernel (see the module docstring for layouts)."""
    if name.startswith("conv"):
        return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if name == "fc1":
        c, h, w = FC1_MAP
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(-1, out)
    return weight.T


def _kernel_to_torch(name: str, kernel: np.ndarray) -> np.ndarray:
    """Our kernel -> one torch weight; the inverse of `_kernel_from_torch`."""
    if name.startswith("conv"):
        return kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if name == "fc1":
        c, h, w = FC1_MAP
        out = kernel.shape[1]
        return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, -1)
    return kernel.T


def params_from_torch(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> dict:
    """A LeNet state_dict (or same-keyed gradients) -> our nested pure dict.

    Args:
      tensors: {"0.weight": (6, 1, 5, 5), "0.bias": (6,), ..., "11.bias": (10,)}.

    Returns:
      {"conv1": {"kernel": (5, 5, 1, 6), "bias": (6,)}, ..., "fc3": {...}} of
      float32 numpy arrays.
    """
    params = {}
    for name, index in PARAM_LAYERS.items():
        weight = _numpy(tensors[f"{index}.weight"])
        bias = _numpy(tensors[f"{index}.bias"])
        params[name] = {
            "kernel": np.ascontiguousarray(_kernel_from_torch(name, weight)),
            "bias": bias.copy(),
        }
    return params


def params_to_torch(params: Mapping[str, Mapping]) -> dict[str, torch.Tensor]:
    """Our nested pure dict of parameters -> a LeNet state_dict of float tensors."""
    state = {}
    for name, index in PARAM_LAYERS.items():
        kernel = np.asarray(params[name]["kernel"])
        weight = np.ascontiguousarray(_kernel_to_torch(name, kernel))
        state[f"{index}.weight"] = torch.from_numpy(weight.copy())
        state[f"{index}.bias"] = torch.from_numpy(np.array(params[name]["bias"]))
    return state


def lenet_from_torch(torch_net: nn.Sequential) -> LeNet:
    """A `lenet_jax.LeNet` holding the weights of a LeNet built by `book_lenet`.

    The activation and pooling (sigmoid/relu, avg/max) are read off its layers.
    """
    activation, pool = layer_kinds(torch_net)
    model = LeNet(activation=activation, pool=pool, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    params = jax.tree.map(jnp.asarray, params_from_torch(torch_net.state_dict()))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def lenet_to_torch(model: LeNet) -> nn.Sequential:
    """The book's `nn.Sequential` LeNet holding the weights of our model."""
    net = book_lenet(model.activation, model.pool)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    net.load_state_dict(params_to_torch(params))
    return net


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)
