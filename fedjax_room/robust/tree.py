"""Stacked site updates: build them, check them, and view them as one ``[n_sites, dim]`` matrix.

Every robust rule in :mod:`fedjax_room.robust` takes the round's updates as one
pytree whose leaves carry a leading *site* axis (``leaf.shape == (n_sites, ...)``);
a plain ``[n_sites, dim]`` array is the one-leaf case. :func:`stack_updates` builds
that from a list (or a ``{site: update}`` mapping, in sorted site order) and
:func:`unstack_updates` undoes it. :func:`site_matrix` ravels each site's update
into one row, which is what norm- and distance-based rules (Krum, norm bounding,
anomaly scores) need. All of these are pure JAX and trace under ``jax.jit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.errors import ConfigError, RoundError

__all__ = [
    "check_weights",
    "num_sites",
    "site_matrix",
    "site_norms",
    "stack_updates",
    "unstack_updates",
]

Updates = Any  # a pytree whose leaves have a leading site axis


def stack_updates(updates: Sequence[Any] | Mapping[str, Any]) -> tuple[Updates, tuple[str, ...] | None]:
    """Stack per-site update pytrees along a new leading axis.

    Returns ``(stacked, sites)``: ``sites`` is the sorted site names for a mapping
    (the order of the rows), ``None`` for a sequence. Every update must have the
    same tree structure and leaf shapes, else :class:`RoundError` names the first
    that differs.
    """
    sites: tuple[str, ...] | None
    if isinstance(updates, Mapping):
        names = tuple(sorted(updates))
        items = [updates[s] for s in names]
        sites = names
    else:
        sites = None
        items = list(updates)
    if not items:
        raise RoundError("no updates to stack: a round needs at least one site update")
    first: object = jax.tree_util.tree_structure(items[0])  # jaxlib ships no type for PyTreeDef
    shapes = [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(items[0])]
    for i, item in enumerate(items[1:], start=1):
        name = sites[i] if sites else f"#{i}"
        if jax.tree_util.tree_structure(item) != first:
            raise RoundError(f"update from {name} does not have the same structure as the first; drop it")
        if [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(item)] != shapes:
            raise RoundError(f"update from {name} has leaf shapes unlike the first; drop it")
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *items)
    return stacked, sites


def unstack_updates(stacked: Updates) -> list[Any]:
    """The per-site pytrees of a stacked update (inverse of :func:`stack_updates`)."""
    n = num_sites(stacked)
    return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked) for i in range(n)]


def num_sites(stacked: Updates) -> int:
    """The size of the leading site axis (the same on every leaf, else :class:`RoundError`)."""
    leaves = jax.tree_util.tree_leaves(stacked)
    if not leaves:
        raise RoundError("the stacked updates have no leaves")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise RoundError(
            "every leaf of the stacked updates must have the same leading site axis; "
            f"got leading sizes {sorted(sizes)} (stack per-site updates with stack_updates)"
        )
    n = sizes.pop()
    if n < 1:
        raise RoundError("no site updates to aggregate (the site axis is empty)")
    return n


def site_matrix(stacked: Updates) -> jax.Array:
    """Each site's update ravelled into one float32 row: ``[n_sites, dim]``."""
    leaves = jax.tree_util.tree_leaves(stacked)
    n = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(jnp.asarray(x, jnp.float32), (n, -1)) for x in leaves], axis=1)


def site_norms(stacked: Updates) -> jax.Array:
    """The global L2 norm of each site's update: ``float32[n_sites]``."""
    squares = [
        jnp.sum(jnp.reshape(jnp.asarray(x, jnp.float32), (x.shape[0], -1)) ** 2, axis=1)
        for x in jax.tree_util.tree_leaves(stacked)
    ]
    return jnp.sqrt(sum(squares[1:], squares[0]))


def check_weights(weights: Any, n: int) -> np.ndarray:
    """Validate ``weights`` for ``n`` sites (``None`` means equal weights); returns float32 ``[n]``.

    Weights must be finite and non-negative with a positive sum (a zero weight
    leaves a site out of weighted rules). Runs outside ``jit`` (raises).
    """
    if weights is None:
        return np.ones(n, np.float32)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weights must be a list of {n} numbers, got {weights!r}") from exc
    if w.shape != (n,):
        raise ConfigError(f"weights must have one entry per site ({n}), got shape {list(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError("weights must be finite and >= 0 (e.g. each site's example count)")
    if not math.isfinite(float(w.sum())) or w.sum() <= 0:
        raise RoundError("every site has weight 0: nothing to aggregate")
    return w.astype(np.float32)
