"""Per-example gradient clipping: the core of DP-SGD.

:func:`clipped_grad` turns an ordinary *mean* loss ``loss_fn(params, batch)`` into

    fn(params, batch, mask=None) -> (clipped_grad_sum, per_example_norms)

where ``clipped_grad_sum = sum_i c_i * grad_i`` with ``grad_i`` the gradient of
``loss_fn`` on example ``i`` alone (a batch of one), ``c_i = min(1, clip_norm / ||grad_i||)``
and ``||.||`` the global L2 norm over every parameter leaf. The result has L2
sensitivity ``clip_norm`` to adding or removing one example; noise is added
elsewhere (:mod:`fedjax_room.dp.noise`, :mod:`fedjax_room.dp.optimizer`).

A *batch* is a pytree (usually a dict) of arrays sharing a leading example axis
of size ``B``. ``mask`` is an optional ``bool[B]``; ``False`` marks padding (see
:func:`fedjax_room.dp.sampling.poisson_sample`).

Two implementations, chosen by ``method``:

``"vmap"``
    ``jax.vmap`` of ``jax.grad`` over examples: materialises every per-example
    gradient (``B x |params|`` floats). Works for any differentiable ``loss_fn``.
``"fast"``
    :mod:`fedjax_room.dp.fast_clipping`: per-example norms from layer
    activations and output gradients of ``flax.linen.Dense`` / ``Conv`` layers,
    and the clipped sum by book-keeping, in one forward and one backward pass,
    without per-example gradients. Needs every parameter to belong to exactly
    one such layer, called once per example.
``"auto"`` (default)
    ``"fast"`` when it applies to ``loss_fn`` (decided once per input shape, at
    trace time), else ``"vmap"``.

``microbatch_size`` (performance only, never privacy) bounds memory: the batch is
processed in chunks of that many examples with ``jax.lax.scan``; a batch whose
size is not a multiple is padded with masked copies of its first example.

Special values, documented once here:

- A masked example (``mask[i] == False``) contributes zero and reports norm ``0``.
- An example whose gradient is not finite (NaN or inf anywhere, or a norm that
  overflows) contributes **zero** and reports its non-finite norm (``nan`` or
  ``inf``), so it is visible in the returned norms. The other examples are not
  affected. On the fast path the same holds for an example with a non-finite or
  ``>= 2**100`` layer input or output gradient (reported norm ``nan``).

The clip factor of every path comes from a *certified upper bound* of the norm of what
the example actually adds to the sum, float32 rounding and underflow included
(:mod:`fedjax_room.dp.float_bounds`), so no example ever adds more than ``clip_norm``,
for any finite parameters; the reported norms are these bounds (vmap: within about
``1e-5`` relative of the norm; fast path, layers over ``P`` positions: within about
``(K + O + B) P u``, far above it only for parameters crafted to cancel across positions).

The returned function is jitted; ``clip_norm`` is a static Python float. The
clip bound travels with the function: ``fn.clip_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_room.dp import fast_clipping, float_bounds
from fedjax_room.errors import ConfigError

__all__ = ["METHODS", "ClippedGradFn", "clipped_grad", "per_example_grads"]

Params = Any
Batch = Any
LossFn = Callable[[Params, Batch], jax.Array]
ClippedGradFn = Callable[..., tuple[Params, jax.Array]]

METHODS = ("auto", "vmap", "fast")


def _check_clip_norm(clip_norm: object) -> float:
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, int | float):
        raise ConfigError(f"clip_norm must be a positive number, got {clip_norm!r}")
    bound = float(clip_norm)
    if not math.isfinite(bound) or bound <= 0:
        raise ConfigError(f"clip_norm must be a positive finite number (e.g. 1.0), got {bound!r}")
    return bound


def _check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    return method


def _check_microbatch(microbatch_size: object) -> int | None:
    if microbatch_size is None:
        return None
    if isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int) or microbatch_size <= 0:
        raise ConfigError(
            f"microbatch_size must be a positive integer or None (whole batch at once), got {microbatch_size!r}"
        )
    return microbatch_size


def batch_size_of(batch: Batch) -> int:
    """The common leading (example) axis of every leaf of ``batch``; raises :class:`ConfigError`."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ConfigError("the batch has no arrays; pass a dict like {'x': x, 'y': y} with a leading example axis")
    firsts = [jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves]
    size = firsts[0]
    if size is None or len(set(firsts)) != 1:
        shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
        raise ConfigError(
            f"every array in the batch needs the same leading example axis; got shapes {shapes}. "
            "Give scalars a leading axis too (e.g. y of shape (B,))."
        )
    return int(size)


