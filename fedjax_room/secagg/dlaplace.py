"""Distributed discrete Laplace noise for secure sums of integer vectors (DP exploration queries).

Under secure aggregation nobody but the sites may add the noise, and the coordinator must learn only a sum that
already carries all of it, even when some sites drop out. The discrete Laplace distribution is infinitely
divisible, which makes that exact:

* ``DLap(t)`` (``P(k) ~ t^|k|``, ``t = exp(-1 / scale)``) is ``G1 - G2`` for two independent geometric
  variables with success probability ``1 - t``;
* a geometric variable is the sum of ``m`` independent **Pólya** (negative binomial) variables
  ``NB(1/m, 1 - t)``;
* so if each site adds ``NB(1/m, 1 - t) - NB(1/m, 1 - t)`` to each entry, the sum of any ``m`` shares is exactly
  ``DLap(t)``, and the sum of ``k >= m`` shares is ``DLap(t)`` plus independent noise: a post-processing of it.

``m`` is the SecAgg round's ``min_clients`` (the fewest inputs a released sum can hold; a round with fewer
survivors aborts and releases nothing), checked by every site against its own policy before it joins. So the
released sum is at least as private as the central discrete Laplace mechanism of that scale: with a site dropped,
the full noise is still there. Privacy is accounted as that central mechanism (``DiscreteLaplaceDpEvent``, an
exact privacy-loss distribution in the sites' PLD ledgers; see ``docs/queries.md``).

Why not the Skellam shares of :mod:`fedjax_room.secagg.ddp`: a sum of Skellams is Skellam, but its certified
bound is an RDP curve at integer orders, which the sample-level PLD ledger cannot compose exactly; discrete
Laplace is pure epsilon-DP with an exact PLD, and the same mechanism the plain path uses (OpenDP's).

The ring is ``Z_{2^64}``: entries are signed integers (counts, fixed-point sums) of magnitude far below ``2^62``,
so no sum wraps. The shares are drawn with a numpy Generator seeded from the OS (``secrets``), never from a seed
anyone else could know.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from fedjax_room.errors import ConfigError
from fedjax_room.secagg.encoding import from_signed, to_signed

__all__ = ["MODULUS_BITS", "DistributedDiscreteLaplace", "polya_share"]

#: The ring of query sums.
MODULUS_BITS = 64
#: Largest magnitude of a true entry (a count or a fixed-point sum) a site may put in the ring.
MAX_ENTRY = 2**52


def polya_share(scales: np.ndarray, min_sites: int, rng: np.random.Generator) -> np.ndarray:
    """One site's share of discrete Laplace noise of ``scales`` per entry: ``NB(1/m, 1-t) - NB(1/m, 1-t)``
    (``m`` = ``min_sites``; ``m`` shares sum to ``DLap(exp(-1/scale))`` exactly)."""
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or min_sites < 1:
        raise ConfigError(f"min_sites must be a positive integer, got {min_sites!r}")
    s = np.asarray(scales, np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigError("noise scales must be positive and finite")
    p = -np.expm1(-1.0 / s)  # 1 - t, the geometric success probability, accurate for large scales
    r = 1.0 / min_sites
    a = rng.negative_binomial(r, p)
    b = rng.negative_binomial(r, p)
    return a.astype(np.int64) - b.astype(np.int64)


@dataclass(frozen=True)
class DistributedDiscreteLaplace:
    """Each site's half of a secure noised sum: its true integer vector plus its share, as a ring vector.

    Args:
        scales: the discrete Laplace scale of each entry (``sensitivity / epsilon`` of its block).
        min_sites: ``m``, the fewest sites in a released sum (the SecAgg ``min_clients``).
    """

    scales: tuple[float, ...]
    min_sites: int

    def __post_init__(self) -> None:
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ConfigError("a distributed discrete Laplace needs positive finite scales")
        if isinstance(self.min_sites, bool) or not isinstance(self.min_sites, int) or self.min_sites < 1:
            raise ConfigError(f"min_sites must be a positive integer, got {self.min_sites!r}")

    @property
    def dimension(self) -> int:
        return len(self.scales)

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``values`` (true integers) plus this site's noise share, as a ``Z_{2^64}`` ring vector."""
        q = np.asarray(values)
        if q.shape != (self.dimension,) or not np.issubdtype(q.dtype, np.integer):
            raise ConfigError(f"the input must be {self.dimension} integers")
        if np.any(np.abs(q) > MAX_ENTRY):
            raise ConfigError("an entry is too large for a secure query sum")
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        noised = q.astype(np.int64) + polya_share(np.asarray(self.scales), self.min_sites, rng)
        return from_signed(noised, MODULUS_BITS)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The unmasked ring sum as signed integers (the true sum plus at least the full noise)."""
        return to_signed(np.asarray(total), MODULUS_BITS).astype(np.int64)
