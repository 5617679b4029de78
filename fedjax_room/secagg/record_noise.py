"""Record-level DP-SGD noise added once, distributed over the sites, under secure aggregation.

Central DP-SGD adds noise ``sigma * C`` once to the sum of clipped per-example gradients. In a federated round
with one full-batch step per site, the sum over sites of each site's clipped sum *is* that central sum; if the
coordinator only ever sees the sum (secure aggregation), each site need add only ``1/t`` of the noise variance,
``t`` being the fewest sites SecAgg ever unmasks (its ``min_clients``). The sum then carries the whole noise,
and each record's guarantee is central DP-SGD's over the union of the sites' data instead of DP-SGD on one
site's data averaged with the others' noisy updates (which has ``sqrt(sites)`` times the noise on the mean).

Pipeline per site (:meth:`RecordNoise.encode`), on ``x = sum_j clip_C(g_j)`` over the site's records::

    q   = stochastic_round(gamma * x)          gamma = GAMMA_UNITS * sqrt(d) / C, unbiased, |q_k - gamma x_k| < 1
    v   = q + Sk(mu / n)                       the site's own Skellam share (``mu / t`` when the shares are not
                                               pairwise; all of ``mu``: ``share=False``)
    out = v mod 2^64                           a ring vector for SecAggClient.set_input

then, just before masking, the SecAgg client adds the site's pairwise terms (:meth:`RecordNoise.pairwise_terms`,
"Dropout-resilient shares" below),
and :meth:`RecordNoise.decode` maps the unmasked sum back to floats (``sum_i x_i + N``).

Privacy of one record (add or remove one example of one site). The record moves its site's ``x`` by at most
``C`` in L2; coupling the two roundings on the same uniforms, each coordinate of ``q`` moves by less than
``gamma |dx_k| + 1``, so the integer vectors differ by at most ``Delta2 = gamma C + sqrt(d)`` in L2 and
``Delta1 = sqrt(d) Delta2`` in L1 (and the joint quasi-convexity of Renyi divergence carries the bound through the
mixture over roundings). The other sites' vectors do not depend on the record. The released sum of ``k >= t``
sites carries Skellam noise of variance ``k mu / t >= mu``, which by Agarwal, Kairouz & Liu (NeurIPS 2021,
Thm 3.5) has the RDP of a Gaussian of multiplier ``s / Delta2`` with ``1/s^2 = 1/mu + (1 + 3 Delta1 /
Delta2^2) / mu^2`` at integer orders. ``mu`` is solved for so that this multiplier is exactly the site plan's
``sigma``: what the site's ledger composes (``dpsgd_event(sigma, 1, 1)`` per round) is the Gaussian that bounds
the release, the same accounting as the evaluation releases (an assumption, stated in docs/privacy.md: the
ledger is a PLD accountant, and RDP domination is a bound at integer orders).

Dropout-resilient shares (:attr:`RecordNoise.pairwise`: the default, whenever the round's threshold ``t`` is at least
``n - 1`` of the ``n`` sites of the roster, as the room sets it). Each site adds ``Sk(mu / n)`` of its own and, for
every other site ``j`` of the roster, a term of variance ``mu / (n (n - 1))``: ``+s_ij`` or ``-s_ij`` (by id order)
from a seed both derive from their SecAgg channel secret when ``j`` is alive in its key sharing, else an
independent draw (:meth:`RecordNoise.pairwise_terms`, added just before masking). A sum of ``k`` sites then
carries ``k mu / n`` of its own noise plus every term not cancelled by its partner, at least ``k (n - k)`` of them:
``mu`` for ``k = n`` and for ``k = n - 1``, the only sums the threshold lets be released, whatever alive sets the
coordinator shows each site (a term left uncancelled only adds noise). The coordinator never learns a channel
secret (only the dropped sites' mask keys are ever reconstructed), a site releases one masked input per round
(:mod:`fedjax_room.secagg.sessions`), and all of it is a sum of independent Skellams, so the bound above holds.
With ``t < n - 1`` (a roster the site did not expect) it falls back to ``mu / t`` shares and no pairwise terms.

Assumptions (docs/privacy.md, "Distributed noise"): the sites in the sum add their shares; ``f`` sites that add
none, or collude with the coordinator and subtract theirs, leave ``(t - f) / t`` of the variance. A site that
wants its guarantee to hold on its own noise alone encodes with ``share=False`` (all of ``mu``).

``gamma`` comes from the clip norm and the model size alone, so the coordinator decodes with the same one; the
ring is ``Z_{2^64}`` (:data:`MODULUS_BITS`), which holds ``2^62 / max_sites`` per site: far more than any clipped
sum of up to ``2^30`` records (:meth:`encode` refuses a larger one rather than wrap).
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedjax_room.errors import ConfigError
from fedjax_room.secagg.ddp import SkellamBound, skellam_draws, skellam_variance_for
from fedjax_room.secagg.encoding import from_signed, to_signed

__all__ = ["GAMMA_UNITS", "MODULUS_BITS", "RecordNoise"]

#: integer units per unit of clipped gradient, relative to ``sqrt(d) / C``: rounding inflates the sensitivity by
#: ``1 / GAMMA_UNITS`` (0.4%), which the noise is raised to cover
GAMMA_UNITS = 256.0
#: the SecAgg ring of a distributed-noise train round
MODULUS_BITS = 64


@dataclass(frozen=True)
class RecordNoise(SkellamBound):
    """One site's half of distributed record-level noise (see the module docstring).

    Args:
        clip_norm: ``C``, the per-example clip norm.
        noise_multiplier: ``sigma``, the plan's DP-SGD noise multiplier (0 for the coordinator, which only decodes).
        dimension: ``d``, the number of model parameters.
        max_sites: the most sites in one sum (the ring's headroom per site).
        min_sites: ``t``, the fewest sites in a released sum (SecAgg ``min_clients``).
        share: add a share of the noise (True) or all of it (False: this site's guarantee rests on its noise alone).
        full_graph: whether every site of the round masks with every other (SecAgg without the + graph).
    """

    clip_norm: float
    noise_multiplier: float
    dimension: int
    max_sites: int
    min_sites: int
    share: bool = True
    #: every site masks with every other (no SecAgg+ graph): pairwise terms need each pair to share a channel
    full_graph: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be positive, got {self.clip_norm!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if isinstance(self.dimension, bool) or not isinstance(self.dimension, int) or self.dimension < 1:
            raise ConfigError(f"dimension must be a positive integer, got {self.dimension!r}")
        if not isinstance(self.max_sites, int) or not isinstance(self.min_sites, int):
            raise ConfigError("max_sites and min_sites must be integers")
        if not 1 <= self.min_sites <= self.max_sites:
            raise ConfigError(f"need 1 <= min_sites <= max_sites, got {self.min_sites} and {self.max_sites}")

    @property
    def gamma(self) -> float:
        """Integer units per unit of gradient: from ``C`` and ``d`` only, so both sides agree."""
        return GAMMA_UNITS * math.sqrt(self.dimension) / self.clip_norm

    @property
    def central_variance(self) -> float:
        """``mu``: the integer variance a sum of ``t`` shares carries, solved so that the Skellam bound's
        effective Gaussian multiplier is exactly ``noise_multiplier``."""
        return skellam_variance_for(self.noise_multiplier, self.l2_sensitivity, self.l1_sensitivity)

    @property
    def pairwise(self) -> bool:
        """Whether the share is dropout-resilient ("Dropout-resilient shares" in the module docstring): with the
        SecAgg threshold ``t >= n - 1`` of the ``n`` sites of the roster, every released sum then carries exactly
        ``mu`` (``n`` or ``n - 1`` sites) rather than ``k / t`` of it."""
        return self.share and self.full_graph and self.max_sites >= 2 and self.min_sites >= self.max_sites - 1

    @property
    def site_variance(self) -> float:
        """The integer variance this site adds per coordinate of its own (the pairwise terms come on top)."""
        mu = self.central_variance
        if not self.share:
            return mu
        return mu / self.max_sites if self.pairwise else mu / self.min_sites

    @property
    def pair_variance(self) -> float:
        """The variance of each pairwise term (``mu / (n (n - 1))``), 0 when the share is not pairwise."""
        n = self.max_sites
        return self.central_variance / (n * (n - 1)) if self.pairwise else 0.0

    def pairwise_terms(
        self,
        me: int,
        roster: Iterable[int],
        alive: Iterable[int],
        secrets_: Mapping[int, bytes],
        context: bytes,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """This site's pairwise noise terms, a ``uint64`` ring vector to add to its input just before masking.

        For each other site ``j`` of the ``roster``: with ``j`` alive (it took part in the key sharing, so the two
        hold a channel secret the coordinator never learns), ``+s`` if ``me < j`` else ``-s``, ``s`` a Skellam draw
        of :attr:`pair_variance` seeded from that secret (HKDF-SHA256 with the round's ``context``), which ``j``
        adds with the other sign; else an independent draw from ``rng`` (the site's secret). Zeros when the share
        is not pairwise."""
        d = self.dimension
        total = np.zeros(d, np.int64)
        var = self.pair_variance
        if var <= 0:
            return from_signed(total, MODULUS_BITS)
        live = set(alive)
        for j in sorted(set(roster) - {me}):
            secret = secrets_.get(j)
            if j in live and secret is not None:
                lo, hi = min(me, j), max(me, j)
                info = b"fedjax-room/record-noise/pair/v1" + bytes(context) + struct.pack(">II", lo, hi)
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes(secret))
                draw = skellam_draws(var, d, np.random.default_rng(np.frombuffer(key, dtype=np.uint32)))
                total += draw if me < j else -draw
            else:
                total += skellam_draws(var, d, rng)
        return from_signed(total, MODULUS_BITS)

    @property
    def headroom(self) -> float:
        """The largest ``|gamma x_k|`` one site may contribute without any sum of ``max_sites`` wrapping."""
        return 2.0**62 / self.max_sites

    def encode(self, clipped_sum: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Scale, round and add this site's noise share to ``clipped_sum`` (the site's sum of clipped
        per-example gradients, flat); a ``uint64`` ring vector. Raises :class:`ConfigError` for a vector of the
        wrong length, not finite, or too large for the ring."""
        x = np.asarray(clipped_sum, np.float64).reshape(-1)
        if x.size != self.dimension:
            raise ConfigError(f"the gradient sum has {x.size} values; the round was set up for {self.dimension}")
        if not np.all(np.isfinite(x)):
            raise ConfigError("the gradient sum has NaN or infinite values")
        y = x * self.gamma
        if y.size and float(np.max(np.abs(y))) > self.headroom:
            raise ConfigError(
                f"a gradient sum this large ({float(np.max(np.abs(x))):.3g} in one coordinate) could wrap the secure "
                "sum; use fewer records per site or a smaller clip norm"
            )
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        low = np.floor(y)
        q = low.astype(np.int64) + (rng.random(y.shape) < (y - low))
        if self.site_variance > 0:
            q += skellam_draws(self.site_variance, y.shape, rng)
        return from_signed(q, MODULUS_BITS)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The unmasked ring sum as floats: the sum of the sites' clipped gradient sums plus the noise."""
        return to_signed(np.asarray(total), MODULUS_BITS).astype(np.float64) / self.gamma
