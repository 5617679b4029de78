"""The model builder's faster layers compute exactly what the plain Flax/lax layers compute."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_room.models import build_model, cnn, init_params
from fedjax_room.models.build import max_pool
from fedjax_room.models.conv import conv_general_dilated, uses_space_to_depth

CONV_CASES = [
    # (input shape N,*spatial,C, kernel, strides, padding)
    ((3, 28, 28, 1), (8, 8), (2, 2), ((3, 3), (3, 3))),  # the DP MNIST CNN's first layer
    ((2, 9, 8, 1), (4, 2), (2, 2), "SAME"),
    ((2, 11, 10, 2), (4, 6), (2, 3), "VALID"),  # input not a multiple of the stride: cropped
    ((2, 10, 3), (4,), (2,), ((1, 2),)),  # 1-D
    ((2, 7, 7, 3), (3, 3), (1, 1), "SAME"),  # stride 1: plain lax
    ((2, 12, 12, 8), (4, 4), (2, 2), "SAME"),  # many channels: plain lax
]


@pytest.mark.parametrize(("shape", "kernel", "strides", "padding"), CONV_CASES)
def test_conv_matches_lax_values_and_gradients(shape, kernel, strides, padding):
    nd = len(kernel)
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (*kernel, shape[-1], 5))
    numbers = jax.lax.conv_dimension_numbers(
        shape, w.shape, ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NWC", "WIO", "NWC")
    )

    def ours(x, w):
        return conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)

    def ref(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)

    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), ref(x, w).shape)
    for got, want in zip(
        jax.grad(lambda x, w: jnp.sum(ours(x, w) * g), argnums=(0, 1))(x, w),
        jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), argnums=(0, 1))(x, w),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_space_to_depth_is_taken_only_where_it_applies():
    assert uses_space_to_depth(1, (8, 8), (2, 2))
    assert not uses_space_to_depth(1, (3, 3), (2, 2))  # kernel not a multiple of the stride
    assert not uses_space_to_depth(1, (4, 4), (1, 1))  # stride 1
    assert not uses_space_to_depth(16, (4, 4), (2, 2))  # enough channels already
    assert not uses_space_to_depth(1, (4, 4), (2, 2), rhs_dilation=(2, 2))
    assert not uses_space_to_depth(1, (4, 4), (2, 2), feature_group_count=1, lhs_dilation=(2, 2))


@pytest.mark.parametrize(
    ("shape", "window", "strides"),
    [
        ((3, 14, 14, 5), (2, 2), (1, 1)),
        ((2, 13, 11, 3), (3, 2), (2, 3)),
        ((2, 9, 4), (3,), (2,)),
        ((2, 8, 8, 1), (2, 2), (2, 2)),
    ],
)
def test_max_pool_matches_flax(shape, window, strides):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties
    np.testing.assert_array_equal(
        np.asarray(max_pool(x, window, strides)), np.asarray(nn.max_pool(x, window, strides=strides))
    )
    ours = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides) ** 2))(x)
    ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides=strides) ** 2))(x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_max_pool_rejects_a_window_larger_than_the_input():
    with pytest.raises(ValueError, match="larger"):
        max_pool(jnp.zeros((1, 2, 2, 1)), (3, 3), (1, 1))


def test_spec_cnn_equals_the_plain_flax_network():
    """A spec CNN gives the same logits as the same layers written with nn.Conv / nn.max_pool."""
    spec = cnn([28, 28, 1], 10, conv=((16, 8, 2), (32, 4, 2)), dense=(32,))
    params = init_params(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    got = build_model(spec).apply({"params": params}, x)

    h = x
    for i, layer in enumerate(spec.layers):
        name = f"{layer['type']}_{i}"
        if layer["type"] == "conv":
            p = params[name]
            h = (
                jax.lax.conv_general_dilated(
                    h, p["kernel"], tuple(layer["stride"]), layer["padding"], dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                + p["bias"]
            )
        elif layer["type"] == "dense":
            h = h @ params[name]["kernel"] + params[name]["bias"]
        elif layer["type"] == "max_pool":
            h = nn.max_pool(h, tuple(layer["window"]), strides=tuple(layer["stride"]))
        elif layer["type"] == "flatten":
            h = h.reshape(h.shape[0], -1)
        else:
            h = getattr(nn, layer["type"])(h) if layer["type"] != "tanh" else jnp.tanh(h)
    np.testing.assert_allclose(np.asarray(got), np.asarray(h), rtol=1e-5, atol=1e-5)
