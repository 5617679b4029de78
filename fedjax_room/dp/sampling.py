"""Poisson sampling of training batches, padded to a fixed size for ``jax.jit``.

DP-SGD's privacy accounting (:mod:`fedjax_room.dp.accounting`, the
``PoissonSampledDpEvent``) assumes **Poisson sampling**: at every step each of
the ``N`` examples is included independently with probability ``q``, so the
batch size is random, ``Binomial(N, q)``. :func:`poisson_sample` draws exactly
that and pads the batch to ``max_batch_size`` so every step has one shape (one
compilation). Padding slots hold index ``0`` and ``mask == False``; the clipping
code gives them zero weight.

Overflow: if more than ``max_batch_size`` examples are drawn, the batch is **not
truncated**: it is padded to the next multiple of ``max_batch_size`` instead (one more
compiled shape, and a :class:`RuntimeWarning` for the site's operator). Every step is
therefore exactly Poisson sampling whatever ``N`` and the cap are, so the
``PoissonSampledDpEvent`` accounts for it with no extra ``delta`` (an earlier version
truncated to a random subset, which is not Poisson sampling and was not in ``delta``).
``max_batch_size`` only sets the usual compiled shape: :func:`max_batch_size_for` makes
a larger batch rarer than ``1e-9`` per step, and :func:`overflow_probability` bounds
the chance that any of ``steps`` steps needs the larger shape (a binomial tail computed
exactly in log space, never above the Chernoff bound; union bound over the steps).
What that event can show is only *when* a step takes longer (a new compilation); timing
is outside the accounting model (an assumption, like the coordinator not timing a site's
rounds to the millisecond).

The sampler uses a ``numpy.random.Generator`` (host side). For privacy its seed
must be secret and unpredictable (e.g. ``np.random.default_rng(secrets.randbits(128))``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError

__all__ = ["binomial_tail", "max_batch_size_for", "overflow_probability", "poisson_sample"]

_MAX_EXAMPLES = 2**31 - 1


def _check(num_examples: Any, sampling_rate: Any) -> tuple[int, float]:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer) or num_examples < 0:
        raise ConfigError(f"num_examples must be a non-negative integer, got {num_examples!r}")
    if num_examples > _MAX_EXAMPLES:
        raise ConfigError(f"num_examples must fit in int32 (<= {_MAX_EXAMPLES}), got {num_examples}")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int | float | np.floating):
        raise ConfigError(f"sampling_rate must be a number in [0, 1], got {sampling_rate!r}")
    rate = float(sampling_rate)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"sampling_rate must be in [0, 1] (expected batch size / dataset size), got {rate}")
    return int(num_examples), rate


def poisson_sample(
    rng: np.random.Generator, num_examples: int, sampling_rate: float, max_batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one Poisson-sampled batch, padded to ``max_batch_size``.

    Args:
      rng: a ``numpy.random.Generator`` (secret seed).
      num_examples: dataset size ``N``.
      sampling_rate: ``q``, each example's inclusion probability.
      max_batch_size: the fixed padded size (see :func:`max_batch_size_for`).

    Returns:
      ``(indices: int32[B], mask: bool[B])`` with ``B = max_batch_size``, or on
      overflow the next multiple of it that holds the whole sample (see the module
      docstring). The sampled indices come first in ascending order with ``mask``
      True; the rest are padding (index 0, mask False).
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng must be a numpy.random.Generator, e.g. np.random.default_rng(secret_seed)")
    num_examples, rate = _check(num_examples, sampling_rate)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int | np.integer) or max_batch_size <= 0:
        raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    # Binomial size then a uniform subset of that size: the same law as N independent coin flips.
    count = int(rng.binomial(num_examples, rate)) if num_examples else 0
    size = int(max_batch_size)
    if count > size:  # never truncate (that would not be Poisson sampling): pad to a larger multiple
        size = -(-count // size) * size
        warnings.warn(
            f"Poisson sample of {count} examples exceeds max_batch_size={max_batch_size}; padded to {size} "
            "(one more compiled shape; the sample is kept whole, so the accounting still holds).",
            RuntimeWarning,
            stacklevel=2,
        )
    chosen = np.sort(rng.choice(num_examples, size=count, replace=False)) if count else np.zeros(0, np.int64)
    indices = np.zeros(size, np.int32)
    mask = np.zeros(size, bool)
    indices[:count] = chosen
    mask[:count] = True
    return indices, mask


def _binomial_tail_bound(n: int, q: float, k: int) -> float:
    """Chernoff bound on ``P(Binomial(n, q) >= k)`` for ``k > n q`` (exact at ``k == n``)."""
    if k > n:
        return 0.0
    a = k / n
    if a >= 1.0:
        return q**n
    kl = a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q))
    return math.exp(-n * kl)


def max_batch_size_for(num_examples: int, sampling_rate: float, overflow_probability: float = 1e-9) -> int:
    """A padded batch size that a Poisson sample exceeds with probability below ``overflow_probability``.

    Uses the Chernoff bound ``P(X >= k) <= exp(-N KL(k/N || q))`` for
    ``X ~ Binomial(N, q)``: rigorous (slightly conservative), no scipy needed.
    The result is at least 1 and at most ``num_examples`` (then overflow is impossible).
    """
    num_examples, rate = _check(num_examples, sampling_rate)
    if not 0.0 < overflow_probability < 1.0:
        raise ConfigError(f"overflow_probability must be in (0, 1), got {overflow_probability!r}")
    if num_examples == 0 or rate == 0.0:
        return 1
    if rate == 1.0:
        return num_examples
    # Overflow means X >= k + 1; find the smallest such k by bisection on the monotone bound.
    lo, hi = int(math.floor(num_examples * rate)), num_examples
    while lo < hi:
        mid = (lo + hi) // 2
        if _binomial_tail_bound(num_examples, rate, mid + 1) < overflow_probability:
            hi = mid
        else:
            lo = mid + 1
    return max(1, lo)


def binomial_tail(n: int, q: float, k: int) -> float:
    """An upper bound on ``P(Binomial(n, q) >= k)``, tight to ~1e-6 relative for ``k > n q``.

    For ``k > n q`` the terms ``P(X = j)``, ``j >= k``, fall at least geometrically (ratio
    ``r = (n - k) q / ((k + 1)(1 - q)) < 1``): the first up to 4096 are summed exactly in log space
    (``lgamma`` in float64; a 1e-6 safety factor covers its rounding), the rest bounded by the last one
    times ``r / (1 - r)``; the result never exceeds the Chernoff bound ``exp(-n KL(k/n || q))``.
    For ``k <= n q`` it returns 1 (no useful bound is needed there).
    """
    n, q = _check(n, q)
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ConfigError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k <= 0:
        return 1.0
    if k > n or q == 0.0:
        return 0.0
    if q == 1.0 or k <= n * q:
        return 1.0
    chernoff = _binomial_tail_bound(n, q, k)
    last = min(n, k + 4095)
    j = np.arange(k, last + 1, dtype=np.float64)
    log_terms = math.lgamma(n + 1) - _lgamma(j + 1) - _lgamma(n - j + 1) + j * math.log(q) + (n - j) * math.log1p(-q)
    top = float(np.max(log_terms))
    exact = math.exp(top) * float(np.sum(np.exp(log_terms - top)))
    if last < n:  # the remaining terms: a geometric series below the last one summed
        r = (n - last) * q / ((last + 1) * (1 - q))
        exact += math.exp(float(log_terms[-1])) * r / (1 - r)
    return min(1.0, chernoff, exact * (1 + 1e-6))


def _lgamma(x: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return np.asarray(gammaln(x), dtype=np.float64)


def overflow_probability(num_examples: int, sampling_rate: float, max_batch_size: int, steps: int = 1) -> float:
    """An upper bound on the chance that any of ``steps`` Poisson samples holds more than ``max_batch_size``.

    ``min(1, steps * P(Binomial(N, q) > max_batch_size))`` (union bound, :func:`binomial_tail`). Since
    :func:`poisson_sample` never truncates, this is only how often a step needs a larger compiled shape.
    """
    num_examples, rate = _check(num_examples, sampling_rate)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int | np.integer) or max_batch_size <= 0:
        raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if steps == 0:
        return 0.0
    return min(1.0, int(steps) * binomial_tail(num_examples, rate, int(max_batch_size) + 1))