def _single_example_loss(loss_fn: LossFn) -> Callable[[Params, Batch], jax.Array]:
    def loss_one(params: Params, example: Batch) -> jax.Array:
        return loss_fn(params, jax.tree_util.tree_map(lambda x: jnp.expand_dims(x, 0), example))

    return loss_one


def per_example_grads(loss_fn: LossFn) -> Callable[[Params, Batch], Params]:
    """``fn(params, batch) -> grads``: the unclipped gradient of ``loss_fn`` on each example.

    Every leaf of ``grads`` has a leading example axis: ``grads[leaf][i]`` is the
    gradient of ``loss_fn(params, batch_of_example_i)``. Meant for tests and
    diagnostics; it materialises ``B x |params|`` floats.
    """
    return jax.jit(jax.vmap(jax.grad(_single_example_loss(loss_fn)), in_axes=(None, 0)))


def global_norms(grads: Params) -> jax.Array:
    """Per-example global L2 norms of a pytree whose leaves have a leading example axis."""
    leaves = jax.tree_util.tree_leaves(grads)
    sq = sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in leaves)
    return jnp.sqrt(sq)


def _certified_norms(grads: Params, clip_norm: float, batch: int) -> tuple[jax.Array, float]:
    """``(bounds, effective_clip_norm)``: per-example upper bounds on the norm of what is summed.

    ``bounds >= ||grad_i||`` including the float32 rounding of the sums of squares, of the weighted sum
    over the batch and of the clip factor (:mod:`fedjax_room.dp.float_bounds`); within about
    ``(1024 + n / 1024 + B) u`` of the norm for ``n`` parameters.
    """
    leaves = [g.reshape(g.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)]
    parts = [float_bounds.sum_squares_rows(g) for g in leaves]
    sq = jnp.asarray(sum(part for part, _ in parts))  # the array itself (asarray only types it)
    n = sum(g.shape[1] for g in leaves)
    n_eff = max(n_eff for _, n_eff in parts) + len(parts)
    bound = float_bounds.materialised_bound(sq, n, n_eff, batch)
    norms, slack = float_bounds.total_bound([bound])
    return norms, float_bounds.effective_clip_norm(clip_norm, slack + float_bounds.materialised_slack(n))


def _vmap_chunk(loss_fn: LossFn, clip_norm: float) -> Callable[..., tuple[Params, jax.Array, jax.Array]]:
    """(params, batch, mask) -> (clipped sum, norms, per-example losses) via per-example gradients."""
    per_example = jax.vmap(jax.value_and_grad(_single_example_loss(loss_fn)), in_axes=(None, 0))

    def chunk(params: Params, batch: Batch, mask: jax.Array) -> tuple[Params, jax.Array, jax.Array]:
        losses, grads = per_example(params, batch)
        norms, effective = _certified_norms(grads, clip_norm, mask.shape[0])
        weights, ok = float_bounds.clip_weights(norms, effective, mask)

        def weighted_sum(g: jax.Array) -> jax.Array:
            rows = ok.reshape((-1,) + (1,) * (g.ndim - 1))
            g = jnp.where(rows, g, jnp.zeros((), g.dtype))
            return jnp.tensordot(weights.astype(g.dtype), g, axes=1)

        total = jax.tree_util.tree_map(weighted_sum, grads)
        norms = jnp.where(mask, norms, 0.0)
        return total, norms, losses

    return chunk


def _pad_batch(batch: Batch, mask: jax.Array, target: int) -> tuple[Batch, jax.Array]:
    size = mask.shape[0]
    extra = target - size
    if extra == 0:
        return batch, mask

    def pad(x: jax.Array) -> jax.Array:
        fill = jnp.broadcast_to(x[:1], (extra,) + x.shape[1:])
        return jnp.concatenate([x, fill], axis=0)

    return jax.tree_util.tree_map(pad, batch), jnp.concatenate([mask, jnp.zeros((extra,), bool)])


