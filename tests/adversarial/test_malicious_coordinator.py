"""A scripted malicious coordinator against real ``fedjax-room site`` processes on loopback (issue 14, 1 and 2).

The coordinator here is the room's own :class:`~fedjax_room.protocol.coordinator.CoordinatorMachine`, served
by the real websocket glue in this test process, holding the real room key the sites pinned (a malicious
coordinator *is* the coordinator), with a few extra moves a review used to unpick secure aggregation:

* replay: once the first SecAgg session of a round has produced its sum, it opens a second session for the
  same (run, round) with a subset of the sites (and again with every site, as if one had dropped out), to
  subtract the sums. Each site refuses the second session (``replay``) and sends no masked input, even after
  a restart (the binding is on disk);
* sybil: a roster ``{site-a, a key only the coordinator holds}``: site-a refuses (``unknown_identity``);
* an under-sized roster (two sites for a site whose policy wants three): refused (``policy_violation``).

After each attack the coordinator behaves again and the attacked run finishes with every site.
Impersonation (a coordinator with another key, or none) is tested against a real site process and the
analyst client: they refuse before sending anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time

import numpy as np
import pytest

import fedjax_room
from fedjax_room.coordinator.server import coordinator_key
from fedjax_room.coordinator.store import Store
from fedjax_room.data import load_builtin, partition, save_dataset
from fedjax_room.errors import ConfigError, UnknownIdentityError
from fedjax_room.identity import fingerprint, generate_key, load_private_key, public_key_bytes, save_private_key
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.coordinator import CoordinatorMachine, MemoryAudit
from fedjax_room.protocol.secure import SecureRound
from fedjax_room.sim.demo import write_room_manifest
from fedjax_room.sim.launch import spawn, spawn_site, stop_process
from fedjax_room.site.policy import Policy
from fedjax_room.transport.server import MachineServer

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
RUN = {
    "rounds": 1,
    "target_epsilon": None,
    "noise_multiplier": 1.0,
    "local_steps": 3,
    "batch_size": 32,
    "learning_rate": 0.5,
    "secure_aggregation": True,
    "round_timeout": 120.0,
}
NAMES = ("site-a", "site-b", "site-c")
MIN_SITES = {"site-a": 3, "site-b": 2, "site-c": 2}


class ScriptedCoordinator(CoordinatorMachine):
    """The real machine, plus: hold a finished SecAgg session, open extra sessions, record every site frame."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames: list[tuple[str, m.Message]] = []
        self.sums: list[tuple[tuple[str, ...], object]] = []  # (roster, unmasked sum) of each session that ended
        self.held = None
        self.hold_phase = "train"  # which kind of SecAgg session (train or eval) the attacks hold open
        self.opened = 0
        self.received = 0  # every frame, authenticated or not

    def open(self, conn, now, client_nonce=b""):
        self.opened += 1
        return super().open(conn, now, client_nonce)

    def receive(self, conn, data, now):
        self.received += 1
        c = self._conns.get(conn)
        if c is not None and c.state == "ready" and isinstance(data, bytes):
            with contextlib.suppress(Exception):
                self.frames.append((c.name, m.decode(data, max_bytes=self.max_frame)))
        return super().receive(conn, data, now)

    def _secure_close(self, now):
        a = self._active
        sec = a.secure
        if sec.phase != self.hold_phase:  # not the kind of session under attack: as the room does
            return super()._secure_close(now)
        done = sec.state == "done"
        self.sums.append((tuple(sorted(sec.ids)), sec.server.result().copy() if done else None))
        if self.held is None and done:  # the honest session's sum: keep the round open for the attack
            self.held, a.secure, a.deadline = sec, None, math.inf
            return
        if sec is not self.held:  # an attack session ended (aborted): forget it
            a.secure, a.deadline = None, math.inf
            return
        super()._secure_close(now)

    def _maybe_close(self, now):
        if self.held is None:  # while a session is held, late updates do not close the round
            super()._maybe_close(now)

    def ask_in_the_clear(self, round: int, now: float):
        """An eval ``round_start`` for ``round`` of the active run sent to every site without any session."""
        a = self._active
        frame = m.RoundStart(
            run_id=a.id, round=round, phase="eval", params=a.params_bytes, cohort=len(a.accepted), timeout=60.0
        )
        for name in sorted(a.accepted):
            cid = self._site_conns.get(name)
            if cid is not None:
                self._send(cid, frame)
        return self._flush()

    # -- called on the server's loop (see Room.call)

    def open_session(self, roster: dict[str, bytes], now: float):
        """A new SecAgg session for the current (run, round, phase) with ``roster`` (name -> key), then a
        round_start."""
        a = self._active
        a.secure = SecureRound(
            run_id=a.id,
            round=a.round,
            config=a.config,
            roster=roster,
            weights={n: 1.0 for n in roster},
            reference=a.params,
            min_sites=len(roster),  # sums of the whole roster only
            now=now,
            phase=a.phase,
        )
        a.deadline = math.inf
        for name in sorted(roster):
            cid = self._site_conns.get(name)
            if cid is not None:
                self._send(cid, a.secure.setup(name))
        frame = self._round_start(a)
        for name in sorted(roster):
            cid = self._site_conns.get(name)
            if cid is not None:
                self._send(cid, frame)
        return self._flush()

    def finish(self, now: float):
        """Behave: apply the held honest session and let the run go on."""
        a = self._active
        a.secure, self.held = self.held, None
        super()._secure_close(now)
        return self._flush()


