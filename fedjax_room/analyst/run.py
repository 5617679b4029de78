"""A federated run as the analyst sees it: :class:`Run`, kept up to date by the room's pushed events.

Created by :meth:`fedjax_room.analyst.client.Room.train` / :meth:`~fedjax_room.analyst.client.Room.run`;
the client's I/O thread applies the coordinator's ``RunSnapshot`` and ``RunEvent`` frames to it, and
callbacks given to :meth:`Run.subscribe` run on the client's callback thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from fedjax_room.analyst.events import (
    EVENT_KINDS,
    OPT_IN_KINDS,
    DefenceEvent,
    ProgressEvent,
    RefusalEvent,
    RoundEvent,
    RunEvent,
    StatusEvent,
    WaitingEvent,
)
from fedjax_room.analyst.results import FinalMetrics, PrivacyReport, Refusal, RoundResult
from fedjax_room.errors import ConfigError, FedRoomError, error_from_dict
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import Tree, unpack_tree

if TYPE_CHECKING:
    from fedjax_room.analyst.evaluate import Evaluation

__all__ = ["Run", "RunCore"]

log = logging.getLogger("fedjax_room.analyst")


class RunCore(Protocol):
    """What a :class:`Run` needs of the client that feeds it (``analyst.client._Core``)."""

    @property
    def callbacks(self) -> concurrent.futures.Executor: ...

    @property
    def timeout(self) -> float: ...

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any: ...

    def request(self, build: Callable[[int], m.Message], *, resend: bool = True) -> Coroutine[Any, Any, Any]: ...


class _Subscription(NamedTuple):
    callback: Callable[[Any], Any]
    kinds: frozenset[str] | None


class Run:
    """A federated run, updated live in the background. Created by :meth:`Room.train`."""

    def __init__(self, core: RunCore, run_id: str) -> None:
        self._core = core
        self.id = run_id
        self.spec: ModelSpec | None = None
        self.config: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._status = "pending"
        self._history: dict[int, RoundResult] = {}
        self._refusals: list[Refusal] = []
        self._error: FedRoomError | None = None
        self._privacy = PrivacyReport(run_id, {})
        self._rounds_done = 0
        self._callbacks: list[_Subscription] = []
        self._params: tuple[int, Tree] | None = None
        self._defences: list[dict[str, Any]] = []
        self._waiting: list[str] = []
        self._progress: ProgressEvent | None = None

    # -------------------------------------------------------------- state (updated on the loop thread)

    def _apply_snapshot(self, snap: Mapping[str, Any]) -> None:
        """Take the run's whole state; the events are what it shows that this run had not seen yet."""
        with self._cond:
            events: list[RunEvent] = []
            if snap.get("spec") and self.spec is None:
                self.spec = ModelSpec.from_dict(snap["spec"])
            if snap.get("config"):
                self.config = dict(snap["config"])
            self._privacy = PrivacyReport.from_dict(self.id, snap.get("privacy") or {})
            for row in snap.get("history") or []:
                events += self._add_round(RoundResult.from_dict(row))
            for row in snap.get("refusals") or []:
                events += self._add_refusal(Refusal.from_dict(row))
            self._defences = [dict(d) for d in snap.get("defences") or self._defences]
            events += self._set_waiting(snap.get("waiting"))
            before = (self._status, self._error)
            self._rounds_done = max(self._rounds_done, int(snap.get("rounds_done", 0)))
            self._set_status(str(snap.get("status", self._status)), snap.get("error"))
            if (self._status, self._error) != before:
                events.append(self._status_event())
            self._cond.notify_all()
            self._fire(events)

    def _set_status(self, status: str, error: Any) -> None:
        self._status = status
        if error:
            self._error = error_from_dict(dict(error)) if isinstance(error, Mapping) else FedRoomError(str(error))

    def _status_event(self) -> StatusEvent:
        return StatusEvent(self.id, self._status, self._rounds_done, self._error, self._privacy)

    def _add_round(self, rr: RoundResult) -> list[RunEvent]:
        if rr.round in self._history:
            return []
        self._history[rr.round] = rr
        self._rounds_done = max(self._rounds_done, rr.round)
        events: list[RunEvent] = [RoundEvent(self.id, rr, self._privacy)]
        if rr.defence:
            events.append(DefenceEvent(self.id, rr.round, dict(rr.defence)))
        return events

    def _add_refusal(self, refusal: Refusal) -> list[RunEvent]:
        if refusal in self._refusals:
            return []
        self._refusals.append(refusal)
        return [RefusalEvent(self.id, refusal)]

    def _set_waiting(self, waiting: Any) -> list[RunEvent]:
        names = [str(s) for s in waiting or ()]
        if names == self._waiting:
            return []
        self._waiting = names
        return [WaitingEvent(self.id, tuple(names))]

    def _set_progress(self, data: Mapping[str, Any]) -> list[RunEvent]:
        numbers = [data.get(k) for k in ("round", "answered", "cohort")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
            raise ValueError(f"progress needs whole round/answered/cohort numbers, got {numbers}")
        rnd, answered, cohort = (int(v) for v in numbers)  # type: ignore[arg-type]  # checked above
        if rnd <= self._rounds_done:
            return []  # a late frame of a round already closed
        self._progress = ProgressEvent(self.id, rnd, str(data.get("phase", ""))[:16], answered, cohort)
        return [self._progress]

    def _on_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """One ``RunEvent`` frame pushed by the coordinator ("round", "status", "refusal", "waiting")."""
        with self._cond:
            events: list[RunEvent] = []
            try:
                if data.get("privacy"):
                    self._privacy = PrivacyReport.from_dict(self.id, data["privacy"])
                if kind == "round":
                    events += self._add_round(RoundResult.from_dict(data))
                    if self._status == "pending":
                        self._status = "running"
                        events.append(self._status_event())
                elif kind == "status":
                    self._rounds_done = int(data.get("rounds_done", self._rounds_done))
                    self._set_status(str(data.get("status", self._status)), data.get("error"))
                    events.append(self._status_event())
                elif kind == "waiting":
                    events += self._set_waiting(data.get("waiting"))
                elif kind == "refusal":
                    events += self._add_refusal(Refusal.from_dict(data))
                elif kind == "progress":
                    events += self._set_progress(data)
                else:
                    log.debug("ignoring a run event of unknown kind %r", kind)
            except (KeyError, TypeError, ValueError) as exc:  # a malformed event must not stop the client
                log.warning("ignoring a malformed %r event of %s: %s", kind, self.id, exc)
            self._cond.notify_all()
            self._fire(events)

    def _replay(self) -> list[RunEvent]:
        """The events that bring a new subscriber up to now (called with the lock held)."""
        events: list[RunEvent] = []
        for number in sorted(self._history):
            rr = self._history[number]
            events.append(RoundEvent(self.id, rr, self._privacy))
            if rr.defence:
                events.append(DefenceEvent(self.id, rr.round, dict(rr.defence)))
        events += [RefusalEvent(self.id, r) for r in self._refusals]
        if self._waiting:
            events.append(WaitingEvent(self.id, tuple(self._waiting)))
        events.append(self._status_event())
        return events

    def _fire(self, events: list[RunEvent], only: _Subscription | None = None) -> None:
        """Queue ``events`` for the subscribers, in order (called with the lock held, so none is delivered twice)."""
        for event in events:
            for sub in [only] if only is not None else list(self._callbacks):
                wanted = event.kind not in OPT_IN_KINDS if sub.kinds is None else event.kind in sub.kinds
                if wanted:
                    try:
                        self._core.callbacks.submit(self._safe, sub.callback, event)
                    except RuntimeError:  # the room was closed: nobody is listening any more
                        return

    @staticmethod
    def _safe(cb: Callable[[Any], Any], event: RunEvent) -> None:
        try:
            cb(event)
        except Exception:
            log.exception("a run callback failed")

    # -------------------------------------------------------------- public

    @property
    def done(self) -> bool:
        """Whether the run has finished or failed."""
        return self._status in ("finished", "failed")

    @property
    def status(self) -> str:
        """``"pending"``, ``"running"``, ``"finished"`` or ``"failed"``."""
        return self._status

    @property
    def rounds_done(self) -> int:
        """Rounds aggregated so far."""
        return self._rounds_done

    @property
    def history(self) -> list[RoundResult]:
        """Every round's result so far, in order."""
        with self._cond:
            return [self._history[k] for k in sorted(self._history)]

    @property
    def final_metrics(self) -> FinalMetrics | None:
        """The model's DP-released accuracy and loss on the union of the sites' held-out sets, with their noise
        scale, from the last evaluated round (the last round always is); None before any round is evaluated."""
        return FinalMetrics.of(self.history)

    @property
    def privacy(self) -> PrivacyReport:
        """Each site's epsilon (and delta) spent in this run, its cap and what is left of its ledger."""
        return self._privacy

    @property
    def refusals(self) -> list[Refusal]:
        """Sites that refused the run or a round, and why."""
        with self._cond:
            return list(self._refusals)

    @property
    def waiting(self) -> list[str]:
        """Sites whose data owner has not yet approved this run's model (``approval = "manual"``); [] otherwise."""
        with self._cond:
            return list(self._waiting)

    @property
    def waiting_text(self) -> str:
        """``"waiting for approval by site-a, site-b"`` (empty when nobody is waiting)."""
        waiting = self.waiting
        return f"waiting for approval by {', '.join(waiting)}" if waiting else ""

    @property
    def progress(self) -> ProgressEvent | None:
        """Where the round in progress stands (phase, sites answered of the cohort); None between rounds."""
        with self._cond:
            progress = self._progress
            return progress if progress is not None and progress.round > self._rounds_done else None

    @property
    def defences(self) -> list[dict[str, Any]]:
        """Which poisoning defences run for this run: ``[{name, active, detail}]`` (docs/robustness.md)."""
        return list(self._defences)

    @property
    def protections(self) -> list[str]:
        """Which protections this run has, one phrase each (:func:`fedjax_room.protocol.config.protections`):
        secure aggregation or not, its DP guarantee, a robust aggregator, anomaly detection when the coordinator
        sees each update."""
        from fedjax_room.protocol.config import protections

        return protections(self.config)

    def defences_text(self) -> str:
        """:attr:`defences` as lines ``[on ] name: detail`` / ``[off] name: detail``."""
        return "\n".join(f"[{'on ' if d['active'] else 'off'}] {d['name']}: {d['detail']}" for d in self._defences)

    @property
    def error(self) -> FedRoomError | None:
        """Why the run failed (None unless ``status == "failed"``)."""
        return self._error

    def rounds(self, timeout: float | None = None) -> Iterator[RoundResult]:
        """Yield each round's result as it arrives (earlier ones first); stops when the run ends.

        ``timeout`` bounds the wait for each next round (:class:`TimeoutError`).
        """
        seen = 0

        def more() -> bool:
            return len(self._history) > seen or self.done

        while True:
            with self._cond:
                ok = self._cond.wait_for(more, timeout)
                if not ok:
                    raise TimeoutError(f"no round of {self.id} within {timeout:g}s")
                ordered = [self._history[k] for k in sorted(self._history)]
                finished = self.done
            yield from ordered[seen:]
            seen = len(ordered)
            if finished and seen >= len(self._history):
                return

    def cancel(self, reason: str = "") -> Run:
        """Stop this run (yours only; the room's operator can stop any with ``fedjax-room cancel``).

        The room records ``run_cancelled`` in its audit log, the run ends ``failed`` with a
        :class:`~fedjax_room.errors.RefusedError` whose reason is ``cancelled``, and the sites start no
        further round of it. Returns the run once the room has confirmed; raises
        :class:`~fedjax_room.errors.RefusedError` (not your run) or :class:`ConfigError` (already over).
        """
        if not isinstance(reason, str):
            raise ConfigError(f"reason must be a string, got {type(reason).__name__}")
        self._core.call(
            self._core.request(lambda req: m.CancelRun(req=req, run_id=self.id, message=reason[:500]), resend=False)
        )
        with self._cond:  # the status event may still be in flight; the room has ended the run either way
            self._cond.wait_for(lambda: self.done, self._core.timeout)
        return self

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run finishes or fails; returns the run (check :attr:`status` / :attr:`error`)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"run {self.id} still {self._status} after {timeout:g}s")
        return self

    @property
    def params(self) -> Tree | None:
        """The global model's parameters after the last finished round (downloaded; audited)."""
        cached = self._params
        if cached is not None and cached[0] == self._rounds_done and self.done:
            return cached[1]
        reply = self._core.call(self._core.request(lambda req: m.GetModel(req=req, run_id=self.id)))
        params = unpack_tree(reply.params)
        self._params = (reply.round, params)
        return params

    def evaluate(
        self,
        data: Any,
        *,
        label: str | None = None,
        classes: Sequence[Any] | None = None,
        positive: int = 1,
    ) -> Evaluation:
        """Evaluate the global model on your own labelled ``data``, here in your process (no site is asked).

        ``data``: a pair ``(x, y)``, a dataset with ``.x``/``.y``, a ``.npz`` or a ``.csv`` path (see
        :mod:`fedjax_room.analyst.evaluate`); labels are class indices, or values mapped by ``classes``.
        Returns an :class:`~fedjax_room.analyst.evaluate.Evaluation` (accuracy, loss, confusion matrix; ROC
        and precision-recall with their areas for two classes) that renders as tables and plots in Jupyter.
        """
        from fedjax_room.analyst.evaluate import evaluate

        spec, params = self._model()
        return evaluate(spec, params, data, label=label, classes=classes, positive=positive)

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write the global model (spec + parameters) to ``path``: ``.msgpack`` (flax) or ``.npz`` (docs/export.md).

        Pickle-free; ``fedjax_room.models.load(path)`` reads it back (``.predict``, ``.predict_proba``). The
        header's metadata records the run id, the room, the rounds and each site's epsilon spent.
        """
        from fedjax_room.models.export import export_model

        spec, params = self._model()
        metadata = {
            "run_id": self.id,
            "room_id": str(getattr(self._core, "room_id", "") or ""),
            "status": self._status,
            "rounds_done": self._rounds_done,
            "rounds": self.config.get("rounds"),
            "epsilon": {site: p.epsilon for site, p in self._privacy.sites.items() if math.isfinite(p.epsilon)},
            "delta": {site: p.delta for site, p in self._privacy.sites.items() if math.isfinite(p.delta)},
        }
        return export_model(path, spec, params, metadata=metadata)

    def _model(self) -> tuple[ModelSpec, Tree]:
        if self.spec is None:
            raise ConfigError(f"run {self.id} has no model spec yet; wait for it (run.wait()) and try again")
        params = self.params
        if params is None:
            raise ConfigError(f"run {self.id} has no global model yet")
        return self.spec, params

    def subscribe(
        self,
        callback: Callable[[RunEvent], Any],
        *,
        kinds: Iterable[str] | None = None,
        replay: bool = False,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for each of this run's events from now on (typed records, :mod:`.events`).

        Events are :class:`~fedjax_room.analyst.events.RoundEvent`, ``DefenceEvent``, ``RefusalEvent``,
        ``WaitingEvent`` and ``StatusEvent``, each with a ``kind``; ``kinds`` (e.g. ``{"round"}``) keeps only
        those. ``ProgressEvent`` (inside a round: sites answered so far) comes only when ``kinds`` names
        ``"progress"``. With ``replay`` the callback first gets the events that bring it up to now (every round so far,
        the refusals, who is waiting, the current status) with none lost or repeated in between. Callbacks run
        one at a time, in order, on the client's callback thread (never the caller's), so they may call the room.
        Returns a function that unsubscribes.
        """
        wanted = None if kinds is None else frozenset(kinds)
        if wanted is not None and not wanted <= set(EVENT_KINDS):
            raise ConfigError(f"unknown event kind(s) {sorted(wanted - set(EVENT_KINDS))}; known: {EVENT_KINDS}")
        sub = _Subscription(callback, wanted)
        with self._cond:
            if replay:
                self._fire(self._replay(), only=sub)
            self._callbacks.append(sub)

        def unsubscribe() -> None:
            with self._cond, contextlib.suppress(ValueError):
                self._callbacks.remove(sub)

        return unsubscribe

    def __repr__(self) -> str:
        shown = "; ".join(self.protections)
        return (
            f"Run(id={self.id!r}, status={self._status!r}, rounds={self._rounds_done}/{self.config.get('rounds')}"
            + (f", protections={shown!r})" if shown else ")")
        )

    def _repr_html_(self) -> str:
        from fedjax_room.analyst.views import run_html

        return run_html(self)
