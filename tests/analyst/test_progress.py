"""Progress inside a round: the Run's ``progress`` events, the dashboard's label and the terminal bar."""

from __future__ import annotations

import concurrent.futures
import io

import pytest

from fedjax_room.analyst.events import ProgressEvent, WaitingEvent
from fedjax_room.analyst.run import Run


class _Core:
    def __init__(self) -> None:
        self.callbacks = concurrent.futures.ThreadPoolExecutor(1)
        self.timeout = 5.0

    def drain(self) -> None:
        self.callbacks.submit(lambda: None).result(5)


@pytest.fixture
def run():
    core = _Core()
    yield Run(core, "run-1")
    core.callbacks.shutdown(wait=True)


def _round(n):
    return {"round": n, "sites": ["a", "b", "c"], "dropped": [], "loss": 1.0, "accuracy": 0.5, "epsilon": {"a": 1.0}}


def test_progress_goes_only_to_who_asks_for_it(run):
    everything, progress = [], []
    run.subscribe(everything.append)
    run.subscribe(progress.append, kinds={"progress"})
    run._on_event("progress", {"round": 1, "phase": "train", "answered": 0, "cohort": 3})
    run._on_event("progress", {"round": 1, "phase": "train", "answered": 2, "cohort": 3})
    assert run.progress == ProgressEvent("run-1", 1, "train", 2, 3)
    run._on_event("round", _round(1))
    run._on_event("progress", {"round": 1, "phase": "eval", "answered": 3, "cohort": 3})  # late: round 1 closed
    run._on_event("progress", {"round": 2, "phase": "train", "answered": "x", "cohort": 3})  # malformed: ignored
    run._core.drain()
    assert [e.kind for e in everything] == ["round", "status"]  # every-kind subscribers: the five kinds, as before
    assert [(e.round, e.answered) for e in progress] == [(1, 0), (1, 2)]
    assert run.progress is None  # between rounds
    assert [e.text() for e in progress] == ["round 1: training at 3 sites", "round 1: 2/3 sites updated"]
    assert ProgressEvent("r", 4, "eval", 1, 3).text() == "round 4: evaluating, 1/3 sites"


def test_the_dashboard_label_says_what_the_round_waits_for_and_its_clock_runs(run, monkeypatch):
    from fedjax_room.jupyter import dashboard as dashboard_module
    from fedjax_room.jupyter.dashboard import RunDashboard

    now = [1000.0]
    monkeypatch.setattr(dashboard_module.time, "monotonic", lambda: now[0])
    dash = RunDashboard(run_id="run-1", rounds=5)
    run._on_event("status", {"status": "running", "rounds_done": 0, "privacy": {}})
    dash.attach(run)
    run._core.drain()
    assert dash.progress_text() == "0 / 5 · the sites are checking the run (policy, privacy plan) · 0:00"
    run._on_event("waiting", {"waiting": ["site-b"]})
    run._core.drain()
    now[0] += 3
    assert dash.progress_text() == "0 / 5 · waiting for approval by site-b · 0:03"
    run._on_event("waiting", {"waiting": []})
    run._on_event("progress", {"round": 1, "phase": "train", "answered": 0, "cohort": 3})
    run._on_event("progress", {"round": 1, "phase": "train", "answered": 2, "cohort": 3})
    run._core.drain()
    now[0] += 72
    assert dash.progress_text() == "0 / 5 · round 1: 2/3 sites updated · 1:12"
    dash._render_progress()
    assert dash._progress_label.value == "0 / 5 · round 1: 2/3 sites updated · 1:12"
    run._on_event("round", _round(1))
    run._core.drain()
    assert dash.progress_text() == "1 / 5 · round 2: starting · 0:00"  # the next round's clock starts at 0
    run._on_event("status", {"status": "finished", "rounds_done": 1, "privacy": {}})
    run._core.drain()
    assert dash.wait(5) and dash.progress_text() == "1 / 5"  # ended: no clock
    dash.close()


def test_the_terminal_bar_shows_the_phase(run):
    from fedjax_room.sim.progress import RoundBar

    out = io.StringIO()
    bar = RoundBar(run, 3, file=out)
    try:
        assert bar.text == "the sites are checking the run"
        bar._on_event(WaitingEvent("run-1", ("site-b",)))
        assert bar.text == "waiting for approval by site-b" and "site-b" in bar.bar.postfix
        run._on_event("progress", {"round": 1, "phase": "train", "answered": 1, "cohort": 2})
        run._core.drain()
        assert bar.text == "round 1: 1/2 sites updated" and "1/2 sites updated" in out.getvalue()
        bar.update(1)
        assert bar.bar.n == 1 and bar.text == ""
    finally:
        bar.close()
