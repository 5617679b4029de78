"""How far the coordinator believes what a site says about itself: weights and evaluation counts.

A site declares a coarse size once (``site_status.record_count``, e.g. ``"~500"``: its training and held-out
records rounded to two significant digits) and, per run, a FedAvg ``weight`` in its ``run_accept`` plan (its
coarse training size). Everything else it reports later is bounded by those declarations:

- a plan whose ``weight`` exceeds the declared size is refused (``bad_plan``) — an honest site's coarse
  training size is never above its coarse total;
- an ``update``'s ``weight`` is clamped to the plan's weight (to the declared size when the plan states
  none), so one site's share of a FedAvg mean is at most its plan weight over the sum, whatever it sends;
- an evaluation's noised ``(count, correct, loss_sum)`` is clamped to the range an honest site can produce:
  ``count`` in ``[0, size + margin]``, ``correct`` in ``[-margin, count + margin]`` and ``loss_sum`` in
  ``[-LOSS_CLIP * margin, LOSS_CLIP * (count + margin)]``, where ``size`` is the declared size and ``margin``
  is :data:`NOISE_SIGMAS` standard deviations of the site's evaluation noise (``eval_noise_multiplier *
  sqrt(3)`` from its plan; :data:`DEFAULT_EVAL_NOISE` when the plan does not say), itself at most the
  declared size. Noised values may legitimately fall slightly outside ``[0, count]``, hence the margin: the
  values are clamped, not refused, and a clamp is logged.

The declared size itself is the site's word: it is public (``room.sites()`` shows it), so a site that inflates
it does so in view of the analyst and the other data owners.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_EVAL_NOISE",
    "NOISE_SIGMAS",
    "bound_metrics",
    "bound_weight",
    "declared_size",
    "eval_margin",
    "weight_problem",
]

#: How many standard deviations of a site's evaluation noise a noised count may stray past its true range.
NOISE_SIGMAS = 6.0
#: The evaluation noise multiplier assumed when a plan does not state one (the fixed-noise default).
DEFAULT_EVAL_NOISE = 10.0
#: sqrt(3): per unit of a plan's evaluation noise multiplier, about the noise of a site's noised count (sqrt(2) *
#: SCALE / GAMMA_CW, ``protocol/evaluation.py``: 1.69) and a fifth of its loss sum's, so the margin is ~6 of them.
_EVAL_SENSITIVITY = math.sqrt(3.0)
#: ``site.plan.LOSS_CLIP``: per-example losses are clipped to [0, LOSS_CLIP] before summing.
_LOSS_CLIP = 5.0
_COUNT = re.compile(r"\s*~?\s*(?:\d{1,15}\s*-\s*)?(\d{1,15})\s*")


def declared_size(record_count: Any) -> int | None:
    """The coarse size in a ``site_status.record_count`` (``"~500"`` -> 500, ``"500-1000"`` -> 1000); None when
    it states none."""
    if isinstance(record_count, int) and not isinstance(record_count, bool):
        return record_count if record_count >= 0 else None
    if not isinstance(record_count, str):
        return None
    match = _COUNT.fullmatch(record_count)
    return int(match.group(1)) if match else None


def weight_problem(plan: Mapping[str, Any], size: int | None) -> str | None:
    """Why a plan's ``weight`` cannot be accepted given the site's declared ``size`` (None: it can).

    A plan without a weight is accepted: its updates are then bounded by the declared size itself.
    """
    if "weight" not in plan:
        return None
    weight = plan.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        return f"weight must be a positive number (the site's coarse training size), got {weight!r}"
    if size is None:
        return "the site declared no size (site_status record_count such as '~500'), so no weight can be accepted"
    if weight > size:
        return f"weight {weight:g} is more than the ~{size} records this site declared"
    return None


def bound_weight(weight: float, plan: Mapping[str, Any], size: int | None = None) -> float:
    """An update's (positive) ``weight`` clamped to the plan's weight (else the declared ``size``, else 1)."""
    cap = plan.get("weight")
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap <= 0:
        cap = float(size) if size else 1.0
    return float(min(float(weight), float(cap)))


def eval_margin(plan: Mapping[str, Any], size: int | None) -> float:
    """How far an honest site's noised counts may stray: NOISE_SIGMAS sigmas of its eval noise, at most ``size``."""
    sigma = plan.get("eval_noise_multiplier", DEFAULT_EVAL_NOISE)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
        sigma = DEFAULT_EVAL_NOISE
    margin = NOISE_SIGMAS * float(sigma) * _EVAL_SENSITIVITY
    return min(margin, float(size)) if size is not None else margin


def bound_metrics(
    correct: float, count: float, loss_sum: float, *, size: int | None, margin: float
) -> tuple[float, float, float]:
    """``(correct, count, loss_sum)`` clamped to what a site of ``size`` records can report (module docstring)."""
    top = float(size) + margin if size is not None else 0.0
    count = min(max(count, 0.0), top)
    correct = min(max(correct, -margin), count + margin)
    loss_sum = min(max(loss_sum, -_LOSS_CLIP * margin), _LOSS_CLIP * (count + margin))
    return correct, count, loss_sum
