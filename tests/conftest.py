"""Stand-ins for the analyst API (Room, Run, EmbeddedRoom), shared by the notebook and Jupyter server tests.

They have the shapes docs/interfaces.md specifies, so the magics, widgets and REST routes can be tested
without processes or sockets; the tests against a real embedded room live beside those that use these.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fedjax_room.analyst.events import RoundEvent, StatusEvent, WaitingEvent
from fedjax_room.analyst.results import (
    BudgetReport,
    Refusal,
    RoundResult,
    RunSummary,
    SiteBudget,
    SiteInfo,
)
from fedjax_room.errors import StateError


class FakeRun:
    """A run the test drives by hand: ``emit(result)``, ``set_waiting(sites)``, then ``finish()``.

    Its subscribers get the typed run events a real ``Run`` delivers (fedjax_room.analyst.events).
    """

    def __init__(self, run_id: str, spec: Any, kwargs: dict) -> None:
        self.id, self.spec, self.kwargs = run_id, spec, kwargs
        self.config = {"rounds": kwargs.get("rounds", 5), "target_epsilon": kwargs.get("target_epsilon", 3.0)}
        self.status = "running"
        self.history: list[RoundResult] = []
        self.refusals: list[Refusal] = []
        self.error = None
        self.privacy: list[dict] = []
        self.params = None
        self.waiting: list[str] = []
        self._subscribers: list = []
        self._done = threading.Event()

    def subscribe(self, callback, *, kinds=None, replay: bool = False):
        if kinds is not None:
            wanted, inner = set(kinds), callback

            def callback(event):
                return inner(event) if event.kind in wanted else None

        events = []
        if replay:
            events = [self._round_event(r) for r in self.history]
            if self.waiting:
                events.append(WaitingEvent(self.id, tuple(self.waiting)))
            events.append(StatusEvent(self.id, self.status, len(self.history), None, None))
        for event in events:
            callback(event)
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _round_event(self, result) -> RoundEvent:
        rr = result if isinstance(result, RoundResult) else RoundResult.from_dict(result)
        return RoundEvent(self.id, rr, None)

    def _send(self, event) -> None:
        for cb in list(self._subscribers):
            cb(event)

    def emit(self, result: RoundResult) -> None:
        self.history.append(result)
        self._send(self._round_event(result))

    def set_waiting(self, sites) -> None:
        self.waiting = list(sites)
        self._send(WaitingEvent(self.id, tuple(self.waiting)))

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        self.status, self.error = status, error
        last = self.history[-1] if self.history else None  # a RoundResult, or a dict-shaped one (server tests)
        epsilon = {} if last is None else last["epsilon"] if isinstance(last, dict) else last.epsilon
        self.privacy = [
            {"site": s, "epsilon": e, "delta": 1e-5, "cap": 10.0, "remaining": 10.0 - e} for s, e in epsilon.items()
        ]
        self._done.set()
        self._send(StatusEvent(self.id, status, len(self.history), None, None))

    def wait(self, timeout: float | None = None) -> FakeRun:
        self._done.wait(timeout)
        return self

    def rounds(self):
        yield from self.history


class FakeRoom:
    def __init__(self, site_names=("alpha", "beta", "gamma")) -> None:
        self.site_names = list(site_names)
        self.trained: list[tuple[Any, dict]] = []
        self.runs_: list[FakeRun] = []
        self.closed = False
        self.refuse_with: Exception | None = None

    def sites(self) -> list[SiteInfo]:
        return [
            SiteInfo(
                name=n,
                schema={
                    "features": [f"f{i}" for i in range(64)],
                    "feature_shape": [64],
                    "label": "digit",
                    "classes": list(range(10)),
                },
                record_count="500-1000",
                status="online",
                policy={"epsilon_cap": 10.0, "delta": 1e-5, "families": ["logistic", "mlp"]},
            )
            for n in self.site_names
        ]

    def runs(self) -> list[RunSummary]:
        return [RunSummary(r.id, "ab" * 32, r.status, len(r.history), r.kwargs.get("rounds", 5)) for r in self.runs_]

    def train(self, spec, **kwargs) -> FakeRun:
        if self.refuse_with is not None:
            raise self.refuse_with
        self.trained.append((spec, kwargs))
        run = FakeRun(f"run-{len(self.runs_) + 1}", spec, kwargs)
        self.runs_.append(run)
        return run

    def run(self, run_id: str) -> FakeRun:
        for run in self.runs_:
            if run.id == run_id:
                return run
        raise StateError(f"no run {run_id!r} in this room; `%room runs` lists them")

    def budget(self) -> BudgetReport:
        return BudgetReport(sites={n: SiteBudget(n, 1.5, 1e-5, 10.0, 8.5) for n in self.site_names})

    def audit(self, last: int = 20) -> list[dict]:
        records = [{"index": i, "kind": "run_requested", "run_id": f"run-{i}", "hash": "x" * 64} for i in range(50)]
        return records[-last:]

    def close(self) -> None:
        self.closed = True


class FakeEmbedded:
    def __init__(self, sites=3, dataset="digits", **kwargs) -> None:
        self.url = "ws://127.0.0.1:9999"
        self.analyst_key = "/tmp/analyst.key"
        self.site_names = [f"site-{i}" for i in range(sites)]
        self.kwargs = dict(sites=sites, dataset=dataset, **kwargs)
        self.stopped = False
        self.room = FakeRoom(self.site_names)

    def connect(self) -> FakeRoom:
        return self.room

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_room() -> FakeRoom:
    return FakeRoom()


@pytest.fixture
def fakes() -> Any:
    """The fake classes, for tests that build their own (conftest cannot be imported by name)."""

    class Fakes:
        pass

    for cls in (SiteInfo, RunSummary, RoundResult, Refusal, SiteBudget, BudgetReport, FakeRun, FakeRoom, FakeEmbedded):
        setattr(Fakes, cls.__name__, cls)
    return Fakes
