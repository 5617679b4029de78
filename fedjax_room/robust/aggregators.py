"""Aggregation rules behind one optax-like contract: ``init() -> state``, ``aggregate(updates, weights, state)``.

Every rule is an :class:`Aggregator` pair of pure functions::

    agg = get_aggregator("trimmed_mean", beta=0.2)
    state = agg.init()
    delta, state, info = agg.aggregate(updates, weights, state)

``updates`` is a pytree whose leaves carry a leading site axis (see
:func:`fedjax_room.robust.tree.stack_updates`), or a plain ``[n_sites, dim]``
array; ``weights`` is ``[n_sites]`` (example counts, say; ``None`` means equal).
The result ``delta`` has the shape of one site's update: a *pseudo-gradient*
(the direction the model should move) that a server optimiser applies
(:mod:`fedjax_room.robust.server`). ``info`` is an :class:`AggregateInfo` of
per-site arrays: which sites the rule selected, how much of each site's update
entered the result, and a per-rule suspicion score.

**A zero weight means absent.** Every rule leaves out sites of weight 0, with
static shapes, so the room can drop an excluded or distrusted site without
recompiling. Beyond that, weights are *honoured* by ``fedavg``, ``norm_bound``
and (among the selected sites) ``krum`` / ``multi_krum``, and *ignored* by
``median`` and ``trimmed_mean``: a malicious site can lie about its example
count, and coordinate-wise rules lose their guarantee if it can buy weight.

=============  =====================================================  =============================
name           rule                                                   ``scores`` (higher = worse)
=============  =====================================================  =============================
fedavg         weighted mean (weights as given)                       L2 distance to the aggregate
mean           unweighted mean                                        L2 distance to the aggregate
median         coordinate-wise median                                 L2 distance to the aggregate
trimmed_mean   coordinate-wise mean after dropping the ``floor(beta   L2 distance to the aggregate
               * n)`` largest and smallest values
krum           the one update with the lowest Krum score              Krum score
multi_krum     weighted mean of the ``m`` lowest Krum scores          Krum score
norm_bound     weighted mean after clipping each update to ``factor   norm / bound
               * median norm`` (and/or ``max_norm``)
=============  =====================================================  =============================

The Krum score of a site (Blanchard et al., 2017) is the sum of squared
distances to its ``n - f - 2`` nearest neighbours, for ``f`` assumed
Byzantine sites; it tolerates ``f`` attackers when ``n >= 2f + 3``. The
trimmed mean tolerates ``floor(beta * n)`` attackers, the median fewer than
half. Norm bounding does not remove a malicious direction; it caps how far any
one site can move the model (Sun et al., 2019).

Each rule's core is ``jax.jit``-compiled once per input shape; the wrapper
checks the weights when they are concrete and also traces under an outer
``jit``. All arithmetic is float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.robust.names import AGGREGATORS
from fedjax_room.robust.tree import check_weights, num_sites, site_matrix, site_norms

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "AggregateInfo",
    "AggregatorState",
    "coordinate_median",
    "get_aggregator",
    "krum",
    "multi_krum",
    "norm_bound",
    "trimmed_mean",
    "weighted_mean",
]

Updates = Any


class AggregatorState(NamedTuple):
    """The state every rule carries: how many rounds it has aggregated."""

    count: jax.Array  # type: ignore[assignment]  # optax's name for it; shadows tuple.count, never called here


class AggregateInfo(NamedTuple):
    """Per-site outcome of one aggregation (arrays of length ``n_sites``).

    Attributes:
      selected: bool; the site's update entered the aggregate (``False``: absent or excluded by the rule).
      kept: float in [0, 1]; how much of it entered: 1 for a mean, the fraction of
        coordinates at which it was kept for median / trimmed mean, 0 or 1 for Krum,
        the clip scale for norm bounding.
      scores: float; the rule's suspicion score (higher = further from what the rule
        trusts; see the module table); NaN for absent sites.
      norms: float; each update's L2 norm.
      bound: float scalar; the norm bound used by ``norm_bound`` (NaN for other rules).
    """

    selected: jax.Array
    kept: jax.Array
    scores: jax.Array
    norms: jax.Array
    bound: jax.Array

    @property
    def excluded(self) -> jax.Array:
        """bool ``[n_sites]``: the complement of ``selected``."""
        return ~self.selected


class Aggregator(NamedTuple):
    """A pair of pure functions (optax style).

    ``init() -> AggregatorState``;
    ``aggregate(updates, weights=None, state=None) -> (aggregate, state, AggregateInfo)``.
    ``name`` is the rule's registry name.
    """

    init: Callable[[], AggregatorState]
    aggregate: Callable[..., tuple[Any, AggregatorState, AggregateInfo]]
    name: str = ""


def _init() -> AggregatorState:
    return AggregatorState(count=jnp.zeros((), jnp.int32))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _present_count(weights: Any) -> int | None:
    """Number of sites with positive weight, when the weights are concrete."""
    if weights is None:
        return None
    if _is_tracer(weights):
        return None
    return int(np.sum(np.asarray(weights) > 0))


def _wrap(
    name: str,
    core: Callable[[Updates, jax.Array], tuple[Any, AggregateInfo]],
    check: Callable[[int, int | None], None] | None = None,
) -> Aggregator:
    """Build the public pair around a jitted ``core(updates, weights) -> (aggregate, info)``."""
    jitted = jax.jit(core)

    def aggregate(
        updates: Updates, weights: Any = None, state: AggregatorState | None = None
    ) -> tuple[Any, AggregatorState, AggregateInfo]:
        n = num_sites(updates)
        if weights is None:
            w = jnp.ones(n, jnp.float32)
        elif _is_tracer(weights):
            w = jnp.asarray(weights, jnp.float32)
        else:
            w = jnp.asarray(check_weights(weights, n))
        if check is not None:
            check(n, _present_count(w) if weights is not None else n)
        if state is None:
            state = _init()
        agg, info = jitted(updates, w)
        return agg, AggregatorState(count=state.count + 1), info

    return Aggregator(init=_init, aggregate=aggregate, name=name)


# ---------------------------------------------------------------------- shared pieces


def _distances_to(updates: Updates, center: Any) -> jax.Array:
    """L2 distance of each site's update to ``center`` (a single update)."""
    sq = jax.tree_util.tree_map(
        lambda x, c: jnp.sum(jnp.reshape((jnp.asarray(x, jnp.float32) - c[None]) ** 2, (x.shape[0], -1)), axis=1),
        updates,
        center,
    )
    leaves = jax.tree_util.tree_leaves(sq)
    return jnp.sqrt(sum(leaves[1:], leaves[0]))


