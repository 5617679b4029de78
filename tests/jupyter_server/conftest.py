"""A Jupyter server with the fedjax-room extension loaded (pytest-jupyter), and a stand-in analyst API.

The fakes have the shapes docs/interfaces.md specifies (Room, Run, EmbeddedRoom) so the routes are
tested without processes; test_routes_real.py runs the same routes against a real embedded room.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ... and their hooks)

from fedjax_room.analyst.results import (
    BudgetReport,
    Refusal,
    RoundResult,
    RunSummary,
    SiteBudget,
    SiteInfo,
)
from fedjax_room.errors import BudgetExceededError


class FakeRun:
    def __init__(self, run_id: str, spec: Any, kwargs: dict) -> None:
        self.id, self.spec, self.kwargs = run_id, spec, kwargs
        self.status = "running"
        self.history: list[RoundResult] = []
        self.refusals: list[Refusal] = []
        self.error = None
        self._done = threading.Event()

    def emit(self, result: RoundResult) -> None:
        self.history.append(result)

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        self.status, self.error = status, error
        self._done.set()

    def subscribe(self, callback) -> None:
        pass

    def wait(self, timeout: float | None = None) -> FakeRun:
        self._done.wait(timeout)
        return self


class FakeRoom:
    def __init__(self, site_names=("alpha", "beta", "gamma")) -> None:
        self.site_names = list(site_names)
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
        run = FakeRun(f"run-{len(self.runs_) + 1}", spec, kwargs)
        self.runs_.append(run)
        return run

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
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"fedjax_room.jupyter": True}}}


@pytest.fixture
def registry(jp_serverapp):
    """The server's room registry, wired to the fakes."""
    reg = jp_serverapp.web_app.settings["fedjax_room_registry"]
    reg.embedded_made = []

    def start_room(**kwargs):
        embedded = FakeEmbedded(**kwargs)
        reg.embedded_made.append(embedded)
        return embedded

    reg.start_room_fn = start_room
    reg.connect_fn = lambda url, key: FakeRoom(("north", "south"))
    yield reg
    reg.close_all()


@pytest.fixture
def budget_error() -> Exception:
    return BudgetExceededError("site alpha would spend epsilon 12 > cap 10; lower target_epsilon")
