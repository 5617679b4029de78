"""Private selection for hyperparameter tuning: the random number of trials and what releasing the best one costs.

Papernot & Steinke (ICLR 2022), "Hyperparameter Tuning with Renyi Differential Privacy": run a mechanism ``K``
times, ``K`` drawn from a truncated negative binomial distribution (their Definition 1; ``shape`` 1 is the
geometric distribution, 0 the logarithmic), and release only the best run; their Theorem 2 bounds the Renyi DP
of that release from the mechanism's own, and dp-accounting computes it (``RepeatAndSelectDpEvent`` in its RDP
accountant). This module holds that distribution (:func:`trials_pmf`, :func:`draw_trials`, which the coordinator
draws a session's number of trials with) and the bound a site charges (:func:`selection_bound`): the RDP bound
turned into ``(epsilon, delta)``, with the truncation at ``k_max`` trials (a site takes part in no more) added to
delta. docs/privacy.md, "Hyperparameter tuning", says what it assumes.
"""

from __future__ import annotations

import math
import random
from typing import Any

from fedjax_room.dp.accounting import RDP_ORDERS, _quiet_absl
from fedjax_room.errors import PrivacyError

__all__ = [
    "DEFAULT_SHAPE",
    "DELTA_SHARE",
    "MAX_K",
    "TAIL_SHARE",
    "draw_trials",
    "rdp_curve",
    "selection_bound",
    "trials_gamma",
    "trials_pmf",
]

#: the shape of a session's distribution of trials when a run gives none (1: geometric), at the coordinator and sites
DEFAULT_SHAPE = 1.0
#: a tuning session's delta: the RDP bound is converted at ``DELTA_SHARE`` of the trial's delta, and the truncation
#: at ``k_max`` trials adds at most ``TAIL_SHARE`` of that (see :func:`selection_bound`)
DELTA_SHARE = 0.5
TAIL_SHARE = 0.1
#: the most trials a session's bound ``k_max`` may be (a distribution whose tail needs more is refused)
MAX_K = 100_000


def trials_gamma(mean: float, shape: float) -> float:
    """The ``gamma`` of the truncated negative binomial with this mean and shape, as dp-accounting's bound uses it
    (``shape`` 1: geometric, ``P(K=k) = gamma (1-gamma)^(k-1)``; 0: logarithmic)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    return float(rdp._gamma_truncated_negative_binomial(float(shape), float(mean)))


def trials_pmf(mean: float, shape: float, count: int) -> list[float]:
    """``P(K = k)`` for ``k = 1 .. count`` under Papernot & Steinke's truncated negative binomial distribution
    (Definition 1 of their paper; ``K >= 1``): ``P(K=k) = (1-gamma)^k / (gamma^-shape - 1) * prod_{l<k}
    (l+shape)/(l+1)``, and ``(1-gamma)^k / (k ln(1/gamma))`` for shape 0."""
    gamma = trials_gamma(mean, shape)
    if shape == 0:
        p = (1 - gamma) / math.log(1 / gamma)
    else:
        p = (1 - gamma) * shape / math.expm1(-shape * math.log(gamma))
    out = []
    for k in range(1, count + 1):
        out.append(p)
        p *= (1 - gamma) * (k + shape) / (k + 1)
    return out


def _k_max(mean: float, shape: float, tail: float) -> tuple[int, float]:
    """The smallest ``k`` with ``P(K > k) <= tail``, and that bound on ``P(K > k)`` (summed from the far end, so it
    is accurate where ``1 - P(K <= k)`` would round to 0)."""
    gamma = trials_gamma(mean, shape)
    count = 1024
    while True:
        pmf = trials_pmf(mean, shape, count)
        # past ``count`` the terms fall at least geometrically, at rate ratio: a bound on P(K > count)
        ratio = (1 - gamma) * max(1.0, (count + shape) / (count + 1))
        beyond = pmf[-1] * ratio / (1 - ratio)
        if beyond <= tail or count >= MAX_K:
            break
        count = min(MAX_K, count * 4)
    if beyond > tail:
        raise PrivacyError(
            f"a tuning session of mean {mean:g} trials and shape {shape:g} would need more than {MAX_K} trials to "
            "bound its tail; ask for a larger tune_shape or fewer trials"
        )
    k = count
    while k > 1 and beyond + pmf[k - 1] <= tail:  # beyond bounds P(K > k)
        beyond += pmf[k - 1]
        k -= 1
    return k, beyond


def selection_bound(event: Any, mean: float, shape: float, delta: float) -> dict[str, Any]:
    """What a tuning session of trials each at most ``event`` costs when only its best trial is released.

    Papernot & Steinke (ICLR 2022), "Hyperparameter Tuning with Renyi Differential Privacy": the number of trials
    ``K`` is drawn from the truncated negative binomial distribution of ``mean`` and ``shape``, and releasing the
    best of ``K`` runs of a mechanism is bounded in RDP by their Theorem 2 (dp-accounting's ``RepeatAndSelectDpEvent``
    over its RDP accountant, at :data:`~fedjax_room.dp.accounting.RDP_ORDERS`); that RDP curve gives ``epsilon`` at
    ``delta_rdp = DELTA_SHARE * delta``. A site takes part in at most ``k_max`` trials, the smallest ``k`` with
    ``(1 + e^epsilon) P(K > k) <= TAIL_SHARE * delta_rdp``. The truncated session differs from the untruncated one
    only when ``K > k_max`` (probability ``tail``), so it is ``(epsilon, delta_rdp + (1 + e^epsilon) tail)``-DP:
    that is the charge, ``epsilon`` and ``delta``."""
    import dp_accounting as dpa

    rdp = dpa.rdp.RdpAccountant(list(RDP_ORDERS))
    delta_rdp = DELTA_SHARE * float(delta)
    with _quiet_absl():  # dp-accounting's notes on the orders it leaves out (it handles them)
        rdp.compose(dpa.dp_event.RepeatAndSelectDpEvent(event, float(mean), float(shape)))
        eps = float(rdp.get_epsilon(delta_rdp))
    if not math.isfinite(eps) or eps > 100:
        raise PrivacyError(f"a tuning session of these trials would cost epsilon {eps:.3g}; ask for less per trial")
    factor = 1 + math.exp(eps)
    k_max, tail = _k_max(float(mean), float(shape), TAIL_SHARE * delta_rdp / factor)
    return {
        "epsilon": eps,
        "delta": delta_rdp + factor * tail,
        "delta_rdp": delta_rdp,
        "tail": tail,
        "k_max": k_max,
    }


def draw_trials(mean: float, shape: float, rng: Any = None) -> int:
    """One draw of a session's number of trials from its distribution (``rng``: a ``random.Random``; default the
    operating system's generator), by inverting its distribution function."""
    u = (rng or random.SystemRandom()).random()
    k, count = 0, 1024
    while True:
        for p in trials_pmf(mean, shape, count)[k:]:
            k += 1
            u -= p
            if u < 0:
                return k
        if count >= MAX_K:
            return MAX_K
        count *= 4


def rdp_curve(event: Any) -> Any:
    """The Renyi DP of ``event`` at each of :data:`~fedjax_room.dp.accounting.RDP_ORDERS` (a numpy array)."""
    import dp_accounting as dpa

    acc = dpa.rdp.RdpAccountant(list(RDP_ORDERS))
    with _quiet_absl():
        acc.compose(event)
    return acc._rdp  # dp_accounting.rdp.RdpAccountant keeps the curve here (no public getter)
