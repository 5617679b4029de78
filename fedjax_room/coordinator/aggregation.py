"""Aggregating site updates and server optimisers, as pure functions over numpy trees.

A round is *aggregate -> server optimiser*: :func:`aggregate` turns the sites' model deltas into one
delta (example-weighted mean for ``"fedavg"``, plain mean for ``"mean"``), then a
:class:`ServerOptimizer` (optax style: ``init(params) -> state``,
``update(delta, state, params) -> (new_params, state)``) applies it. ``"fedavg"`` moves the model by
``server_learning_rate * delta``; ``"fedadam"`` is FedAdam (Reddi et al., 2021) with ``tau`` as the
adaptivity. Everything is float32, summed in a fixed (sorted) order, so a run replayed from a
checkpoint gives bit-identical models. States are plain trees, checkpointed with
:func:`fedjax_room.protocol.codec.pack_tree`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError, ProtocolError, RoundError
from fedjax_room.protocol.codec import Tree, flatten_tree, unflatten_tree
from fedjax_room.protocol.config import SECURE_AGGREGATORS

__all__ = ["ServerOptimizer", "aggregate", "check_update", "server_optimizer", "tree_digest_order"]


def tree_digest_order(tree: Mapping[str, Any]) -> list[str]:
    """The sorted leaf paths of a tree."""
    return sorted(flatten_tree(tree))


def check_update(delta: Mapping[str, Any], reference: Mapping[str, Any]) -> Tree:
    """Validate a site's delta against the global params: same paths, shapes, float32, finite values.

    Raises :class:`ProtocolError` naming the first mismatch (the update is then dropped).
    """
    flat, ref = flatten_tree(delta), flatten_tree(reference)
    if set(flat) != set(ref):
        missing, extra = sorted(set(ref) - set(flat)), sorted(set(flat) - set(ref))
        raise ProtocolError(f"update does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    out = {}
    for path, value in flat.items():
        arr = np.asarray(value)
        want = np.asarray(ref[path])
        if arr.shape != want.shape:
            raise ProtocolError(f"update {path!r} has shape {list(arr.shape)}, the model {list(want.shape)}")
        if arr.dtype != np.float32:
            raise ProtocolError(f"update {path!r} has dtype {arr.dtype}; updates must be float32")
        if not np.all(np.isfinite(arr)):
            raise ProtocolError(f"update {path!r} holds NaN or infinity")
        out[path] = arr
    return unflatten_tree(out)


def aggregate(updates: Mapping[str, tuple[Mapping[str, Any], float]], kind: str = "fedavg") -> Tree:
    """Combine ``{site: (delta, weight)}`` into one delta, summing in sorted site order.

    ``"fedavg"`` weights each delta by its (example-count) weight; ``"mean"`` weights all equally.
    """
    if kind not in SECURE_AGGREGATORS:  # the robust rules run in fedjax_room.robust (RobustAggregation)
        raise ConfigError(f"aggregate() does {', '.join(SECURE_AGGREGATORS)}; robust rules: fedjax_room.robust")
    if not updates:
        raise RoundError("no updates to aggregate")
    sites = sorted(updates)
    weights = np.array([float(updates[s][1]) if kind == "fedavg" else 1.0 for s in sites], np.float64)
    if not np.all(weights > 0):
        raise RoundError("every update weight must be positive")
    weights = weights / weights.sum()
    flats = [flatten_tree(updates[s][0]) for s in sites]
    out = {}
    for path in sorted(flats[0]):
        acc = np.zeros_like(np.asarray(flats[0][path], np.float64))
        for w, flat in zip(weights, flats, strict=True):
            acc += w * np.asarray(flat[path], np.float64)
        out[path] = acc.astype(np.float32)
    return unflatten_tree(out)


def _map(fn: Callable[..., np.ndarray], *trees: Mapping[str, Any]) -> Tree:
    flats = [flatten_tree(t) for t in trees]
    return unflatten_tree({p: fn(*(np.asarray(f[p]) for f in flats)) for p in sorted(flats[0])})


@dataclasses.dataclass(frozen=True)
class ServerOptimizer:
    """A pair of pure functions (optax style); states are numpy trees."""

    init: Callable[[Tree], Tree]
    update: Callable[[Tree, Tree, Tree], tuple[Tree, Tree]]


def server_optimizer(
    name: str, learning_rate: float = 1.0, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3
) -> ServerOptimizer:
    """``"fedavg"`` (params + lr * delta), ``"fedadam"`` or ``"fedyogi"`` (adaptive: ``b1``, ``b2``, ``tau``)."""
    lr = np.float32(learning_rate)
    if name == "fedavg":

        def init(params: Tree) -> Tree:
            return {"count": np.zeros((), np.int64)}

        def update(delta: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
            new = _map(lambda p, d: (p + lr * d).astype(np.float32), params, delta)
            return new, {"count": np.asarray(state["count"]) + 1}

        return ServerOptimizer(init, update)
    if name in ("fedadam", "fedyogi"):
        f1, f2, ftau = np.float32(b1), np.float32(b2), np.float32(tau)

        def second(v_: np.ndarray, d: np.ndarray) -> np.ndarray:
            if name == "fedadam":
                return (f2 * v_ + (1 - f2) * d * d).astype(np.float32)
            return (v_ - (1 - f2) * d * d * np.sign(v_ - d * d)).astype(np.float32)  # Yogi

        def init(params: Tree) -> Tree:
            zeros = _map(lambda p: np.zeros_like(p, np.float32), params)
            return {"count": np.zeros((), np.int64), "m": zeros, "v": _map(lambda p: np.zeros_like(p), zeros)}

        def update(delta: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
            m = _map(lambda m_, d: (f1 * m_ + (1 - f1) * d).astype(np.float32), state["m"], delta)
            v = _map(second, state["v"], delta)
            new = _map(lambda p, m_, v_: (p + lr * m_ / (np.sqrt(v_) + ftau)).astype(np.float32), params, m, v)
            return new, {"count": np.asarray(state["count"]) + 1, "m": m, "v": v}

        return ServerOptimizer(init, update)
    raise ConfigError(f"unknown server optimizer {name!r}; choose fedavg, fedadam or fedyogi")
