"""Bytes on the wire and on disk: msgpack with limits, arrays and parameter trees without pickle.

Everything the room sends or stores is msgpack (``use_bin_type``; maps with string keys only, except the
integer client ids of SecAgg messages). Before anything is decoded, :func:`scan` reads the item headers
and refuses a frame or blob with more than :data:`MAX_DECODED_ITEMS` containers and elements in all (so
a frame of millions of empty arrays is refused after a bounded amount of work, never expanded into
gigabytes of Python objects), nested deeper than 32 levels, with a key twice in one map, or not well
formed, with a :class:`~fedjax_room.errors.ProtocolError` (:class:`~fedjax_room.errors.FrameTooLargeError`
for size and count). :func:`unpack` is :func:`check_size` + :func:`scan` + msgspec's decoder; typed
messages (:mod:`fedjax_room.protocol.messages`) are decoded by msgspec straight into their classes.

Arrays travel as ``{"dtype": "<f4", "shape": [2, 3], "data": <raw little-endian bytes>}`` with a
dtype from :data:`DTYPES` (no objects, no strings). A parameter tree (nested ``dict`` of arrays, as
Flax produces) travels flat as ``{"dense_0/kernel": <array>, "dense_0/bias": <array>, ...}``.
:func:`pack_tree` / :func:`unpack_tree` turn a tree into the exact bytes that are signed, hashed
(``digest``) and sent as an update payload.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import msgpack
import msgspec
import numpy as np

from fedjax_room.errors import FrameTooLargeError, ProtocolError
from fedjax_room.tree import MAX_TREE_DEPTH, Tree, flatten_tree, unflatten_tree

__all__ = [
    "ACCOUNTING_FIELDS",
    "DTYPES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_DECODED_ITEMS",
    "MAX_FRAME_BYTES",
    "MAX_TREE_LEAVES",
    "Tree",
    "check_size",
    "decode_array",
    "decode_tree",
    "digest",
    "update_digest",
    "encode_array",
    "encode_tree",
    "flatten_tree",
    "pack",
    "pack_tree",
    "scan",
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
        data: bytes = msgpack.packb(obj, use_bin_type=True)
        return data
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") from None


# msgpack header byte -> (kind, argument): how :func:`scan` steps over the item it starts (the msgpack spec)
_INT, _SCALAR, _FIXSTR, _STR, _BIN, _FIXARRAY, _ARRAY, _FIXMAP, _MAP, _BAD = range(10)


def _header_table() -> tuple[list[int], list[int]]:
    kind, arg = [_BAD] * 256, [0] * 256
    for b in range(0x00, 0x80):
        kind[b] = _INT  # positive fixint
    for b in range(0xE0, 0x100):
        kind[b] = _INT  # negative fixint
    for b in range(0x80, 0x90):
        kind[b], arg[b] = _FIXMAP, b & 0x0F
    for b in range(0x90, 0xA0):
        kind[b], arg[b] = _FIXARRAY, b & 0x0F
    for b in range(0xA0, 0xC0):
        kind[b], arg[b] = _FIXSTR, b & 0x1F
    for b in (0xC0, 0xC2, 0xC3):
        kind[b] = _SCALAR  # nil, false, true
    for b, size in ((0xCA, 4), (0xCB, 8)):
        kind[b], arg[b] = _SCALAR, size  # floats
    for b, size in zip(range(0xCC, 0xD4), (1, 2, 4, 8, 1, 2, 4, 8), strict=True):
        kind[b], arg[b] = _INT, size  # uint8..64, int8..64
    for b, size in ((0xC4, 1), (0xC5, 2), (0xC6, 4)):
        kind[b], arg[b] = _BIN, size
    for b, size in ((0xD9, 1), (0xDA, 2), (0xDB, 4)):
        kind[b], arg[b] = _STR, size
    for b, size in ((0xDC, 2), (0xDD, 4)):
        kind[b], arg[b] = _ARRAY, size
    for b, size in ((0xDE, 2), (0xDF, 4)):
        kind[b], arg[b] = _MAP, size
    return kind, arg  # 0xc1 (never used) and the ext types (0xc7-0xc9, 0xd4-0xd8) stay _BAD


_KIND, _ARG = _header_table()


def _int_key(data: bytes, b: int, p: int, size: int) -> int:
    if size == 0:
        return b if b < 0x80 else b - 0x100
    return int.from_bytes(data[p : p + size], "big", signed=b >= 0xD0)


def scan(
    data: bytes,
    *,
    max_items: int = MAX_DECODED_ITEMS,
    max_depth: int = _MAX_DEPTH,
    int_keys: bool = False,
    counted: int = 0,
    depth: int = 0,
) -> int:
    """Check the msgpack ``data`` before anything is decoded from it, reading only item headers; return
    ``counted`` plus the number of containers and elements it holds (to bound several parts of one frame;
    ``depth``: the nesting level of ``data`` in its frame).

    Refuses (:class:`FrameTooLargeError`) more than ``max_items`` containers plus their elements in all (each
    container's count is read from its header, so one huge header is refused at once and the work is bounded
    by ``max_items``, never by the byte length), and (:class:`ProtocolError`) containers nested more than
    ``max_depth`` levels, map keys that are not strings (or bytes; or integers where ``int_keys``), a key twice
    in one map, extension types, and anything truncated, malformed or followed by trailing bytes. ``str``
    and ``bin`` payloads are stepped over, not read.
    """
    n = len(data)
    kind_of, arg_of = _KIND, _ARG
    p, items = 0, counted
    stack: list[int] = []  # items still to come in each open container (a map's keys and values both count)
    keys: list[set[Any] | None] = []  # the keys seen so far in each open map (None for an array)
    while True:
        if p >= n:
            raise ProtocolError("frame is not valid msgpack (truncated)")
        b = data[p]
        p += 1
        kind, arg = kind_of[b], arg_of[b]
        seen = keys[-1] if stack and not stack[-1] & 1 else None  # a set when this item is a map key
        if kind == _INT:
            if seen is not None:
                if not int_keys:
                    raise ProtocolError("frame has a map key that is not a string")
                key: Any = _int_key(data, b, p, arg)
                if key in seen:
                    raise ProtocolError(f"frame has the map key {key!r} twice")
                seen.add(key)
            p += arg
        elif kind == _SCALAR:
            if seen is not None:
                raise ProtocolError("frame has a map key that is not a string")
            p += arg
        elif kind in (_FIXSTR, _STR, _BIN):
            if kind != _FIXSTR:
                size, arg = arg, int.from_bytes(data[p : p + arg], "big")
                p += size
            if seen is not None:
                key = data[p : p + arg]
                if key in seen:
                    raise ProtocolError(f"frame has the map key {bytes(key)[:40]!r} twice")
                seen.add(key)
            p += arg
        elif kind == _BAD:
            what = "never used" if b == 0xC1 else "an extension type; none is accepted"
            raise ProtocolError(f"frame is not valid msgpack (byte 0x{b:02x} at {p - 1}: {what})")
        else:  # a container
            if kind in (_ARRAY, _MAP):
                size, arg = arg, int.from_bytes(data[p : p + arg], "big")
                p += size
            if seen is not None:
                raise ProtocolError("frame has a map key that is not a string")
            items += 1 + arg
            if items > max_items:
                raise FrameTooLargeError(
                    f"frame holds more than {max_items} decoded items (arrays, maps and their elements); send less"
                )
            if len(stack) + depth > max_depth:
                raise ProtocolError(f"frame nests deeper than {max_depth} levels")
            if arg:
                is_map = kind in (_MAP, _FIXMAP)
                stack.append(2 * arg if is_map else arg)
                keys.append(set() if is_map else None)
                continue
        if p > n:
            raise ProtocolError("frame is not valid msgpack (truncated)")
        while stack:  # this item is complete: so is every container it was the last item of
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
            keys.pop()
        else:
            break
    if p != n:
        raise ProtocolError(f"frame is not valid msgpack ({n - p} bytes after its end)")
    return items


def check_size(data: Any, max_bytes: int) -> None:
    """:class:`ProtocolError` unless ``data`` is bytes; :class:`FrameTooLargeError` past ``max_bytes``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary frame, got {type(data).__name__}; the room speaks msgpack only")
    if len(data) > max_bytes:
        raise FrameTooLargeError(
            f"frame of {len(data)} bytes is over the limit of {max_bytes} bytes; send less (a smaller model)"
        )


