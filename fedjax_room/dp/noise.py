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
import numpy as np
import optax

from fedjax_room.errors import ConfigError

__all__ = ["GaussianNoiseState", "gaussian_noise", "standard_normal_like"]

_BLOCK = 1024


class GaussianNoiseState(NamedTuple):
    """State of :func:`gaussian_noise`: the PRNG key for the next update."""

    key: jax.Array


def check_key(key: object) -> jax.Array:
    """Validate a JAX PRNG key (new-style ``jax.random.key`` or legacy ``uint32[2]``)."""
    if key is None:
        raise ConfigError("a PRNG key is required for DP noise: pass key=jax.random.key(seed) with a secret seed")
    if isinstance(key, int | float):
        raise ConfigError(f"key must be a JAX PRNG key, not the number {key!r}: pass key=jax.random.key({key!r})")
    if not isinstance(key, jax.Array | np.ndarray):
        raise ConfigError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ConfigError(f"key must be a single PRNG key, got an array of keys of shape {key.shape}")
        return jnp.asarray(key)  # the key itself
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ConfigError(
            "key must be a JAX PRNG key (jax.random.key(seed)), "
            f"got an array of shape {key.shape} and dtype {key.dtype}"
        )
    return jnp.asarray(key)  # a legacy uint32[2] key as a JAX array (itself when it is one)


def check_nonnegative(value: object, what: str) -> float:
    """A finite float >= 0, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a non-negative number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {number!r}")
    return number


def standard_normal_like(key: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
    """Independent ``N(0, 1)`` arrays shaped like ``leaves``, from one draw per dtype.

    All leaves of a dtype share one flat draw (padded to a multiple of
    ``_BLOCK``), cut into pieces: one PRNG call instead of one per leaf. The draw uses
    Threefry's original counter layout (``jax.threefry_partitionable(False)``), which
    hashes one counter pair per *two* outputs; the partitionable layout, JAX's default,
    spends a whole hash per output to make sharded draws independent of the sharding,
    which a single-device update does not need. 670k normals on one core: 3.0 ms instead
    of 4.3 ms (the padding keeps XLA:CPU's multi-threaded loop on an even split).
    """
    pieces: dict[int, jax.Array] = {}
    by_dtype: dict[Any, list[int]] = {}
    for i, leaf in enumerate(leaves):
        by_dtype.setdefault(jnp.dtype(leaf.dtype), []).append(i)
    for j, (dtype, members) in enumerate(by_dtype.items()):
        sizes = [math.prod(leaves[i].shape) for i in members]
        total = sum(sizes)
        padded = max(-(-total // _BLOCK) * _BLOCK, _BLOCK)
        with jax.threefry_partitionable(False):
            flat = jax.random.normal(jax.random.fold_in(key, j), (padded,), dtype)
        offset = 0
        for i, size in zip(members, sizes, strict=True):
            pieces[i] = flat[offset : offset + size].reshape(leaves[i].shape)
            offset += size
    return [pieces[i] for i in range(len(leaves))]


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
        leaves = [jnp.asarray(leaf) for leaf in leaves]
        for leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ConfigError(f"gaussian_noise needs floating-point updates, got a leaf of dtype {leaf.dtype}")
        noises = standard_normal_like(step_key, leaves)
        noisy = [leaf + jnp.asarray(stddev, leaf.dtype) * noise for leaf, noise in zip(leaves, noises, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, noisy), GaussianNoiseState(key=next_key)

    return optax.GradientTransformation(init_fn, update_fn)
