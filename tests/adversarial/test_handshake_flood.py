"""A handshake flood against a real room on loopback (issue 14, section 4, last bullet).

Hundreds of unauthenticated connections from one source (127.0.0.2, still loopback) each send a garbage
frame. The coordinator audits only the first few refusals of its window and counts the rest (one
``connections_refused`` summary per window), so its signed, fsynced audit log grows by O(1) records; past
the per-source limit the upgrade itself is refused (HTTP 429) before the coordinator's machine sees it. An
honest analyst (from 127.0.0.1) connects meanwhile, and the room then runs a secure run to completion.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fedjax_room.models import logistic
from fedjax_room.sim.demo import start_room

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
FLOOD = 300


def _audit_lines(er) -> int:
    return len((er.coordinator_dir / "audit.jsonl").read_text().splitlines())


async def _garbage(url: str) -> str:
    try:
        ws = await connect(url, proxy=None, compression=None, open_timeout=10, local_addr=("127.0.0.2", 0))
    except InvalidStatus as exc:
        return str(exc.response.status_code)
    try:
        await ws.recv()  # the challenge
        await ws.send(b"\xc1 garbage, not msgpack")
        await ws.recv()  # the refusal
        await ws.recv()
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
    return "refused"


async def _flood(url: str) -> list[str]:
    out: list[str] = []
    for start in range(0, FLOOD, 25):  # 25 at a time
        out += await asyncio.gather(*(_garbage(url) for _ in range(min(25, FLOOD - start))))
    return out


def test_a_handshake_flood_costs_o1_audit_records_and_the_room_serves_on(tmp_path):
    policy = {"epsilon_cap": 20.0, "min_sites": 2}
    with start_room(sites=2, dataset="digits", state_dir=tmp_path, policy=policy) as er:
        before = _audit_lines(er)
        outcomes = asyncio.run(_flood(er.url))
        assert len(outcomes) == FLOOD
        assert outcomes.count("429") > FLOOD // 2  # the source hit its limit: most never reached the machine
        grown = _audit_lines(er) - before
        assert grown <= 10, f"{grown} audit records for {FLOOD} garbage connections"

        client = er.connect(timeout=20)  # an honest client, from 127.0.0.1, still gets in
        try:
            run = client.train(
                SPEC,
                rounds=1,
                target_epsilon=None,
                noise_multiplier=1.0,
                local_steps=3,
                batch_size=32,
                learning_rate=0.5,
                secure_aggregation=True,
            )
            run.wait(180)
            assert run.status == "finished", run.error
            assert run.history[-1].sites == ("site-a", "site-b")
        finally:
            client.close()
