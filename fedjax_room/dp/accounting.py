"""Privacy accounting over `dp-accounting <https://github.com/google/differential-privacy>`_.

A privacy guarantee is data: a :class:`dp_accounting.DpEvent` says what was
released, and composing it into an :class:`Accountant` is the only way to spend
budget. No accounting math is written here; every number comes from
dp-accounting's PLD (default) or RDP accountants.

* :func:`dpsgd_event` — the event of ``steps`` DP-SGD steps with Poisson sampling:
  ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``.
* :func:`epsilon` / :func:`calibrate_noise` — epsilon of that event, and the
  smallest noise multiplier that meets a target epsilon.
* :func:`event_to_dict` / :func:`event_from_dict` — a JSON form of events (an
  allow-list of types, never pickle, never a dynamic import).
* :class:`Accountant` — a ledger: ``compose``, ``epsilon``, ``would_exceed``,
  ``to_dict`` / ``from_dict`` (it persists its events, and is rebuilt by
  recomposing them).

The PLD accountant discretises the privacy-loss distribution with
:data:`PLD_VALUE_DISCRETIZATION`; its rounding is pessimistic, so the epsilon it
reports is always an upper bound (coarser = faster and slightly larger).

A third kind, ``"rdp_integer"``, is the RDP accountant restricted to the integer orders
:data:`INTEGER_RDP_ORDERS`. It is for mechanisms whose privacy is only *proven* as an RDP
bound at integer orders, such as the distributed Skellam mechanism
(:mod:`fedjax_room.secagg.ddp`): it is reported as a Gaussian whose RDP curve dominates
the Skellam bound at every integer order, and converting that RDP curve (not the
Gaussian's PLD, which the domination says nothing about) is a certified bound.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dp_accounting as dpa
from dp_accounting import pld as dpa_pld
from dp_accounting import rdp as dpa_rdp

from fedjax_room.errors import ConfigError, PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "EVENT_TYPES",
    "INTEGER_RDP_ORDERS",
    "PLD_VALUE_DISCRETIZATION",
    "RDP_ORDERS",
    "Accountant",
    "calibrate_noise",
    "dpsgd_event",
    "epsilon",
    "event_from_dict",
    "event_to_dict",
]

#: Accountant kinds: privacy-loss distributions (tight), Rényi DP (a cross-check), and Rényi DP at integer
#: orders only (certified for mechanisms whose RDP bound holds at integer orders, e.g. distributed Skellam).
ACCOUNTANTS = ("pld", "rdp", "rdp_integer")

#: PLD value discretisation interval. 1e-3 reproduces the published epsilon
#: 2.4612381 (q=0.01, sigma=0.7, 120 steps, delta=1e-5) to 2e-5 relative, at a
#: tenth of the cost of dp-accounting's default 1e-4, which matters for calibration.
PLD_VALUE_DISCRETIZATION = 1e-3

#: Rényi orders for the RDP accountant (dp-accounting's standard list).
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(x) for x in range(12, 64)),
    128.0,
    256.0,
    512.0,
)

#: Integer Rényi orders of the ``"rdp_integer"`` accountant (also those of the Skellam bound in secagg.ddp).
INTEGER_RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 257))

#: Search range for the noise multiplier in :func:`calibrate_noise`.
_MIN_NOISE = 0.25
_MAX_NOISE = 2.0**20
_MAX_EVENT_DEPTH = 32


# ----------------------------------------------------------------------------- validation


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ConfigError(f"{name} must be a number, got NaN")
    return number


def _check_sampling_rate(value: object) -> float:
    q = _check_number(value, "sampling_rate")
    if not 0.0 < q <= 1.0:
        raise ConfigError(
            f"sampling_rate must be in (0, 1] (the probability each example is in a batch, "
            f"batch_size / num_examples), got {q}"
        )
    return q


def _check_noise(value: object) -> float:
    sigma = _check_number(value, "noise_multiplier")
    if not sigma > 0.0 or math.isinf(sigma):
        raise ConfigError(
            f"noise_multiplier must be a positive finite number (noise stddev / clip norm), got {sigma}; "
            "use a value such as 1.0, or calibrate one from a target epsilon"
        )
    return sigma


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    return steps


def _check_delta(value: object) -> float:
    delta = _check_number(value, "delta")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), typically below 1/num_examples (e.g. 1e-5), got {delta}")
    return delta


def _check_epsilon(value: object, name: str) -> float:
    eps = _check_number(value, name)
    if not eps > 0.0 or math.isinf(eps):
        raise ConfigError(f"{name} must be a positive finite number, got {eps}")
    return eps


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {kind!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return kind


def _fresh(kind: str) -> dpa.PrivacyAccountant:
    if kind == "pld":
        return dpa_pld.PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    if kind == "rdp_integer":
        return dpa_rdp.RdpAccountant(list(INTEGER_RDP_ORDERS))
    return dpa_rdp.RdpAccountant(list(RDP_ORDERS))


# ----------------------------------------------------------------------------- events


def dpsgd_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dpa.DpEvent:
    """The DP event of ``steps`` DP-SGD steps with Poisson sampling at rate ``sampling_rate``.

    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``.
    """
    sigma = _check_noise(noise_multiplier)
    q = _check_sampling_rate(sampling_rate)
    steps = _check_steps(steps)
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


def _num(d: Mapping[str, Any], key: str, kind: str) -> float:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
        raise ConfigError(f"DP event {kind!r}: field {key!r} must be a number, got {value!r}")
    return float(value)


def _int(d: Mapping[str, Any], key: str, kind: str) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"DP event {kind!r}: field {key!r} must be a non-negative integer, got {value!r}")
    return value


# type name -> (event class, to-fields, from-fields). Nested events are handled by the caller.
_SIMPLE: dict[str, tuple[type[dpa.DpEvent], tuple[str, ...]]] = {
    "no_op": (dpa.NoOpDpEvent, ()),
    "non_private": (dpa.NonPrivateDpEvent, ()),
    "gaussian": (dpa.GaussianDpEvent, ("noise_multiplier",)),
    "laplace": (dpa.LaplaceDpEvent, ("noise_multiplier",)),
}
_TYPE_NAMES: dict[type[dpa.DpEvent], str] = {cls: name for name, (cls, _) in _SIMPLE.items()}
_TYPE_NAMES.update(
    {
        dpa.PoissonSampledDpEvent: "poisson_sampled",
        dpa.SampledWithReplacementDpEvent: "sampled_with_replacement",
        dpa.SampledWithoutReplacementDpEvent: "sampled_without_replacement",
        dpa.SelfComposedDpEvent: "self_composed",
        dpa.ComposedDpEvent: "composed",
        dpa.RandomizedResponseDpEvent: "randomized_response",
        dpa.dp_event.DiscreteLaplaceDpEvent: "discrete_laplace",  # DP exploration queries (site/queries.py)
    }
)

#: The event types with a JSON form.
EVENT_TYPES = tuple(sorted(_TYPE_NAMES.values()))


def event_to_dict(event: dpa.DpEvent) -> dict[str, Any]:
    """A JSON-able dict for ``event``, e.g. ``{"type": "gaussian", "noise_multiplier": 1.1}``.

    Raises :class:`ConfigError` for an event type without a JSON form (see :data:`EVENT_TYPES`).
    """
    name = _TYPE_NAMES.get(type(event))
    if name is None:
        raise ConfigError(
            f"cannot serialise a {type(event).__name__}; supported DP events are {', '.join(EVENT_TYPES)}"
        )
    out: dict[str, Any] = {"type": name}
    if name in _SIMPLE:
        for field in _SIMPLE[name][1]:
            out[field] = float(getattr(event, field))
    elif name == "poisson_sampled":
        out["sampling_probability"] = float(event.sampling_probability)
        out["event"] = event_to_dict(event.event)
    elif name in ("sampled_with_replacement", "sampled_without_replacement"):
        out["source_dataset_size"] = int(event.source_dataset_size)
        out["sample_size"] = int(event.sample_size)
        out["event"] = event_to_dict(event.event)
    elif name == "self_composed":
        out["count"] = int(event.count)
        out["event"] = event_to_dict(event.event)
    elif name == "composed":
        out["events"] = [event_to_dict(e) for e in event.events]
    elif name == "randomized_response":
        out["noise_parameter"] = float(event.noise_parameter)
        out["num_buckets"] = int(event.num_buckets)
    elif name == "discrete_laplace":
        out["noise_parameter"] = float(event.noise_parameter)
        out["sensitivity"] = int(event.sensitivity)
    return out


def event_from_dict(data: Mapping[str, Any]) -> dpa.DpEvent:
    """Rebuild an event from :func:`event_to_dict`'s form; an unknown or malformed one raises :class:`ConfigError`."""
    return _event_from_dict(data, 0)