class Room:
    """Keys, manifest, data and three real site processes around a scripted coordinator served in a thread."""

    def __init__(self, root, *, room_key_dir=None, machine_cls=ScriptedCoordinator):
        self.root = root
        self.coord_dir = root / "coordinator"
        self.keys = root / "keys"
        self.site_keys = {}
        store = Store.open(self.coord_dir)
        try:
            for name in (*NAMES, "analyst"):
                path = self.keys / f"{name}.key"
                if not path.exists():
                    save_private_key(generate_key(), path)
                key = load_private_key(path)
                store.enroll(name, "analyst" if name == "analyst" else "site", public_key_bytes(key), fingerprint(key))
                if name != "analyst":
                    self.site_keys[name] = path
        finally:
            store.close()
        self.manifest = write_room_manifest(self.coord_dir, self.site_keys, self.keys)
        key_dir = room_key_dir or self.coord_dir  # another directory: an impersonator with its own key
        self.store = Store.open(self.coord_dir)
        self.machine = machine_cls(self.store, audit=MemoryAudit(), room_key=coordinator_key(key_dir))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = MachineServer(self.machine, host="127.0.0.1", port=0)
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.procs = {}

    def call(self, method, *args):
        """Run ``machine.method(*args, now)`` on the server's loop and perform the actions it returns."""

        async def run():
            self.server._perform(getattr(self.machine, method)(*args, time.monotonic()))

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def data(self):
        full = load_builtin("digits", seed=0)
        for name, part in zip(NAMES, partition(full, 3, seed=0), strict=True):
            folder = self.root / "sites" / name
            folder.mkdir(parents=True, exist_ok=True)
            train, heldout = part.split(0.2, seed=0)
            save_dataset(train, folder / "train.npz")
            save_dataset(heldout, folder / "heldout.npz")
            Policy.from_dict({"epsilon_cap": 50.0, "delta_cap": 1e-5, "min_sites": MIN_SITES[name]}).save(
                folder / "policy.toml"
            )

    def start_site(self, name):
        folder = self.root / "sites" / name
        self.procs[name] = spawn_site(
            self.url,
            key=self.site_keys[name],
            data=folder / "train.npz",
            heldout=folder / "heldout.npz",
            policy=folder / "policy.toml",
            state_dir=folder / "state",
            name=name,
            log_dir=self.root / "logs",
            extra=["--manifest", str(self.manifest)],
        )
        return self.procs[name]

    def log(self, name):
        path = self.root / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self):
        for proc in self.procs.values():
            stop_process(proc)
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.store.close()


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    r = Room(tmp_path_factory.mktemp("malicious"))
    r.data()
    try:
        for name in NAMES:
            r.start_site(name)
        until(lambda: r.machine.connected_sites == list(NAMES), 90, "the three sites to connect")
        client = fedjax_room.connect(r.url, key=r.keys / "analyst.key", coordinator_key=r.manifest)
        yield r, client
        client.close()
    finally:
        r.stop()


def _errors(machine, since, code):
    return {name for name, msg in machine.frames[since:] if isinstance(msg, m.Error) and msg.code == code}


def _masked_inputs(machine, since):
    return [
        name
        for name, msg in machine.frames[since:]
        if isinstance(msg, m.SecAgg) and str(msg.body.get("t", "")).endswith("masked_input")
    ]


def _secagg_from(machine, since, names):
    return [n for n, msg in machine.frames[since:] if isinstance(msg, m.SecAgg) and n in names]


