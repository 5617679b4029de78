"""The coordinator's side of a tuning session (``room.tune``): it draws the trials, runs them hidden, releases the best.

Private selection (Papernot & Steinke, ICLR 2022; docs/privacy.md, "Hyperparameter tuning") bounds what releasing
the *best* of a random number of trials costs, provided that the number ``K`` is drawn from the distribution the
sites account for (mean ``tune_trials``, shape ``tune_shape``) and that nobody outside the coordinator sees the
trials that are not selected, nor ``K``. So one analyst request (``start_tune``) hands the whole session to the
coordinator: it draws ``K`` (:func:`~fedjax_room.dp.selection.draw_trials`, the operating system's generator) and
audits only a commitment to it (``tune_session_drawn``: a SHA-256 of the session, ``K`` and a secret nonce); it draws
each trial's configuration independently from the space (:func:`draw_config`, the same generator) and runs the
trials one after another as runs of their own (ids ``trial-<random hex>``), each declared to the sites with the
session's ``tune_session`` / ``tune_trials`` / ``tune_shape`` (the sites' accounting: ``site/spending.py``
``admit``). Those runs are **hidden** from every analyst (:meth:`TuneSessions.hidden`): not listed, not watchable,
no model, no run events, no budget row, no audit record; the machine's views consult it
(``protocol/requests.py``). When the last trial is over the coordinator picks the best by its last evaluated
round's DP-released metric (post-processing) and **publishes** that one trial (``tune_published``): from then on it
is an ordinary finished run the analyst reads like any other. While the session runs the analyst learns only that
it is running (``get_tune``). A session is the coordinator's memory: one cut by a restart is lost (its trials are
failed at the next start; what the sites charged stays charged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedjax_room.dp.selection import draw_trials
from fedjax_room.errors import ConfigError, RefusedError
from fedjax_room.protocol.config import run_options

__all__ = [
    "HIDDEN_KINDS",
    "MAX_MEAN",
    "MAX_VALUES",
    "METRICS",
    "SESSION_OPTIONS",
    "TRIAL_PREFIX",
    "TuneSession",
    "TuneSessions",
    "check_request",
    "check_space",
    "draw_config",
    "score",
    "space_to_wire",
]

log = logging.getLogger("fedjax_room.coordinator")

#: what a trial is ranked by, and whether higher is better
METRICS = {"accuracy": True, "loss": False}
#: the run options a tuning session sets on each trial (an analyst may not: only ``start_tune`` makes trials)
SESSION_OPTIONS = ("tune_session", "tune_trials", "tune_shape")
#: the largest mean number of trials, and the most values one option's list may hold
MAX_MEAN = 64
MAX_VALUES = 64
#: a trial's run id starts with this (the rest is random: a trial's id says nothing about how many ran)
TRIAL_PREFIX = "trial-"
#: audit kinds no analyst reads (the session's commitment to ``K``)
HIDDEN_KINDS = frozenset({"tune_session_drawn"})


# ------------------------------------------------------------------------------------------- the space


def space_to_wire(space: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """``space`` as ``start_tune`` carries it: a list of values ``{"values": [...]}``, a ``(low, high)`` tuple
    ``{"range": [low, high]}`` (msgpack has no tuples)."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("tune: give a space, e.g. {'learning_rate': [0.1, 0.3], 'clip_norm': (0.5, 2.0)}")
    out: dict[str, dict[str, list[Any]]] = {}
    for name, value in space.items():
        if isinstance(value, tuple):
            out[str(name)] = {"range": list(value)}
        elif isinstance(value, Sequence) and not isinstance(value, str):
            out[str(name)] = {"values": list(value)}
        else:
            raise ConfigError(f"tune: {name} must be a list of values or a (low, high) range, got {value!r}")
    check_space(out)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_space(space: Any) -> list[str]:
    """The option names of a wire-form space, sorted; a :class:`ConfigError` saying what is wrong otherwise."""
    known = {o.name for o in run_options()} - set(SESSION_OPTIONS)
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("tune: give a space, e.g. {'learning_rate': [0.1, 0.3], 'clip_norm': (0.5, 2.0)}")
    unknown = sorted(str(n) for n in set(space) - known)
    if unknown:
        raise ConfigError(f"tune: {unknown} are not run options (or are set by tune itself)")
    for name, entry in space.items():
        if not isinstance(entry, Mapping) or len(entry) != 1 or not set(entry) <= {"values", "range"}:
            raise ConfigError(f"tune: {name} must be a list of values or a (low, high) range")
        if "range" in entry:
            rng = entry["range"]
            if not (isinstance(rng, list) and len(rng) == 2 and all(_number(v) for v in rng) and rng[0] <= rng[1]):
                raise ConfigError(
                    f"tune: the range of {name} must be (low, high) numbers with low <= high, got {rng!r}"
                )
        else:
            values = entry["values"]
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
                raise ConfigError(f"tune: {name} must list 1 to {MAX_VALUES} values")
            if not all(v is None or isinstance(v, str | bool) or _number(v) for v in values):
                raise ConfigError(f"tune: the values of {name} must be numbers, strings, booleans or None")
    return sorted(str(n) for n in space)


