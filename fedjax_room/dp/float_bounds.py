"""Rigorous float32 error bounds for per-example clipping.

A clip factor ``c_i = min(1, C / n_i)`` only bounds record ``i``'s contribution by ``C`` if
``n_i`` is at least the norm of *what is actually summed*, computed terms and rounding
included. Both clipping paths therefore clip with an upper bound ``n_i`` built from the
standard model of float32 arithmetic (Higham, *Accuracy and Stability of Numerical
Algorithms*, ch. 2-3), assuming only:

- every ``+``, ``*``, ``/`` and ``sqrt`` on float32 is rounded to nearest (relative error at
  most ``u = 2**-24``), in whatever order XLA performs a sum or a dot: a sum of ``n`` terms or a
  dot product of length ``n`` is then ``sum_k x_k (1 + t_k)`` with ``|t_k| <= gamma(n)``,
  ``gamma(n) = n u / (1 - n u)``;
- underflow may flush a result or an input below ``2**-126`` to zero (XLA:CPU flushes
  denormals), an absolute error of at most ``2**-126`` per operation;
- matmuls run at full float32 precision (``precision=HIGHEST``; no TF32/bfloat16 passes).

Absolute (underflow) errors that do not scale with the clip factor are collected in a
static ``slack`` and taken off the clip norm (:func:`effective_clip_norm`).

The sum over the records of a batch is part of what is bounded: its rounding is attributed
to the terms it rounds (the ``t_k`` above), so the released clipped sum is, as a real
number, ``sum_i v_i`` with each ``||v_i|| <= C``. What is not bounded is the difference
between the rounding of two neighbouring batches' sums (at most ``gamma(B)`` times the sum
of the contributions' norms) -- the same on every DP-SGD implementation in float arithmetic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.errors import ConfigError

__all__ = [
    "TINY",
    "U",
    "clip_weights",
    "effective_clip_norm",
    "f32_up",
    "gamma",
    "materialised_bound",
    "materialised_slack",
    "sum_squares_rows",
    "total_bound",
]

U = 2.0**-24  # float32 unit roundoff (round to nearest)
TINY = 2.0**-126  # smallest normal float32: a flushed result or input loses at most this much
_BLOCK = 1024  # sums longer than this are done in two stages (error gamma(k + n/k), not gamma(n))


def gamma(n: int) -> float:
    """``gamma(n) = n u / (1 - n u)``, rounded up; raises if ``n u`` is too large to bound."""
    nu = n * U
    if nu >= 0.01:
        raise ConfigError(
            f"a float32 reduction of {n} terms is too long to bound its rounding tightly; "
            "use a smaller batch or microbatch_size, or smaller layers"
        )
    return nu / (1.0 - nu) * (1.0 + 1e-9)


def f32_up(value: float) -> float:
    """The smallest float32 ``>= value``, as a Python float (exactly representable in float32)."""
    f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _f32_down(value: float) -> float:
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def sum_squares_rows(x: jax.Array) -> tuple[jax.Array, int]:
    """``(s, n_eff)``: per-row sums of squares of ``x`` (``(B, n)``), float32, and the length whose
    ``gamma`` bounds their relative rounding. Long rows are summed in blocks of ``_BLOCK``, then the
    block sums (an optimisation barrier keeps XLA from merging the two reductions into one)."""
    x = x.astype(jnp.float32)
    n = x.shape[1]
    if n <= _BLOCK:
        return jnp.sum(jnp.square(x), axis=1), max(n, 1)
    blocks = -(-n // _BLOCK)
    x = jnp.pad(x, ((0, 0), (0, blocks * _BLOCK - n)))
    partial = jnp.sum(jnp.square(x.reshape(x.shape[0], blocks, _BLOCK)), axis=2)
    partial = jax.lax.optimization_barrier(partial)
    return jnp.sum(partial, axis=1), _BLOCK + blocks


def materialised_bound(sq: jax.Array, n: int, n_eff: int, batch: int) -> jax.Array:
    """Upper bound (float32, per row) on ``(1 + gamma(batch)) * ||m||`` from ``sq``, the computed sum of
    squares of a materialised ``n``-float row ``m`` (:func:`sum_squares_rows`, ``gamma(n_eff)``).

    ``sq >= (1 - gamma(n_eff)) ||m||^2 - 2 n TINY`` (flushed squares and partial sums), so
    ``||m|| <= sqrt((sq + 2 n TINY) / (1 - gamma(n_eff)))``; the factor ``1 + gamma(batch)`` covers the
    rounding of the weighted sum over the batch, and three more roundings (add, sqrt, multiply) are
    covered by the constant. Non-finite ``sq`` stays non-finite.
    """
    factor = f32_up((1.0 + gamma(batch)) / math.sqrt(1.0 - gamma(n_eff)) / (1.0 - U) ** 3)
    bound: jax.Array = jnp.sqrt(sq + jnp.float32(f32_up(2.0 * n * TINY))) * jnp.float32(factor)
    return bound


def materialised_slack(n: int) -> float:
    """Absolute error of a weighted, batch-summed materialised ``n``-float row, per record:
    flushed products and partial sums, flushed (denormal) inputs: at most ``4 TINY`` per entry."""
    return 8.0 * math.sqrt(n) * TINY


def total_bound(layer_bounds: list[jax.Array]) -> tuple[jax.Array, float]:
    """``(n_hat, slack)``: ``n_hat >= sqrt(sum_l b_l^2)`` per row, inflated so that
    ``fl(C / n_hat) * sqrt(sum_l b_l^2) <= C`` (squares, sum, sqrt, the division), and the absolute slack
    of flushed squares (``b_l^2 < TINY``)."""
    count = len(layer_bounds)
    sq = sum(jnp.square(b) for b in layer_bounds)
    factor = f32_up(1.0 / (1.0 - gamma(count + 8)))
    return jnp.sqrt(sq) * jnp.float32(factor), 2.0 * math.sqrt(count) * 2.0**-63


def effective_clip_norm(clip_norm: float, slack: float) -> float:
    """``clip_norm - slack`` rounded down to a float32; raises if the slack is not negligible."""
    if slack > clip_norm * 2.0**-20:
        raise ConfigError(
            f"clip_norm = {clip_norm!r} is too small to clip in float32 for this model "
            f"(underflow alone can add {slack:.3g}); use clip_norm >= {slack * 2.0**21:.3g}"
        )
    return _f32_down(clip_norm - slack)


def clip_weights(norms: jax.Array, clip_norm: float, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(weights, ok)``: the clip factors ``min(1, C / norm)`` of usable examples (``norm`` a bound from
    this module, ``C`` from :func:`effective_clip_norm`), else 0.

    ``ok`` is ``mask & isfinite(norm)``; the caller must also zero the *values* of
    rows that are not ok (``0 * nan`` is ``nan``).
    """
    ok = jnp.logical_and(mask, jnp.isfinite(norms))
    safe = jnp.where(ok, norms, 1.0)
    weights = jnp.where(ok, jnp.minimum(1.0, clip_norm / jnp.maximum(safe, 1e-30)), 0.0)
    return weights.astype(norms.dtype), ok
