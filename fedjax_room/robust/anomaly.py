"""Anomaly scores for every update the coordinator can see, flags with reasons, and per-site trust over rounds.

Two scores per site and round, both *robust* (a minority of attackers cannot
move the statistics that judge them):

* **norm z-score**: ``(norm - median) / (1.4826 * MAD)`` over the round's
  update norms. A boosted or noise update has a norm far above the honest ones.
  The scale is floored at ``norm_scale_floor * median`` so a round of almost
  equal honest norms does not turn small differences into huge scores.
* **cosine to the robust centre**: the cosine similarity of each update to the
  coordinate-wise median of all updates, turned into a robust z-score the same
  way (its scale floored at ``cosine_scale_floor``). A sign-flipped or
  label-flipped update points away from the honest majority. An absolute floor
  ``min_cosine`` can be set too (off by default: under DP noise honest cosines
  can sit near zero).

:func:`flag` applies the thresholds and says why, in words. Only high norms
are flagged (a small update cannot dominate an average). Trust is an
exponential moving average of *passed* (1) or *flagged* (0) per round,
starting at 1: ``trust = decay * trust + (1 - decay) * passed``. With the
defaults (``decay=0.7``) one flag leaves a site at 0.7 and two in a row at
0.49, under the room's ``exclude_below`` of 0.5; clean rounds restore it. The
trust state is an explicit pytree (:class:`TrustState`) of per-site arrays, so
the room checkpoints it with the run; :func:`update_trust` and
:func:`trust_excluded` are pure and jit-friendly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.errors import ConfigError
from fedjax_room.robust.aggregators import _masked_median, _rank_band
from fedjax_room.robust.tree import check_weights, num_sites, site_norms

__all__ = [
    "AnomalyConfig",
    "AnomalyScores",
    "Flags",
    "TrustState",
    "flag",
    "init_trust",
    "score_updates",
    "trust_excluded",
    "update_trust",
]

_MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


class AnomalyConfig(NamedTuple):
    """Thresholds of the anomaly detector and the trust rule (a room setting).

    Attributes:
      norm_z: flag a site whose norm z-score exceeds this (3.5 is Iglewicz and Hoaglin's cut-off).
      cosine_z: flag a site whose cosine to the robust centre is this many robust
        standard deviations below the median cosine.
      min_cosine: also flag any cosine below this absolute value (``None``: off).
      norm_scale_floor: the norm scale is at least this fraction of the median norm.
      cosine_scale_floor: the cosine scale is at least this.
      trust_decay: weight of the past in the trust EMA, in [0, 1).
      exclude_below: a site whose trust falls below this is left out of the
        aggregate (``None``: flag only, never exclude).
    """

    norm_z: float = 3.5
    cosine_z: float = 3.5
    min_cosine: float | None = None
    norm_scale_floor: float = 0.1
    cosine_scale_floor: float = 0.05
    trust_decay: float = 0.7
    exclude_below: float | None = 0.5

    def validated(self) -> AnomalyConfig:
        """Self, after checking every field (:class:`ConfigError` names the bad one)."""
        for field in ("norm_z", "cosine_z", "norm_scale_floor", "cosine_scale_floor"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"anomaly {field} must be a positive number, got {value!r}")
        if self.min_cosine is not None and (
            isinstance(self.min_cosine, bool)
            or not isinstance(self.min_cosine, int | float)
            or not -1 <= self.min_cosine <= 1
        ):
            raise ConfigError(f"anomaly min_cosine must be in [-1, 1] or None, got {self.min_cosine!r}")
        d = self.trust_decay
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
            raise ConfigError(f"anomaly trust_decay must be in [0, 1), got {d!r}")
        t = self.exclude_below
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1):
            raise ConfigError(f"exclude_below (the trust threshold) must be in (0, 1] or None, got {t!r}")
        return self


class AnomalyScores(NamedTuple):
    """Per-site scores of one round (arrays ``[n_sites]``; NaN for absent sites)."""

    norms: Any
    norm_z: Any
    cosine: Any
    cosine_z: Any


class Flags(NamedTuple):
    """The result of :func:`flag`: ``flagged`` (numpy bool ``[n]``), ``reasons`` (per site, words), ``scores``."""

    flagged: np.ndarray
    reasons: tuple[tuple[str, ...], ...]
    scores: AnomalyScores


def _robust_z(values: jax.Array, present: jax.Array, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
    med = _masked_median(values, present)
    mad = _masked_median(jnp.abs(values - med), present)
    scale = jnp.maximum(_MAD_TO_STD * mad, floor)
    return (values - med) / scale, med


@jax.jit
def _scores(updates: Any, present: jax.Array, norm_floor: jax.Array, cos_floor: jax.Array) -> AnomalyScores:
    norms = site_norms(updates)
    center, _ = _rank_band(updates, present.astype(jnp.float32), lambda m: ((m - 1) // 2, m // 2))
    dots = jax.tree_util.tree_map(
        lambda x, c: jnp.sum(jnp.reshape(jnp.asarray(x, jnp.float32) * c[None], (x.shape[0], -1)), axis=1),
        updates,
        center,
    )
    dot = sum(jax.tree_util.tree_leaves(dots)[1:], jax.tree_util.tree_leaves(dots)[0])
    cnorm = jnp.sqrt(sum(jnp.sum(jnp.square(c)) for c in jax.tree_util.tree_leaves(center)))
    cosine = dot / jnp.maximum(norms * cnorm, 1e-30)
    median_norm = _masked_median(norms, present)
    norm_z, _ = _robust_z(norms, present, norm_floor * median_norm + 1e-30)
    cosine_z, _ = _robust_z(cosine, present, cos_floor)
    nan = jnp.float32(jnp.nan)
    return AnomalyScores(
        norms=jnp.where(present, norms, nan),
        norm_z=jnp.where(present, norm_z, nan),
        cosine=jnp.where(present, cosine, nan),
        cosine_z=jnp.where(present, cosine_z, nan),
    )


def score_updates(updates: Any, weights: Any = None, config: AnomalyConfig | None = None) -> AnomalyScores:
    """Norm and cosine scores of each site's update (stacked pytree or ``[n, dim]``); weight 0 = absent."""
    config = AnomalyConfig() if config is None else config
    n = num_sites(updates)
    present = jnp.asarray(check_weights(weights, n) > 0)
    return _scores(updates, present, jnp.float32(config.norm_scale_floor), jnp.float32(config.cosine_scale_floor))


def flag(updates: Any, weights: Any = None, config: AnomalyConfig | None = None, *, sites: Any = None) -> Flags:
    """Score the round's updates and flag the anomalous ones, each with its reasons in words.

    ``weights`` only marks presence (0 = absent, never flagged). ``sites`` (names,
    optional) is used in nothing but the reasons' wording.
    """
    config = (AnomalyConfig() if config is None else config).validated()
    scores = jax.device_get(score_updates(updates, weights, config))
    scores = AnomalyScores(*(np.asarray(s, np.float64) for s in scores))
    n = len(scores.norms)
    present = ~np.isnan(scores.norms)
    med_norm = float(np.median(scores.norms[present])) if present.any() else float("nan")
    med_cos = float(np.median(scores.cosine[present])) if present.any() else float("nan")
    flagged = np.zeros(n, bool)
    reasons: list[tuple[str, ...]] = []
    for i in range(n):
        why: list[str] = []
        if present[i]:
            if scores.norm_z[i] > config.norm_z:
                why.append(
                    f"update norm {scores.norms[i]:.3g} is {scores.norm_z[i]:.1f} robust SDs above the round's "
                    f"median {med_norm:.3g} (limit {config.norm_z:g})"
                )
            if scores.cosine_z[i] < -config.cosine_z:
                why.append(
                    f"cosine {scores.cosine[i]:.2f} to the robust centre is {-scores.cosine_z[i]:.1f} robust SDs "
                    f"below the round's median {med_cos:.2f} (limit {config.cosine_z:g})"
                )
            if config.min_cosine is not None and scores.cosine[i] < config.min_cosine:
                why.append(f"cosine {scores.cosine[i]:.2f} to the robust centre is below {config.min_cosine:g}")
        flagged[i] = bool(why)
        reasons.append(tuple(why))
    return Flags(flagged=flagged, reasons=tuple(reasons), scores=scores)


# ---------------------------------------------------------------------- trust


class TrustState(NamedTuple):
    """Per-site trust over rounds: ``trust`` (float32 EMA, starts at 1), ``rounds`` scored, ``flags`` raised."""

    trust: jax.Array
    rounds: jax.Array
    flags: jax.Array


def init_trust(num_sites: int) -> TrustState:
    """Every site starts fully trusted."""
    if isinstance(num_sites, bool) or not isinstance(num_sites, int | np.integer) or num_sites < 1:
        raise ConfigError(f"num_sites must be a positive integer, got {num_sites!r}")
    return TrustState(
        trust=jnp.ones(num_sites, jnp.float32),
        rounds=jnp.zeros(num_sites, jnp.int32),
        flags=jnp.zeros(num_sites, jnp.int32),
    )


def update_trust(state: TrustState, flagged: Any, present: Any = None, *, decay: float = 0.7) -> TrustState:
    """One round of the trust EMA: present sites move toward 1 (passed) or 0 (flagged); absent ones keep theirs."""
    flagged = jnp.asarray(flagged, bool)
    present = jnp.ones_like(flagged) if present is None else jnp.asarray(present, bool)
    passed = jnp.where(flagged, 0.0, 1.0)
    trust = jnp.where(present, decay * state.trust + (1.0 - decay) * passed, state.trust)
    return TrustState(
        trust=trust.astype(jnp.float32),
        rounds=state.rounds + present.astype(jnp.int32),
        flags=state.flags + (present & flagged).astype(jnp.int32),
    )


def trust_excluded(state: TrustState, threshold: float | None) -> jax.Array:
    """bool ``[n]``: sites whose trust is below ``threshold`` (none when it is ``None``)."""
    if threshold is None:
        return jnp.zeros_like(state.trust, dtype=bool)
    return state.trust < threshold