def _event_from_dict(data: Any, depth: int) -> dpa.DpEvent:
    if depth > _MAX_EVENT_DEPTH:
        raise ConfigError(f"DP event nested deeper than {_MAX_EVENT_DEPTH} levels; refusing to parse it")
    if not isinstance(data, Mapping):
        raise ConfigError(f"a DP event must be a JSON object with a 'type', got {type(data).__name__}")
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        raise ConfigError(f"unknown DP event type {kind!r}; supported types are {', '.join(EVENT_TYPES)}")
    if kind in _SIMPLE:
        cls, fields = _SIMPLE[kind]
        return cls(*(_num(data, f, kind) for f in fields))
    if kind == "composed":
        events = data.get("events")
        if not isinstance(events, Sequence) or isinstance(events, str):
            raise ConfigError("DP event 'composed': field 'events' must be a list of events")
        return dpa.ComposedDpEvent([_event_from_dict(e, depth + 1) for e in events])
    if kind == "randomized_response":
        return dpa.RandomizedResponseDpEvent(_num(data, "noise_parameter", kind), _int(data, "num_buckets", kind))
    if kind == "discrete_laplace":
        return dpa.dp_event.DiscreteLaplaceDpEvent(_num(data, "noise_parameter", kind), _int(data, "sensitivity", kind))
    inner = _event_from_dict(data.get("event"), depth + 1)
    if kind == "poisson_sampled":
        return dpa.PoissonSampledDpEvent(_num(data, "sampling_probability", kind), inner)
    if kind == "self_composed":
        return dpa.SelfComposedDpEvent(inner, _int(data, "count", kind))
    if kind == "sampled_with_replacement":
        cls = dpa.SampledWithReplacementDpEvent
    else:
        cls = dpa.SampledWithoutReplacementDpEvent
    return cls(_int(data, "source_dataset_size", kind), _int(data, "sample_size", kind), inner)


