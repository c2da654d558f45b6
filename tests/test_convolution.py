"""The fast convolutions equal XLA's at full precision: values and all gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lenet_jax import convolution
from lenet_jax.model import LeNet

# (in channels, out channels, padding, height, width): LeNet's two, and odd ones.
SHAPES = [(1, 6, 2, 28, 28), (6, 16, 0, 14, 14), (1, 3, 1, 9, 7), (2, 4, 3, 6, 8)]


def _case(cin, cout, pad, h, w, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.uniform(keys[0], (3, h, w, cin))
    kernel = jax.random.normal(keys[1], (5, 5, cin, cout)) * 0.3
    bias = jax.random.normal(keys[2], (cout,))
    padding = ((pad, pad), (pad, pad))
    out_shape = (3, h + 2 * pad - 4, w + 2 * pad - 4, cout)
    cotangent = jax.random.normal(keys[3], out_shape)
    return x, kernel, bias, padding, cotangent


def _value_and_grads(method, x, kernel, bias, padding, cotangent):
    def f(x, kernel, bias):
        y = convolution.conv2d(x, kernel, bias, padding, method)
        return jnp.sum(y * cotangent), y

    grads, y = jax.grad(f, argnums=(0, 1, 2), has_aux=True)(x, kernel, bias)
    return y, grads


def _methods(cin):
    return ["band"] + (["taps"] if cin == 1 else [])


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_methods_equal_xla_conv_in_values_and_gradients(shape):
    args = _case(*shape)
    y_ref, grads_ref = _value_and_grads("xla", *args)
    for method in _methods(shape[0]):
        y, grads = jax.jit(_value_and_grads, static_argnums=(0, 4))(method, *args)
        np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5, err_msg=method)
        for name, g, g_ref in zip(
            ("x", "kernel", "bias"), grads, grads_ref, strict=True
        ):
            scale = float(jnp.abs(g_ref).max())
            np.testing.assert_allclose(
                g / scale, g_ref / scale, atol=1e-5, err_msg=f"{method} d{name}"
            )


def test_taps_gradient_inside_scan_equals_outside():
    """The hand-written VJP is what makes the scanned epoch fast; it must agree."""
    x, kernel, bias, padding, cotangent = _case(*SHAPES[0])

    def loss(kernel, x):
        y = convolution.conv2d(x, kernel, bias, padding, "taps")
        return jnp.sum(y * cotangent)

    def scanned(kernel):
        def body(k, xs):
            return k - 0.1 * jax.grad(loss)(k, xs), None

        return jax.lax.scan(body, kernel, jnp.stack([x, x]))[0]

    once = kernel - 0.1 * jax.grad(loss)(kernel, x)
    twice = once - 0.1 * jax.grad(loss)(once, x)
    np.testing.assert_allclose(jax.jit(scanned)(kernel), twice, atol=1e-5)


def test_method_is_chosen_per_backend():
    assert convolution.conv_method(1, "gpu") == "xla"
    assert convolution.conv_method(6, "tpu") == "xla"
    assert convolution.conv_method(1, "cpu") == "taps"
    assert convolution.conv_method(6, "cpu") == "band"


def test_bad_method_is_refused_with_its_name():
    x, kernel, bias, padding, _ = _case(*SHAPES[1])
    with pytest.raises(ValueError, match="'fft'"):
        convolution.conv2d(x, kernel, bias, padding, "fft")
    with pytest.raises(ValueError, match="1 input channel, got 6"):
        convolution.conv2d(x, kernel, bias, padding, "taps")


def test_lenet_logits_and_gradients_equal_the_xla_convolution_path(monkeypatch):
    """The whole model on this backend's path against the same model on lax.conv."""
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
    labels = jnp.arange(16) % 10
    graphdef, params = nnx.split(LeNet(rngs=nnx.Rngs(0)))

    def loss(p):
        logits = nnx.merge(graphdef, p)(x)
        onehot = jax.nn.one_hot(labels, 10)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    monkeypatch.setattr(convolution, "conv_method", lambda *a, **k: "xla")
    (_, ref_logits), ref_grads = jax.value_and_grad(loss, has_aux=True)(params)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    for g, g_ref in zip(
        jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(g, g_ref, atol=1e-5)