def _weighted_sum(updates: Updates, coef: jax.Array) -> Any:
    """``sum_i coef[i] * updates[i]`` leaf by leaf, in float32."""
    return jax.tree_util.tree_map(lambda x: jnp.tensordot(coef, jnp.asarray(x, jnp.float32), axes=1), updates)


def _nan_absent(values: jax.Array, present: jax.Array) -> jax.Array:
    return jnp.where(present, values, jnp.nan)


def _masked_median(values: jax.Array, present: jax.Array) -> jax.Array:
    """Median of ``values[present]`` for a 1-D array (static shape, dynamic count)."""
    m = jnp.sum(present)
    s = jnp.sort(jnp.where(present, values, jnp.inf))
    lo, hi = (m - 1) // 2, m // 2
    return 0.5 * (s[jnp.maximum(lo, 0)] + s[jnp.maximum(hi, 0)])


def _check_f(f: int | None) -> int | None:
    if f is None:
        return None
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ConfigError(f"f (the number of Byzantine sites to tolerate) must be an integer >= 0, got {f!r}")
    return int(f)


# ---------------------------------------------------------------------- mean


def weighted_mean(*, uniform: bool = False) -> Aggregator:
    """FedAvg: the weighted mean of the present sites' updates (``uniform=True``: the plain mean).

    Only this rule (and ``norm_bound`` with a fixed ``max_norm``) works on a sum,
    i.e. with secure aggregation.
    """

    def core(updates: Updates, w: jax.Array) -> tuple[Any, AggregateInfo]:
        present = w > 0
        coef = jnp.where(present, 1.0, 0.0) if uniform else w
        coef = coef / jnp.sum(coef)
        agg = _weighted_sum(updates, coef)
        info = AggregateInfo(
            selected=present,
            kept=present.astype(jnp.float32),
            scores=_nan_absent(_distances_to(updates, agg), present),
            norms=site_norms(updates),
            bound=jnp.float32(jnp.nan),
        )
        return agg, info

    return _wrap("mean" if uniform else "fedavg", core)


