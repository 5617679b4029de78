"""A hostile analyst flooding ``estimate_run`` against a real room (a coordinator and one site process on loopback).

Estimates cost the sites work (each plans the run), so the room bounds them: one in flight per analyst and
``ESTIMATES_PER_WINDOW`` per window, the rest refused at once (``rate_limited``) without asking any site. The
flood spends nothing (the site's ledger and audit log are unchanged), another analyst's estimate is still served,
and an honest run then completes.
"""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.identity import fingerprint, generate_key, public_key_bytes
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.estimates import ESTIMATES_PER_WINDOW
from fedjax_room.sim.demo import start_room
from fedjax_room.site.ledger import Ledger
from fedjax_room.transport.client import open_connection

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
HONEST = {"rounds": 1, "local_steps": 2, "batch_size": 32, "learning_rate": 0.5, "target_epsilon": 1.0}
HONEST = {**HONEST, "secure_aggregation": False}  # one site: nothing to mask it among


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    er = start_room(sites=1, dataset="digits", state_dir=tmp_path_factory.mktemp("flood"), policy={"min_sites": 1})
    client = er.connect()
    yield er, client
    client.close()
    er.stop()


def _enroll(er, name: str):
    key = generate_key()
    store = Store.open(er.coordinator_dir)
    try:
        store.enroll(name, "analyst", public_key_bytes(key), fingerprint(key))
    finally:
        store.close()
    return key


def _frame(req: int, target: float) -> bytes:
    config = {**HONEST, "target_epsilon": target}
    return msgpack.packb({"v": m.VERSION, "t": "estimate_run", "req": req, "spec": SPEC.to_dict(), "config": config})


def _site_state(er) -> tuple[float, int]:
    state = er.site_dir("site-a") / "state"
    ledger = Ledger.open(state / "ledger.json", epsilon_cap=5.0, delta=1e-5)
    return ledger.epsilon(), len((state / "audit.jsonl").read_text().splitlines())


async def _flood(er, key) -> tuple[list[m.Message], list[m.Message]]:
    pin = {"coordinator_key": er.manifest_path} if er.manifest_path.exists() else {}
    ws, _ = await open_connection(er.url, key, role="analyst", name="mallory", **pin)
    try:
        for req in range(1, 41):  # a burst of 40 distinct estimates at once: one goes to the site
            await ws.send(_frame(req, 0.5 + req / 100))
        burst = [m.decode(await asyncio.wait_for(ws.recv(), 60)) for _ in range(40)]
        steady = []
        for req in range(100, 100 + ESTIMATES_PER_WINDOW + 5):  # then one after the other, past the window's limit
            await ws.send(_frame(req, 1.0))
            steady.append(m.decode(await asyncio.wait_for(ws.recv(), 60)))
        return burst, steady
    finally:
        await ws.close()


def test_an_estimate_flood_is_bounded_spends_nothing_and_the_room_still_serves(room):
    er, client = room
    before = _site_state(er)
    burst, steady = asyncio.run(_flood(er, _enroll(er, "mallory")))
    answered = [x for x in burst if isinstance(x, m.EstimateReply)]
    limited = [x for x in burst if isinstance(x, m.Error) and x.reason == "rate_limited"]
    assert len(answered) == 1 and len(limited) == 39  # one in flight per analyst; the rest refused at once
    assert answered[0].sites[0]["site"] == "site-a" and answered[0].sites[0]["accept"] is True
    served = [x for x in steady if isinstance(x, m.EstimateReply)]
    refused = [x for x in steady if isinstance(x, m.Error) and x.reason == "rate_limited"]
    assert len(served) == ESTIMATES_PER_WINDOW - 1 and len(refused) == 6  # the window's limit holds
    assert "per 60s" in refused[0].message
    assert _site_state(er) == before  # nothing spent, nothing audited at the site
    est = client.estimate(SPEC, **HONEST)  # another analyst is not limited by mallory's flood
    assert est.accepting == ["site-a"]
    run = client.train(SPEC, **HONEST).wait(120)
    assert run.status == "finished", run.error