def _microbatched(
    chunk_fn: Callable[..., tuple[Params, jax.Array, jax.Array]],
    params: Params,
    batch: Batch,
    mask: jax.Array,
    microbatch_size: int | None,
) -> tuple[Params, jax.Array, jax.Array]:
    size = mask.shape[0]
    if microbatch_size is None or microbatch_size >= size:
        return chunk_fn(params, batch, mask)
    chunks = -(-size // microbatch_size)
    batch, mask = _pad_batch(batch, mask, chunks * microbatch_size)

    def split(x: jax.Array) -> jax.Array:
        return x.reshape((chunks, microbatch_size) + x.shape[1:])

    xs = (jax.tree_util.tree_map(split, batch), split(mask))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)

    def body(acc: Params, inputs: tuple[Batch, jax.Array]) -> tuple[Params, tuple[jax.Array, jax.Array]]:
        total, norms, losses = chunk_fn(params, *inputs)
        return jax.tree_util.tree_map(jnp.add, acc, total), (norms, losses)

    total, (norms, losses) = jax.lax.scan(body, zero, xs)
    return total, norms.reshape(-1)[:size], losses.reshape(-1)[:size]


def make_clipper(
    loss_fn: LossFn, clip_norm: float, *, microbatch_size: int | None = None, method: str = "auto"
) -> Callable[[Params, Batch, jax.Array | None], tuple[Params, jax.Array, jax.Array, str]]:
    """Un-jitted ``(params, batch, mask) -> (clipped_sum, norms, per_example_losses, method_used)``.

    The building block of :func:`clipped_grad` and
    :func:`fedjax_room.dp.optimizer.make_dp_train_step`; call it under ``jax.jit``.
    ``method_used`` (``"vmap"`` or ``"fast"``) is a Python string fixed at trace time.
    """
    clip_norm = _check_clip_norm(clip_norm)
    method = _check_method(method)
    microbatch_size = _check_microbatch(microbatch_size)
    vmap_chunk = _vmap_chunk(loss_fn, clip_norm)

    def run(params: Params, batch: Batch, mask: jax.Array | None = None) -> tuple[Params, jax.Array, jax.Array, str]:
        size = batch_size_of(batch)
        if mask is None:
            mask = jnp.ones((size,), bool)
        mask = jnp.asarray(mask)
        if mask.shape != (size,):
            raise ConfigError(f"mask must have shape ({size},) like the batch's example axis, got {mask.shape}")
        mask = mask.astype(bool)
        used = method
        if method != "vmap":
            plan = fast_clipping.plan(loss_fn, params, batch)
            if plan.supported:
                used = "fast"
            elif method == "fast":
                raise ConfigError(
                    f"method='fast' does not apply to this loss function: {plan.reason}. "
                    "Use method='auto' or method='vmap'."
                )
            else:
                used = "vmap"
        if used == "fast":
            chunk = lambda p, b, m: fast_clipping.clipped_chunk(loss_fn, clip_norm, plan, p, b, m)
        else:
            chunk = vmap_chunk
        total, norms, losses = _microbatched(chunk, params, batch, mask, microbatch_size)
        return total, norms, losses, used

    return run


def clipped_grad(
    loss_fn: LossFn,
    clip_norm: float,
    *,
    microbatch_size: int | None = None,
    method: str = "auto",
) -> ClippedGradFn:
    """Jitted ``fn(params, batch, mask=None) -> (clipped_grad_sum, per_example_norms)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over a batch;
        it is applied to each example as a batch of one.
      clip_norm: the L2 bound ``C`` on each example's contribution.
      microbatch_size: process at most this many examples at once (memory bound);
        ``None`` for the whole batch. Does not change the result beyond rounding.
      method: ``"auto"``, ``"vmap"`` or ``"fast"`` (see the module docstring).

    Returns:
      ``fn`` with ``fn.clip_norm`` and ``fn.method`` attributes. ``per_example_norms``
      are the *pre-clip* norms (``0`` for masked, non-finite for examples that
      contributed zero because their gradient was not finite).
    """
    run = make_clipper(loss_fn, clip_norm, microbatch_size=microbatch_size, method=method)

    @jax.jit
    def fn(params: Params, batch: Batch, mask: jax.Array | None = None) -> tuple[Params, jax.Array]:
        total, norms, _, _ = run(params, batch, mask)
        return total, norms

    fn.clip_norm = float(clip_norm)  # type: ignore[attr-defined]
    fn.method = method  # type: ignore[attr-defined]
    return fn
