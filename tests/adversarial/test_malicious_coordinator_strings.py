"""A scripted malicious coordinator sends hostile strings and out-of-range rounds to real processes (issue 14).

The coordinator is the room's own :class:`~fedjax_room.protocol.coordinator.CoordinatorMachine` holding the room
key every site and the analyst pinned (served on loopback by the real websocket glue, as in
``test_malicious_coordinator.py``), plus moves an honest one never makes:

* injected strings: a ``run_offer`` whose run id is a newline plus Python, an ``error`` naming a ``<script>``
  party and reason, a ``runs_reply`` / ``sites_reply`` / ``run_event`` listing such names to the analyst. Real
  ``fedjax-room site`` processes refuse the frame at decode (a typed ``protocol`` error), spend nothing,
  reconnect and go on serving; the analyst client drops the reply (nothing hostile is returned) and the
  dashboard notebook generator refuses the run id, so no generated cell ever runs the payload;
* out-of-range rounds: once the sites accepted a 2-round run, ``round_start`` frames for rounds 0, -7, 3 and 4
  (train and eval). Each site refuses each one (``round_range``) or does not answer; its ledger holds spend for
  rounds 1 and 2 only, and the run completes honestly.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

import fedjax_room
from fedjax_room.errors import ProtocolError
from fedjax_room.jupyter.server.notebook import dashboard_notebook
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Send
from fedjax_room.protocol.codec import pack
from tests.adversarial.test_malicious_coordinator import NAMES, SPEC, Room, ScriptedCoordinator, until

pytestmark = pytest.mark.slow

PLAIN = {
    "rounds": 2,
    "target_epsilon": None,
    "noise_multiplier": 1.0,
    "local_steps": 2,
    "batch_size": 32,
    "learning_rate": 0.5,
    "secure_aggregation": False,
    "round_timeout": 120.0,
}
BAD_ROUNDS = (0, -7, 3, 4)


def sentinel_code(path: str) -> str:
    """A run id that, written raw into a comment line of a generated cell, creates ``path`` when run."""
    return f"r1\nopen({path!r}, 'w').close()  # "


MARKUP = "<script>alert(1)</script>"


def raw(type_name: str, **fields) -> bytes:
    """A frame as a hostile peer writes it: packed directly, no checks on the sending side."""
    return pack({"v": m.VERSION, "t": type_name, **fields})


class HostileCoordinator(ScriptedCoordinator):
    """The scripted machine, plus: hostile strings on demand, out-of-range round starts, their answers held back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hostile_runs: list | None = None  # list_runs / list_sites answered with these records while set
        self.hostile_sites: list | None = None
        self.injected: list[tuple[str, m.Message]] = []  # the sites' answers to the out-of-range rounds

    def receive(self, conn, data, now):
        c = self._conns.get(conn)
        if c is not None and c.state == "ready" and c.role == "site" and isinstance(data, bytes):
            try:
                msg = m.decode(data, max_bytes=self.max_frame)
            except Exception:
                msg = None
            if isinstance(msg, m.Update | m.Metrics | m.RunRefuse) and msg.round in BAD_ROUNDS:
                self.injected.append((c.name, msg))  # a malicious coordinator keeps these to itself
                return []
        return super().receive(conn, data, now)

    def _on_list_runs(self, c, msg, now):
        if self.hostile_runs == "silent":
            return None
        if self.hostile_runs is None:
            return super()._on_list_runs(c, msg, now)
        self._out.append(Send(c.id, raw("runs_reply", req=msg.req, runs=self.hostile_runs)))
        return None

    def _on_list_sites(self, c, msg, now):
        if self.hostile_sites is None:
            return super()._on_list_sites(c, msg, now)
        self._out.append(Send(c.id, raw("sites_reply", req=msg.req, sites=self.hostile_sites)))
        return None

    # -- called on the server's loop (see Room.call)

    def to_sites(self, names, frames, now):
        """Send raw ``frames`` to each of ``names``."""
        for name in names:
            cid = self._site_conns.get(name)
            for frame in frames:
                self._out.append(Send(cid, frame))
        return self._flush()

    def to_analysts(self, frames, now):
        for c in list(self._conns.values()):
            if c.role == "analyst" and c.state == "ready":
                for frame in frames:
                    self._out.append(Send(c.id, frame))
        return self._flush()

    def bad_rounds(self, run_id, now):
        """round_start for every round in BAD_ROUNDS, train and eval, on the run's current parameters."""
        a = self._active
        assert a is not None and a.id == run_id, "the run is not in progress"
        base = self._round_start(a)
        for rnd in BAD_ROUNDS:
            for phase in ("train", "eval"):
                frame = msgspec.structs.replace(base, round=rnd, phase=phase)
                for name in sorted(a.accepted):
                    self._send(self._site_conns[name], frame)
        return self._flush()


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    r = Room(tmp_path_factory.mktemp("strings"), machine_cls=HostileCoordinator)
    r.data()
    try:
        for name in NAMES:
            r.start_site(name)
        until(lambda: r.machine.connected_sites == list(NAMES), 90, "the three sites to connect")
        client = fedjax_room.connect(r.url, key=r.keys / "analyst.key", coordinator_key=r.manifest, timeout=5)
        yield r, client
        client.close()
    finally:
        r.stop()


def _state(r, name):
    return r.root / "sites" / name / "state"


def _ledger_bytes(r, name):
    path = _state(r, name) / "ledger.json"
    return path.read_bytes() if path.exists() else None


def _ledger_tags(r, name):
    from fedjax_room.site.ledger import Ledger

    return Ledger.open(_state(r, name) / "ledger.json", epsilon_cap=50.0, delta=1e-5).tags