def unpack(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES, max_items: int = MAX_DECODED_ITEMS) -> Any:
    """Decode msgpack ``data`` (at most ``max_bytes``, at most ``max_items`` containers and elements in all,
    checked by :func:`scan` before anything is decoded); raise :class:`ProtocolError` when malformed
    (:class:`FrameTooLargeError` when over a limit)."""
    check_size(data, max_bytes)
    data = bytes(data)
    scan(data, max_items=max_items)
    try:
        return msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:  # invalid UTF-8 in a str, for one
        raise ProtocolError(f"frame is not valid msgpack ({exc})") from None


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


#: The fields of an ``update`` frame that :func:`update_digest` hashes when its payload is empty.
ACCOUNTING_FIELDS = ("run_id", "round", "weight", "epsilon", "ledger_epsilon", "delta", "site_epsilon")


def update_digest(update: Any) -> dict[str, str]:
    """The ``digest`` and ``digest_of`` fields of an ``update_released`` / ``update_received`` audit record.

    A plain update: the sha256 of its payload bytes (``digest_of="payload"``). Under secure aggregation the frame's
    payload is empty (the update travels masked, and ``masked_input_released`` / ``masked_input_received`` hash
    those bytes), so the digest is the sha256 of what the frame does carry, its accounting: the canonical JSON of
    :data:`ACCOUNTING_FIELDS` (``digest_of="accounting"``), the same on the site that sends it and the coordinator
    that receives it.
    """
    if update.payload:
        return {"digest": digest(update.payload), "digest_of": "payload"}
    fields = {name: getattr(update, name) for name in ACCOUNTING_FIELDS}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return {"digest": digest(text.encode()), "digest_of": "accounting"}
