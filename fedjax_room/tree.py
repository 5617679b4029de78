"""Parameter trees as plain nested dicts of arrays, and their flat ``{"a/b": leaf}`` view.

The one pure helper every layer shares (the wire codec, the robust layer's aggregation and server optimiser, the
coordinator's store): no JAX, no I/O. :func:`flatten_tree` walks keys in insertion order; anything that must be
deterministic (sums, digests) iterates ``sorted(flat)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedjax_room.errors import ProtocolError

__all__ = ["MAX_TREE_DEPTH", "Tree", "flatten_tree", "unflatten_tree"]

#: Deepest nesting of a tree path (and of a decoded frame, :mod:`fedjax_room.protocol.codec`).
MAX_TREE_DEPTH = 32
Tree = dict[str, Any]


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a/b": leaf}`` for a nested mapping ``{"a": {"b": leaf}}``. Keys must be non-empty strings without '/'."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ProtocolError(f"tree key {key!r} must be a non-empty string without '/'")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten_tree(flat: Mapping[str, Any]) -> Tree:
    """Inverse of :func:`flatten_tree`; conflicting paths raise :class:`ProtocolError`."""
    tree: Tree = {}
    for path in sorted(flat):
        parts = path.split("/")
        if not all(parts) or len(parts) > MAX_TREE_DEPTH:
            raise ProtocolError(f"bad tree path {path!r}")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ProtocolError(f"tree path {path!r} conflicts with a leaf at {part!r}")
            node = child
        if parts[-1] in node:
            raise ProtocolError(f"tree path {path!r} conflicts with another path")
        node[parts[-1]] = flat[path]
    return tree
