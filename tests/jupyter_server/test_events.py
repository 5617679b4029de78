"""The sidebar's websocket (/fedjax-room/events): authenticated, pushes typed JSON, bounds what a client sends."""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.httpclient
import tornado.websocket

from fedjax_room.jupyter.server import live


async def next_message(ws, type_: str, timeout: float = 10.0, **match) -> dict:
    """The next message of ``type_`` (whose fields equal ``match``), skipping others."""

    async def find() -> dict:
        while True:
            raw = await ws.read_message()
            assert raw is not None, f"the socket closed ({ws.close_code}) before a {type_!r} message"
            data = json.loads(raw)
            if data["type"] == type_ and all(data.get(k) == v for k, v in match.items()):
                return data

    return await asyncio.wait_for(find(), timeout)


def hub_of(registry) -> live.EventHub:
    return registry.listener.__self__


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "token not-the-token"}],
    ids=["no-token", "wrong-token"],
)
async def test_an_unauthenticated_socket_is_refused(
    jp_serverapp, http_server_client, jp_http_port, jp_base_url, headers
):
    url = f"ws://localhost:{jp_http_port}{jp_base_url}fedjax-room/events"
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url, headers=headers))
    assert info.value.code == 403


async def test_rooms_and_run_events_are_pushed(jp_fetch, jp_ws_fetch, registry):
    ws = await jp_ws_fetch("fedjax-room", "events")
    hello = await next_message(ws, "hello")
    assert hello["limits"]["max_subscriptions"] == live.MAX_SUBSCRIPTIONS
    assert (await next_message(ws, "rooms"))["rooms"] == []

    await jp_fetch("fedjax-room", "rooms", "demo", method="POST", body=json.dumps({"sites": 2}))
    rooms = await next_message(ws, "rooms")
    assert [r["id"] for r in rooms["rooms"]] == ["room-1"]
    snap = await next_message(ws, "snapshot", room="room-1")
    assert [s["name"] for s in snap["sites"]] == ["site-0", "site-1"] and snap["runs"] == []

    body = json.dumps({"model": "logistic", "rounds": 2})
    await jp_fetch("fedjax-room", "rooms", "room-1", "runs", method="POST", body=body)
    started = await next_message(ws, "run", room="room-1")  # shown at once, before its first event
    assert started["event"] is None and started["run"]["id"] == "run-1" and started["run"]["status"] == "running"
    fake_run = registry.get("room-1").room.runs_[0]
    fake_run.emit(
        {"round": 1, "sites": ["site-0"], "dropped": [], "loss": 0.5, "accuracy": float("nan"), "epsilon": {}}
    )
    pushed = await next_message(ws, "run", room="room-1")
    assert pushed["event"]["kind"] == "round" and pushed["event"]["result"]["accuracy"] is None
    assert pushed["run"]["id"] == "run-1" and [h["round"] for h in pushed["run"]["history"]] == [1]
    assert pushed["run"]["started_here"] and pushed["run"]["followed"]
    fake_run.finish("finished")
    ended = await next_message(ws, "run", room="room-1")
    assert ended["event"]["kind"] == "status" and ended["run"]["status"] == "finished"

    await jp_fetch("fedjax-room", "rooms", "room-1", method="DELETE")
    assert (await next_message(ws, "rooms"))["rooms"] == []
    ws.close()


async def test_site_changes_are_pushed_once(jp_fetch, jp_ws_fetch, registry):
    hub_of(registry).poll_interval = 0.05
    await jp_fetch("fedjax-room", "rooms", "demo", method="POST", body=json.dumps({"sites": 2}))
    ws = await jp_ws_fetch("fedjax-room", "events")
    await next_message(ws, "snapshot", room="room-1")
    registry.get("room-1").room.site_names.append("site-2")
    sites = await next_message(ws, "sites", room="room-1")
    assert [s["name"] for s in sites["sites"]] == ["site-0", "site-1", "site-2"]
    await asyncio.sleep(0.3)  # several polls later: nothing changed, nothing sent
    registry.get("room-1").room.site_names.pop(0)
    again = await next_message(ws, "sites", room="room-1")
    assert [s["name"] for s in again["sites"]] == ["site-1", "site-2"]
    ws.close()


async def test_only_live_or_asked_for_runs_are_followed(jp_fetch, jp_ws_fetch, registry):
    await jp_fetch("fedjax-room", "rooms", "demo", method="POST", body=json.dumps({"sites": 2}))
    room = registry.get("room-1").room
    old = room.train("spec", rounds=1)  # started elsewhere, already over
    old.emit({"round": 1, "sites": ["site-0"], "dropped": [], "loss": 0.5, "accuracy": 0.5, "epsilon": {}})
    old.finish("finished")
    live_run = room.train("spec", rounds=3)  # started elsewhere, still running
    looked_up = []
    lookup = room.run
    room.run = lambda run_id: looked_up.append(run_id) or lookup(run_id)

    response = await jp_fetch("fedjax-room", "rooms", "room-1", "runs")
    runs = {r["id"]: r for r in json.loads(response.body)["runs"]}
    assert looked_up == [live_run.id]  # the finished run is not watched just because it is listed
    assert runs[old.id]["followed"] is False and runs[old.id]["history"] == []
    assert runs[live_run.id]["followed"] is True

    ws = await jp_ws_fetch("fedjax-room", "events")
    await next_message(ws, "snapshot", room="room-1")
    await ws.write_message(json.dumps({"type": "subscribe", "room": "room-1", "run": old.id}))
    detail = await next_message(ws, "run", room="room-1")
    assert detail["run"]["id"] == old.id and detail["run"]["followed"] and len(detail["run"]["history"]) == 1
    await ws.write_message(json.dumps({"type": "unsubscribe", "room": "room-1", "run": old.id}))
    for _ in range(50):
        if old.id not in registry.get("room-1").runs:
            break
        await asyncio.sleep(0.02)
    assert old.id not in registry.get("room-1").runs  # nobody wants it any more
    assert live_run.id in registry.get("room-1").runs
    ws.close()


async def test_what_a_client_sends_is_bounded(jp_fetch, jp_ws_fetch, registry, monkeypatch):
    monkeypatch.setattr(live, "MAX_SUBSCRIPTIONS", 2)
    await jp_fetch("fedjax-room", "rooms", "demo", method="POST", body=json.dumps({"sites": 2}))
    room = registry.get("room-1").room
    runs = [room.train("spec", rounds=1) for _ in range(3)]
    ws = await jp_ws_fetch("fedjax-room", "events")
    await next_message(ws, "snapshot", room="room-1")

    await ws.write_message("{not json")
    assert (await next_message(ws, "error"))["message"] == "not JSON"
    await ws.write_message(json.dumps({"type": "subscribe", "room": "room-1", "run": "../../etc"}))
    assert "run id" in (await next_message(ws, "error"))["message"]
    await ws.write_message(json.dumps({"type": "subscribe", "room": "room-1", "run": "run-99"}))
    assert "no run" in (await next_message(ws, "error"))["message"]
    for run in runs[:2]:
        await ws.write_message(json.dumps({"type": "subscribe", "room": "room-1", "run": run.id}))
        await next_message(ws, "run", room="room-1")
    await ws.write_message(json.dumps({"type": "subscribe", "room": "room-1", "run": runs[2].id}))
    assert "at most 2 runs" in (await next_message(ws, "error"))["message"]

    await ws.write_message("x" * (live.MAX_MESSAGE_BYTES + 1))
    assert await asyncio.wait_for(ws.read_message(), 10) is None
    assert ws.close_code == 1009  # message too big
