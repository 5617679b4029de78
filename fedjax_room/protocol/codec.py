"""Bytes on the wire and on disk: msgpack with limits, arrays and parameter trees without pickle.

Everything the room sends or stores is msgpack (``use_bin_type``; maps with string keys only).
:func:`unpack` refuses anything over its byte limit, with more than :data:`MAX_DECODED_ITEMS` decoded
containers and elements in all (so a frame of millions of empty arrays is refused after a bounded
amount of work, not expanded into gigabytes of Python objects), nested too deep, or not well formed,
with a :class:`~fedjax_room.errors.ProtocolError` (:class:`~fedjax_room.errors.FrameTooLargeError`
for size and count).

Arrays travel as ``{"dtype": "<f4", "shape": [2, 3], "data": <raw little-endian bytes>}`` with a
dtype from :data:`DTYPES` (no objects, no strings). A parameter tree (nested ``dict`` of arrays, as
Flax produces) travels flat as ``{"dense_0/kernel": <array>, "dense_0/bias": <array>, ...}``.
:func:`pack_tree` / :func:`unpack_tree` turn a tree into the exact bytes that are signed, hashed
(``digest``) and sent as an update payload.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from fedjax_room.errors import FrameTooLargeError, ProtocolError
from fedjax_room.tree import MAX_TREE_DEPTH, Tree, flatten_tree, unflatten_tree

__all__ = [
    "DTYPES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_DECODED_ITEMS",
    "MAX_FRAME_BYTES",
    "MAX_TREE_LEAVES",
    "Tree",
    "decode_array",
    "decode_tree",
    "digest",
    "encode_array",
    "encode_tree",
    "flatten_tree",
    "pack",
    "pack_tree",
    "unflatten_tree",
    "unpack",
    "unpack_tree",
]

#: Largest frame (and stored blob) accepted by default: 64 MiB.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Largest number of elements in one array.
MAX_ARRAY_ELEMENTS = 1 << 26
#: Largest number of msgpack containers plus their elements decoded from one frame or blob (arrays travel as
#: ``bin``, so a real frame holds a few thousand; this bounds the decoder's work and memory on a hostile one).
MAX_DECODED_ITEMS = 1 << 18
#: Largest number of leaves in a parameter tree.
MAX_TREE_LEAVES = 4096
#: dtypes allowed on the wire, by their little-endian numpy string.
DTYPES: frozenset[str] = frozenset({"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "|b1"})

_MAX_DEPTH = MAX_TREE_DEPTH


def pack(obj: Any) -> bytes:
    """msgpack bytes for plain data (dict/list/str/bytes/int/float/bool/None)."""
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") from None


class _TooMany(Exception):
    pass


def unpack(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES, max_items: int = MAX_DECODED_ITEMS) -> Any:
    """Decode msgpack ``data`` (at most ``max_bytes``, at most ``max_items`` containers and elements in all);
    raise :class:`ProtocolError` when malformed (:class:`FrameTooLargeError` when over a limit)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary frame, got {type(data).__name__}; the room speaks msgpack only")
    if len(data) > max_bytes:
        raise FrameTooLargeError(
            f"frame of {len(data)} bytes is over the limit of {max_bytes} bytes; send less (a smaller model)"
        )
    seen = [0]

    def count(container: Any) -> Any:  # called once per decoded array / map, innermost first
        seen[0] += 1 + len(container)
        if seen[0] > max_items:
            raise _TooMany
        return container

    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            list_hook=count,
            object_hook=count,
            max_array_len=max_items,
            max_map_len=max_items,
        )
    except _TooMany:
        raise FrameTooLargeError(
            f"frame holds more than {max_items} decoded items (arrays, maps and their elements); send less"
        ) from None
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        if "exceeds max_" in str(exc):  # one array or map header over max_items: refused before allocating
            raise FrameTooLargeError(f"frame holds more than {max_items} decoded items ({exc}); send less") from None
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # msgpack raises assorted errors on garbage
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__})") from None
    _check_depth(obj, 0)
    return obj


def _check_depth(obj: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ProtocolError(f"frame nests deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for value in obj.values():
            if isinstance(value, dict | list):
                _check_depth(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            if isinstance(value, dict | list):
                _check_depth(value, depth + 1)


def encode_array(array: Any) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}`` for a numpy/JAX array with an allowed dtype (little-endian)."""
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    name = dtype.str
    if name not in DTYPES:
        raise ProtocolError(f"arrays of dtype {arr.dtype} cannot be sent; allowed: {sorted(DTYPES)}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return {"dtype": name, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(obj: Any, *, where: str = "array") -> np.ndarray:
    """Rebuild an array from :func:`encode_array`'s form, checking dtype, shape and byte length."""
    if not isinstance(obj, Mapping) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{where}: an array must be a map with exactly 'dtype', 'shape' and 'data'")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if dtype not in DTYPES:
        raise ProtocolError(f"{where}: dtype {dtype!r} is not allowed; allowed: {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8:
        raise ProtocolError(f"{where}: shape must be a list of at most 8 non-negative integers")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ProtocolError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise FrameTooLargeError(f"{where}: {count} elements is over the limit of {MAX_ARRAY_ELEMENTS}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: 'data' must be bytes")
    np_dtype = np.dtype(dtype)
    if len(data) != count * np_dtype.itemsize:
        raise ProtocolError(
            f"{where}: {len(data)} data bytes do not match shape {shape} of {dtype} "
            f"({count * np_dtype.itemsize} expected)"
        )
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()


def encode_tree(tree: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat ``{path: encoded array}`` for a nested parameter tree."""
    flat = flatten_tree(tree)
    if len(flat) > MAX_TREE_LEAVES:
        raise ProtocolError(f"a parameter tree of {len(flat)} leaves is over the limit of {MAX_TREE_LEAVES}")
    return {path: encode_array(leaf) for path, leaf in sorted(flat.items())}


def decode_tree(obj: Any) -> Tree:
    """Nested dict of numpy arrays from :func:`encode_tree`'s form (validated)."""
    if not isinstance(obj, Mapping):
        raise ProtocolError("a parameter tree must be a map of path -> array")
    if len(obj) > MAX_TREE_LEAVES:
        raise ProtocolError(f"a parameter tree of {len(obj)} leaves is over the limit of {MAX_TREE_LEAVES}")
    total = 0
    flat: dict[str, np.ndarray] = {}
    for path, value in obj.items():
        arr = decode_array(value, where=f"parameter {path!r}")
        total += arr.size
        if total > MAX_ARRAY_ELEMENTS:
            raise FrameTooLargeError(f"parameter tree has more than {MAX_ARRAY_ELEMENTS} elements")
        flat[path] = arr
    return unflatten_tree(flat)


def pack_tree(tree: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a parameter tree (sorted paths): what is sent, hashed and stored."""
    return pack(encode_tree(tree))


def unpack_tree(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Tree:
    """Inverse of :func:`pack_tree`."""
    return decode_tree(unpack(data, max_bytes=max_bytes))


def digest(data: bytes) -> str:
    """Hex sha256 of ``data`` (an update payload's ``digest`` in the audit logs)."""
    return hashlib.sha256(data).hexdigest()
