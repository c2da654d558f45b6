"""LeNet's structure, shapes, parameter count, initialisation and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lenet_jax.model import LeNet, count_params, layer_shapes

# The chapter's table (PyTorch, NCHW) for one 28x28 image, mapped to NHWC.
BOOK_TABLE = [
    ("Conv2d", (1, 6, 28, 28)),
    ("Sigmoid", (1, 6, 28, 28)),
    ("AvgPool2d", (1, 6, 14, 14)),
    ("Conv2d", (1, 16, 10, 10)),
    ("Sigmoid", (1, 16, 10, 10)),
    ("AvgPool2d", (1, 16, 5, 5)),
    ("Flatten", (1, 400)),
    ("Linear", (1, 120)),
    ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)),
    ("Sigmoid", (1, 84)),
    ("Linear", (1, 10)),
]


def nchw_to_nhwc(shape):
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def test_layer_table_matches_the_book():
    model = LeNet(rngs=nnx.Rngs(0))
    table = layer_shapes(model, jnp.zeros((1, 28, 28, 1)))
    assert table == [(name, nchw_to_nhwc(shape)) for name, shape in BOOK_TABLE]


def test_parameter_count_is_61706():
    # Weights plus biases, layer by layer: 5*5*1*6+6, 5*5*6*16+16, 400*120+120, ...
    expected = (25 * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 120 + 120)
    expected += (120 * 84 + 84) + (84 * 10 + 10)
    assert expected == 61_706
    assert count_params(LeNet(rngs=nnx.Rngs(0))) == expected


@pytest.mark.parametrize("activation,pool", [("relu", "max"), ("sigmoid", "max")])
def test_exercise_options_keep_shapes(activation, pool):
    model = LeNet(activation=activation, pool=pool, rngs=nnx.Rngs(0))
    names = [name for name, _ in layer_shapes(model, jnp.zeros((2, 28, 28, 1)))]
    assert names.count("ReLU" if activation == "relu" else "Sigmoid") == 4
    assert names.count("MaxPool2d") == 2
    assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


def test_relu_option_changes_the_function():
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    sig = LeNet(rngs=nnx.Rngs(0))(x)
    relu = LeNet(activation="relu", rngs=nnx.Rngs(0))(x)
    assert not np.allclose(sig, relu)


def test_weights_are_xavier_uniform_and_biases_as_pytorch_draws_them():
    """Every value lies within its bound, and the draws fill most of that range."""
    model = LeNet(rngs=nnx.Rngs(3))
    layers = {
        "conv1": (1 * 25, 6 * 25),
        "conv2": (6 * 25, 16 * 25),
        "fc1": (400, 120),
        "fc2": (120, 84),
        "fc3": (84, 10),
    }
    for name, (fan_in, fan_out) in layers.items():
        layer = getattr(model, name)
        kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
        w_bound = np.sqrt(6.0 / (fan_in + fan_out))
        b_bound = 1.0 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= w_bound, name
        assert np.abs(kernel).max() > 0.8 * w_bound, name
        assert np.abs(bias).max() <= b_bound, name
        # Uniform on [-b, b] has standard deviation b / sqrt(3).
        if kernel.size > 500:
            assert kernel.std() == pytest.approx(w_bound / np.sqrt(3), rel=0.1), name


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="activation.*'tanh'"):
        LeNet(activation="tanh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pool.*'min'"):
        LeNet(pool="min", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "shape,dtype,message",
    [
        ((2, 1, 28, 28), jnp.float32, r"got \(2, 1, 28, 28\).*channels-first"),
        ((2, 32, 32, 1), jnp.float32, r"got \(2, 32, 32, 1\)"),
        ((28, 28, 1), jnp.float32, r"batch axis"),
        ((2, 28, 28, 1), jnp.int32, r"dtype int32"),
        ((0, 28, 28, 1), jnp.float32, r"at least one image, got a batch of 0"),
    ],
)
def test_bad_input_names_expected_and_received(shape, dtype, message):
    model = LeNet(rngs=nnx.Rngs(0))
    x = jnp.zeros(shape, dtype)
    with pytest.raises(ValueError, match=message):
        model(x)
    graphdef, state = nnx.split(model)
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