# ---------------------------------------------------------------------- coordinate-wise rules


#: Up to this many sites :func:`_stable_ranks` counts pairwise comparisons; beyond it, two stable argsorts.
_PAIRWISE_RANK_SITES = 64


def _stable_ranks(values: jax.Array) -> jax.Array:
    """The stable rank of each value along axis 0 (ties keep site order): ``argsort(argsort(values, stable))``.

    For a round's handful of sites, counting ``#{j: v_j < v_i} + #{j < i: v_j == v_i}`` is ``n^2``
    fused elementwise comparisons instead of two sorts of ``n``-long columns, which XLA:CPU runs
    slowly: 10 sites x 1e6 coordinates take 0.024 s instead of 1.06 s (64 sites: 1.6 s instead of
    12.6 s). Above ``_PAIRWISE_RANK_SITES`` sites it sorts.
    """
    n = values.shape[0]
    if n > _PAIRWISE_RANK_SITES:
        return jnp.argsort(jnp.argsort(values, axis=0, stable=True), axis=0, stable=True)
    site = jnp.arange(n).reshape((n,) + (1,) * (values.ndim - 1))
    rank = jnp.zeros(values.shape, jnp.int32)
    for j in range(n):
        other = values[j]
        rank = rank + ((other < values) | ((other == values) & (j < site))).astype(jnp.int32)
    return rank


