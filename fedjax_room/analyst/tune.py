"""``room.tune``: hyperparameter search that releases only the best trial, its whole cost accounted by the sites.

``room.tune(spec, {"learning_rate": (0.05, 1.0), "clip_norm": [0.5, 1.0]}, trials=8, rounds=5)`` runs a **tuning
session**: a random number of trials, each a run of a configuration drawn independently from the space (a list
is a set of values drawn uniformly, with replacement; a ``(low, high)`` pair a range, drawn log-uniformly for
positive ranges spanning a factor of 10 or more, uniformly otherwise, as integers when both ends are). ``trials``
is the *mean* number of trials and ``shape`` the shape of their distribution (Papernot & Steinke's truncated
negative binomial; 1, the default, is the geometric distribution: ``P(K = k) = (1-1/trials)^(k-1) / trials``).
The analyst does not pick the number: every trial's run request carries ``tune_session`` (a random id),
``tune_trials`` and ``tune_shape``; the coordinator draws the number at the first trial (operating-system
randomness; :mod:`fedjax_room.protocol.tuning`) and refuses the trial after the last (``reason="tune_done"``), and
every site takes part in at most ``k_max`` trials of a session (its bound on the number).

Each site accounts the session as its policy's ``tuning_selection`` says (docs/privacy.md, "Hyperparameter
tuning"): ``"private"`` charges it once, at its first trial, with Papernot & Steinke's (ICLR 2022) bound for
releasing the best of a random number of trials, refusing the session up front if that would pass its cap;
``"compose"`` (the default) composes every trial's releases, as for any run. The private bound assumes that
nobody but the coordinator sees the trials that are not selected, nor their number.

The result is the best trial only (:class:`TuneResult`): its configuration, its run (model, rounds, privacy) and
its metric: the last evaluated round's DP-released ``accuracy`` (highest) or ``loss`` (lowest).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fedjax_room.analyst.run import Run
from fedjax_room.errors import ConfigError, FedRoomError, RoundError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig, run_options

__all__ = ["MAX_TRIALS", "METRICS", "TuneResult", "draw_configs", "tune"]

#: what a trial is ranked by, and whether higher is better
METRICS = {"accuracy": True, "loss": False}
#: options a tuning sets itself
_SESSION = ("tune_session", "tune_trials", "tune_shape")
#: the most trials one session asks for (the coordinator's draw ends it long before; the sites bound it too)
MAX_TRIALS = 100_000


class _Room(Protocol):
    """What tuning needs of a room (``analyst.client.Room``): starting a run."""

    def train(self, spec: Any, /, **options: Any) -> Run: ...


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The best trial of a tuning session: its options, its run and its metric (``trials``: the session's mean
    number of trials, ``shape``: their distribution's shape)."""

    session: int
    trials: int
    shape: float
    metric: str
    value: float | None
    config: dict[str, Any]
    run: Run

    @property
    def params(self) -> Any:
        """The best trial's global model."""
        return self.run.params

    def __repr__(self) -> str:
        varied = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        value = "—" if self.value is None else f"{self.value:.4g}"
        return (
            f"TuneResult(best trial of a session of mean {self.trials} trials: {self.metric} {value}, run "
            f"{self.run.id}; {varied})"
        )

    def _repr_html_(self) -> str:
        import html

        return f"<div><b>Tuning session {self.session}</b>: {html.escape(repr(self))}</div>"


def _draw(value: Any, name: str, rng: random.Random) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        lo, hi = value
        if isinstance(lo, bool) or isinstance(hi, bool) or not lo <= hi:
            raise ConfigError(f"tune: the range of {name} must be (low, high) with low <= high, got {value!r}")
        if isinstance(lo, int) and isinstance(hi, int):
            return rng.randint(lo, hi)
        if lo > 0 and hi / lo >= 10:
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return float(rng.uniform(lo, hi))
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        return rng.choice(list(value))
    raise ConfigError(f"tune: {name} must be a list of values or a (low, high) range, got {value!r}")


def _check_space(space: Mapping[str, Any]) -> list[str]:
    known = {o.name for o in run_options()} - set(_SESSION)
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("tune: give a space, e.g. {'learning_rate': [0.1, 0.3], 'clip_norm': (0.5, 2.0)}")
    unknown = sorted(set(space) - known)
    if unknown:
        raise ConfigError(f"tune: {unknown} are not run options (or are set by tune itself)")
    return sorted(space)


def draw_configs(space: Mapping[str, Any], trials: int, *, seed: int) -> list[dict[str, Any]]:
    """``trials`` option sets from ``space``, each drawn independently of the others (a list's values uniformly,
    with replacement: private selection assumes independent, identically distributed trials)."""
    names = _check_space(space)
    rng = random.Random(seed)
    return [{n: _draw(space[n], n, rng) for n in names} for _ in range(trials)]


def _score(run: Run, metric: str) -> float | None:
    for r in reversed(run.history):
        value = getattr(r, metric, None)
        if value is not None and math.isfinite(value):
            return float(value)
    return None


def tune(
    room: _Room,
    spec: ModelSpec | Mapping[str, Any],
    space: Mapping[str, Any],
    *,
    trials: int,
    shape: float = 1.0,
    metric: str = "accuracy",
    seed: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> TuneResult:
    """Run a tuning session (see the module docstring) of mean ``trials`` trials, their number distributed with
    ``shape`` (1: geometric; 0: logarithmic; up to 16) and drawn by the coordinator; a refusal before any trial
    finished stops it (one typed error)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or not 2 <= trials <= 64:
        raise ConfigError(f"tune: trials (the mean number of trials) must be an integer from 2 to 64, got {trials!r}")
    if isinstance(shape, bool) or not isinstance(shape, int | float) or not 0 <= shape <= 16:
        raise ConfigError(f"tune: shape must be a number from 0 to 16, got {shape!r}")
    if metric not in METRICS:
        raise ConfigError(f"tune: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if set(options) & set(_SESSION):
        raise ConfigError("tune sets tune_session, tune_trials and tune_shape itself")
    model = ModelSpec.from_dict(spec)
    names = _check_space(space)
    session = random.SystemRandom().randrange(1, 2**63)
    rng = random.Random(session if seed is None else seed)
    fixed = {**options, "tune_session": session, "tune_trials": trials, "tune_shape": float(shape)}
    best: tuple[float, Run, dict[str, Any]] | None = None
    higher = METRICS[metric]
    for _ in range(MAX_TRIALS):
        drawn = {n: _draw(space[n], n, rng) for n in names}
        config = RunConfig.from_dict({**fixed, **drawn})
        try:
            run = room.train(model, **config.to_dict())  # each site checks the session at its first trial
        except FedRoomError as exc:
            if getattr(exc, "reason", "") == "tune_done":  # the coordinator's drawn number of trials has run
                break
            if best is None:
                raise
            break
        run.wait(timeout)
        if run.status != "finished":
            if run.error is not None and best is None:
                raise run.error
            continue
        value = _score(run, metric)
        if value is None:
            continue
        key = value if higher else -value
        if best is None or key > best[0]:
            best = (key, run, drawn)
    if best is None:
        raise RoundError(f"tune: no trial of session {session} finished with a released {metric}")
    key, run, drawn = best
    return TuneResult(
        session=session,
        trials=trials,
        shape=float(shape),
        metric=metric,
        value=key if higher else -key,
        config=dict(drawn),
        run=run,
    )
