"""lenet_jax: the pooling and LeNet chapter of Dive into Deep Learning in JAX/Flax.

from flax import nnx
import lenet_jax

model = lenet_jax.LeNet(rngs=nnx.Rngs(0))
data = lenet_jax.load_fashion_mnist()
logits = model(data.test_images[:8])          # (8, 10)
lenet_jax.max_pool2d(x, 3, stride=2, padding=1)  # PyTorch's semantics, NHWC
"""

from lenet_jax.checkpoint import load_checkpoint, load_model, save_checkpoint
from lenet_jax.data import CLASS_NAMES, DataError, FashionMnist, load_fashion_mnist
from lenet_jax.model import LeNet, count_params, layer_shapes
from lenet_jax.pooling import AvgPool2d, MaxPool2d, avg_pool2d, max_pool2d, pool2d
from lenet_jax.training import Trainer, batch_plan, epoch_permutation

__all__ = [
    "CLASS_NAMES",
    "AvgPool2d",
    "DataError",
    "FashionMnist",
    "LeNet",
    "MaxPool2d",
    "Trainer",
    "avg_pool2d",
    "batch_plan",
    "count_params",
    "epoch_permutation",
    "layer_shapes",
    "load_checkpoint",
    "load_fashion_mnist",
    "load_model",
    "max_pool2d",
    "pool2d",
    "save_checkpoint",
]
