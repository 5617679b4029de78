"""What the coordinator can still check when secure aggregation hides every individual update.

With secure aggregation the coordinator learns only the *sum* of the masked
updates. No robust rule (median, trimmed mean, Krum, norm bounding by the
round's median) and no per-update anomaly score can run on a sum. What remains:

* **bounded influence at the sites**: each honest site clips its own update to
  ``site_clip_norm`` before masking. An attacker need not comply, but then
* **the aggregate bound check** can catch it: the weighted mean of updates
  clipped to ``C`` has norm at most ``C``; more (beyond the expected noise norm)
  proves some site did not clip;
* **the norm-jump check**: the aggregate's norm against the last accepted
  round's, a sudden jump (``max_norm_ratio``) is suspicious;
* **the held-out loss check**: sites evaluate the new model on local held-out
  data and release a DP-noised loss; a rise by more than ``max_loss_increase``
  (relative, plus ``loss_slack`` absolute for the noise) suggests poisoning.

A failed check cannot say *which* site misbehaved: the room can refuse the
aggregate (keep the previous model) or roll back and stop the run.
:func:`active_defences` says plainly which defences a configuration has;
:func:`check_secure_compatible` refuses a robust rule with secure aggregation.
Checks keep a small explicit state (:class:`AggregateCheckState`, plain floats)
so the room can checkpoint it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_room.errors import ConfigError
from fedjax_room.robust.names import AGGREGATORS, SECURE_AGGREGATORS

__all__ = [
    "SECURE_AGGREGATORS",
    "AggregateCheck",
    "AggregateCheckConfig",
    "AggregateCheckState",
    "DefenceStatus",
    "active_defences",
    "check_aggregate",
    "check_held_out_loss",
    "check_secure_compatible",
    "clip_update",
    "describe_defences",
    "init_aggregate_checks",
]

#: Aggregators that need only the sum of the updates, hence run under secure aggregation.


class AggregateCheckConfig(NamedTuple):
    """Thresholds of the aggregate-level checks.

    Attributes:
      max_norm_ratio: fail when the aggregate's norm exceeds this times the last accepted round's.
      max_loss_increase: fail when the held-out loss rises by more than this fraction of the last accepted loss ...
      loss_slack: ... plus this absolute amount (room for DP noise on the reported loss).
    """

    max_norm_ratio: float = 3.0
    max_loss_increase: float = 0.25
    loss_slack: float = 0.05


class AggregateCheckState(NamedTuple):
    """Reference values from the last accepted round (NaN before the first) and how many rounds were checked."""

    prev_norm: float = float("nan")
    prev_loss: float = float("nan")
    rounds: int = 0


class AggregateCheck(NamedTuple):
    """One check's verdict: ``ok``, the ``reasons`` it failed (words), and the numbers it used."""

    ok: bool
    reasons: tuple[str, ...]
    norm: float | None = None
    norm_ratio: float | None = None
    loss: float | None = None
    loss_change: float | None = None


_DEFAULT_CHECKS = AggregateCheckConfig()


def init_aggregate_checks() -> AggregateCheckState:
    """A fresh state: no reference round yet."""
    return AggregateCheckState()


def _tree_norm(tree: Any) -> float:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ConfigError("the aggregate has no leaves")
    return float(math.sqrt(sum(float(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32)))) for x in leaves)))


def check_aggregate(
    aggregate: Any,
    state: AggregateCheckState,
    *,
    site_clip_norm: float | None = None,
    noise_norm: float = 0.0,
    config: AggregateCheckConfig = _DEFAULT_CHECKS,
) -> tuple[AggregateCheck, AggregateCheckState]:
    """Check the round's aggregate (the mean update, unmasked) before it is applied.

    Fails when its norm exceeds ``site_clip_norm + noise_norm`` (the most a mean of
    clipped updates plus the expected norm of any distributed-DP noise can reach), or
    jumps by more than ``config.max_norm_ratio`` against the last accepted round. The
    reference moves only when the check passes, so an attacker cannot ratchet it up.
    """
    norm = _tree_norm(aggregate)
    reasons: list[str] = []
    if not math.isfinite(norm):
        reasons.append("the aggregate holds NaN or infinity")
    if site_clip_norm is not None and norm > site_clip_norm + noise_norm:
        reasons.append(
            f"aggregate norm {norm:.4g} exceeds the per-site clip bound {site_clip_norm:g}"
            + (f" plus noise {noise_norm:.3g}" if noise_norm else "")
            + ": at least one site did not clip its update"
        )
    ratio = None
    if math.isfinite(state.prev_norm) and state.prev_norm > 0:
        ratio = norm / state.prev_norm
        if ratio > config.max_norm_ratio:
            reasons.append(
                f"aggregate norm {norm:.4g} is {ratio:.1f}x the last accepted round's {state.prev_norm:.4g} "
                f"(limit {config.max_norm_ratio:g}x)"
            )
    ok = not reasons
    new_state = state._replace(prev_norm=norm if ok else state.prev_norm, rounds=state.rounds + 1)
    return AggregateCheck(ok=ok, reasons=tuple(reasons), norm=norm, norm_ratio=ratio), new_state


