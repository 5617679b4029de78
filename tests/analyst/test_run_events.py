"""Run.subscribe delivers typed run events built from the coordinator's RunEvent / RunSnapshot frames.

One piece under test: the Run, fed frames by hand as the client's I/O thread would (the real client and
coordinator deliver them in tests/integration/test_room.py).
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from fedjax_room.analyst.events import (
    DefenceEvent,
    RefusalEvent,
    RoundEvent,
    StatusEvent,
    WaitingEvent,
    to_json,
)
from fedjax_room.analyst.run import Run
from fedjax_room.errors import ConfigError


class _Core:
    def __init__(self) -> None:
        self.callbacks = concurrent.futures.ThreadPoolExecutor(1)
        self.timeout = 5.0

    def drain(self) -> None:
        self.callbacks.submit(lambda: None).result(5)


def _round(n: int, **extra):
    return {
        "round": n,
        "sites": ["a", "b"],
        "dropped": [],
        "loss": 1.0 / n,
        "accuracy": 0.5,
        "epsilon": {"a": n},
        **extra,
    }


@pytest.fixture
def run():
    core = _Core()
    yield Run(core, "run-1")
    core.callbacks.shutdown(wait=True)


def test_every_kind_is_delivered_in_order_on_the_callback_thread(run):
    seen, threads = [], set()
    run.subscribe(lambda e: (seen.append(e), threads.add(threading.current_thread().name)))
    run._on_event("waiting", {"waiting": ["b"], "site": "b", "message": ""})
    run._on_event("waiting", {"waiting": [], "site": "b", "message": ""})
    run._on_event("round", _round(1, defence={"flagged": {"b": ["norm"]}, "excluded": []}))
    run._on_event("round", _round(1))  # a duplicate (e.g. after a reconnect) is not delivered again
    run._on_event("refusal", {"site": "c", "reason": "epsilon_cap", "message": "past its cap", "round": None})
    run._on_event(
        "status",
        {"status": "failed", "rounds_done": 1, "error": {"code": "refused", "message": "cancelled"}, "privacy": {}},
    )
    run._core.drain()
    assert [e.kind for e in seen] == ["waiting", "waiting", "round", "defence", "status", "refusal", "status"]
    waiting, cleared, rnd, defence, running, refusal, ended = seen
    assert isinstance(waiting, WaitingEvent) and waiting.waiting == ("b",) and cleared.waiting == ()
    assert isinstance(rnd, RoundEvent) and rnd.round == 1 and rnd.result.sites == ("a", "b")
    assert isinstance(defence, DefenceEvent) and defence.flagged == ("b",) and defence.round == 1
    assert isinstance(running, StatusEvent) and running.status == "running"  # the first round starts it
    assert isinstance(refusal, RefusalEvent) and refusal.refusal.reason == "epsilon_cap"
    assert isinstance(ended, StatusEvent) and ended.done and ended.error is not None
    assert ended.error.message == "cancelled" and run.status == "failed"
    assert threads and threading.current_thread().name not in threads


def test_a_snapshot_yields_only_what_the_run_had_not_seen(run):
    seen = []
    run.subscribe(seen.append)
    run._on_event("round", _round(1))
    snapshot = {
        "status": "finished",
        "rounds_done": 2,
        "history": [_round(1), _round(2)],
        "refusals": [{"site": "c", "reason": "model_family", "message": "no cnn"}],
        "waiting": [],
        "privacy": {"a": {"epsilon": 2.0, "delta": 1e-5, "cap": 10.0, "remaining": 8.0}},
    }
    run._apply_snapshot(snapshot)
    run._apply_snapshot(snapshot)  # the same again (a second reconnect): nothing new
    run._core.drain()
    kinds = [(e.kind, getattr(e, "round", None)) for e in seen]
    assert kinds == [("round", 1), ("status", None), ("round", 2), ("refusal", None), ("status", None)]
    assert seen[-1].status == "finished" and seen[-1].privacy["a"].epsilon == 2.0


def test_replay_brings_a_late_subscriber_up_to_now_and_kinds_filter(run):
    run._on_event("round", _round(1))
    run._on_event("round", _round(2, defence={"excluded": ["b"]}))
    rounds, everything = [], []
    run.subscribe(rounds.append, kinds={"round"}, replay=True)
    run.subscribe(everything.append, replay=True)
    run._on_event("round", _round(3))
    run._core.drain()
    assert [e.round for e in rounds] == [1, 2, 3]
    assert [e.kind for e in everything] == ["round", "round", "defence", "status", "round"]
    assert everything[2].excluded == ("b",)
    with pytest.raises(ConfigError, match="unknown event kind"):
        run.subscribe(print, kinds={"rounds"})


def test_unsubscribe_and_a_failing_callback(run, caplog):
    seen = []
    stop = run.subscribe(seen.append)
    run.subscribe(lambda e: 1 / 0)  # logged, and the others still get their events
    run._on_event("round", _round(1))
    run._core.drain()
    stop()
    run._on_event("round", _round(2))
    run._core.drain()
    assert [e.kind for e in seen] == ["round", "status"]  # round 1 and the run now running; nothing after
    assert "a run callback failed" in caplog.text


def test_a_malformed_event_is_ignored(run):
    seen = []
    run.subscribe(seen.append)
    run._on_event("round", {"loss": 1.0})  # no round number
    run._on_event("refusal", {"site": "c", "round": "soon"})
    run._on_event("round", _round(1))
    run._core.drain()
    assert [e.kind for e in seen] == ["round", "status"] and run.rounds_done == 1


def test_events_as_json():
    from fedjax_room.analyst.results import RoundResult

    event = RoundEvent("run-1", RoundResult(1, ("a",), (), float("nan"), 0.5, {"a": 1.0}))
    assert to_json(event) == {
        "run_id": "run-1",
        "result": {
            "round": 1,
            "sites": ["a"],
            "dropped": [],
            "loss": None,
            "accuracy": 0.5,
            "epsilon": {"a": 1.0},
            "defence": None,
            "evaluated": True,
            "accuracy_std": None,
            "loss_std": None,
            "eval_sites": [],
        },
        "privacy": None,
        "kind": "round",
    }
