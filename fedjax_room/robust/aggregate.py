"""FedAvg over named site updates, and the shape check every update and global model passes.

:func:`aggregate` is the room's FedAvg (``"fedavg"``: example-weighted mean; ``"mean"``: plain mean) on a
``{site: (delta, weight)}`` mapping: the :func:`~fedjax_room.robust.aggregators.weighted_mean` rule itself, on
the updates stacked in sorted site order, the same arithmetic :class:`~fedjax_room.robust.RobustAggregation`
does in a plain (not secure) room round. Under secure aggregation the sum is the SecAgg ring's
(:mod:`fedjax_room.protocol.secure`), each site having scaled its update by its FedAvg fraction.

:func:`check_update` validates a tree against the model's (paths, shapes, float32, finite): the coordinator runs
it on every site's update, a site on every global model it is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError, ProtocolError, RoundError
from fedjax_room.tree import Tree, flatten_tree, unflatten_tree

__all__ = ["FEDAVG_KINDS", "aggregate", "check_update", "tree_digest_order"]

#: The aggregators :func:`aggregate` does: the ones that work on a sum (``robust.SECURE_AGGREGATORS``).
FEDAVG_KINDS = ("fedavg", "mean")


def tree_digest_order(tree: Mapping[str, Any]) -> list[str]:
    """The sorted leaf paths of a tree (the order every sum and digest visits them in)."""
    return sorted(flatten_tree(tree))


def check_update(delta: Mapping[str, Any], reference: Mapping[str, Any]) -> Tree:
    """Validate a tree against the model's: same paths, shapes, float32, finite values.

    Returns the tree rebuilt from numpy arrays. Raises :class:`ProtocolError` naming the first mismatch (the
    update is then dropped).
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
    """Combine ``{site: (delta, weight)}`` into one float32 delta (sites in sorted order).

    ``"fedavg"`` weights each delta by its (example-count) weight; ``"mean"`` weights all equally. The robust
    rules run in :class:`fedjax_room.robust.RobustAggregation`.
    """
    if kind not in FEDAVG_KINDS:
        raise ConfigError(f"aggregate() does {', '.join(FEDAVG_KINDS)}; robust rules: fedjax_room.robust")
    if not updates:
        raise RoundError("no updates to aggregate")
    import jax

    from fedjax_room.robust.aggregators import weighted_mean
    from fedjax_room.robust.tree import stack_updates

    sites = sorted(updates)
    weights = np.array([float(updates[s][1]) for s in sites], np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise RoundError("every update weight must be positive and finite")
    stacked, _ = stack_updates({s: updates[s][0] for s in sites})
    rule = weighted_mean(uniform=kind == "mean")
    delta, _, _ = rule.aggregate(stacked, weights, rule.init())
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(delta))