def _held(machine, sessions):
    until(lambda: machine.held is not None and len(machine.sums) == sessions, 150, "the honest session's sum")


def test_replayed_session_for_the_same_round_is_refused(room):
    r, client = room
    machine = r.machine
    run = client.train(SPEC, **RUN)
    _held(machine, 1)
    assert machine.sums[0][0] == NAMES and len(_masked_inputs(machine, 0)) == 3

    # S_abc - S_bc would be site-a's update: a second session for this round with site-b and site-c only
    mark = len(machine.frames)
    r.call("open_session", {n: public_key_bytes(load_private_key(r.site_keys[n])) for n in ("site-b", "site-c")})
    until(lambda: _errors(machine, mark, "replay") == {"site-b", "site-c"}, 30, "site-b and site-c to refuse")
    # the same roster again, as if someone dropped out this time: refused by every site
    r.call("open_session", {n: public_key_bytes(load_private_key(r.site_keys[n])) for n in NAMES})
    until(lambda: _errors(machine, mark, "replay") == set(NAMES), 30, "every site to refuse the replay")

    # a restart does not make a site forget: site-b comes back and refuses a third session
    stop_process(r.procs["site-b"])
    r.start_site("site-b")
    until(lambda: "site-b" in machine.connected_sites, 60, "site-b to reconnect")
    restarted = len(machine.frames)
    r.call("open_session", {n: public_key_bytes(load_private_key(r.site_keys[n])) for n in ("site-b", "site-c")})
    until(lambda: "site-b" in _errors(machine, restarted, "replay"), 30, "the restarted site-b to refuse")

    time.sleep(1.0)  # let any (wrong) masked input arrive before looking
    assert _masked_inputs(machine, mark) == []  # no second masked input: no difference of sums to take
    assert _secagg_from(machine, mark, set(NAMES)) == []  # not even a key advertisement
    assert "already released its masked input" in r.log("site-c")

    r.call("finish")  # the coordinator behaves: the attacked run completes with its first session's sum
    run.wait(120)
    assert run.status == "finished", run.error
    assert run.history[-1].sites == NAMES


def test_sybil_and_undersized_rosters_are_refused(room):
    r, client = room
    machine = r.machine
    run = client.train(SPEC, **RUN)
    _held(machine, len(machine.sums) + 1)
    keys = {n: public_key_bytes(load_private_key(r.site_keys[n])) for n in NAMES}

    mark = len(machine.frames)
    sybil = public_key_bytes(generate_key())  # a key only the coordinator holds, named like a site
    r.call("open_session", {"site-a": keys["site-a"], "site-d": sybil})
    until(lambda: "site-a" in _errors(machine, mark, "unknown_identity"), 30, "site-a to refuse the sybil roster")
    # two genuine sites, but site-a's policy wants sums of at least three
    r.call("open_session", {"site-a": keys["site-a"], "site-b": keys["site-b"]})
    until(lambda: "site-a" in _errors(machine, mark, "policy_violation"), 30, "site-a to refuse a small roster")
    assert "not in this site's room manifest" in r.log("site-a")

    time.sleep(1.0)
    assert _secagg_from(machine, mark, {"site-a"}) == []  # site-a advertised nothing, released nothing
    r.call("finish")
    run.wait(120)
    assert run.status == "finished", run.error
    assert run.history[-1].sites == NAMES


