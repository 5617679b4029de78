"""A harness that drives the coordinator machine by feeding frames and times (no sockets, no sleeps).

This is a unit test of one machine: tests hand-craft every site and analyst frame (malformed, replayed, out of
order, over-weighted) and read exactly what the coordinator answers. A whole room in process — real site machines
and agents, secure aggregation, the virtual clock — is ``fedjax_room.sim.LoopbackRoom`` (tests/protocol/
test_secure_room.py, tests/sim/), the round engine the simulation and the benchmarks use.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.identity import fingerprint, generate_key, public_key_bytes
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Close, Send
from fedjax_room.protocol.codec import pack_tree
from fedjax_room.protocol.coordinator import CoordinatorMachine, MemoryAudit
from fedjax_room.protocol.handshake import make_hello

SPEC = {
    "family": "logistic",
    "input_shape": [3],
    "num_classes": 2,
    "layers": [{"type": "dense", "features": 2}],
}


def tiny_init(spec, seed):
    return {"dense_0": {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}


def delta_tree(value: float):
    return {"dense_0": {"kernel": np.full((3, 2), value, np.float32), "bias": np.full(2, value, np.float32)}}


class Harness:
    def __init__(self, tmp_path, store=None):
        self.store = store or Store.open(tmp_path / "coord")
        self.audit = MemoryAudit()
        self.machine = CoordinatorMachine(self.store, audit=self.audit, init_params=tiny_init)
        self.now = 0.0
        self.ids = itertools.count(1)
        self.inbox: dict[int, list] = {}
        self.closed: dict[int, Close] = {}
        self.keys = {}
        self._perform(self.machine.start(self.now))

    def enroll(self, name, role):
        key = generate_key()
        self.store.enroll(name, role, public_key_bytes(key), fingerprint(key))
        self.keys[name] = key
        return key

    def _perform(self, actions):
        for a in actions:
            if isinstance(a, Send):
                self.inbox.setdefault(a.conn, []).append(m.decode(a.data))
            elif isinstance(a, Close):
                self.closed[a.conn] = a

    def open(self):
        conn = next(self.ids)
        self._perform(self.machine.open(conn, self.now))
        return conn

    def feed(self, conn, data):
        self._perform(self.machine.receive(conn, data, self.now))

    def send(self, conn, msg):
        self.feed(conn, m.encode(msg))

    def take(self, conn):
        out, self.inbox[conn] = self.inbox.get(conn, []), []
        return out

    def connect(self, name, role=None, key=None):
        key = key or self.keys[name]
        role = role or ("analyst" if name.startswith("analyst") else "site")
        conn = self.open()
        (challenge,) = self.take(conn)
        self.send(conn, make_hello(challenge, key, role=role, name=name))
        return conn

    def site(self, name, policy=None):
        conn = self.connect(name)
        assert isinstance(self.take(conn)[0], m.Welcome)
        self.send(
            conn,
            m.SiteStatus(
                schema={"features": ["a", "b", "c"]},
                record_count="~100",
                policy=policy or {"epsilon_cap": 10.0, "min_sites": 1},
                ledger={"epsilon": 0.0, "epsilon_cap": 10.0, "delta": 1e-5},
            ),
        )
        return conn

    def tick(self, dt):
        self.now += dt
        self._perform(self.machine.tick(self.now))

    def setup_room(self, n=3):
        """Enroll and connect an analyst and ``n`` sites (site-a, site-b, ...); returns (analyst, {name: site})."""
        self.enroll("analyst", "analyst")
        sites = {}
        for i in range(n):
            name = f"site-{'abcd'[i]}"
            self.enroll(name, "site")
            sites[name] = self.site(name)
            self.take(sites[name])
        analyst = self.connect("analyst")
        self.take(analyst)
        return analyst, sites


@pytest.fixture
def harness(tmp_path):
    return Harness(tmp_path)


def update(run_id, rnd, value, weight=100, eps=0.5):
    payload = pack_tree(delta_tree(value))
    return m.Update(
        run_id=run_id, round=rnd, weight=weight, payload=payload, epsilon=eps, ledger_epsilon=eps, delta=1e-5
    )


def metrics(run_id, rnd, eps=0.6):
    return m.Metrics(
        run_id=run_id, round=rnd, correct=40.0, count=50.0, loss_sum=20.0, epsilon=eps, ledger_epsilon=eps, delta=1e-5
    )


Harness.SPEC = SPEC
Harness.update = staticmethod(update)
Harness.metrics = staticmethod(metrics)
Harness.delta_tree = staticmethod(delta_tree)


class FixedRandom(random.Random):
    """A generator whose every uniform draw is ``u``: a tuning session's number of trials, made deterministic (a
    geometric of mean 2 draws three trials at u = 0.8; of mean 4, three at u = 0.5)."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u
