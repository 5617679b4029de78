"""The /fedjax-room/ routes over a real embedded demo room (a coordinator and two site processes).

One room is started for the module and shared: each test's server "starts a demo" that is that room,
so the processes start once. The kernel-side ``show_dashboard`` is checked against the same room.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time

import pytest

pytestmark = pytest.mark.slow

SMALL_RUN = {"model": "logistic", "rounds": 2, "local_steps": 5}


def _room_available() -> bool:
    try:
        return importlib.util.find_spec("fedjax_room.sim.demo") is not None
    except ModuleNotFoundError:
        return False


if not _room_available():
    pytest.skip("fedjax_room.sim.demo (the embedded room) is not there yet", allow_module_level=True)


class Shared:
    """The module's embedded room, whose stop() is deferred to the end of the module."""

    def __init__(self, embedded) -> None:
        self.embedded = embedded
        self.url, self.analyst_key, self.site_names = embedded.url, embedded.analyst_key, embedded.site_names

    def connect(self):
        return self.embedded.connect()

    def stop(self) -> None:  # the registry's DELETE / unload: keep the processes for the next test
        pass


@pytest.fixture(scope="module")
def shared_room():
    from fedjax_room.sim.demo import start_room

    embedded = start_room(sites=2, dataset="digits")
    try:
        yield Shared(embedded)
    finally:
        embedded.stop()


@pytest.fixture
def real_registry(jp_serverapp, shared_room):
    reg = jp_serverapp.web_app.settings["fedjax_room_registry"]
    reg.start_room_fn = lambda **kwargs: shared_room
    yield reg
    reg.close_all()  # closes this test's connections; Shared.stop keeps the processes for the next test


