"""Typed run events: what :meth:`fedjax_room.analyst.run.Run.subscribe` delivers, one small frozen record each.

The coordinator pushes ``RunEvent`` frames (``kind`` "round", "status", "refusal", "waiting") to every
analyst watching a run, and answers a watch with a ``RunSnapshot``. The client turns both into these
records, each naming its ``kind``:

==========================  =============================================================================
event                       when
==========================  =============================================================================
:class:`RoundEvent`         a round was aggregated and evaluated (its DP-noised metrics, epsilon so far)
:class:`DefenceEvent`       that round's poisoning-defence report (flagged, excluded, trust, checks)
:class:`RefusalEvent`       a site refused the run or a round, and why
:class:`WaitingEvent`       the sites whose data owner has not yet approved the model changed
:class:`StatusEvent`        the run's status changed (pending, running, finished, failed) or it ended
:class:`ProgressEvent`      inside a round: a phase opened, or one more site answered (``answered/cohort``)
==========================  =============================================================================

Progress events are transient (several per round, not replayed, not in a snapshot) and go only to subscribers
that ask for them by kind (``run.subscribe(cb, kinds={"progress"})``); a subscriber of every kind gets the other
five, as before.

A snapshot (the first answer to a watch, and again after a reconnect) yields the events for whatever it
shows that the run had not yet seen, so a subscriber sees each round, refusal and status change once,
whether it came pushed or in a snapshot. :func:`to_json` gives an event as plain JSON (for the
JupyterLab server extension's websocket).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from fedjax_room.analyst.results import PrivacyReport, Refusal, RoundResult
from fedjax_room.errors import FedRoomError

__all__ = [
    "EVENT_KINDS",
    "OPT_IN_KINDS",
    "DefenceEvent",
    "ProgressEvent",
    "RefusalEvent",
    "RoundEvent",
    "RunEvent",
    "StatusEvent",
    "WaitingEvent",
    "to_json",
]

EVENT_KINDS = ("round", "defence", "refusal", "waiting", "status", "progress")
#: Kinds delivered only to a subscriber that names them in ``kinds``.
OPT_IN_KINDS = frozenset({"progress"})


@dataclasses.dataclass(frozen=True)
class RoundEvent:
    """Round ``result.round`` of run ``run_id`` is done: ``result`` (:class:`RoundResult`), ``privacy`` after it."""

    run_id: str
    result: RoundResult
    privacy: PrivacyReport | None = None
    kind: Literal["round"] = dataclasses.field(default="round", init=False)

    @property
    def round(self) -> int:
        """The round's number (``result.round``)."""
        return self.result.round


@dataclasses.dataclass(frozen=True)
class DefenceEvent:
    """What the poisoning defence did in round ``round``: ``report`` is the round's ``defence`` record.

    ``flagged`` {site: reasons}, ``excluded`` [site], ``trust`` {site: trust}; with secure aggregation the
    aggregate checks instead (docs/robustness.md).
    """

    run_id: str
    round: int
    report: dict[str, Any]
    kind: Literal["defence"] = dataclasses.field(default="defence", init=False)

    @property
    def flagged(self) -> tuple[str, ...]:
        """Sites whose update the anomaly detector flagged this round."""
        return tuple(sorted(self.report.get("flagged") or {}))

    @property
    def excluded(self) -> tuple[str, ...]:
        """Sites left out of this round's aggregate (trust below ``exclude_below``)."""
        return tuple(str(s) for s in self.report.get("excluded") or ())


@dataclasses.dataclass(frozen=True)
class RefusalEvent:
    """A site refused the run (``refusal.round`` None) or one of its rounds."""

    run_id: str
    refusal: Refusal
    kind: Literal["refusal"] = dataclasses.field(default="refusal", init=False)


@dataclasses.dataclass(frozen=True)
class WaitingEvent:
    """``waiting``: the sites whose data owner has not yet approved this run's model (empty once all decided)."""

    run_id: str
    waiting: tuple[str, ...]
    kind: Literal["waiting"] = dataclasses.field(default="waiting", init=False)


@dataclasses.dataclass(frozen=True)
class StatusEvent:
    """The run is now ``status`` after ``rounds_done`` rounds; ``error`` says why when it failed."""

    run_id: str
    status: str
    rounds_done: int
    error: FedRoomError | None = None
    privacy: PrivacyReport | None = None
    kind: Literal["status"] = dataclasses.field(default="status", init=False)

    @property
    def done(self) -> bool:
        """Whether the run has ended (finished or failed)."""
        return self.status in ("finished", "failed")


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Inside round ``round``: ``answered`` of the ``cohort`` sites have sent their ``phase`` answer so far.

    ``phase`` is ``"train"`` (model updates) or ``"eval"`` (the noised evaluation counts); ``answered`` 0 means
    the phase has just opened. Counts only: which sites answered is in the round's result when it closes.
    """

    run_id: str
    round: int
    phase: str
    answered: int
    cohort: int
    kind: Literal["progress"] = dataclasses.field(default="progress", init=False)

    def text(self) -> str:
        """``"round 1: 2/3 sites updated"`` (train) or ``"round 1: evaluating, 1/3 sites"`` (eval)."""
        if self.phase == "eval":
            return f"round {self.round}: evaluating, {self.answered}/{self.cohort} sites"
        if self.answered == 0:
            return f"round {self.round}: training at {self.cohort} site{'s' if self.cohort != 1 else ''}"
        return f"round {self.round}: {self.answered}/{self.cohort} sites updated"


#: Any of the typed run events.
RunEvent = RoundEvent | DefenceEvent | RefusalEvent | WaitingEvent | StatusEvent | ProgressEvent


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON.parse rejects NaN and infinities
    if isinstance(value, FedRoomError):
        return value.to_dict()
    if isinstance(value, PrivacyReport):
        return {site: _plain(p) for site, p in value.sites.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def to_json(event: RunEvent) -> dict[str, Any]:
    """``event`` as plain JSON data: ``{"kind": ..., "run_id": ..., ...}`` (NaN and infinities as null)."""
    out = _plain(event)
    assert isinstance(out, dict)
    return out
