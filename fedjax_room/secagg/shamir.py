"""Shamir secret sharing over the prime field ``GF(p)``, ``p = 2**256 + 297``.

The secrets SecAgg shares are 32-byte strings (a self-mask seed and an X25519 private key), so the field
is the smallest prime field larger than ``2**256``: a secret is one field element and a share is one
field element, serialised as :data:`SHARE_BYTES` = 33 big-endian bytes. A share's x-coordinate is the
holder's client id (a positive integer below ``2**32``), never 0 (``f(0)`` is the secret).

``t``-of-``n``: :func:`split` draws a random polynomial of degree ``t - 1`` with the secret as its constant
term (coefficients from :func:`secrets.randbelow`, the OS CSPRNG) and evaluates it at each holder's id.
:func:`combine` interpolates ``f(0)`` from exactly ``t`` shares with Lagrange's formula; fewer than ``t``
shares carry no information about the secret (any value is equally consistent with them), so it refuses
with a :class:`~fedjax_room.errors.CryptoError` instead of returning a wrong answer. Lagrange weights
depend only on the set of x-coordinates, so they are cached: the server interpolates many secrets from
the same set of survivors.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from fedjax_room.errors import ConfigError, CryptoError

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "combine",
    "combine_bytes",
    "lagrange_weights",
    "share_from_bytes",
    "share_to_bytes",
    "split",
    "split_bytes",
]

PRIME = 2**256 + 297
"""The field modulus: the smallest prime above ``2**256`` (checked by the tests)."""
SECRET_BYTES = 32
SHARE_BYTES = 33
_MAX_X = 2**32


def _check_xs(xs: Iterable[int]) -> tuple[int, ...]:
    out = tuple(xs)
    for x in out:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < _MAX_X:
            raise ConfigError(f"share holders must be ids in [1, 2^32), got {x!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"share holders must be distinct, got {sorted(out)}")
    return out


def split(secret: int, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` (an int in ``[0, PRIME)``) such that any ``threshold`` recover it."""
    holders = _check_xs(xs)
    if not isinstance(threshold, int) or not 1 <= threshold <= len(holders):
        raise ConfigError(f"threshold must be in [1, {len(holders)}] for {len(holders)} holders, got {threshold!r}")
    if not 0 <= secret < PRIME:
        raise ConfigError("a Shamir secret must be a field element in [0, PRIME)")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


@lru_cache(maxsize=256)
def lagrange_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Weights ``w_k`` with ``f(0) = sum_k w_k f(x_k)`` for any polynomial of degree ``< len(xs)``."""
    weights = []
    for k, xk in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != k:
                num = num * xm % PRIME
                den = den * (xm - xk) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def combine(shares: Mapping[int, int], threshold: int) -> int:
    """Recover the secret from at least ``threshold`` shares ``{x: y}`` (uses the ``threshold`` lowest x).

    Raises:
        CryptoError: fewer than ``threshold`` shares, or a share out of range.
    """
    if len(shares) < threshold:
        raise CryptoError(
            f"cannot reconstruct a secret from {len(shares)} shares: {threshold} are needed; "
            "wait for more holders or abort the round"
        )
    xs = _check_xs(sorted(shares))[:threshold]
    ys = [shares[x] for x in xs]
    if any(not 0 <= y < PRIME for y in ys):
        raise CryptoError("a Shamir share is not a field element; the share is corrupt")
    return sum(w * y for w, y in zip(lagrange_weights(xs), ys, strict=True)) % PRIME


def share_to_bytes(y: int) -> bytes:
    """A share value as 33 big-endian bytes."""
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Parse a 33-byte share value; :class:`CryptoError` if malformed."""
    if not isinstance(data, bytes | bytearray) or len(data) != SHARE_BYTES:
        raise CryptoError(f"a Shamir share must be {SHARE_BYTES} bytes")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise CryptoError("a Shamir share is not a field element; the share is corrupt")
    return y


def split_bytes(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Share a 32-byte secret; returns ``{x: 33-byte share}``."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    return {x: share_to_bytes(y) for x, y in split(int.from_bytes(secret, "big"), threshold, xs).items()}


def combine_bytes(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Recover a 32-byte secret from ``{x: 33-byte share}``; :class:`CryptoError` if it cannot."""
    value = combine({x: share_from_bytes(s) for x, s in shares.items()}, threshold)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise CryptoError("reconstructed value is not a 32-byte secret: at least one share is corrupt")
    return value.to_bytes(SECRET_BYTES, "big")