def test_an_evaluation_leaves_a_site_only_in_a_sum(room):
    """Issue 16: under secure aggregation a site's noised evaluation vector carries only its share of the noise, so
    the coordinator must never get one un-summed. Asked in the clear (for a round whose session the site already
    released into, or one with no session at all) a site sends no counts and no second masked input; a replayed
    eval session, or one under the site's minimum, is refused; no site's vector is ever seen unmasked."""
    from fedjax_room.protocol.codec import unpack
    from fedjax_room.protocol.evaluation import signed_to_ring

    r, client = room
    machine = r.machine
    machine.hold_phase = "eval"
    try:
        run = client.train(SPEC, **{**RUN, "rounds": 2, "eval_every": 1})
        _held(machine, len(machine.sums) + 1)  # round 1's honest eval session has its sum
        keys = {n: public_key_bytes(load_private_key(r.site_keys[n])) for n in NAMES}
        mark = len(machine.frames)
        r.call("ask_in_the_clear", 1)
        r.call("ask_in_the_clear", 2)
        r.call("open_session", {n: keys[n] for n in ("site-b", "site-c")})  # S_abc - S_bc would be site-a's
        until(lambda: _errors(machine, mark, "replay") == {"site-b", "site-c"}, 30, "the eval replay refused")
        r.call("open_session", {n: keys[n] for n in ("site-a", "site-b")})  # site-a wants sums of three
        until(lambda: "site-a" in _errors(machine, mark, "policy_violation"), 30, "site-a to refuse a small roster")
        time.sleep(1.0)
        assert _masked_inputs(machine, mark) == []
        metrics = [x for _, x in machine.frames if isinstance(x, m.Metrics) and x.run_id == run.id]
        assert metrics and all((x.count, x.correct, x.loss_sum) == (0.0, 0.0, 0.0) for x in metrics)
        assert not [x for x in metrics if x.round == 2]  # round 2 in the clear: not answered at all
        assert "came without its secagg_setup" in r.log("site-a")
        sent = b"".join(
            x.body["data"]
            for _, x in machine.frames
            if isinstance(x, m.SecAgg) and isinstance(x.body.get("data"), bytes)
        )
        for name in NAMES:  # the site's noised vector (its share of the noise only) never reached the coordinator
            stored = r.root / "sites" / name / "state" / "releases" / run.id / "1-eval.release"
            vector = signed_to_ring(np.asarray(unpack(stored.read_bytes())["vector"], np.int64)).tobytes()
            assert vector not in sent
        machine.hold_phase = "none"
        r.call("finish")
        run.wait(120)
        assert run.status == "finished", run.error
        final = run.final_metrics
        assert final is not None and final.round == 2 and final.sites == NAMES
        assert 0.0 <= final.accuracy <= 1.0 and 0.0 < final.accuracy_std < 0.2
    finally:
        machine.hold_phase = "train"


def test_an_impersonating_coordinator_gets_nothing(tmp_path):
    # the same room's keys and manifest, but the coordinator holds another room key (an impersonator)
    fake = Room(tmp_path, room_key_dir=tmp_path / "impostor")
    try:
        fake.data()
        proc = fake.start_site("site-a")
        assert proc.wait(60) == 2  # the site gives up: retrying cannot fix a wrong key
        assert "not the one pinned" in fake.log("site-a")
        with pytest.raises(UnknownIdentityError, match="not the one pinned"):
            fedjax_room.connect(fake.url, key=fake.keys / "analyst.key", coordinator_key=fake.manifest, timeout=10)
        assert fake.machine.opened >= 2 and fake.machine.received == 0  # not even a hello
        assert fake.machine.connected_sites == []
    finally:
        fake.stop()

    # a coordinator that proves nothing (no room key) is refused the same way
    mute = Room(tmp_path / "mute")
    mute.machine.room_key = None
    try:
        with pytest.raises(UnknownIdentityError, match="did not prove"):
            fedjax_room.connect(mute.url, key=mute.keys / "analyst.key", coordinator_key=mute.manifest, timeout=10)
        assert mute.machine.received == 0
        # and a client with no pin at all dials nothing
        with pytest.raises(ConfigError, match="coordinator"):
            fedjax_room.connect(mute.url, key=generate_key(), timeout=10)
    finally:
        mute.stop()


def test_plain_ws_off_loopback_is_refused_without_insecure(tmp_path):
    state = tmp_path / "coordinator"
    proc = spawn(["coordinator", "--state", str(state), "--host", "0.0.0.0", "--port", "0"], tmp_path / "c.log")
    assert proc.wait(60) == 2
    assert "refusing to serve plain ws://" in (tmp_path / "c.log").read_text()
    assert not (state / "coordinator.url").exists()

    key = tmp_path / "site.key"
    save_private_key(generate_key(), key)
    pin = coordinator_key(state)  # the room key exists; only the listening was refused
    with pytest.raises(ConfigError, match="not a loopback address"):
        asyncio.run(_dial("ws://192.0.2.1:8765", load_private_key(key), pin.public_key()))

    proc = spawn(
        ["coordinator", "--state", str(state), "--host", "0.0.0.0", "--port", "0", "--insecure"], tmp_path / "i.log"
    )
    try:
        until(lambda: (state / "coordinator.url").exists(), 60, "the --insecure coordinator to listen")
    finally:
        assert stop_process(proc) == 0


async def _dial(url, key, pin):
    from fedjax_room.transport.client import open_connection

    await open_connection(url, key, role="site", coordinator_key=pin, open_timeout=2)
