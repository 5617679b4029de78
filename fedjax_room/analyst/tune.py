"""``room.tune``: hyperparameter search whose whole privacy cost the sites account and cap, releasing only the best.

``room.tune(spec, {"learning_rate": (0.05, 1.0), "clip_norm": [0.5, 1.0]}, trials=4, rounds=5)`` draws ``trials``
configurations from the space (a list is a grid to draw from; a ``(low, high)`` pair a range, drawn log-uniformly
for positive ranges spanning a factor of 10 or more, uniformly otherwise, as integers when both ends are), and
runs each as a trial of one **tuning session**: every trial's run request carries ``tune_session`` (a random id)
and ``tune_trials``, so each site knows, before the first trial spends anything, that the session is ``trials``
runs: it checks all of them together against its cap (refusing the session up front rather than half-way) and
takes part in at most ``trials`` runs of it (an analyst cannot quietly run one more). Each trial's releases are
composed into every site's ledger as they are made (docs/privacy.md, "Hyperparameter tuning": the coordinator sees
every trial, so the ledger holds their composition; selecting the best is post-processing).

The result is the best trial only (:class:`TuneResult`): its configuration, its run (model, rounds, privacy) and
its metric — the last evaluated round's DP-released ``accuracy`` (highest) or ``loss`` (lowest). The other trials'
models and metrics are not shown.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fedjax_room.analyst.run import Run
from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig, run_options

__all__ = ["METRICS", "TuneResult", "draw_configs", "tune"]

#: what a trial is ranked by, and whether higher is better
METRICS = {"accuracy": True, "loss": False}
#: options a tuning sets itself
_SESSION = ("tune_session", "tune_trials")


class _Room(Protocol):
    """What tuning needs of a room (``analyst.client.Room``): starting a run."""

    def train(self, spec: Any, /, **options: Any) -> Run: ...


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The best trial of a tuning session: its options, its run and its metric (no other trial is shown)."""

    session: int
    trials: int
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
        return f"TuneResult(best of {self.trials} trials: {self.metric} {value}, run {self.run.id}; {varied})"

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


def draw_configs(space: Mapping[str, Any], trials: int, *, seed: int) -> list[dict[str, Any]]:
    """``trials`` option sets from ``space``: a grid alone is sampled without repeats; with a range, each trial
    draws every option independently."""
    known = {o.name for o in run_options()} - set(_SESSION)
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("tune: give a space, e.g. {'learning_rate': [0.1, 0.3], 'clip_norm': (0.5, 2.0)}")
    unknown = sorted(set(space) - known)
    if unknown:
        raise ConfigError(f"tune: {unknown} are not run options (or are set by tune itself)")
    rng = random.Random(seed)
    names = sorted(space)
    grid = all(isinstance(space[n], list) for n in names)
    if grid:
        points = list(itertools.product(*(space[n] for n in names)))
        if len(points) < trials:
            raise ConfigError(f"tune: the grid has {len(points)} configurations; ask for at most trials={len(points)}")
        return [dict(zip(names, p, strict=True)) for p in rng.sample(points, trials)]
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
    metric: str = "accuracy",
    seed: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> TuneResult:
    """Run the tuning session (see the module docstring); the first refusal stops it (one typed error)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or not 2 <= trials <= 64:
        raise ConfigError(f"tune: trials must be an integer from 2 to 64, got {trials!r}")
    if metric not in METRICS:
        raise ConfigError(f"tune: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if set(options) & set(_SESSION):
        raise ConfigError("tune sets tune_session and tune_trials itself")
    model = ModelSpec.from_dict(spec)
    session = random.SystemRandom().randrange(1, 2**63)
    draws = draw_configs(space, trials, seed=session if seed is None else seed)
    configs = [RunConfig.from_dict({**options, **d, "tune_session": session, "tune_trials": trials}) for d in draws]
    best: tuple[float, int, Run] | None = None
    higher = METRICS[metric]
    for i, config in enumerate(configs):
        run = room.train(model, **config.to_dict())  # the first trial's estimate checks the whole session
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
            best = (key, i, run)
    if best is None:
        raise RoundError(f"tune: none of the {trials} trials of session {session} finished with a released {metric}")
    key, index, run = best
    return TuneResult(
        session=session,
        trials=trials,
        metric=metric,
        value=key if higher else -key,
        config=dict(draws[index]),
        run=run,
    )
