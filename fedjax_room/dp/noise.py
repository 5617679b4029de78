"""The Gaussian mechanism as an optax transformation.

:func:`gaussian_noise` adds independent ``N(0, stddev^2)`` noise to every element
of every update leaf. The PRNG key is explicit and lives in the optimiser state:
each ``update`` splits it, uses one half and carries the other, so a run is
reproducible from its key and no two steps reuse noise. Privacy depends on the
key staying secret: derive it from a fresh, unpredictable seed in production
(e.g. ``jax.random.key(secrets.randbits(63))``), never from a public constant.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_room.errors import ConfigError

__all__ = ["GaussianNoiseState", "gaussian_noise"]


class GaussianNoiseState(NamedTuple):
    """State of :func:`gaussian_noise`: the PRNG key for the next update."""

    key: jax.Array


def check_key(key: Any) -> jax.Array:
    """Validate a JAX PRNG key (new-style ``jax.random.key`` or legacy ``uint32[2]``)."""
    if key is None:
        raise ConfigError("a PRNG key is required for DP noise: pass key=jax.random.key(seed) with a secret seed")
    if isinstance(key, int | float):
        raise ConfigError(f"key must be a JAX PRNG key, not the number {key!r}: pass key=jax.random.key({key!r})")
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise ConfigError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ConfigError(f"key must be a single PRNG key, got an array of keys of shape {key.shape}")
        return key
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ConfigError(
            "key must be a JAX PRNG key (jax.random.key(seed)), "
            f"got an array of shape {key.shape} and dtype {key.dtype}"
        )
    return key


def check_nonnegative(value: Any, what: str) -> float:
    """A finite float >= 0, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a non-negative number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


def gaussian_noise(stddev: float, key: jax.Array) -> optax.GradientTransformation:
    """Add ``N(0, stddev^2)`` noise to every element of every leaf of the updates.

    Args:
      stddev: the noise standard deviation (for DP-SGD: ``noise_multiplier * clip_norm``).
      key: a JAX PRNG key (required; no default seed). Kept in the state and split on each update.

    Returns:
      An ``optax.GradientTransformation``; its state is :class:`GaussianNoiseState`.
      Leaves are noised in their own dtype, which must be floating point.
    """
    stddev = check_nonnegative(stddev, "stddev")
    key = check_key(key)

    def init_fn(params: optax.Params) -> GaussianNoiseState:
        del params
        return GaussianNoiseState(key=key)

    def update_fn(
        updates: optax.Updates, state: GaussianNoiseState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, GaussianNoiseState]:
        del params
        next_key, step_key = jax.random.split(state.key)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        keys = jax.random.split(step_key, max(len(leaves), 1))
        noisy = []
        for leaf, leaf_key in zip(leaves, keys, strict=False):
            leaf = jnp.asarray(leaf)
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ConfigError(f"gaussian_noise needs floating-point updates, got a leaf of dtype {leaf.dtype}")
            noise = jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
            noisy.append(leaf + jnp.asarray(stddev, leaf.dtype) * noise)
        return jax.tree_util.tree_unflatten(treedef, noisy), GaussianNoiseState(key=next_key)

    return optax.GradientTransformation(init_fn, update_fn)
