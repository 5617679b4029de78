"""Poisson sampling of training batches, padded to a fixed size for ``jax.jit``.

DP-SGD's privacy accounting (:mod:`fedjax_room.dp.accounting`, the
``PoissonSampledDpEvent``) assumes **Poisson sampling**: at every step each of
the ``N`` examples is included independently with probability ``q``, so the
batch size is random, ``Binomial(N, q)``. :func:`poisson_sample` draws exactly
that and pads the batch to ``max_batch_size`` so every step has one shape (one
compilation). Padding slots hold index ``0`` and ``mask == False``; the clipping
code gives them zero weight.

Overflow: if more than ``max_batch_size`` examples are drawn, the batch is
**truncated** to a uniformly random subset of ``max_batch_size`` of them and a
:class:`RuntimeWarning` is issued. Truncation is not Poisson sampling, so the
accounting no longer holds exactly for that step; choose ``max_batch_size`` with
:func:`max_batch_size_for`, which makes overflow rarer than ``1e-9`` per step
(fold that probability into ``delta`` if you want to be pedantic).

The sampler uses a ``numpy.random.Generator`` (host side). For privacy its seed
must be secret and unpredictable (e.g. ``np.random.default_rng(secrets.randbits(128))``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError

__all__ = ["max_batch_size_for", "poisson_sample"]

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
      ``(indices: int32[max_batch_size], mask: bool[max_batch_size])``. The sampled
      indices come first in ascending order with ``mask`` True; the rest are
      padding (index 0, mask False). On overflow see the module docstring.
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng must be a numpy.random.Generator, e.g. np.random.default_rng(secret_seed)")
    num_examples, rate = _check(num_examples, sampling_rate)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int | np.integer) or max_batch_size <= 0:
        raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    # Binomial size then a uniform subset of that size: the same law as N independent coin flips.
    count = int(rng.binomial(num_examples, rate)) if num_examples else 0
    if count > max_batch_size:
        warnings.warn(
            f"Poisson sample of {count} examples exceeds max_batch_size={max_batch_size}; truncated to a random "
            "subset. Privacy accounting assumes no truncation: use max_batch_size_for(num_examples, sampling_rate).",
            RuntimeWarning,
            stacklevel=2,
        )
        count = int(max_batch_size)
    chosen = np.sort(rng.choice(num_examples, size=count, replace=False)) if count else np.zeros(0, np.int64)
    indices = np.zeros(max_batch_size, np.int32)
    mask = np.zeros(max_batch_size, bool)
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