def _draw(entry: Mapping[str, Any], rng: random.Random) -> Any:
    if "values" in entry:
        return rng.choice(list(entry["values"]))
    lo, hi = entry["range"]
    if isinstance(lo, int) and isinstance(hi, int):
        return rng.randint(lo, hi)
    if lo > 0 and hi / lo >= 10:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def draw_config(space: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """One trial's options from a wire-form ``space``, drawn independently of every other trial (private selection
    assumes independent, identically distributed trials): a list's values uniformly (with replacement), a range
    log-uniformly when positive and spanning a factor of 10 or more, uniformly otherwise, as integers when both
    ends are."""
    return {n: _draw(space[n], rng) for n in check_space(space)}


def _corners(space: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for name in check_space(space):
        entry = space[name]
        yield from ((name, v) for v in (entry["values"] if "values" in entry else entry["range"]))


def check_request(mean: Any, shape: Any, metric: Any, space: Any, base: Mapping[str, Any]) -> None:
    """Refuse (``ConfigError``) a session whose mean, shape, metric or space is out of bounds, or whose base
    options set the session's own (``tune_session`` ...)."""
    if isinstance(mean, bool) or not isinstance(mean, int) or not 2 <= mean <= MAX_MEAN:
        raise ConfigError(
            f"tune: trials (the mean number of trials) must be an integer from 2 to {MAX_MEAN}, got {mean!r}"
        )
    if not _number(shape) or not 0 <= shape <= 16:
        raise ConfigError(f"tune: shape must be a number from 0 to 16, got {shape!r}")
    if metric not in METRICS:
        raise ConfigError(f"tune: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if any(base.get(k) is not None for k in SESSION_OPTIONS):
        raise ConfigError("tune sets tune_session, tune_trials and tune_shape itself")
    check_space(space)


def score(rounds: Iterable[Any], metric: str) -> float | None:
    """A trial's metric: its last evaluated round's released ``metric`` (None: none released)."""
    for r in reversed(list(rounds)):
        value = getattr(r, metric, None)
        if r.status == "evaluated" and value is not None and math.isfinite(value):
            return float(value)
    return None


# ------------------------------------------------------------------------------------------- sessions


@dataclasses.dataclass
class TuneSession:
    """One session as the coordinator keeps it (in memory: ``count`` never leaves it)."""

    id: int
    analyst: str
    spec: dict[str, Any]
    space: dict[str, Any]
    mean: int
    shape: float
    metric: str
    base: dict[str, Any]
    count: int
    started: float
    trials: list[str] = dataclasses.field(default_factory=list)
    drawn: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    current: str | None = None
    best: tuple[float, str] | None = None
    status: str = "running"  # running | finished | failed
    error: dict[str, Any] | None = None

    def trial_config(self, drawn: Mapping[str, Any]) -> dict[str, Any]:
        """The run options of a trial drawn as ``drawn``."""
        return {**self.base, **drawn, "tune_session": self.id, "tune_trials": self.mean, "tune_shape": self.shape}

    def view(self) -> dict[str, Any]:
        """What the session's analyst may read of it: that it runs, and once over, the best trial (or the error)."""
        out: dict[str, Any] = {
            "session": self.id,
            "status": self.status,
            "trials": self.mean,
            "shape": self.shape,
            "metric": self.metric,
            "run_id": None,
            "value": None,
            "config": None,
            "error": self.error,
        }
        if self.status == "finished" and self.best is not None:
            key, run_id = self.best
            higher = METRICS[self.metric]
            out.update(run_id=run_id, value=key if higher else -key, config=dict(self.drawn[run_id]))
        return out


class TuneSessions:
    """The tuning sessions this coordinator runs (``rng``: the OS's generator unless a test gives one) and the set of
    hidden trial runs (``hidden``, loaded from the store's runs: a trial that was not published)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng: random.Random = rng or random.SystemRandom()
        self.sessions: dict[int, TuneSession] = {}
        self._hidden: set[str] | None = None

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load_hidden` has read the store."""
        return self._hidden is not None

    def load_hidden(self, runs: Iterable[Any], published: Iterable[str]) -> None:
        """Hide every stored trial not published (once, from the store)."""
        if self._hidden is None:
            shown = set(published)
            self._hidden = {
                r.id for r in runs if (r.config or {}).get("tune_session") is not None and r.id not in shown
            }

    @property
    def hidden(self) -> set[str]:
        """The run ids no analyst may see (call :meth:`load_hidden` first)."""
        if self._hidden is None:
            raise RuntimeError("TuneSessions.load_hidden was not called")
        return self._hidden

    def start(
        self,
        analyst: str,
        spec: dict[str, Any],
        space: dict[str, Any],
        mean: int,
        shape: float,
        metric: str,
        base: dict[str, Any],
        now: float,
    ) -> TuneSession:
        """A new session (its request checked by :func:`check_request`): its id and ``K`` drawn here."""
        check_request(mean, shape, metric, space, base)
        session_id = random.SystemRandom().randrange(1, 2**63)
        count = draw_trials(float(mean), float(shape), self.rng)
        s = TuneSession(
            id=session_id,
            analyst=analyst,
            spec=spec,
            space=space,
            mean=mean,
            shape=float(shape),
            metric=metric,
            base=dict(base),
            count=count,
            started=now,
        )
        self.sessions[session_id] = s
        return s

    def commitment(self, s: TuneSession) -> tuple[str, str]:
        """A commitment to the session's ``K`` (SHA-256 of session, ``K`` and a secret nonce) and the nonce (logged
        by the coordinator only, so the operator can open it)."""
        nonce = secrets.token_hex(16)
        return hashlib.sha256(f"{s.id}:{s.count}:{nonce}".encode()).hexdigest(), nonce

    def next_trial(self, s: TuneSession) -> tuple[str, dict[str, Any]] | None:
        """The next trial's run id and drawn options, or None once ``K`` have started (the id is hidden at once)."""
        if len(s.trials) >= s.count:
            return None
        run_id = TRIAL_PREFIX + secrets.token_hex(8)
        drawn = draw_config(s.space, self.rng)
        s.trials.append(run_id)
        s.drawn[run_id] = drawn
        s.current = run_id
        self.hidden.add(run_id)
        return run_id, drawn

    def trial_over(self, s: TuneSession, run_id: str, value: float | None) -> None:
        """Record a trial's metric (None: it released none, or failed)."""
        s.current = None
        if value is None:
            return
        key = value if METRICS[s.metric] else -value
        if s.best is None or key > s.best[0]:
            s.best = (key, run_id)

    def publish(self, s: TuneSession) -> str | None:
        """End the session: its best trial becomes visible (returned), or the session fails (None)."""
        if s.best is None:
            s.status = "failed"
            s.error = (
                s.error
                or RefusedError(
                    f"no trial of tuning session {s.id} finished with a released {s.metric}",
                    party="room",
                    reason="tune_failed",
                ).to_dict()
            )
            return None
        s.status = "finished"
        self.hidden.discard(s.best[1])
        return s.best[1]

    def fail(self, s: TuneSession, error: dict[str, Any]) -> None:
        """End the session with ``error`` (its first trial was refused before it ran: nothing more is tried)."""
        s.status, s.error, s.current = "failed", error, None

    def owned(self, analyst: str, session: int) -> TuneSession:
        """The session ``session`` of ``analyst`` (another analyst's reads as unknown)."""
        s = self.sessions.get(session)
        if s is None or s.analyst != analyst:
            raise ConfigError(
                f"no tuning session {session} of yours in this room (a session does not survive a coordinator restart)"
            )
        return s

    def known(self, session: Any, runs: Iterable[Any]) -> bool:
        """Whether ``session`` names a session this room has run (or is running)."""
        return session in self.sessions or any((r.config or {}).get("tune_session") == session for r in runs)