async def get(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("fedjax-room", *parts, **kwargs)
    return json.loads(response.body) if response.body else None


async def post(jp_fetch, *parts, body):
    response = await jp_fetch("fedjax-room", *parts, method="POST", body=json.dumps(body))
    return response.code, json.loads(response.body)


async def test_status_sites_runs_budget_audit(jp_fetch, real_registry, shared_room):
    code, room = await post(jp_fetch, "rooms", "demo", body={"sites": 2, "dataset": "digits"})
    assert code == 201 and room["url"].startswith("ws://127.0.0.1:") and room["site_names"] == ["site-a", "site-b"]
    status = await get(jp_fetch, "status")
    assert [r["id"] for r in status["rooms"]] == ["room-1"]

    sites = (await get(jp_fetch, "rooms", "room-1", "sites"))["sites"]
    assert [s["name"] for s in sites] == ["site-a", "site-b"]
    for site in sites:
        assert site["schema_summary"].startswith("64 features (pixel_0_0..pixel_7_7) -> ")
        assert "10 classes" in site["schema_summary"]
        assert "ε cap: 10" in site["policy_summary"] and ["secure aggregation", "optional"] in site["policy_items"]
        assert not {"x", "y", "records", "data"} & set(site)  # schema and a coarse count, never records

    code, run = await post(jp_fetch, "rooms", "room-1", "runs", body=SMALL_RUN)
    assert code == 201 and run["status"] in ("pending", "running") and run["rounds"] == 2

    seen = set()
    deadline = time.monotonic() + 150
    while True:
        runs = (await get(jp_fetch, "rooms", "room-1", "runs"))["runs"]
        [r] = [r for r in runs if r["id"] == run["id"]]
        seen.add(r["rounds_done"])
        if r["status"] in ("finished", "failed") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert r["status"] == "finished", r
    assert r["rounds_done"] == 2 and [h["round"] for h in r["history"]] == [1, 2]
    last = r["history"][-1]
    assert set(last["epsilon"]) == {"site-a", "site-b"} and all(0 < e <= 10 for e in last["epsilon"].values())
    assert last["loss"] is None or last["loss"] > 0

    budget = (await get(jp_fetch, "rooms", "room-1", "budget"))["sites"]
    assert {b["site"] for b in budget} == {"site-a", "site-b"}
    for row in budget:
        assert 0 < row["epsilon_spent"] <= row["epsilon_cap"] == 10
        assert row["remaining"] == pytest.approx(row["epsilon_cap"] - row["epsilon_spent"], rel=1e-6)

    records = (await get(jp_fetch, "rooms", "room-1", "audit", params={"last": 50}))["records"]
    kinds = [a["kind"] for a in records]
    assert {"run_requested", "round_opened", "aggregate_applied", "run_finished"} <= set(kinds)

    snap = await get(jp_fetch, "rooms", "room-1")
    assert snap["errors"] == {} and snap["active"] is False and len(snap["audit"]) == 15


async def test_show_dashboard_follows_a_run_from_another_connection(jp_fetch, real_registry, shared_room):
    from fedjax_room.jupyter.server.notebook import show_dashboard

    await post(jp_fetch, "rooms", "demo", body={})
    code, run = await post(jp_fetch, "rooms", "room-1", "runs", body=SMALL_RUN)
    room = await asyncio.to_thread(shared_room.connect)  # the notebook's own connection
    dashboard = await asyncio.to_thread(show_dashboard, room, run["id"])
    try:
        assert await asyncio.to_thread(dashboard.wait, 150)
        assert dashboard.run_id == run["id"] and dashboard.status == "finished"
        assert dashboard.rounds_total == 2 and dashboard.rounds_done == 2
        assert set(dashboard.epsilon) == {"site-a", "site-b"} and dashboard.epsilon_cap["site-a"] == 10
    finally:
        dashboard.room.close()


async def test_refusals_come_with_their_reasons(jp_fetch, real_registry):
    """A run every site would refuse is refused at once (room.train asks the sites' estimate first): one typed 400
    naming each site, its planned and remaining epsilon and the option to change; no run is started."""
    from tornado.httpclient import HTTPClientError

    await post(jp_fetch, "rooms", "demo", body={})
    before = len((await get(jp_fetch, "rooms", "room-1", "runs"))["runs"])
    body = json.dumps({**SMALL_RUN, "target_epsilon": 50.0})
    with pytest.raises(HTTPClientError) as info:  # the sites plan first: allow for a loaded machine
        await jp_fetch("fedjax-room", "rooms", "room-1", "runs", method="POST", body=body, request_timeout=120)
    assert info.value.response is not None, info.value
    error = json.loads(info.value.response.body)
    assert info.value.code == 400 and error["code"] == "policy_violation" and error["reason"] == "epsilon_cap", error
    for site in ("site-a", "site-b"):
        assert f"{site} would refuse (epsilon_cap)" in error["message"], error
    assert "change target_epsilon" in error["message"] and "\n" not in error["message"]
    assert len((await get(jp_fetch, "rooms", "room-1", "runs"))["runs"]) == before


async def test_a_query_through_the_route_spends_and_a_bad_one_spends_nothing(jp_fetch, real_registry):
    """POST rooms/<id>/query on the real room: the sites' answer with its interval; a refusal is typed and free."""
    from tornado.httpclient import HTTPClientError

    async def spent():
        return {r["site"]: r["epsilon_spent"] for r in (await get(jp_fetch, "rooms", "room-1", "budget"))["sites"]}

    await post(jp_fetch, "rooms", "demo", body={})
    before = await spent()
    code, answer = await post(jp_fetch, "rooms", "room-1", "query", body={"query": "count_by_label epsilon=0.2"})
    assert code == 200 and answer["kind"] == "count_by_label" and len(answer["total"]) == 10
    assert set(answer["per_site"]) == {"site-a", "site-b"} and answer["ci"]["level"] == 0.95
    lows, highs = answer["ci"]["lo"], answer["ci"]["hi"]
    assert all(lo <= t <= hi for lo, t, hi in zip(lows, answer["total"], highs, strict=True))
    hist = {"kind": "histogram", "feature": "pixel_3_4", "bins": [0, 0.5, 1], "epsilon": 0.2, "secure": True}
    code, secure = await post(jp_fetch, "rooms", "room-1", "query", body=hist)
    assert code == 200 and secure["per_site"] == {} and secure["secure"] is True and len(secure["total"]) == 2
    after = await spent()
    assert all(after[s] > before[s] for s in before), (before, after)
    for body in ({**hist, "epsilon": 50}, {**hist, "feature": "no_such_pixel"}):
        with pytest.raises(HTTPClientError) as info:
            await post(jp_fetch, "rooms", "room-1", "query", body=body)
        error = json.loads(info.value.response.body)
        assert info.value.code == 400 and error["code"] == "refused" and "\n" not in error["message"], error
    assert await spent() == after
