"""What an evaluation release is, agreed by sites and coordinator: the schedule, the integer vector, its noise,
the sum and its post-processing.

**Schedule.** A run evaluates its global model after round ``r`` when ``r`` is a multiple of the run's
``eval_every`` or the last round (:func:`eval_rounds`); unset, it evaluates halfway (``ceil(rounds / 2)``) and
after the last round. Every other round releases no metrics and spends nothing on them.

**The vector.** A site evaluates on at most its public held-out bound and forms, exactly in integers,

    v = (GAMMA_CW * correct, GAMMA_CW * wrong, sum_i round(GAMMA_LOSS * loss_i / LOSS_CLIP))

with ``loss_i`` clipped to ``[0, LOSS_CLIP]`` and ``wrong = count - correct``. Adding or removing one record moves
exactly one of the first two coordinates by ``GAMMA_CW`` and the third by at most ``GAMMA_LOSS``: L2 sensitivity
``DELTA2 = sqrt(GAMMA_CW^2 + GAMMA_LOSS^2) <= SCALE`` (L1 ``DELTA1 = GAMMA_CW + GAMMA_LOSS``). Splitting the
count into correct and wrong halves the noise on the accuracy compared with noising ``(count, correct)``: a
record is in only one of them.

**The noise.** Skellam (``Poisson(mu/2) - Poisson(mu/2)``, variance ``mu``) on each coordinate, in integer units:
a sum of independent Skellams is exactly Skellam, so noise split between sites adds up exactly, and the integers
go through the SecAgg ring with no rounding after the noise. A site whose plan says evaluation noise multiplier
``sigma`` (relative to ``SCALE``) wants every sum it is in to carry variance ``(sigma * SCALE)^2``:

* plain runs: the coordinator sees each site's release, so each site adds all of it
  (:func:`share_variance` with ``secure=False``); the sum of ``n`` sites then carries ``n`` times that;
* secure runs: the coordinator sees only the sum of at least ``min_clients`` (``t``) sites (SecAgg never unmasks
  fewer), so each site adds ``(floor * SCALE)^2 / t`` plus ``((sigma^2 - floor^2) * SCALE^2)`` of its own, where
  ``floor`` is the config-derived evaluation noise every site's plan shares (``eval_noise_floor``). Any released
  sum of ``k >= t`` honest sites carries at least ``floor^2 * SCALE^2 + (sigma_i^2 - floor^2) * SCALE^2 =
  (sigma_i * SCALE)^2`` for each site ``i`` in it. A dropped site only removes its share; the threshold keeps
  ``k >= t``. Assumption (the same as distributed DP's, :mod:`fedjax_room.secagg.ddp`): the sites in the sum add
  their shares; ``f`` colluding sites that add none leave ``(t - f) / t`` of the floor variance.

**The sum.** The coordinator adds the sites' vectors (plain) or unmasks their sum (secure), and divides by the
scales (:func:`decode_sum`); :func:`released` post-processes it into what an analyst sees: accuracy
``correct / (correct + wrong)`` with both clamped at 0 (so in ``[0, 1]``), loss ``>= 0``, nothing when the
released count is under :data:`COUNT_FLOOR` (nothing is ever NaN), and the standard deviation of each figure
from the noise the plans state (:func:`noise_std`, by the delta method).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "COUNT_FLOOR",
    "DELTA1",
    "DELTA2",
    "EVAL_LENGTH",
    "EVAL_MODULUS_BITS",
    "GAMMA_CW",
    "GAMMA_LOSS",
    "LOSS_CLIP",
    "SCALE",
    "Released",
    "decode_sum",
    "eval_every_default",
    "eval_rounds",
    "is_eval_round",
    "noise_std",
    "plan_noise",
    "released",
    "ring_to_signed",
    "share_variance",
    "signed_to_ring",
]

#: Per-example losses are clipped to [0, LOSS_CLIP] before summing.
LOSS_CLIP = 5.0
#: The integer scale of one unit of noise multiplier (noise standard deviation ``sigma * SCALE`` per coordinate).
SCALE = 4096
#: Integer weight of one correct (or wrong) record: 70% of the squared sensitivity goes to (correct, wrong).
GAMMA_CW = int(math.floor(SCALE * math.sqrt(0.7)))
#: Integer weight of one record's (clipped, scaled) loss: the other 30%.
GAMMA_LOSS = int(math.floor(SCALE * math.sqrt(0.3)))
#: L2 and L1 sensitivity of the integer vector to adding or removing one record.
DELTA2 = math.sqrt(GAMMA_CW**2 + GAMMA_LOSS**2)
DELTA1 = float(GAMMA_CW + GAMMA_LOSS)
#: Length of the vector and the modulus of its SecAgg session.
EVAL_LENGTH = 3
EVAL_MODULUS_BITS = 64
#: A released count under this many records shows no accuracy or loss (too few to divide by).
COUNT_FLOOR = 1.0


def eval_every_default(rounds: int) -> int:
    """The schedule of a run that leaves ``eval_every`` unset: halfway and after the last round."""
    return max(1, math.ceil(rounds / 2))


def eval_rounds(rounds: int, eval_every: int | None) -> tuple[int, ...]:
    """The rounds after which the global model is evaluated: multiples of ``eval_every`` and the last."""
    every = eval_every_default(rounds) if eval_every is None else int(eval_every)
    return tuple(r for r in range(1, rounds + 1) if r % every == 0 or r == rounds)


def is_eval_round(round: int, rounds: int, eval_every: int | None) -> bool:
    """Whether round ``round`` of a run with ``rounds`` rounds and ``eval_every`` is evaluated."""
    every = eval_every_default(rounds) if eval_every is None else int(eval_every)
    return 1 <= round <= rounds and (round % every == 0 or round == rounds)


def share_variance(sigma: float, floor: float, *, secure: bool, min_clients: int) -> float:
    """The Skellam variance (integer units, per coordinate) one site adds (module docstring)."""
    total = (float(sigma) * SCALE) ** 2
    if not secure:
        return total
    low = min(float(floor), float(sigma))
    return (low * SCALE) ** 2 / max(1, int(min_clients)) + (total - (low * SCALE) ** 2)


def decode_sum(total: Iterable[float]) -> tuple[float, float, float]:
    """``(correct, wrong, loss_sum)`` from the summed integer vector (signed integers)."""
    c, w, loss = (float(v) for v in total)
    return c / GAMMA_CW, w / GAMMA_CW, loss / GAMMA_LOSS * LOSS_CLIP


def ring_to_signed(total: np.ndarray) -> np.ndarray:
    """The unmasked SecAgg sum (uint64 ring) as signed integers."""
    from fedjax_room.secagg.encoding import to_signed

    return to_signed(np.asarray(total, np.uint64), EVAL_MODULUS_BITS)


def signed_to_ring(values: np.ndarray) -> np.ndarray:
    """Signed integers as a SecAgg ring vector (modulus ``2**EVAL_MODULUS_BITS``)."""
    from fedjax_room.secagg.encoding import from_signed

    return from_signed(np.asarray(values, np.int64), EVAL_MODULUS_BITS)


def noise_std(variances: Iterable[float]) -> tuple[float, float]:
    """Standard deviations of ``(correct or wrong, loss_sum)`` in a sum whose sites added ``variances``."""
    total = float(sum(variances))
    return math.sqrt(total) / GAMMA_CW, math.sqrt(total) / GAMMA_LOSS * LOSS_CLIP


@dataclasses.dataclass(frozen=True)
class Released:
    """What an analyst sees of one evaluation (None where nothing can be shown)."""

    accuracy: float | None
    loss: float | None
    count: float | None
    accuracy_std: float | None
    loss_std: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def released(correct: float, wrong: float, loss_sum: float, *, cw_std: float, loss_std: float) -> Released:
    """Post-process a summed release (module docstring): accuracy in [0, 1], loss >= 0, never NaN."""
    values = (correct, wrong, loss_sum, cw_std, loss_std)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return Released(None, None, None, None, None)
    c, w = max(0.0, float(correct)), max(0.0, float(wrong))
    n = c + w
    if n < COUNT_FLOOR:
        return Released(None, None, None, None, None)
    acc = c / n
    loss = max(0.0, float(loss_sum) / n)
    acc_std = min(0.5, cw_std * math.sqrt((1 - acc) ** 2 + acc**2) / n)
    l_std = math.sqrt(loss_std**2 + 2 * (loss * cw_std) ** 2) / n
    return Released(acc, loss, n, acc_std, l_std)


def plan_noise(plan: Mapping[str, Any]) -> tuple[float, float]:
    """``(eval_noise_multiplier, eval_noise_floor)`` from a site's public plan (the floor defaults to the
    multiplier: a plan that states none shares nothing)."""

    def num(key: str, default: float) -> float:
        v = plan.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            return default
        return float(v)

    sigma = num("eval_noise_multiplier", 10.0)
    return sigma, min(sigma, num("eval_noise_floor", sigma))
