"""Fixed-point encoding of float vectors into the ring of integers modulo ``2**bits``.

Secure aggregation adds vectors in a finite ring, so updates are first mapped to integers:

* every coordinate is clipped to the declared range ``[-clip, clip]``;
* it is multiplied by ``scale`` and rounded to the nearest integer ``q`` with ``|q| <= max_int``;
* ``q`` is stored modulo ``M = 2**bits`` (two's complement), in a ``uint32`` array for ``bits <= 32``
  and a ``uint64`` array for ``bits <= 64``; numpy's unsigned arithmetic then *is* arithmetic mod ``M``.

``max_int = floor((M/2 - 1) / max_summands)`` (capped at ``2**53``, the precision of a float64), and
``scale = max_int / clip``. Hence the sum of up to ``max_summands`` encoded vectors lies in
``[-(M/2 - 1), M/2 - 1]`` and never wraps: :meth:`FixedPointCodec.decode` lifts it back to a signed
integer and divides by ``scale``.

Error bound (per coordinate, :meth:`FixedPointCodec.error_bound`): rounding moves each encoded value by at
most ``1 / (2 * scale)``, so for ``k <= max_summands`` summands

    |decode(sum_i encode(x_i)) - sum_i clip(x_i)| <= k / (2 * scale) + k * clip * 2**-52

(the last term bounds the float64 error of ``x * scale``; it is far below the first for ``bits = 32``).
With ``bits = 32``, ``clip = 1`` and 10 summands, ``scale ~ 2.1e8`` and the bound is ``~2.3e-8``.

The ring helpers (:func:`ring_dtype`, :func:`to_signed`, :func:`from_signed`) are shared with the
masking code and with :mod:`fedjax_room.secagg.ddp`, which encodes on the integers directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError

__all__ = [
    "FixedPointCodec",
    "check_modulus_bits",
    "from_signed",
    "ring_dtype",
    "ring_mask",
    "to_signed",
]

_MAX_EXACT = 2**53  # integers up to here are exact in float64


def check_modulus_bits(bits: int) -> int:
    """Validate a ring size ``2**bits`` (``8 <= bits <= 64``) and return ``bits``."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 8 <= bits <= 64:
        raise ConfigError(f"modulus_bits must be an integer in [8, 64] (e.g. 32 or 64), got {bits!r}")
    return bits


def ring_dtype(bits: int) -> np.dtype:
    """The numpy dtype holding ring elements mod ``2**bits``: little-endian uint32 or uint64."""
    check_modulus_bits(bits)
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def ring_mask(bits: int) -> int | None:
    """The bit mask to apply after arithmetic, or ``None`` when the dtype wraps at ``2**bits`` already."""
    return None if bits in (32, 64) else (1 << bits) - 1


def _reduce(values: np.ndarray, bits: int) -> np.ndarray:
    mask = ring_mask(bits)
    if mask is not None:
        np.bitwise_and(values, values.dtype.type(mask), out=values)
    return values


def to_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Lift ring elements to signed int64 in ``[-2**(bits-1), 2**(bits-1))`` (two's complement)."""
    dtype = ring_dtype(bits)
    values = np.asarray(values)
    if values.dtype != dtype:
        raise ConfigError(f"expected a {dtype} ring vector for modulus 2^{bits}, got {values.dtype}")
    if bits == 64:
        return values.view(np.int64).copy()
    signed = values.astype(np.int64)
    half = 1 << (bits - 1)
    signed[signed >= half] -= 1 << bits
    return signed


def from_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Store signed integers modulo ``2**bits`` in the ring dtype."""
    dtype = ring_dtype(bits)
    values = np.asarray(values, dtype=np.int64)
    out = values.astype(np.uint64) if bits > 32 else (values & 0xFFFFFFFF).astype(dtype)
    return _reduce(out.astype(dtype, copy=False), bits)


@dataclass(frozen=True)
class FixedPointCodec:
    """Clip, scale and round float vectors into ``Z_{2**bits}`` so that ``max_summands`` never wrap.

    Args:
        clip: the declared per-coordinate range ``[-clip, clip]`` (values outside are clipped).
        max_summands: the most vectors that will ever be summed (the number of sites in the round).
        modulus_bits: the ring is ``Z_{2**modulus_bits}``; 32 (uint32) or up to 64 (uint64).
    """

    clip: float
    max_summands: int
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        check_modulus_bits(self.modulus_bits)
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a positive finite number, got {self.clip!r}")
        if not isinstance(self.max_summands, int) or self.max_summands < 1:
            raise ConfigError(f"max_summands must be a positive integer, got {self.max_summands!r}")
        if self.max_int < 1:
            raise ConfigError(
                f"a 2^{self.modulus_bits} ring cannot hold the sum of {self.max_summands} values without "
                "wrapping; use a larger modulus_bits"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.modulus_bits)

    @property
    def max_int(self) -> int:
        """The largest encoded magnitude of one value: ``floor((M/2 - 1) / max_summands)``, at most 2^53."""
        return min((self.modulus // 2 - 1) // self.max_summands, _MAX_EXACT)

    @property
    def scale(self) -> float:
        """Integer units per unit of the float value."""
        return self.max_int / float(self.clip)

    def error_bound(self, num_summands: int | None = None) -> float:
        """Worst-case absolute error per coordinate of a decoded sum of ``num_summands`` encodings."""
        k = self.max_summands if num_summands is None else num_summands
        return k / (2.0 * self.scale) + k * float(self.clip) * 2.0**-52

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Encode a float vector (any shape; flattened) as ring elements."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise ConfigError("cannot encode NaN or infinite values; check the update before secure aggregation")
        q = np.rint(np.clip(x, -self.clip, self.clip) * self.scale)
        np.clip(q, -self.max_int, self.max_int, out=q)
        return from_signed(q.astype(np.int64), self.modulus_bits)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Decode a ring vector (one encoding, or the sum of at most ``max_summands``) to float64."""
        return to_signed(np.asarray(total), self.modulus_bits).astype(np.float64) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"clip": float(self.clip), "max_summands": self.max_summands, "modulus_bits": self.modulus_bits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixedPointCodec:
        try:
            return cls(float(data["clip"]), int(data["max_summands"]), int(data.get("modulus_bits", 32)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad fixed-point codec settings {data!r}: {exc}") from None
