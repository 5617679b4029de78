"""Masks: X25519 key agreement, HKDF, ChaCha20 expansion into ring vectors; the SecAgg+ neighbour graph.

Everything here is built from ``cryptography`` primitives; nothing is hand-rolled:

* **Key agreement.** Each client holds two fresh X25519 key pairs per round: ``c`` (to encrypt shares) and
  ``s`` (for pairwise masks). :func:`pairwise_seed` runs X25519 between ``s_u`` and ``S_v`` and derives a
  32-byte seed with HKDF-SHA256 (salt: the round digest; info: a label and the two ids in increasing
  order), so ``u`` and ``v`` get the same seed and no two rounds or pairs share one.
* **Expansion.** :func:`expand_mask` turns a seed into a vector of ``length`` ring elements: HKDF turns
  the seed into a ChaCha20 key, the keystream over ``length * itemsize`` zero bytes is read as
  little-endian ``uint32`` / ``uint64`` with ``numpy.frombuffer`` (and masked to ``bits`` if the ring is
  smaller than the dtype). It runs at the speed of OpenSSL's ChaCha20 (GB/s).
* **Signs.** Client ``u`` *adds* the pairwise mask with ``v`` when ``u < v`` and *subtracts* it when
  ``u > v`` (:func:`pairwise_sign`), so the masks of every surviving pair cancel in the sum.
* **SecAgg+ graph** (Bell et al., CCS 2020). :func:`neighbour_graph` returns a k-regular Harary graph
  ``H(k, n)`` over a pseudo-random permutation of the ids: each client is linked to the ``k/2`` clients on
  either side of it on a ring. The permutation is a Fisher-Yates shuffle driven by a ChaCha20 keystream
  keyed from the public round seed, so every party derives the same graph without talking.
  :func:`default_neighbours` picks ``k = 2 * ceil(1.5 * log2(n))`` (the full graph when that is ``>= n - 1``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedjax_room.errors import ConfigError, CryptoError
from fedjax_room.secagg.encoding import ring_dtype, ring_mask

__all__ = [
    "KEY_BYTES",
    "add_mask",
    "default_neighbours",
    "expand_mask",
    "generate_keypair",
    "hkdf",
    "neighbour_graph",
    "pairwise_seed",
    "pairwise_sign",
    "shared_secret",
    "x25519_private_bytes",
    "x25519_private_from_bytes",
    "x25519_public_bytes",
]

KEY_BYTES = 32
_LABEL = b"fedjax-room/secagg/1/"
_ZERO_NONCE = bytes(16)
_CHUNK = 1 << 22  # expand at most 4 MiB of keystream at a time
_ZEROS = bytes(_CHUNK)


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def generate_keypair() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS CSPRNG)."""
    return X25519PrivateKey.generate()


def x25519_public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of an X25519 public key (of a private key's public half)."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 private key (what is Shamir-shared for dropout recovery)."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise CryptoError(f"not a valid X25519 private key: {exc}") from None


def shared_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret with a peer's 32-byte public key; :class:`CryptoError` if the key is bad."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length, or a low-order point giving an all-zero secret
        raise CryptoError(f"key agreement failed with a peer's X25519 key: {exc}") from None


def pairwise_seed(private: X25519PrivateKey, peer_public: bytes, *, context: bytes, me: int, peer: int) -> bytes:
    """The 32-byte seed of the pairwise mask between ``me`` and ``peer`` for the round ``context``."""
    lo, hi = min(me, peer), max(me, peer)
    info = _LABEL + b"pairwise-mask" + struct.pack(">II", lo, hi)
    return hkdf(shared_secret(private, peer_public), salt=context, info=info)


def pairwise_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pairwise mask with ``peer`` (``me < peer``), -1 if it subtracts it."""
    if me == peer:
        raise ConfigError("a client has no pairwise mask with itself")
    return 1 if me < peer else -1


def _keystream_cipher(seed: bytes, purpose: bytes) -> CipherContext:
    if len(seed) != KEY_BYTES:
        raise ConfigError(f"mask seeds are {KEY_BYTES} bytes, got {len(seed)}")
    key = hkdf(seed, salt=b"", info=_LABEL + b"prg/" + purpose)
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()


def expand_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """The mask ``PRG(seed)``: ``length`` ring elements mod ``2**bits`` (uint32 or uint64)."""
    out = np.zeros(length, dtype=ring_dtype(bits))
    add_mask(out, seed, 1, bits)
    return out


def add_mask(acc: np.ndarray, seed: bytes, sign: int, bits: int) -> np.ndarray:
    """``acc += sign * PRG(seed)`` in place (mod ``2**bits``), streaming the keystream in 4 MiB chunks."""
    dtype = ring_dtype(bits)
    if acc.dtype != dtype or acc.ndim != 1:
        raise ConfigError(f"the accumulator must be a 1-D {dtype} vector")
    if sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign!r}")
    enc = _keystream_cipher(seed, b"mask")
    item = dtype.itemsize
    step = max(1, _CHUNK // item)
    buf = bytearray(min(len(acc), step) * item)
    mask = ring_mask(bits)
    for start in range(0, len(acc), step):
        stop = min(len(acc), start + step)
        view = memoryview(buf)[: (stop - start) * item]
        enc.update_into(memoryview(_ZEROS)[: len(view)], view)
        block = np.frombuffer(view, dtype=dtype)
        if mask is not None:
            block = block & dtype.type(mask)
        if sign > 0:
            np.add(acc[start:stop], block, out=acc[start:stop])
        else:
            np.subtract(acc[start:stop], block, out=acc[start:stop])
    if mask is not None:
        np.bitwise_and(acc, dtype.type(mask), out=acc)
    return acc


def default_neighbours(n: int) -> int:
    """SecAgg+ degree for ``n`` clients: ``2 * ceil(1.5 * log2 n)``, capped at ``n - 1`` (the full graph)."""
    if n < 2:
        return 0
    return min(n - 1, 2 * math.ceil(1.5 * math.log2(n)))


def _permutation(ids: Sequence[int], seed: bytes) -> list[int]:
    """Fisher-Yates shuffle of ``ids`` driven by a ChaCha20 keystream (rejection sampling, no modulo bias)."""
    enc = _keystream_cipher(hkdf(seed, salt=b"", info=_LABEL + b"graph-seed"), b"graph")
    order = list(ids)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - ((1 << 32) % bound)
        while True:
            r = int.from_bytes(enc.update(bytes(4)), "little")
            if r < limit:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def neighbour_graph(ids: Sequence[int], k: int | None, seed: bytes) -> dict[int, frozenset[int]]:
    """Each id's neighbours: all others when ``k`` is None or ``>= n - 1``, else a random Harary graph.

    An odd ``k`` below ``n - 1`` is rounded up to the next even degree (a Harary graph on a ring is
    ``k``-regular for even ``k``).
    """
    ids = list(ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ConfigError("client ids must be distinct")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ConfigError(f"the SecAgg+ degree must be a positive integer, got {k!r}")
    if k is None or k + (k % 2) >= n - 1:
        everyone = frozenset(ids)
        return {i: everyone - {i} for i in ids}
    half = (k + (k % 2)) // 2
    ring = _permutation(sorted(ids), seed)
    graph = {}
    for pos, node in enumerate(ring):
        graph[node] = frozenset(ring[(pos + d) % n] for d in range(-half, half + 1) if d != 0)
    return graph
