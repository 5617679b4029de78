"""The /fedjax-room/ routes against a stand-in analyst API: status, rooms, sites, runs, budget, audit, notebook."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

from fedjax_room.jupyter.server.registry import jsonable, policy_summary, schema_summary


async def fetch_json(jp_fetch, *parts, method="GET", body=None, params=None):
    kwargs = {"method": method}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["body"] = ""
    response = await jp_fetch("fedjax-room", *parts, params=params, **kwargs)
    return response.code, (json.loads(response.body) if response.body else None)


async def error_of(jp_fetch, *parts, method="GET", body=None, params=None):
    with pytest.raises(HTTPClientError) as info:
        await fetch_json(jp_fetch, *parts, method=method, body=body, params=params)
    return info.value.code, json.loads(info.value.response.body)


async def test_status_starts_empty(jp_fetch, registry):
    code, status = await fetch_json(jp_fetch, "status")
    assert code == 200
    assert status["rooms"] == [] and status["active"] is False and status["version"]


async def test_demo_room_sites_runs_budget_audit(jp_fetch, registry, jp_root_dir):
    code, room = await fetch_json(jp_fetch, "rooms", "demo", method="POST", body={"sites": 2, "dataset": "digits"})
    assert code == 201
    assert room["id"] == "room-1" and room["kind"] == "demo" and room["site_names"] == ["site-0", "site-1"]
    assert registry.embedded_made[0].kwargs == {"sites": 2, "dataset": "digits"}

    _, status = await fetch_json(jp_fetch, "status")
    assert [r["id"] for r in status["rooms"]] == ["room-1"]
    _, rooms = await fetch_json(jp_fetch, "rooms")
    assert rooms["rooms"][0]["url"] == "ws://127.0.0.1:9999"

    _, sites = await fetch_json(jp_fetch, "rooms", "room-1", "sites")
    assert [s["name"] for s in sites["sites"]] == ["site-0", "site-1"]
    first = sites["sites"][0]
    assert first["status"] == "online" and first["record_count"] == "500-1000"
    assert first["schema_summary"] == "64 features (f0..f63) -> digit, 10 classes"
    assert first["policy_summary"] == "ε cap: 10 · δ cap: 1e-05 · models: logistic, mlp"
    assert first["policy_items"] == [["ε cap", "10"], ["δ cap", "1e-05"], ["models", "logistic, mlp"]]

    code, run = await fetch_json(
        jp_fetch, "rooms", "room-1", "runs", method="POST", body={"model": "logistic", "rounds": 3, "target_epsilon": 2}
    )
    assert code == 201 and run["id"] == "run-1" and run["status"] == "running" and run["rounds"] == 3
    fake_run = registry.get("room-1").room.runs_[0]
    assert fake_run.kwargs == {"rounds": 3, "target_epsilon": 2.0}
    assert fake_run.spec.family == "logistic" and fake_run.spec.input_shape == (64,)

    fake_run.emit(RoundResultLike(1, 0.8, {"site-0": 0.5, "site-1": 0.6}))
    fake_run.emit(RoundResultLike(2, float("nan"), {"site-0": 0.9, "site-1": 1.0}))
    _, runs = await fetch_json(jp_fetch, "rooms", "room-1", "runs")
    [r] = runs["runs"]
    assert r["rounds_done"] == 2 and r["started_here"] is True
    assert [h["round"] for h in r["history"]] == [1, 2]
    assert r["history"][0]["accuracy"] == 0.8 and r["history"][1]["accuracy"] is None  # NaN is not JSON
    assert r["history"][1]["epsilon"] == {"site-0": 0.9, "site-1": 1.0}
    _, status = await fetch_json(jp_fetch, "status")
    assert status["active"] is True

    _, budget = await fetch_json(jp_fetch, "rooms", "room-1", "budget")
    assert budget["sites"][0] == {
        "site": "site-0",
        "epsilon_spent": 1.5,
        "epsilon_cap": 10.0,
        "delta": 1e-5,
        "remaining": 8.5,
        "runs": {},  # each run's own epsilon (none in the stand-in's ledger)
        "note": "",
    }

    _, audit = await fetch_json(jp_fetch, "rooms", "room-1", "audit", params={"last": 5})
    assert [a["run_id"] for a in audit["records"]] == [f"run-{i}" for i in range(45, 50)]

    fake_run.refusals.append(RefusalLike("site-1", "epsilon_cap", "would exceed the cap of 10"))
    fake_run.finish("finished")
    _, snap = await fetch_json(jp_fetch, "rooms", "room-1")
    assert snap["active"] is False and snap["errors"] == {}
    assert snap["runs"][0]["status"] == "finished"
    assert snap["runs"][0]["refusals"] == [
        {"site": "site-1", "reason": "epsilon_cap", "message": "would exceed the cap of 10"}
    ]
    assert len(snap["audit"]) == 15 and len(snap["sites"]) == 2 and len(snap["budget"]) == 2

    code, nb = await fetch_json(jp_fetch, "rooms", "room-1", "notebook", method="POST", body={"run": "run-1"})
    assert code == 201 and nb == {"path": "clean-room-dashboard-run-1.ipynb", "created": True}
    book = json.loads((jp_root_dir / nb["path"]).read_text())
    source = book["cells"][0]["source"]
    source = "".join(source) if isinstance(source, list) else source
    # attached by the room's id: no key path in the notebook (the fake room has no coordinator room id)
    assert "fedjax_room.attach('room-1')" in source and "show_dashboard(room, run='run-1')" in source
    assert "analyst.key" not in source
    compile(source, "cell", "exec")
    code, again = await fetch_json(jp_fetch, "rooms", "room-1", "notebook", method="POST", body={"run": "run-1"})
    assert code == 200 and again["created"] is False  # opened, not overwritten

    embedded = registry.embedded_made[0]
    response = await jp_fetch("fedjax-room", "rooms", "room-1", method="DELETE")
    assert response.code == 204 and embedded.stopped and embedded.room.closed
    _, status = await fetch_json(jp_fetch, "status")
    assert status["rooms"] == []


class RoundResultLike(dict):
    def __init__(self, number, accuracy, epsilon):
        super().__init__(round=number, sites=list(epsilon), dropped=[], loss=1.0, accuracy=accuracy, epsilon=epsilon)


class RefusalLike:
    def __init__(self, site, reason, message):
        self.site, self.reason, self.message = site, reason, message


async def test_connect_to_a_remote_room(jp_fetch, registry):
    code, room = await fetch_json(jp_fetch, "rooms", method="POST", body={"url": "ws://10.0.0.1:8765", "key": "a.key"})
    assert code == 201 and room["kind"] == "remote" and room["label"] == "Room ws://10.0.0.1:8765"
    _, sites = await fetch_json(jp_fetch, "rooms", room["id"], "sites")
    assert [s["name"] for s in sites["sites"]] == ["north", "south"]


@pytest.mark.parametrize(
    ("parts", "method", "body", "code", "words"),
    [
        (("rooms",), "POST", {"url": "ws://x"}, 400, "analyst's private key"),
        (("rooms",), "POST", {"key": "k"}, 400, "coordinator's URL"),
        (("rooms", "demo"), "POST", {"sites": 0}, 400, "'sites' must be"),
        (("rooms", "demo"), "POST", {"sites": 2, "dataset": "/etc/passwd"}, 400, "'dataset' must be one of"),
        (("rooms", "room-7", "sites"), "GET", None, 404, "no room 'room-7'"),
        (("rooms", "room-7"), "DELETE", None, 404, "no room 'room-7'"),
    ],
)
async def test_bad_requests_say_what_to_do(jp_fetch, registry, parts, method, body, code, words):
    got, data = await error_of(jp_fetch, *parts, method=method, body=body)
    assert got == code and words in data["message"]
    assert "Traceback" not in json.dumps(data)


async def test_bad_run_options_and_refusals(jp_fetch, registry, budget_error):
    await fetch_json(jp_fetch, "rooms", "demo", method="POST", body={})
    code, data = await error_of(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"rounds": "five"})
    assert code == 400 and "'rounds' must be a int" in data["message"]
    code, data = await error_of(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"code": "import os"})
    assert code == 400 and "unknown option(s) code" in data["message"]
    code, data = await error_of(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"model": "resnet"})
    assert code == 400 and "'model' must be logistic, mlp, cnn or scatter" in data["message"]
    registry.get("room-1").room.refuse_with = budget_error
    code, data = await error_of(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"rounds": 2})
    assert code == 400 and data["code"] == budget_error.code and "lower target_epsilon" in data["message"]
    code, data = await error_of(jp_fetch, "rooms", "room-1", "audit", params={"last": "lots"})
    assert code == 400 and "'last' must be a whole number" in data["message"]


async def test_a_failing_part_does_not_blank_the_snapshot(jp_fetch, registry):
    await fetch_json(jp_fetch, "rooms", "demo", method="POST", body={"sites": 1})
    room = registry.get("room-1").room

    def broken(last=20):
        raise ConnectionError("coordinator went away")

    room.audit = broken
    _, snap = await fetch_json(jp_fetch, "rooms", "room-1")
    assert snap["errors"] == {"audit": "ConnectionError: coordinator went away"}
    assert [s["name"] for s in snap["sites"]] == ["site-0"]
    code, data = await error_of(jp_fetch, "rooms", "room-1", "audit")
    assert code == 500 and data["message"] == "ConnectionError: coordinator went away"


async def test_close_all_stops_demo_rooms(jp_fetch, registry):
    await fetch_json(jp_fetch, "rooms", "demo", method="POST", body={"sites": 1})
    await fetch_json(jp_fetch, "rooms", method="POST", body={"url": "ws://10.0.0.1:8765", "key": "a.key"})
    remote = registry.get("room-2").room
    registry.close_all()  # what the server does at exit
    assert registry.embedded_made[0].stopped and registry.embedded_made[0].room.closed and remote.closed
    _, status = await fetch_json(jp_fetch, "status")
    assert status["rooms"] == []


def test_jsonable_and_summaries():
    assert jsonable({"a": (1, float("inf")), "b": RefusalLike("s", "r", "m").__dict__}) == {
        "a": [1, None],
        "b": {"site": "s", "reason": "r", "message": "m"},
    }
    assert schema_summary({"feature_shape": [28, 28, 1], "label": "y", "classes": [0, 1]}) == (
        "features 28×28×1 -> y, 2 classes"
    )
    assert policy_summary({"epsilon_cap": 4, "secure_aggregation": True}) == "ε cap: 4 · secure aggregation: yes"
    # a real site's policy, readable: every aggregator allowed is "any", the secure requirement in words
    from fedjax_room.site.policy import Policy

    line = policy_summary(Policy(epsilon_cap=10.0, min_sites=2, require_secure_aggregation=True).to_dict())
    assert line == (
        "ε cap: 10 · δ cap: 1e-05 · min sites: 2 · models: logistic, mlp, cnn, scatter · max parameters: 1,000,000 · "
        "aggregators: any · secure aggregation: required · approval: auto · tuning selection: private · "
        "noise shares: yes"
    )
    assert policy_summary(None) == "—"


async def test_a_room_that_does_not_answer_gets_504_and_polls_share_one_call(jp_fetch, registry, monkeypatch):
    import asyncio
    import threading

    from fedjax_room.jupyter.server import handlers

    await fetch_json(jp_fetch, "rooms", "demo", method="POST", body={"sites": 1})
    room = registry.get("room-1").room
    release, calls = threading.Event(), []

    def hanging_runs():
        calls.append(1)
        release.wait(10)
        return []

    room.runs = hanging_runs
    monkeypatch.setattr(handlers, "CALL_TIMEOUT", 0.5)
    try:
        results = await asyncio.gather(
            *(error_of(jp_fetch, "rooms", "room-1") for _ in range(3)), return_exceptions=True
        )
        for code, data in results:
            assert code == 504 and "did not answer within 0.5 s" in data["message"]
        again = await error_of(jp_fetch, "rooms", "room-1")  # still in flight: shared, not called again
        assert again[0] == 504 and len(calls) == 1
    finally:
        release.set()
    await asyncio.sleep(0.1)
    code, snap = await fetch_json(jp_fetch, "rooms", "room-1")
    assert code == 200 and snap["runs"] == [] and len(calls) == 2
