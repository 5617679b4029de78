"""Shared helpers for room integration tests: a fake site that never trains (a straggler)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fedjax_room.protocol import messages as m
from fedjax_room.transport.client import open_connection


class FakeStraggler:
    """An enrolled site that accepts runs, answers evaluations, but never sends an update."""

    def __init__(self, url, key, name, schema, coordinator_key=None):
        self.url, self.key, self.name, self.schema = url, key, name, schema
        self.coordinator_key = coordinator_key  # the room manifest or coordinator.key.pub it pins
        self.seen = []
        self.ready = threading.Event()
        self._stop = None
        self._loop = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self):
        self._thread.start()
        assert self.ready.wait(30), "the fake site did not connect"
        return self

    def stop(self):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self):
        asyncio.run(self._serve())

    async def _serve(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ws, _ = await open_connection(
            self.url, self.key, role="site", name=self.name, coordinator_key=self.coordinator_key
        )
        await ws.send(
            m.encode(
                m.SiteStatus(
                    schema=self.schema,
                    record_count="~400",
                    policy={"epsilon_cap": 10.0, "min_sites": 1},
                    ledger={"epsilon": 0.0, "epsilon_cap": 10.0, "delta": 1e-5},
                )
            )
        )
        self.ready.set()
        stopper = asyncio.ensure_future(self._stop.wait())
        while True:
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                recv.cancel()
                break
            msg = m.decode(recv.result())
            self.seen.append(msg)
            if isinstance(msg, m.RunOffer):
                plan = {"min_sites": 1, "weight": 400, "epsilon_planned": 1.0}
                await ws.send(m.encode(m.RunAccept(run_id=msg.run_id, plan=plan)))
            elif isinstance(msg, m.RoundStart) and msg.phase == "eval":
                await ws.send(
                    m.encode(
                        m.Metrics(
                            run_id=msg.run_id,
                            round=msg.round,
                            correct=30.0,
                            count=40.0,
                            loss_sum=20.0,
                            epsilon=0.1,
                            ledger_epsilon=0.1,
                            delta=1e-5,
                        )
                    )
                )
            # a train round_start is ignored: this site is a straggler
        await ws.close()


@pytest.fixture
def fake_straggler_cls():
    return FakeStraggler