# ----------------------------------------------------------------------------- epsilon and calibration


def _epsilon_of(kind: str, event: dpa.DpEvent, delta: float) -> float:
    accountant = _fresh(kind)
    _compose_into(accountant, event, kind)
    return _get_epsilon(accountant, delta)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silence dp-accounting's RDP warnings about excluded orders (it already handles them)."""
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _get_epsilon(accountant: dpa.PrivacyAccountant, delta: float) -> float:
    with _quiet_absl():
        return float(accountant.get_epsilon(delta))


def _compose_into(accountant: dpa.PrivacyAccountant, event: dpa.DpEvent, kind: str) -> None:
    if not accountant.supports(event):
        raise PrivacyError(
            f"the {kind.upper()} accountant cannot account for {event}; use another accountant or event type"
        )
    with _quiet_absl():
        accountant.compose(event)


def epsilon(
    *, noise_multiplier: float, sampling_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps.

    ``sampling_rate`` is the Poisson sampling probability q, ``noise_multiplier`` the noise
    stddev over the clip norm; ``accountant`` is ``"pld"`` (default) or ``"rdp"``.
    """
    kind = _check_kind(accountant)
    delta = _check_delta(delta)
    return _epsilon_of(kind, dpsgd_event(noise_multiplier, sampling_rate, steps), delta)


def calibrate_noise(
    *, target_epsilon: float, delta: float, sampling_rate: float, steps: int, accountant: str = "pld"
) -> float:
    """The smallest noise multiplier whose epsilon is at most ``target_epsilon`` (and within 1% of it).

    Uses :func:`dp_accounting.calibrate_dp_mechanism` (Brent's method) on a bracket found
    by doubling, then checks the result. If even the smallest noise searched
    (``2**-6``) meets the target, that is returned (its epsilon may then be well
    under the target). Raises :class:`PrivacyError` if no noise meets it.
    """
    kind = _check_kind(accountant)
    target = _check_epsilon(target_epsilon, "target_epsilon")
    delta = _check_delta(delta)
    q = _check_sampling_rate(sampling_rate)
    steps = _check_steps(steps)
    if steps == 0:
        raise ConfigError("steps must be at least 1 to calibrate noise (zero steps spend nothing)")

    cache: dict[float, float] = {}

    def eps_at(sigma: float) -> float:
        if sigma not in cache:
            cache[sigma] = _epsilon_of(kind, dpsgd_event(sigma, q, steps), delta)
        return cache[sigma]

    # Bracket [lo, hi] with eps(lo) > target >= eps(hi), by doubling / halving from 1.
    lo, hi = 1.0, 1.0
    if eps_at(1.0) > target:
        while eps_at(hi) > target:
            lo, hi = hi, hi * 2.0
            if hi > _MAX_NOISE:
                raise PrivacyError(
                    f"no noise multiplier up to {_MAX_NOISE:g} reaches epsilon {target} at delta {delta} "
                    f"with sampling rate {q} over {steps} steps; raise the target epsilon or delta, "
                    "or train fewer steps"
                )
    else:
        while eps_at(lo) <= target:
            lo, hi = lo / 2.0, lo
            if lo < _MIN_NOISE:
                return hi

    with _quiet_absl():
        sigma = dpa.calibrate_dp_mechanism(
            lambda: _fresh(kind),
            lambda s: dpsgd_event(s, q, steps),
            target,
            delta,
            bracket_interval=dpa.ExplicitBracketInterval(lo, hi),
            tol=max(lo * 1e-5, 1e-7),
        )
    sigma = float(sigma)
    # Guarantee epsilon <= target, nudging up if the search stopped a hair below the root.
    for _ in range(64):
        if eps_at(sigma) <= target:
            return sigma
        sigma *= 1.0 + 1e-4
    raise PrivacyError(f"noise calibration did not converge for target epsilon {target}; try the 'rdp' accountant")


# ----------------------------------------------------------------------------- ledger

#: Composed dp-accounting states and epsilons by (kind, hash chain of the composed events' JSON): composing is
#: deterministic, so a ledger that composes the same events as another in this process (a precheck's trial then
#: its commit; the equal sites of an in-process room) reuses the result instead of recomputing the PLD. Bounded.
_COMPOSED: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
_EPSILONS: collections.OrderedDict[tuple[str, str, float], float] = collections.OrderedDict()
_MAX_COMPOSED = 16
_MAX_EPSILONS = 1024


def _remember(cache: collections.OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _chain(previous: str, event: Mapping[str, Any]) -> str:
    return hashlib.sha256((previous + json.dumps(event, sort_keys=True)).encode()).hexdigest()


class Accountant:
    """A privacy ledger: compose events, read epsilon, check a cap before spending.

    Its state is the list of composed events (JSON dicts); :meth:`from_dict`
    rebuilds it by composing them again into a fresh dp-accounting accountant.
    """

    def __init__(self, kind: str = "pld") -> None:
        self.kind = _check_kind(kind)
        self._accountant = _fresh(self.kind)
        self._events: list[dict[str, Any]] = []
        self._chain = ""  # hash chain of the composed events (the key of the shared caches above)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The composed events, oldest first, as JSON dicts (a copy)."""
        return [dict(e) for e in self._events]

    def compose(self, event: dpa.DpEvent | Mapping[str, Any]) -> Accountant:
        """Spend ``event`` (a DpEvent or its dict form); returns ``self``."""
        if isinstance(event, Mapping):
            event = event_from_dict(event)
        as_dict = event_to_dict(event)  # raises before spending if the event has no JSON form
        chain = _chain(self._chain, as_dict)
        cached = _COMPOSED.get((self.kind, chain))
        if cached is not None:
            self._accountant = copy.deepcopy(cached)
            _COMPOSED.move_to_end((self.kind, chain))
        else:
            _compose_into(self._accountant, event, self.kind)
            _remember(_COMPOSED, (self.kind, chain), copy.deepcopy(self._accountant), _MAX_COMPOSED)
        self._events.append(as_dict)
        self._chain = chain
        return self

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 for an empty ledger, inf after a non-private release)."""
        delta = _check_delta(delta)
        if not self._events:
            return 0.0
        key = (self.kind, self._chain, delta)
        eps = _EPSILONS.get(key)
        if eps is None:
            eps = _get_epsilon(self._accountant, delta)
            _remember(_EPSILONS, key, eps, _MAX_EPSILONS)
        return eps

    def would_exceed(self, event: dpa.DpEvent | Mapping[str, Any], *, epsilon_cap: float, delta: float) -> bool:
        """Whether composing ``event`` would take epsilon at ``delta`` past ``epsilon_cap``.

        Computed on a copy of the ledger; nothing is spent.
        """
        cap = _check_number(epsilon_cap, "epsilon_cap")
        delta = _check_delta(delta)
        trial = copy.deepcopy(self)
        trial.compose(event)
        return trial.epsilon(delta) > cap

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "events": [...]}``, JSON-able."""
        return {"kind": self.kind, "events": self.events}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accountant:
        """Rebuild a ledger written by :meth:`to_dict`; a malformed one raises :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"an accountant must be a JSON object with 'kind' and 'events', got {type(data).__name__}"
            )
        events = data.get("events", [])
        if not isinstance(events, Sequence) or isinstance(events, str):
            raise ConfigError("accountant 'events' must be a list of DP events")
        out = cls(data.get("kind", "pld"))
        for e in events:
            out.compose(event_from_dict(e))
        return out

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"Accountant(kind={self.kind!r}, events={len(self._events)})"
