"""``room.tune``: hyperparameter search that releases only the best trial, its whole cost accounted by the sites.

``room.tune(spec, {"learning_rate": (0.05, 1.0), "clip_norm": [0.5, 1.0]}, trials=8, rounds=5)`` asks the
coordinator for a **tuning session** (one ``start_tune`` request; :mod:`fedjax_room.protocol.tuning`): it draws a
random number of trials (``trials`` is their *mean*, ``shape`` the shape of their distribution, Papernot &
Steinke's truncated negative binomial; 1, the default, is the geometric distribution:
``P(K = k) = (1-1/trials)^(k-1) / trials``) and each trial's options independently from the space (a list is a
set of values drawn uniformly, with replacement; a ``(low, high)`` pair a range, drawn log-uniformly for positive
ranges spanning a factor of 10 or more, uniformly otherwise, as integers when both ends are), with the
operating system's randomness, and runs the trials itself, hidden from every analyst. When they are over it
publishes only the best trial, by its last evaluated round's DP-released ``accuracy`` (highest) or ``loss``
(lowest): the analyst sees that one run (model, rounds, privacy) and nothing of the others, nor their number.

Each site accounts the session as its policy's ``tuning_selection`` says (docs/privacy.md, "Hyperparameter
tuning"): ``"private"`` (the default) charges it once, at its first trial, with Papernot & Steinke's (ICLR 2022)
bound for releasing the best of a random number of trials, refusing the session up front if that would pass its
cap; ``"compose"`` composes every trial's releases, as for any run. A room whose sites disagree is refused a
session (``reason="tune_modes"``): a composing site's ledger grows with each trial and would show their number.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fedjax_room.analyst.run import Run
from fedjax_room.errors import ConfigError, RoundError, error_from_dict
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.tuning import METRICS, SESSION_OPTIONS, check_request, space_to_wire

__all__ = ["METRICS", "POLL", "TuneResult", "tune"]

#: seconds between two looks at a running session
POLL = 0.5


class _Room(Protocol):
    """What tuning needs of a room (``analyst.client.Room``): asking the coordinator, following a run."""

    def _ask(self, build: Callable[[int], m.Message], *, resend: bool = True) -> Any: ...

    def run(self, run_id: str) -> Run: ...


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


def tune(
    room: _Room,
    spec: ModelSpec | Mapping[str, Any],
    space: Mapping[str, Any],
    *,
    trials: int,
    shape: float = 1.0,
    metric: str = "accuracy",
    timeout: float | None = None,
    **options: Any,
) -> TuneResult:
    """Run a tuning session (see the module docstring) of mean ``trials`` trials (2 to 64), their number
    distributed with ``shape`` (1: geometric; 0: logarithmic; up to 16) and drawn by the coordinator; wait for it
    (``timeout`` seconds; None: as long as it takes) and return its best trial. A session refused before its first
    trial ran raises that refusal (nothing spent); one whose trials all failed raises a ``RoundError``."""
    if set(options) & set(SESSION_OPTIONS):
        raise ConfigError("tune sets tune_session, tune_trials and tune_shape itself")
    model = ModelSpec.from_dict(spec)
    wire = space_to_wire(space)
    config = RunConfig.from_dict(options).to_dict()
    check_request(trials, shape, metric, wire, config)
    started = room._ask(
        lambda req: m.StartTune(
            req=req,
            spec=model.to_dict(),
            space=wire,
            trials=trials,
            shape=float(shape),
            metric=metric,
            config=config,
        ),
        resend=False,
    )
    session = int(started.session)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        view = dict(room._ask(lambda req: m.GetTune(req=req, session=session)).tune)
        if view.get("status") != "running":
            break
        if deadline is not None and time.monotonic() > deadline:
            raise RoundError(f"tune: session {session} still running after {timeout:g}s")
        time.sleep(POLL)
    if view.get("status") != "finished" or not view.get("run_id"):
        error = view.get("error")
        if isinstance(error, dict) and error.get("code"):
            raise error_from_dict(error)
        raise RoundError(f"tune: no trial of session {session} finished with a released {metric}")
    run = room.run(str(view["run_id"]))
    return TuneResult(
        session=session,
        trials=trials,
        shape=float(shape),
        metric=metric,
        value=view.get("value"),
        config=dict(view.get("config") or {}),
        run=run,
    )
