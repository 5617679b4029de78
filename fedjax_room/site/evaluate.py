"""A site's evaluation of the global model: bounded per-record terms, summed in integers, released only with
Skellam noise.

:func:`noised_vector` returns the integer vector of :mod:`fedjax_room.protocol.evaluation` (``GAMMA_CW * correct``,
``GAMMA_CW * wrong``, the sum of each record's loss scaled to ``[0, GAMMA_LOSS]``) on the held-out split plus this
site's Skellam noise (:func:`~fedjax_room.protocol.evaluation.share_variance`: all of it in a plain run, its share
of the floor plus its own extra under secure aggregation). Each record adds ``GAMMA_CW`` to exactly one of the
first two coordinates and at most ``GAMMA_LOSS`` to the third, whatever the parameters (a crafted model whose
logits overflow counts as wrong, with the clip bound as its loss), so the sensitivity holds. A plain run sends
:func:`metrics_values` of it (floats); a secure run masks the vector itself (:func:`ring_vector`). Nothing
un-noised leaves this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fedjax_room.data import Dataset
from fedjax_room.errors import StateError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import evaluation as ev
from fedjax_room.protocol import messages as m
from fedjax_room.site.plan import LOSS_CLIP

__all__ = ["eval_fn", "metrics_frame", "metrics_message", "metrics_values", "noised_vector", "ring_vector", "skellam"]

#: Records evaluated per jitted call.
CHUNK = 1024


@functools.lru_cache(maxsize=16)
def eval_fn(spec_json: str) -> Callable[..., Any]:
    """``fn(params, x, y) -> (sum of scaled losses, correct count)`` for the model ``spec_json``, jitted and cached:
    each record's loss is clipped to ``[0, LOSS_CLIP]`` and rounded to an integer in ``[0, GAMMA_LOSS]``."""
    import jax
    import jax.numpy as jnp
    import optax

    from fedjax_room.models import make_predict_fn

    predict = make_predict_fn(ModelSpec.from_json(spec_json))

    @jax.jit
    def fn(params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        # Every per-example quantity is made finite and bounded *before* it is summed: crafted parameters can
        # overflow a record's logits (inf - inf = NaN), and jnp.clip keeps NaN. A non-finite loss counts the clip
        # bound; a record with a non-finite logit counts as not correct. So each sum has sensitivity 1 / LOSS_CLIP.
        logits = predict(params, x)
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        raw = optax.softmax_cross_entropy_with_integer_labels(jnp.where(finite[:, None], logits, 0.0), y)
        losses = jnp.where(finite & jnp.isfinite(raw), jnp.clip(raw, 0.0, LOSS_CLIP), LOSS_CLIP)
        correct = finite & (jnp.argmax(logits, axis=-1) == y)
        scaled = jnp.round(losses / LOSS_CLIP * ev.GAMMA_LOSS).astype(jnp.int32)  # in [0, GAMMA_LOSS]
        return jnp.sum(scaled), jnp.sum(correct.astype(jnp.int32))

    return fn


def skellam(variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` Skellam draws of ``variance`` (``Poisson(v/2) - Poisson(v/2)``; a sum of them is Skellam)."""
    lam = float(variance) / 2.0
    if not (math.isfinite(lam) and lam >= 0):
        raise StateError(f"evaluation noise variance must be finite and non-negative, got {variance!r}")
    from fedjax_room.secagg.ddp import skellam_draws

    return skellam_draws(float(variance), size, rng)


def noised_vector(spec: ModelSpec, params: Any, heldout: Dataset, *, seed: int, variance: float) -> list[int]:
    """The integer evaluation vector of ``params`` on ``heldout`` plus Skellam noise of ``variance`` per coordinate
    (``seed``: the round's secret evaluation seed)."""
    loss_units, correct, count = 0, 0, len(heldout)
    fn = eval_fn(spec.to_json())
    for start in range(0, count, CHUNK):
        ls, c = fn(params, heldout.x[start : start + CHUNK], heldout.y[start : start + CHUNK])
        loss_units += int(ls)
        correct += int(c)
    exact = np.array([ev.GAMMA_CW * correct, ev.GAMMA_CW * (count - correct), loss_units], np.int64)
    noised = exact + skellam(variance, ev.EVAL_LENGTH, np.random.default_rng([seed, 7]))
    return [int(v) for v in noised]


def metrics_values(vector: list[int]) -> tuple[float, float, float]:
    """``(count, correct, loss_sum)`` of a noised vector, as a plain run's ``metrics`` frame carries them."""
    correct, wrong, loss_sum = ev.decode_sum(vector)
    values = (correct + wrong, correct, loss_sum)
    if not all(math.isfinite(v) for v in values):  # cannot happen with bounded terms; never release one
        raise StateError("a noised evaluation count is not finite")
    return values


def ring_vector(vector: list[int]) -> np.ndarray:
    """A noised vector as the input of the round's evaluation SecAgg session."""
    return ev.signed_to_ring(np.asarray(vector, np.int64))


def metrics_message(
    msg: m.RoundStart,
    noised: list[int] | None,
    run_eps: float,
    total: float,
    delta: float,
    site_eps: float | None = None,
) -> m.Metrics:
    """The ``metrics`` frame of a (stored) noised evaluation: the counts and what the site has spent. Under secure
    aggregation (``noised`` None) it carries only the accounting: the counts travel masked, summed."""
    values = metrics_values(noised) if noised is not None else (0.0, 0.0, 0.0)
    return metrics_frame(msg, values, run_eps, total, delta, site_eps)


def metrics_frame(
    msg: m.RoundStart,
    values: tuple[float, float, float],
    run_eps: float,
    total: float,
    delta: float,
    site_eps: float | None = None,
) -> m.Metrics:
    """The ``metrics`` frame carrying ``(count, correct, loss_sum)`` and what the site has spent."""
    count, correct, loss_sum = values
    return m.Metrics(
        run_id=msg.run_id,
        round=msg.round,
        count=count,
        correct=correct,
        loss_sum=loss_sum,
        epsilon=run_eps,
        ledger_epsilon=total,
        delta=delta,
        site_epsilon=site_eps,
    )