def check_held_out_loss(
    loss: float, state: AggregateCheckState, *, config: AggregateCheckConfig = _DEFAULT_CHECKS
) -> tuple[AggregateCheck, AggregateCheckState]:
    """Check the held-out loss the sites report (DP-noised) for the new model against the last accepted one.

    Fails when ``loss > prev_loss * (1 + max_loss_increase) + loss_slack``; the
    reference moves only when the check passes.
    """
    loss = float(loss)
    reasons: list[str] = []
    change = None
    if not math.isfinite(loss):
        reasons.append(f"the reported held-out loss is {loss}")
    elif math.isfinite(state.prev_loss):
        change = loss - state.prev_loss
        limit = state.prev_loss * (1 + config.max_loss_increase) + config.loss_slack
        if loss > limit:
            reasons.append(
                f"held-out loss rose from {state.prev_loss:.4g} to {loss:.4g} (limit {limit:.4g}): "
                "the last aggregate made the model worse"
            )
    ok = not reasons
    return (
        AggregateCheck(ok=ok, reasons=tuple(reasons), loss=loss, loss_change=change),
        state._replace(prev_loss=loss if ok else state.prev_loss),
    )


def clip_update(update: Any, max_norm: float) -> tuple[Any, jax.Array]:
    """Scale ``update`` down to global L2 norm ``max_norm`` if it is longer: ``(clipped, original_norm)``.

    What an honest site does before masking, so that its influence on the sum is
    bounded. Pure and jit-friendly.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ConfigError(f"max_norm must be a positive number, got {max_norm!r}")
    leaves = jax.tree_util.tree_leaves(update)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree_util.tree_map(lambda x: (jnp.asarray(x) * scale).astype(jnp.asarray(x).dtype), update), norm


# ---------------------------------------------------------------------- what is active


class DefenceStatus(NamedTuple):
    """One defence: its ``name``, whether it is ``active`` in this configuration, and why (``detail``)."""

    name: str
    active: bool
    detail: str


def check_secure_compatible(secure_aggregation: bool, aggregator: str) -> None:
    """Raise :class:`ConfigError` when ``aggregator`` needs individual updates but secure aggregation hides them."""
    if aggregator not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
    if secure_aggregation and aggregator not in SECURE_AGGREGATORS:
        raise ConfigError(
            f"aggregator {aggregator!r} needs each site's update, but secure aggregation shows the coordinator "
            f"only their sum; use {' or '.join(SECURE_AGGREGATORS)} with site_clip_norm (each site clips its own "
            "update), or turn secure aggregation off"
        )


def active_defences(
    *,
    secure_aggregation: bool,
    aggregator: str,
    anomaly_detection: bool = True,
    exclude_below: float | None = None,
    site_clip_norm: float | None = None,
    held_out_loss: bool = True,
) -> list[DefenceStatus]:
    """Which poisoning defences run for this configuration, each with the reason in words.

    Does not raise for a robust rule under secure aggregation; it reports it
    inactive (use :func:`check_secure_compatible` to refuse such a run).
    """
    if aggregator not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
    robust = aggregator not in SECURE_AGGREGATORS
    hidden = "secure aggregation shows the coordinator only the sum of the updates"
    out: list[DefenceStatus] = []
    if not robust:
        out.append(DefenceStatus("robust_aggregation", False, f"{aggregator!r} is a plain mean: one site can move it"))
    elif secure_aggregation:
        out.append(DefenceStatus("robust_aggregation", False, f"{aggregator!r} cannot run: {hidden}"))
    else:
        out.append(DefenceStatus("robust_aggregation", True, f"{aggregator!r} limits what a minority of sites can do"))
    if secure_aggregation:
        out.append(DefenceStatus("anomaly_detection", False, f"no per-update scores: {hidden}"))
        out.append(DefenceStatus("trust_exclusion", False, "no per-site flags to build trust from"))
    else:
        out.append(
            DefenceStatus(
                "anomaly_detection",
                anomaly_detection,
                "norm z-score and cosine to the robust centre on every update"
                if anomaly_detection
                else "turned off for this run",
            )
        )
        if anomaly_detection and exclude_below is not None:
            detail = f"sites whose trust falls below {exclude_below:g} are left out"
            out.append(DefenceStatus("trust_exclusion", True, detail))
        else:
            out.append(DefenceStatus("trust_exclusion", False, "flagged sites are reported, never excluded"))
    if site_clip_norm is not None:
        out.append(
            DefenceStatus("site_clipping", True, f"each honest site clips its update to norm {site_clip_norm:g}")
        )
    else:
        out.append(DefenceStatus("site_clipping", False, "no per-site update bound is set"))
    bound = "against the per-site clip bound and " if site_clip_norm is not None else ""
    detail = f"the aggregate's norm is checked {bound}against the last round's"
    out.append(DefenceStatus("aggregate_norm_check", True, detail))
    out.append(
        DefenceStatus(
            "held_out_loss_check",
            held_out_loss,
            "sites' DP-noised held-out loss must not jump" if held_out_loss else "no held-out loss is reported",
        )
    )
    return out


def describe_defences(statuses: list[DefenceStatus]) -> str:
    """The statuses as plain lines: ``[on ] name: detail`` / ``[off] name: detail``."""
    return "\n".join(f"[{'on ' if s.active else 'off'}] {s.name}: {s.detail}" for s in statuses)
