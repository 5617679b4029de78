"""A DP exploration query as data: its checked spec, the integer vector each site releases, how it is finished.

Every party reads a query the same way, so this module is pure (numpy only) and sits in the protocol layer:

* the analyst's client checks a query before sending it (:meth:`QuerySpec.from_dict`), and turns the released
  vectors into values with confidence intervals (:func:`finish`, :func:`noise_variance`);
* the coordinator checks it again (a hostile analyst may bypass the client) and routes it;
* each site checks it once more against its schema and policy (:mod:`fedjax_room.site.queries`) and releases
  the noised integer vector of its :func:`layout`.

Everything a query reads is **declared by the analyst, hence public**: the bins of a histogram, the bounds of a
sum, mean or quantile, the keys of a group-by and the quantile levels; nothing is ever read off the data. Every
size is bounded here before anything is allocated (:data:`MAX_BINS`, :data:`MAX_KEYS`, :data:`MAX_QUANTILES`,
:data:`MAX_ENTRIES`).

The released vector is made of **blocks** (:class:`Block`): a block has ``size`` integer entries, the most one
record can change it by in L1 norm (``sensitivity``, for add/remove-one-record neighbours), and the share of the
query's epsilon it spends. Each entry gets discrete Laplace noise of scale ``sensitivity / epsilon_block``; one
record touches at most one entry of each block, so the whole release is ``epsilon``-DP (basic composition over
blocks). Real values (sums, means) are released in fixed point: each clamped value is rounded to an integer in
``[-FIXED_UNITS, FIXED_UNITS]`` (``scale`` units per unit of the feature), so the sensitivity is an integer and
the noise stays on the integers (exactly what secure aggregation needs). See ``docs/queries.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError

__all__ = [
    "FIXED_UNITS",
    "KINDS",
    "MAX_BINS",
    "MAX_ENTRIES",
    "MAX_KEYS",
    "MAX_QUANTILES",
    "QUANTILE_GRID",
    "Block",
    "QuerySpec",
    "ci_halfwidth",
    "dlaplace_variance",
    "entry_halfwidth",
    "noise_halfwidth",
    "finish",
    "layout",
    "noise_variance",
    "quantile_ci",
]

#: The kinds of query, in the order the docs list them.
KINDS = ("count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing")
#: Kinds that take a ``by=`` group-by column with declared ``keys``.
GROUPED = ("count", "sum", "mean")
#: Most bins of a histogram (``len(bins) - 1``).
MAX_BINS = 256
#: Most keys of a group-by.
MAX_KEYS = 64
#: Most quantile levels in one query.
MAX_QUANTILES = 32
#: Bins of the histogram over the bounds that quantiles are read from.
QUANTILE_GRID = 128
#: Longest released vector.
MAX_ENTRIES = 1024
#: Fixed-point units of the largest absolute (clamped) value of a sum or mean: its integer sensitivity.
FIXED_UNITS = 4096
#: Largest epsilon one query may ask for, whatever a site's policy says.
MAX_EPSILON = 100.0
#: Longest a query may wait for its sites, in seconds; the default.
MAX_TIMEOUT = 600.0
DEFAULT_TIMEOUT = 60.0
#: Largest absolute bound, bin edge or key.
MAX_ABS = 1e12
#: Most sites one query may name.
MAX_SITES = 64


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > MAX_ABS:
        raise ConfigError(f"{what} must be at most {MAX_ABS:g} in absolute value, got {value!r}")
    return float(value)


def _numbers(value: Any, what: str, *, most: int) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"{what} must be a list of numbers, got {type(value).__name__}")
    if len(value) > most:
        raise ConfigError(f"{what} has {len(value)} values; at most {most} are allowed")
    return tuple(_number(v, f"{what}[{i}]") for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class QuerySpec:
    """One checked query (see :meth:`from_dict` for the rules); ``to_dict`` is its wire form."""

    kind: str
    epsilon: float
    feature: str | None = None
    bins: tuple[float, ...] | None = None
    bounds: tuple[float, float] | None = None
    quantiles: tuple[float, ...] | None = None
    by: str | None = None
    keys: tuple[str | int, ...] | None = None
    sites: tuple[str, ...] | None = None
    secure: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpec:
        """Check a query; :class:`~fedjax_room.errors.ConfigError` names what is wrong and what would do."""
        if not isinstance(data, Mapping):
            raise ConfigError("a query must be a map of its settings")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(str(k) for k in data if k not in known)
        if extra:
            raise ConfigError(f"unknown query settings {extra[:8]}; known: {sorted(known)}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"query kind must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
        eps = data.get("epsilon")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or not eps > 0:
            raise ConfigError(f"a query needs epsilon=, a positive number (e.g. epsilon=0.5), got {eps!r}")
        if eps > MAX_EPSILON:
            raise ConfigError(f"epsilon {eps:g} is above the largest one query may ask for ({MAX_EPSILON:g})")
        feature = data.get("feature")
        needs_feature = kind in ("histogram", "sum", "mean", "quantiles", "missing")
        if needs_feature:
            if not isinstance(feature, str) or not feature or len(feature) > 256:
                raise ConfigError(f"a {kind} query needs the feature it reads (a column name of the schema)")
        elif feature is not None:
            raise ConfigError(f"a {kind} query reads no feature; leave feature out")
        bins = bounds = quantiles = None
        if data.get("bins") is not None:
            if kind != "histogram":
                raise ConfigError(f"bins= is for histograms; a {kind} query takes no bins")
            bins = _numbers(data["bins"], "bins", most=MAX_BINS + 1)
            if len(bins) < 2 or any(b <= a for a, b in zip(bins, bins[1:], strict=False)):
                raise ConfigError("bins must be at least two increasing edges, e.g. bins=[0, 4, 8, 16]")
        elif kind == "histogram":
            raise ConfigError(
                "a histogram needs declared bins= (public edges, e.g. bins=[0, 4, 8, 16]); "
                "bins are never read off the data"
            )
        if data.get("bounds") is not None:
            if kind not in ("sum", "mean", "quantiles"):
                raise ConfigError(f"bounds= is for sum, mean and quantiles; a {kind} query takes none")
            lo, hi = _numbers(data["bounds"], "bounds", most=2) + (math.nan,) * (2 - len(data["bounds"]))
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError("bounds must be two numbers low < high, e.g. bounds=[0, 100]")
            bounds = (lo, hi)
        elif kind in ("sum", "mean", "quantiles"):
            raise ConfigError(
                f"a {kind} query needs declared bounds= (public, e.g. bounds=[0, 100]); values are "
                "clamped to them, and they are never read off the data"
            )
        if data.get("quantiles") is not None:
            if kind != "quantiles":
                raise ConfigError(f"quantiles= is for quantile queries; a {kind} query takes none")
            quantiles = _numbers(data["quantiles"], "quantiles", most=MAX_QUANTILES)
            if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
                raise ConfigError("quantiles must be levels in [0, 1], e.g. quantiles=[0.25, 0.5, 0.75]")
        elif kind == "quantiles":
            quantiles = (0.25, 0.5, 0.75)
        by, keys = data.get("by"), data.get("keys")
        if by is not None:
            if kind not in GROUPED:
                raise ConfigError(f"by= (group by) is for {', '.join(GROUPED)} queries, not {kind}")
            if not isinstance(by, str) or not by or len(by) > 256:
                raise ConfigError("by= must name a categorical column of the schema (or its label)")
            if keys is None:
                raise ConfigError(
                    f"a group-by needs declared keys= (the values of {by!r} to report, e.g. keys=[0, 1]); "
                    "keys are never read off the data"
                )
            if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
                raise ConfigError("keys must be a non-empty list of values")
            if len(keys) > MAX_KEYS:
                raise ConfigError(f"keys has {len(keys)} values; at most {MAX_KEYS} are allowed")
            checked: list[str | int] = []
            for k in keys:
                if (
                    isinstance(k, bool)
                    or not isinstance(k, int | str)
                    or (isinstance(k, str) and not 0 < len(k) <= 256)
                ):
                    raise ConfigError(f"each key must be an integer or a short string, got {k!r}")
                if isinstance(k, int) and abs(k) > MAX_ABS:
                    raise ConfigError(f"key {k} is too large")
                checked.append(k)
            if len(set(checked)) != len(checked):
                raise ConfigError("keys must not repeat")
            keys = tuple(checked)
        elif keys is not None:
            raise ConfigError("keys= goes with by= (the column to group by)")
        sites = data.get("sites")
        if sites is not None:
            if isinstance(sites, str | bytes) or not isinstance(sites, Sequence) or not sites:
                raise ConfigError("sites must be a non-empty list of site names")
            if len(sites) > MAX_SITES or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in sites):
                raise ConfigError(f"sites must be at most {MAX_SITES} site names")
            sites = tuple(dict.fromkeys(sites))
        secure = data.get("secure", False)
        if not isinstance(secure, bool):
            raise ConfigError("secure must be true or false")
        timeout = data.get("timeout", DEFAULT_TIMEOUT)
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
            raise ConfigError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {timeout!r}")
        spec = cls(
            kind=str(kind),
            epsilon=float(eps),
            feature=feature if needs_feature else None,
            bins=bins,
            bounds=bounds,
            quantiles=quantiles,
            by=by,
            keys=keys if by is not None else None,
            sites=sites,
            secure=secure,
            timeout=float(timeout),
        )
        if sum(b.size for b in layout(spec, classes=1)) > MAX_ENTRIES:
            raise ConfigError(f"the query releases more than {MAX_ENTRIES} values; ask for fewer bins or keys")
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples; unset settings left out)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "epsilon": self.epsilon,
            "secure": self.secure,
            "timeout": self.timeout,
        }
        for name in ("feature", "bins", "bounds", "quantiles", "by", "keys", "sites"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def with_secure(self, secure: bool) -> QuerySpec:
        return dataclasses.replace(self, secure=secure)

    @property
    def groups(self) -> int:
        return len(self.keys) if self.keys is not None else 1

    @property
    def fixed_scale(self) -> float:
        """Fixed-point units per unit of the feature (sum: of the value; mean: of its offset from the middle)."""
        assert self.bounds is not None
        lo, hi = self.bounds
        half = max(abs(lo), abs(hi)) if self.kind == "sum" else (hi - lo) / 2
        return FIXED_UNITS / half

    @property
    def middle(self) -> float:
        assert self.bounds is not None
        return (self.bounds[0] + self.bounds[1]) / 2


@dataclasses.dataclass(frozen=True)
class Block:
    """``size`` entries of the released vector, each noised with discrete Laplace of scale ``sensitivity /
    epsilon`` (one record changes at most one entry, by at most ``sensitivity``)."""

    name: str
    size: int
    sensitivity: int
    epsilon: float

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon


def layout(spec: QuerySpec, *, classes: int) -> list[Block]:
    """The blocks of the integer vector a site releases for ``spec`` (``classes``: the schema's class count)."""
    g, eps = spec.groups, spec.epsilon
    if spec.kind == "count":
        return [Block("count", g, 1, eps)]
    if spec.kind == "count_by_label":
        return [Block("count", max(1, int(classes)), 1, eps)]
    if spec.kind == "histogram":
        assert spec.bins is not None
        return [Block("count", len(spec.bins) - 1, 1, eps)]
    if spec.kind == "missing":
        return [Block("count", 2, 1, eps)]
    if spec.kind == "quantiles":
        return [Block("count", QUANTILE_GRID, 1, eps)]
    if spec.kind == "sum":
        return [Block("sum", g, FIXED_UNITS, eps)]
    # mean: the sum of offsets from the middle and the count, half the epsilon each
    return [Block("sum", g, FIXED_UNITS, eps / 2), Block("count", g, 1, eps / 2)]


def vector_scales(blocks: Sequence[Block]) -> np.ndarray:
    """The discrete Laplace scale of each entry of the released vector."""
    return np.concatenate([np.full(b.size, b.scale) for b in blocks]) if blocks else np.zeros(0)


def dlaplace_variance(scale: np.ndarray | float) -> np.ndarray:
    """Variance of the discrete Laplace distribution of ``scale`` (``P(k) ~ exp(-|k| / scale)``):
    ``2t / (1 - t)^2`` with ``t = exp(-1 / scale)``."""
    s = np.asarray(scale, np.float64)
    t = np.exp(-1.0 / np.maximum(s, 1e-300))
    return np.where(s > 0, 2 * t / np.maximum((1 - t) ** 2, 1e-300), 0.0)


def noise_variance(spec: QuerySpec, classes: int, shares: float) -> np.ndarray:
    """The noise variance of each entry of a released vector carrying ``shares`` sites' worth of noise (a site's
    own answer: 1; the plain sum of ``n`` answers: ``n``; a secure sum of ``k`` survivors of a round that
    releases sums of at least ``m``: ``k / m``, never below 1)."""
    return dlaplace_variance(vector_scales(layout(spec, classes=classes))) * float(shares)


def _z(level: float) -> float:
    from statistics import NormalDist

    if not 0 < level < 1:
        raise ConfigError(f"the confidence level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def ci_halfwidth(variance: np.ndarray, level: float) -> np.ndarray:
    """Half-width of a ``level`` interval for a sum of discrete Laplace noises of total ``variance``: the normal
    one, and never less than the exact tail of one Laplace of that variance (heavier tails than a normal)."""
    var = np.asarray(variance, np.float64)
    laplace = np.sqrt(var / 2) * math.log(1 / (1 - level))
    return np.maximum(_z(level) * np.sqrt(var), laplace)


#: Largest support (values of one Pólya variable) the exact interval of a count sums over; past it, the bound above.
_EXACT_SUPPORT = 200_000


@functools.lru_cache(maxsize=512)
def _exact_halfwidth(scale: float, shares: float, level: float) -> float | None:
    """The smallest integer ``h`` with ``P(|N| <= h) >= level`` for the noise ``N`` of an integer entry carrying
    ``shares`` discrete Laplace noises of ``scale``: ``N = A - B`` with ``A, B ~ NB(shares, 1 - exp(-1/scale))``
    (the plain sum of ``k`` sites' noises is ``k`` shares; a secure sum ``survivors / min_clients``). None when its
    support is too large to sum (large scales, where the bound of :func:`ci_halfwidth` is tight anyway)."""
    from scipy.signal import fftconvolve
    from scipy.stats import nbinom

    p = -math.expm1(-1.0 / scale)
    top = nbinom.ppf(1 - 1e-12, shares, p)
    if not math.isfinite(top) or top > _EXACT_SUPPORT:
        return None
    n = int(top) + 1
    pmf = nbinom.pmf(np.arange(n + 1), shares, p)
    diff = np.clip(fftconvolve(pmf, pmf[::-1]), 0.0, None)  # index n is N = 0
    two_sided = np.concatenate([[diff[n]], diff[n + 1 :] + diff[n - 1 :: -1]])
    h = int(np.searchsorted(np.cumsum(two_sided), level * (1 - 1e-12)))
    return float(h)


#: The scale a large one's interval is read from (the noise's quantiles grow in proportion to its scale).
_REFERENCE_SCALE = 256.0


def noise_halfwidth(scale: float, shares: float, level: float) -> float:
    """Half-width of a ``level`` interval of the noise of one integer entry (``shares`` discrete Laplace noises of
    ``scale``): exact (:func:`_exact_halfwidth`) where its support is small enough to sum; for a larger scale, the
    exact one at :data:`_REFERENCE_SCALE` grown in proportion, plus one (the distribution tends to the difference
    of two gammas, whose quantiles scale exactly)."""
    exact = _exact_halfwidth(float(scale), float(shares), float(level))
    if exact is not None:
        return exact
    ref = _exact_halfwidth(_REFERENCE_SCALE, float(shares), float(level))
    if ref is None:  # an enormous number of shares: the normal or Laplace bound
        return float(ci_halfwidth(dlaplace_variance(scale) * shares, level))
    return float(math.ceil(ref * scale / _REFERENCE_SCALE) + 1)


def entry_halfwidth(spec: QuerySpec, classes: int, shares: float, level: float) -> np.ndarray:
    """Half-width of a ``level`` interval for each entry of the released vector, in its integer units
    (:func:`noise_halfwidth` of its block's scale)."""
    _z(level)
    blocks = layout(spec, classes=classes)
    return np.concatenate([np.full(b.size, noise_halfwidth(b.scale, shares, level)) for b in blocks])


def _split(spec: QuerySpec, raw: np.ndarray, classes: int) -> list[np.ndarray]:
    out, at = [], 0
    for b in layout(spec, classes=classes):
        out.append(np.asarray(raw[at : at + b.size], np.float64))
        at += b.size
    return out


def finish(spec: QuerySpec, raw: Sequence[float] | np.ndarray, classes: int) -> np.ndarray:
    """The query's values from a released (noised) integer vector: post-processing only."""
    parts = _split(spec, np.asarray(raw, np.float64), classes)
    if spec.kind in ("count", "count_by_label", "histogram", "missing"):
        return parts[0]
    if spec.kind == "sum":
        return parts[0] / spec.fixed_scale
    if spec.kind == "mean":
        assert spec.bounds is not None
        s, n = parts
        mean = spec.middle + (s / spec.fixed_scale) / np.maximum(n, 1.0)
        return np.asarray(np.clip(mean, spec.bounds[0], spec.bounds[1]), np.float64)
    return _quantiles(spec, parts[0])


def _edges(spec: QuerySpec) -> np.ndarray:
    assert spec.bounds is not None
    return np.linspace(spec.bounds[0], spec.bounds[1], QUANTILE_GRID + 1)


def _first(mask: np.ndarray) -> int:
    """The first index where ``mask`` holds (its length when it never does)."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else len(mask)


def _cumulative(counts: np.ndarray) -> tuple[np.ndarray, float]:
    """The noised cumulative counts at the edges (unbiased: nothing clipped) and their total (at least 1)."""
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(counts, np.float64))])
    return cum, max(float(cum[-1]), 1.0)


def _quantiles(spec: QuerySpec, counts: np.ndarray) -> np.ndarray:
    """Each level's value: where the noised empirical CDF first reaches it, interpolated within the bin."""
    assert spec.quantiles is not None
    edges = _edges(spec)
    cum, total = _cumulative(counts)
    cdf = cum / total
    out = []
    for q in spec.quantiles:
        j = _first(cdf >= q)
        if j <= 0:
            out.append(float(edges[0]))
        elif j >= len(edges):
            out.append(float(edges[-1]))
        else:
            lo, hi = max(cdf[j - 1], 0.0), cdf[j]
            frac = 0.0 if hi <= lo else min(1.0, max(0.0, (q - lo) / (hi - lo)))
            out.append(float(edges[j - 1] + frac * (edges[j] - edges[j - 1])))
    return np.array(out)


def quantile_ci(
    spec: QuerySpec, counts: np.ndarray, variance: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """A ``level`` interval for each quantile: invert the band ``cdf +- half / total`` of the noised cumulative
    counts (``half`` the interval of the noise summed up to each edge), out to the bin edges around it, so the
    grid's resolution is inside the interval."""
    assert spec.quantiles is not None
    edges = _edges(spec)
    cum, total = _cumulative(counts)
    half = ci_halfwidth(np.concatenate([[0.0], np.cumsum(np.asarray(variance, np.float64))]), level)
    upper, lower = (cum + half) / total, (cum - half) / total
    upper[-1] = lower[-1] = 1.0
    lo, hi = [], []
    for q in spec.quantiles:
        j_lo = _first(upper >= q)  # the first edge where even the upper band reaches q
        j_hi = _first(lower >= q)  # the first edge where the lower band reaches q
        lo.append(float(edges[min(len(edges) - 1, max(0, j_lo - 1))]))
        hi.append(float(edges[min(len(edges) - 1, j_hi)]))
    return np.array(lo), np.array(hi)
