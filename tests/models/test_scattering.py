"""The scatter family: a fixed scattering transform (kymatio's) standardised per order, then a head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_room.errors import ModelSpecError
from fedjax_room.models import ModelSpec, init_params, make_predict_fn, scatter, spec_from_schema
from fedjax_room.models.scattering import DEFAULT_SCALE, DEFAULT_SHIFT, channel_orders, num_channels, transform


def _reference(images: np.ndarray, J: int, L: int, shift, scale) -> np.ndarray:
    """kymatio's NumPy frontend (a second implementation of the same transform), standardised by hand."""
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D

    coefs = ScatteringNumPy2D(J=J, shape=images.shape[1:3], L=L)(np.moveaxis(images, -1, 1))  # [n, c, K, h', w']
    orders = np.asarray(channel_orders(J, L))
    s = np.asarray(shift)[orders][:, None, None]
    k = np.asarray(scale)[orders][:, None, None]
    return ((coefs - s) / k).reshape(len(images), -1)


@pytest.mark.parametrize(("shape", "J", "L"), [((8, 8, 1), 1, 8), ((28, 28, 1), 2, 8), ((16, 16, 3), 2, 4)])
def test_the_layer_is_kymatios_transform_standardised_per_order(shape, J, L):
    rng = np.random.default_rng(0)
    images = rng.random((5, *shape), dtype=np.float32)
    layer = ModelSpec.from_dict(scatter(list(shape), 10, J=J, orientations=L).to_dict()).layers[0]
    got = np.asarray(transform(shape, layer)(jnp.asarray(images)))
    want = _reference(images, J, L, DEFAULT_SHIFT, DEFAULT_SCALE)
    assert got.shape == (5, shape[2] * num_channels(J, L) * (shape[0] >> J) * (shape[1] >> J))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert channel_orders(J, L).count(1) == J * L and len(channel_orders(J, L)) == num_channels(J, L)


def test_flat_square_pixels_are_read_as_one_channel_images_and_the_constants_are_the_specs():
    rng = np.random.default_rng(1)
    images = rng.random((4, 8, 8, 1), dtype=np.float32)
    shift, scale = [0.1, 0.0, 0.0], [0.5, 0.02, 1.0]
    spec = ModelSpec.from_dict(
        {
            "family": "scatter",
            "input_shape": [64],
            "num_classes": 10,
            "layers": [
                {"type": "scattering", "J": 1, "orientations": 8, "shift": shift, "scale": scale},
                {"type": "dense", "features": 10},
            ],
        }
    )
    got = np.asarray(transform([64], spec.layers[0])(jnp.asarray(images.reshape(4, 64))))
    np.testing.assert_allclose(got, _reference(images, 1, 8, shift, scale), rtol=1e-4, atol=1e-3)


def test_a_scatter_model_has_only_its_heads_parameters_and_predicts():
    for spec in (scatter([64], 10, J=1), scatter([28, 28, 1], 10), scatter([64], 10, J=1, hidden=[16])):
        params = init_params(spec, jax.random.key(0))
        assert sum(p.size for p in jax.tree.leaves(params)) == spec.param_count()
        assert "dense_1" in params and not any(k.startswith("scattering") for k in params)
        logits = make_predict_fn(spec)(params, jnp.zeros((2, *spec.input_shape)))
        assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert scatter([28, 28, 1], 10).param_count() == 81 * 49 * 10 + 10


def test_spec_from_schema_builds_scatter_models_for_images_only():
    digits = {"feature_shape": [64], "classes": list(range(10))}
    mnist = {"feature_shape": [28, 28, 1], "classes": list(range(10))}
    assert spec_from_schema(digits, "scatter").layers[0]["J"] == 1  # an 8 x 8 image: one scale
    assert spec_from_schema(mnist, "scatter").layers[0]["J"] == 2
    assert spec_from_schema(mnist, "scatter", J=1, hidden=[32]).output_shapes()[-1] == (10,)
    with pytest.raises(ModelSpecError, match="images or square flat pixels"):
        spec_from_schema({"feature_shape": [30], "classes": [0, 1]}, "scatter")


def _spec(layer, *, shape=(28, 28, 1), family="scatter", after=None):
    return {
        "family": family,
        "input_shape": list(shape),
        "num_classes": 10,
        "layers": [layer, *(after or []), {"type": "dense", "features": 10}],
    }


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (_spec({"type": "scattering", "J": 0}), "J must be an integer from 1 to 3"),
        (_spec({"type": "scattering", "J": 9}), "J must be an integer from 1 to 3"),
        (_spec({"type": "scattering", "J": True}), "J must be an integer"),
        (_spec({"type": "scattering", "orientations": 64}), "orientations must be an integer from 1 to 8"),
        (_spec({"type": "scattering", "scale": [1.0, 0.0, 1.0]}), "scale must hold numbers from"),
        (_spec({"type": "scattering", "scale": [1.0, 1e-30, 1.0]}), "scale must hold numbers from"),
        (_spec({"type": "scattering", "shift": [float("nan"), 0.0, 0.0]}), "finite"),
        (_spec({"type": "scattering", "shift": [1e300, 0.0, 0.0]}), "magnitude"),
        (_spec({"type": "scattering", "shift": [0.0, 0.0]}), "list of 3 numbers"),
        (_spec({"type": "scattering", "shift": "0,0,0"}), "list of 3 numbers"),
        (_spec({"type": "scattering", "code": "import os"}), "unexpected keys"),
        (_spec({"type": "scattering", "J": 2}, shape=(30, 30, 1)), "2^J = 4 divides"),
        (_spec({"type": "scattering", "J": 1}, shape=(512, 512, 1)), "at most 256"),
        (_spec({"type": "scattering", "J": 1}, shape=(256, 256, 4)), "more than the limit"),
        (_spec({"type": "scattering"}, shape=(30,)), "square flat pixels"),
        (_spec({"type": "scattering"}, family="mlp"), "not allowed in the 'mlp' family"),
        (_spec({"type": "scattering"}, family="cnn"), "not allowed in the 'cnn' family"),
        (_spec({"type": "flatten"}), "exactly one scattering layer"),
        (_spec({"type": "scattering"}, after=[{"type": "scattering"}]), "exactly one scattering layer"),
        (_spec({"type": "flatten"}, after=[{"type": "scattering"}]), "first layer"),
    ],
)
def test_hostile_scattering_layers_are_clear_errors(bad, words):
    with pytest.raises(ModelSpecError, match=words.replace("^", r"\^")):
        ModelSpec.from_dict(bad)
