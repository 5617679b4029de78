"""Turn a :class:`ModelSpec` into a Flax module, parameters and a loss function.

The module is one generic :class:`SpecModel` that walks the validated layer list;
dense and conv layers are plain ``flax.linen.Dense`` / ``Conv`` submodules named
``dense_<i>`` / ``conv_<i>`` (``i`` the layer index), so DP code can recognise them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_room.models.spec import ModelSpec

__all__ = ["SpecModel", "build_model", "init_params", "make_loss_fn", "make_predict_fn"]

Params = Any
Batch = Mapping[str, jax.Array]

_ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "silu": nn.silu,
}


class SpecModel(nn.Module):
    """A Flax module built from a spec's canonical JSON (hashable, so a valid module attribute)."""

    spec_json: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spec = ModelSpec.from_json(self.spec_json)
        for i, layer in enumerate(spec.layers):
            kind = layer["type"]
            if kind == "dense":
                x = nn.Dense(layer["features"], name=f"dense_{i}")(x)
            elif kind == "conv":
                x = nn.Conv(
                    layer["features"],
                    kernel_size=tuple(layer["kernel"]),
                    strides=tuple(layer["stride"]),
                    padding=layer["padding"],
                    name=f"conv_{i}",
                )(x)
            elif kind == "max_pool":
                x = nn.max_pool(x, tuple(layer["window"]), strides=tuple(layer["stride"]))
            elif kind == "avg_pool":
                x = nn.avg_pool(x, tuple(layer["window"]), strides=tuple(layer["stride"]))
            elif kind == "flatten":
                x = x.reshape((x.shape[0], -1))
            else:
                x = _ACTIVATION_FNS[kind](x)
        return x


def build_model(spec: ModelSpec | Mapping[str, Any]) -> SpecModel:
    """The Flax module for a spec (validated first)."""
    return SpecModel(ModelSpec.from_dict(spec).to_json())


def init_params(spec: ModelSpec | Mapping[str, Any], key: jax.Array) -> Params:
    """Freshly initialised parameters for ``spec`` from PRNG ``key``."""
    spec = ModelSpec.from_dict(spec)
    dummy = jnp.zeros((1, *spec.input_shape), jnp.float32)
    return build_model(spec).init(key, dummy)["params"]


def make_loss_fn(spec: ModelSpec | Mapping[str, Any]) -> Callable[[Params, Batch], jax.Array]:
    """``loss_fn(params, batch)``: mean softmax cross-entropy over ``batch['x']``, ``batch['y']``."""
    model = build_model(spec)

    def loss_fn(params: Params, batch: Batch) -> jax.Array:
        logits = model.apply({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss_fn


def make_predict_fn(spec: ModelSpec | Mapping[str, Any]) -> Callable[[Params, jax.Array], jax.Array]:
    """``predict(params, x) -> logits``."""
    model = build_model(spec)

    def predict(params: Params, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x)

    return predict
