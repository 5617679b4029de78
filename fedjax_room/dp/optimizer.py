"""DP-SGD as an optax optimiser, and the jitted private training step.

:func:`dpsgd` expects as its *input updates* the clipped per-example gradient
**sum** (from :func:`fedjax_room.dp.clipping.clipped_grad`) and computes::

    noisy  = sum_i clip(grad_i) + N(0, (noise_multiplier * clip_norm)^2 I)
    update = sgd(learning_rate, momentum)(noisy / expected_batch_size)

It divides by the *expected* batch size ``q * N`` of Poisson sampling, not by the
realised one: the realised size is data-dependent and dividing by it would leak
(and break the accounting in :mod:`fedjax_room.dp.accounting`).

:func:`make_dp_train_step` wires clipping and the optimiser into one jitted step.
Its ``metrics`` (loss, pre-clip norms, fraction clipped) are computed from the
raw, un-noised per-example values: **they are not differentially private** and
are for the data owner's local logging only. Never release them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_room.dp.clipping import make_clipper
from fedjax_room.dp.noise import check_nonnegative, gaussian_noise
from fedjax_room.errors import ConfigError

__all__ = ["DPTrainStep", "dpsgd", "make_dp_train_step"]

Params = Any
Batch = Any
DPTrainStep = Callable[[Params, optax.OptState, Batch, jax.Array], tuple[Params, optax.OptState, dict[str, jax.Array]]]


def _positive(value: object, what: str) -> float:
    number = check_nonnegative(value, what)
    if number == 0:
        raise ConfigError(f"{what} must be > 0, got 0")
    return number


def dpsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    key: jax.Array,
    momentum: float | None = None,
) -> optax.GradientTransformation:
    """DP-SGD: Gaussian noise on the clipped sum, divide by the expected batch size, then SGD.

    Args:
      learning_rate: a float or an optax schedule.
      clip_norm: the clip bound ``C`` used to clip the per-example gradients (must match).
      noise_multiplier: ``sigma``; the noise std is ``sigma * C``. ``0`` gives no privacy.
      expected_batch_size: ``q * N`` (Poisson sampling rate times dataset size), > 0.
      key: JAX PRNG key for the noise (required, secret).
      momentum: optional heavy-ball momentum (post-processing, no privacy cost).

    Returns:
      ``optax.chain(gaussian_noise, scale(1 / expected_batch_size), sgd)``.
    """
    clip_norm = _positive(clip_norm, "clip_norm")
    noise_multiplier = check_nonnegative(noise_multiplier, "noise_multiplier")
    expected_batch_size = _positive(expected_batch_size, "expected_batch_size")
    if momentum is not None:
        momentum = check_nonnegative(momentum, "momentum")
        if momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if callable(learning_rate):
        lr: optax.ScalarOrSchedule = learning_rate
    else:
        lr = _positive(learning_rate, "learning_rate")
    return optax.chain(
        gaussian_noise(noise_multiplier * clip_norm, key),
        optax.scale(1.0 / expected_batch_size),
        optax.sgd(lr, momentum=momentum),
    )


def make_dp_train_step(
    loss_fn: Callable[[Params, Batch], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float,
    method: str = "auto",
    microbatch_size: int | None = None,
) -> DPTrainStep:
    """A jitted ``step(params, opt_state, batch, mask) -> (params, opt_state, metrics)``.

    The step clips per-example gradients of ``loss_fn`` (see
    :func:`fedjax_room.dp.clipping.clipped_grad`), passes the clipped sum to
    ``optimizer`` (normally :func:`dpsgd` built with the same ``clip_norm``) and
    applies the update. ``mask`` (``bool[B]``) marks real examples; pass
    ``jnp.ones(B, bool)`` when there is no padding.

    ``metrics`` (NOT private, local logging only): ``loss`` (mean over real examples
    with a finite loss), ``grad_norm`` (mean pre-clip norm over real examples with a
    finite gradient), ``clipped_fraction`` (fraction of real examples with norm >
    ``clip_norm`` or not finite), ``num_examples`` (real examples), ``num_nonfinite`` (real
    examples dropped because their gradient was not finite).
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ConfigError("optimizer must be an optax.GradientTransformation, e.g. dpsgd(...)")
    clip_norm = _positive(clip_norm, "clip_norm")
    clip = make_clipper(loss_fn, clip_norm, microbatch_size=microbatch_size, method=method)

    @jax.jit
    def step(
        params: Params, opt_state: optax.OptState, batch: Batch, mask: jax.Array
    ) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
        total, norms, losses, _ = clip(params, batch, mask)
        updates, opt_state = optimizer.update(total, opt_state, params)
        params = optax.apply_updates(params, updates)
        real = jnp.asarray(mask, bool)
        count = jnp.sum(real)
        finite = real & jnp.isfinite(norms)
        finite_loss = real & jnp.isfinite(losses)
        n_finite = jnp.maximum(jnp.sum(finite), 1)
        metrics = {
            "loss": jnp.sum(jnp.where(finite_loss, losses, 0.0)) / jnp.maximum(jnp.sum(finite_loss), 1),
            "grad_norm": jnp.sum(jnp.where(finite, norms, 0.0)) / n_finite,
            "clipped_fraction": jnp.sum(real & ~(norms <= clip_norm)) / jnp.maximum(count, 1),
            "num_examples": count,
            "num_nonfinite": jnp.sum(real & ~jnp.isfinite(norms)),
        }
        return params, opt_state, metrics

    step.clip_norm = clip_norm  # type: ignore[attr-defined]
    return step