def _honest_run(client, **extra):
    run = client.train(SPEC, **{**PLAIN, **extra})
    run.wait(120)
    assert run.status == "finished", run.error
    assert run.history[-1].sites == NAMES
    return run


def test_injected_run_id_and_markup_are_refused_by_sites_and_the_analyst(room, tmp_path):
    r, client = room
    machine = r.machine
    sentinel = tmp_path / "PWNED"
    code = sentinel_code(str(sentinel))

    # -- the sites: an offer of a run whose id is code, an error frame naming a <script> party and reason
    before = {n: _ledger_bytes(r, n) for n in NAMES}
    runs_before = {n: sorted(p.name for p in (_state(r, n) / "runs").glob("*")) for n in NAMES}
    opened = machine.opened
    offer = raw("run_offer", run_id=code, spec=SPEC.to_dict(), config=dict(PLAIN))
    r.call("to_sites", ["site-a"], [offer])
    until(lambda: machine.opened > opened and "site-a" in machine.connected_sites, 60, "site-a to reconnect")
    opened = machine.opened
    scold = raw("error", code="protocol", message="you are bad", party=MARKUP, reason=MARKUP, fatal=False)
    r.call("to_sites", ["site-b"], [scold])
    until(lambda: machine.opened > opened and "site-b" in machine.connected_sites, 60, "site-b to reconnect")
    for name in ("site-a", "site-b"):
        assert r.procs[name].poll() is None, f"{name} exited"
        assert "refusing a frame from the coordinator: protocol" in r.log(name)
    assert "run_id" in r.log("site-a") and "party" in r.log("site-b")
    assert {n: _ledger_bytes(r, n) for n in NAMES} == before  # nothing spent
    assert {n: sorted(p.name for p in (_state(r, n) / "runs").glob("*")) for n in NAMES} == runs_before
    assert not any(code in r.log(n) for n in NAMES)  # the raw payload never reaches a log line either

    # -- the analyst: listings and events that name runs and sites with code or markup are dropped
    machine.hostile_runs = [{"id": code, "status": "finished", "rounds_done": 1, "rounds": 1, "waiting": []}]
    machine.hostile_sites = [{"name": MARKUP, "schema": {}, "record_count": "~100", "status": "connected"}]
    with pytest.raises(ProtocolError, match="runs_reply: a run id"):  # typed, at once: no timeout, no string
        client.runs()
    with pytest.raises(ProtocolError, match="sites_reply: a site name"):
        client.sites()
    machine.hostile_runs = "silent"  # a coordinator that never answers: a plain timeout, not a TypeError
    with pytest.raises(TimeoutError, match="did not answer within 5s"):
        client.runs()
    machine.hostile_runs = machine.hostile_sites = None
    assert [s.name for s in client.sites()] == list(NAMES)  # the client is still connected and usable

    # -- the Jupyter server's dashboard notebook for that run id: refused, and no cell it writes runs the payload
    with pytest.raises(ProtocolError, match="run id"):
        dashboard_notebook("room-1", code)
    cells = [
        c["source"]
        for run_id in (None, "run-1")
        for c in dashboard_notebook("room-1", run_id, label=f"Room {r.url}{code}")["cells"]
        if c["cell_type"] == "code"
    ]
    stub = (
        "import fedjax_room\nimport fedjax_room.jupyter.server.notebook as n\n"
        "fedjax_room.attach = lambda *a, **k: 'room'\nn.show_dashboard = lambda *a, **k: 'dash'\n"
    )
    for i, source in enumerate(cells):
        script = tmp_path / f"cell{i}.py"
        script.write_text(stub + f"exec(compile({source!r}, '<cell>', 'exec'), {{}})\n")
        subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert not sentinel.exists()

    # -- an honest run afterwards, while the coordinator also tells the analyst about a <script> refusal
    run = client.train(SPEC, **PLAIN)
    until(lambda: run.status in ("running", "finished"), 60, "the run to start")
    event = {"site": MARKUP, "reason": "x", "message": MARKUP, "round": 1}
    r.call("to_analysts", [raw("run_event", run_id=run.id, kind="refusal", data=event)])
    run.wait(120)
    assert run.status == "finished", run.error
    assert run.history[-1].sites == NAMES
    assert all(f.site in NAMES for f in run.refusals)
    assert run.id in [s.id for s in client.runs()]
    assert not sentinel.exists()


def test_out_of_range_rounds_are_refused_and_spend_nothing(room):
    r, client = room
    machine = r.machine
    mark = len(machine.injected)
    run = client.train(SPEC, **PLAIN)
    until(
        lambda: (a := machine._active) is not None and a.id == run.id and a.phase in ("train", "eval"),
        60,
        "the sites to accept the run",
    )
    r.call("bad_rounds", run.id)
    run.wait(120)
    assert run.status == "finished", run.error  # the honest rounds completed around the attack
    assert run.history[-1].sites == NAMES and run.rounds_done == 2

    expected = len(NAMES) * len(BAD_ROUNDS) * 2
    until(lambda: len(machine.injected) - mark >= expected, 30, "every site to answer every bad round")
    answers = machine.injected[mark:]
    assert all(isinstance(msg, m.RunRefuse) for _, msg in answers), answers
    assert {msg.error.get("reason") for _, msg in answers} == {"round_range"}
    assert sorted((n, msg.round) for n, msg in answers) == sorted(
        (n, rnd) for n in NAMES for rnd in BAD_ROUNDS for _ in range(2)
    )
    for name in NAMES:
        tags = [t for t in _ledger_tags(r, name) if t.startswith(f"{run.id}/")]
        assert tags, f"{name} spent nothing for the honest rounds"
        assert {int(t.split("/")[1]) for t in tags} <= {1, 2}, tags
        assert f"{run.id}/1/train" in tags and f"{run.id}/2/train" in tags
