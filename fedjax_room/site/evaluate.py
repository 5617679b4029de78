"""A site's evaluation of the global model: bounded per-record terms, summed, released only with Gaussian noise.

:func:`noised_metrics` returns ``[count, correct, loss_sum]`` on the held-out split plus noise of scale
``eval_noise_multiplier * EVAL_SENSITIVITY`` per term (:mod:`fedjax_room.site.plan`). Each record adds at most 1
to ``count`` and ``correct`` and at most ``LOSS_CLIP`` to ``loss_sum``, whatever the parameters (a crafted model
whose logits overflow counts as not correct, with the clip bound as its loss), so the sensitivity holds.
Nothing un-noised leaves this module.
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
from fedjax_room.protocol import messages as m
from fedjax_room.site.plan import EVAL_SENSITIVITY, LOSS_CLIP

__all__ = ["eval_fn", "metrics_message", "noised_metrics"]

#: Records evaluated per jitted call.
CHUNK = 1024


@functools.lru_cache(maxsize=16)
def eval_fn(spec_json: str) -> Callable[..., Any]:
    """``fn(params, x, y) -> (clipped loss sum, correct count)`` for the model ``spec_json``, jitted and cached."""
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
        return jnp.sum(losses), jnp.sum(correct.astype(jnp.int32))

    return fn


def noised_metrics(
    spec: ModelSpec, params: Any, heldout: Dataset, *, seed: int, eval_noise_multiplier: float
) -> list[float]:
    """``[count, correct, loss_sum]`` of ``params`` on ``heldout`` plus Gaussian noise (``seed``: the round's
    secret evaluation seed)."""
    loss_sum, correct, count = 0.0, 0, len(heldout)
    fn = eval_fn(spec.to_json())
    for start in range(0, count, CHUNK):
        ls, c = fn(params, heldout.x[start : start + CHUNK], heldout.y[start : start + CHUNK])
        loss_sum += float(ls)
        correct += int(c)
    rng = np.random.default_rng([seed, 7])
    noise = rng.normal(0.0, eval_noise_multiplier * EVAL_SENSITIVITY, size=3)
    noised = [float(count + noise[0]), float(correct + noise[1]), float(loss_sum + LOSS_CLIP * noise[2])]
    if not all(math.isfinite(v) for v in noised):  # cannot happen with bounded terms; never release one
        raise StateError("a noised evaluation count is not finite")
    return noised


def metrics_message(
    msg: m.RoundStart,
    noised: list[float],
    run_eps: float,
    total: float,
    delta: float,
    site_eps: float | None = None,
) -> m.Metrics:
    """The ``metrics`` frame of a (stored) noised evaluation: the counts and what the site has spent."""
    return m.Metrics(
        run_id=msg.run_id,
        round=msg.round,
        count=float(noised[0]),
        correct=float(noised[1]),
        loss_sum=float(noised[2]),
        epsilon=run_eps,
        ledger_epsilon=total,
        delta=delta,
        site_epsilon=site_eps,
    )