def _rank_band(updates: Updates, w: jax.Array, band: Callable[[jax.Array], tuple[jax.Array, jax.Array]]) -> Any:
    """Coordinate-wise: at each coordinate, average the present values whose rank lies in ``band(m)``.

    ``band(m) -> (lo, hi)`` gives the inclusive rank range among the ``m`` present sites.
    Returns ``(aggregate, kept_fraction[n])``.
    """
    present = w > 0
    m = jnp.sum(present)
    lo, hi = band(m)
    n = w.shape[0]
    kept_count = jnp.zeros(n, jnp.float32)
    total = 0

    def leaf_fn(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.asarray(x, jnp.float32)
        mask = jnp.reshape(present, (n,) + (1,) * (x.ndim - 1))
        ranks = _stable_ranks(jnp.where(mask, x, jnp.inf))
        keep = (ranks >= lo) & (ranks <= hi) & mask
        value = jnp.sum(jnp.where(keep, x, 0.0), axis=0) / (hi - lo + 1).astype(jnp.float32)
        return value, jnp.sum(jnp.reshape(keep, (n, -1)), axis=1).astype(jnp.float32)

    leaves, treedef = jax.tree_util.tree_flatten(updates)
    values = []
    for leaf in leaves:
        value, kept = leaf_fn(leaf)
        values.append(value)
        kept_count = kept_count + kept
        total += math.prod(leaf.shape[1:])
    return jax.tree_util.tree_unflatten(treedef, values), kept_count / max(total, 1)


def _coordinate_info(updates: Updates, agg: Any, w: jax.Array, kept: jax.Array) -> AggregateInfo:
    present = w > 0
    return AggregateInfo(
        selected=present,
        kept=kept,
        scores=_nan_absent(_distances_to(updates, agg), present),
        norms=site_norms(updates),
        bound=jnp.float32(jnp.nan),
    )


def coordinate_median() -> Aggregator:
    """Coordinate-wise median of the present sites (the mean of the two middle values when even).

    Weights only mark presence. Robust while fewer than half the sites are malicious.
    """

    def core(updates: Updates, w: jax.Array) -> tuple[Any, AggregateInfo]:
        agg, kept = _rank_band(updates, w, lambda m: ((m - 1) // 2, m // 2))
        return agg, _coordinate_info(updates, agg, w, kept)

    return _wrap("median", core)


def trimmed_mean(beta: float = 0.2) -> Aggregator:
    """Coordinate-wise trimmed mean: drop the ``floor(beta * m)`` largest and smallest of ``m`` present values.

    ``0 <= beta < 0.5``; tolerates ``floor(beta * m)`` attackers per coordinate.
    The default 0.2 trims two of ten sites at each end. Weights only mark presence.
    """
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < 0.5:
        raise ConfigError(f"trimmed_mean beta must be a number in [0, 0.5), got {beta!r} (0.2 trims 2 of 10 per end)")
    beta = float(beta)

    def band(m: jax.Array) -> tuple[jax.Array, jax.Array]:
        k = jnp.floor(beta * m.astype(jnp.float32) + 1e-6).astype(m.dtype)
        return k, m - k - 1

    def core(updates: Updates, w: jax.Array) -> tuple[Any, AggregateInfo]:
        agg, kept = _rank_band(updates, w, band)
        return agg, _coordinate_info(updates, agg, w, kept)

    return _wrap("trimmed_mean", core)


# ---------------------------------------------------------------------- Krum


def _krum_core(f: int | None, m_select: int | None, single: bool) -> Callable[..., tuple[Any, AggregateInfo]]:
    def core(updates: Updates, w: jax.Array) -> tuple[Any, AggregateInfo]:
        x = site_matrix(updates)
        n = x.shape[0]
        present = w > 0
        m = jnp.sum(present)
        ff = jnp.maximum((m - 3) // 2, 0) if f is None else jnp.asarray(f, m.dtype)
        # Squared distances, row by row (memory n * dim, exact: no Gram-matrix cancellation).
        dist = jax.lax.map(lambda xi: jnp.sum((x - xi[None]) ** 2, axis=1), x)
        valid = present[None, :] & present[:, None] & ~jnp.eye(n, dtype=bool)
        dist = jnp.where(valid, dist, jnp.inf)
        k = jnp.clip(m - ff - 2, 0, jnp.maximum(m - 1, 0))
        nearest = jnp.sort(dist, axis=1)
        score = jnp.sum(jnp.where(jnp.arange(n)[None, :] < k, nearest, 0.0), axis=1)
        score = jnp.where(present, score, jnp.inf)
        if single:
            count = jnp.ones((), m.dtype)
        elif m_select is None:
            count = jnp.maximum(m - ff, 1)
        else:
            count = jnp.clip(jnp.asarray(m_select, m.dtype), 1, m)
        rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)
        selected = (rank < count) & present
        coef = jnp.where(selected, w, 0.0)
        agg = _weighted_sum(updates, coef / jnp.sum(coef))
        info = AggregateInfo(
            selected=selected,
            kept=selected.astype(jnp.float32),
            scores=_nan_absent(score, present),
            norms=jnp.sqrt(jnp.sum(x * x, axis=1)),
            bound=jnp.float32(jnp.nan),
        )
        return agg, info

    return core


def _krum_check(f: int | None, name: str) -> Callable[[int, int | None], None]:
    def check(n: int, present: int | None) -> None:
        if f is None or present is None:
            return
        if present < 2 * f + 3:
            raise RoundError(
                f"{name} with f={f} needs at least {2 * f + 3} sites in the round (n >= 2f + 3), got {present}; "
                "lower f, or leave f unset to tolerate (n - 3) // 2"
            )

    return check


def krum(f: int | None = None) -> Aggregator:
    """Krum: the single update with the lowest Krum score.

    ``f`` is the number of Byzantine sites to tolerate; ``None`` takes the most
    the round allows, ``(m - 3) // 2`` for ``m`` present sites. An explicit ``f``
    with fewer than ``2f + 3`` present sites raises :class:`RoundError`.
    """
    f = _check_f(f)
    return _wrap("krum", _krum_core(f, None, single=True), _krum_check(f, "krum"))


def multi_krum(f: int | None = None, m: int | None = None) -> Aggregator:
    """Multi-Krum: the weighted mean of the ``m`` updates with the lowest Krum scores.

    ``m`` defaults to ``n - f`` (every site but the ``f`` most suspicious); ``f``
    as in :func:`krum`.
    """
    f = _check_f(f)
    if m is not None and (isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1):
        raise ConfigError(f"multi_krum m (how many updates to average) must be a positive integer, got {m!r}")
    return _wrap("multi_krum", _krum_core(f, None if m is None else int(m), single=False), _krum_check(f, "multi_krum"))


# ---------------------------------------------------------------------- norm bounding


def norm_bound(factor: float | None = 1.0, max_norm: float | None = None) -> Aggregator:
    """Clip each update to a norm bound, then take the weighted mean.

    The bound is ``factor * median(norms)`` over the present sites, capped at
    ``max_norm`` when given; ``factor=None`` uses ``max_norm`` alone (a fixed
    bound, which honest sites can also apply themselves under secure aggregation).
    """
    for value, what in ((factor, "factor"), (max_norm, "max_norm")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0
        ):
            raise ConfigError(f"norm_bound {what} must be a positive number or None, got {value!r}")
    if factor is None and max_norm is None:
        raise ConfigError("norm_bound needs a factor (times the round's median norm), a max_norm, or both")
    fac = None if factor is None else float(factor)
    cap = None if max_norm is None else float(max_norm)

    def core(updates: Updates, w: jax.Array) -> tuple[Any, AggregateInfo]:
        present = w > 0
        norms = site_norms(updates)
        bound = jnp.float32(jnp.inf)
        if fac is not None:
            bound = jnp.float32(fac) * _masked_median(norms, present)
        if cap is not None:
            bound = jnp.minimum(bound, jnp.float32(cap))
        scale = jnp.where(norms > bound, bound / jnp.maximum(norms, 1e-30), 1.0)
        scale = jnp.where(present, scale, 0.0)
        coef = w / jnp.sum(w)
        agg = _weighted_sum(updates, coef * scale)
        info = AggregateInfo(
            selected=present,
            kept=scale,
            scores=_nan_absent(norms / jnp.maximum(bound, 1e-30), present),
            norms=norms,
            bound=bound,
        )
        return agg, info

    return _wrap("norm_bound", core)


# ---------------------------------------------------------------------- registry


_FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "fedavg": weighted_mean,
    "mean": functools.partial(weighted_mean, uniform=True),
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "norm_bound": norm_bound,
}


def get_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """The aggregator registered as ``name`` (one of :data:`AGGREGATORS`), built with ``kwargs``.

    Raises :class:`ConfigError` for an unknown name or an option the rule does not take.
    """
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}")
    try:
        key: Any = (name, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:  # an unhashable option: build a fresh rule (it compiles on first use)
        key = None
    if key is not None and key in _BUILT:  # the same rule compiles once per process, not once per round
        return _BUILT[key]
    try:
        agg = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"aggregator {name!r} does not take options {sorted(kwargs)}: {exc}") from None
    agg = agg._replace(name=name)
    if key is not None:
        if len(_BUILT) >= 64:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = agg
    return agg


#: rules already built by :func:`get_aggregator`, by (name, options): pure, so shared
_BUILT: dict[Any, Aggregator] = {}
