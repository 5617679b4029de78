"""The room in one process: the real coordinator and site machines and agents, frames routed in memory.

:class:`LoopbackRoom` is the one round engine behind the simulation (:mod:`fedjax_room.sim.harness`), the
protocol tests and the benchmarks. Nothing in it is a stand-in for the room:

* the coordinator is :class:`~fedjax_room.protocol.coordinator.CoordinatorMachine` on a real
  :class:`~fedjax_room.coordinator.store.Store` (SQLite and checkpoints under ``tmp_dir/coordinator``), with a
  room key it proves in every handshake, and an audit sink (an in-memory one by default, any
  :class:`~fedjax_room.protocol.coordinator.AuditSink` — e.g. a :class:`~fedjax_room.audit.AuditLog` — if given);
* each site is a :class:`~fedjax_room.protocol.site.SiteMachine` around a
  :class:`~fedjax_room.site.agent.SiteAgent` (policy, ledger, release store, DP-SGD, noised evaluation) built as
  :func:`fedjax_room.site.runner.build_agent` builds it, from in-memory datasets, pinning the room key and a room
  manifest of every site's key (so secure aggregation runs exactly as between processes); an ``agent_factory``
  (e.g. :func:`fedjax_room.sim.attacker.attacking_factory`) replaces the agent class for simulated attackers;
* every frame is bytes (``messages.encode`` / ``decode`` at both ends, as on the wire), every handshake is
  :mod:`fedjax_room.protocol.handshake`'s, and the analyst talks to the coordinator over its own connection;
* :class:`~fedjax_room.protocol.actions.Work` jobs run synchronously, in order, and time is a virtual clock:
  when nothing is left to deliver and a run is still open, the clock jumps to the coordinator's next deadline
  and :meth:`CoordinatorMachine.tick <fedjax_room.protocol.coordinator.CoordinatorMachine.tick>` runs.

So a run's global models, metrics, privacy spend and defence reports are the room's, bit for bit: each site's
secret (``STATE/secret``) is derived from ``seed`` and its name, run ids are the store's, and nothing else is
random (``tests/sim/test_loopback.py``). What it leaves out: sockets, processes, TLS, and an owner approving
models by hand (a site with ``approval = "manual"`` waits for an inbox decision that nobody makes).

    room = LoopbackRoom(tmp_dir, sites={"a": (train_a, heldout_a, {}), "b": (train_b, heldout_b, {})}, seed=0)
    result = room.train(spec, {"rounds": 2, "noise_multiplier": 1.0, "secure_aggregation": True})
    result.params, result.rounds[-1].accuracy, result.privacy["a"]["epsilon"]
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from fedjax_room.data import Dataset
from fedjax_room.errors import ConfigError, FedRoomError, RoundError, error_from_dict
from fedjax_room.tree import Tree

__all__ = ["LoopbackRoom", "RoundResult", "SiteSetup", "TrainResult"]

log = logging.getLogger("fedjax_room.sim")

#: Run states after which nothing more happens.
FINAL = ("finished", "failed", "cancelled")


class SiteSetup(NamedTuple):
    """One site of a :class:`LoopbackRoom`: its data, its policy (a dict as in ``policy.toml``), and optionally
    the agent class (``agent_factory(**SiteAgent kwargs)``, e.g. a simulated attacker)."""

    train: Dataset
    heldout: Dataset
    policy: Mapping[str, Any] | None = None
    agent_factory: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One finished round as the room stored it: the global model after it, who took part, the room's
    (DP-noised) metrics, each site's epsilon so far, and the defence report (None under secure aggregation)."""

    round: int
    params: Tree = dataclasses.field(repr=False)
    sites: tuple[str, ...]
    dropped: tuple[str, ...]
    accuracy: float | None
    loss: float | None
    epsilon: dict[str, float]
    defence: dict[str, Any] | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A run as the analyst sees it (``snapshot``) plus every round's global model (from the room's store)."""

    run_id: str
    status: str
    error: dict[str, Any] | None
    initial_params: Tree = dataclasses.field(repr=False)
    rounds: tuple[RoundResult, ...]
    privacy: dict[str, Any]
    snapshot: dict[str, Any] = dataclasses.field(repr=False)

    @property
    def params(self) -> Tree:
        """The global model after the last finished round (the initial model if none finished)."""
        return self.rounds[-1].params if self.rounds else self.initial_params


class _TimedAudit:
    """An in-memory audit sink that also notes when each record was written (``perf_counter``)."""

    def __init__(self) -> None:
        from fedjax_room.protocol.coordinator import MemoryAudit

        self._inner = MemoryAudit()
        self.times: list[tuple[str, dict[str, Any], float]] = []

    @property
    def records(self) -> list[dict[str, Any]]:
        return self._inner.records

    def append(self, kind: str, **fields: Any) -> Any:
        self.times.append((kind, fields, time.perf_counter()))
        return self._inner.append(kind, **fields)

    def tail(self, last: int) -> list[dict[str, Any]]:
        return self._inner.tail(last)


def _secret(seed: int, name: str) -> bytes:
    label = b"fedjax-room loopback site secret\0" + str(int(seed)).encode() + b"\0" + name.encode()
    return hashlib.sha256(label).digest()


class LoopbackRoom:
    """A coordinator, its sites and one analyst in one process (see the module docstring).

    Args:
      tmp_dir: a fresh directory; the coordinator's state goes to ``tmp_dir/coordinator``, each site's to
        ``tmp_dir/sites/<name>``.
      sites: ``{name: (train, heldout, policy dict[, agent_factory])}`` (a :class:`SiteSetup`). A policy leaves
        ``declared_*_records`` at the exact sizes unless it says otherwise.
      agents: ready-made agents (anything with ``name``, ``status()`` and ``handle(kind, msg)``: a benchmark's
        stub) by name, next to or instead of ``sites``.
      seed: fixes every site's secret (hence all DP noise and sampling) — the run seed is the run config's.
      init_params, limits: passed to the coordinator machine (the initial model builder; the room's run bounds).
      audit: the coordinator's audit sink (default: in memory, timestamped).
      keep_frames: record every frame a site sends as ``(site, message)`` in :attr:`received`.
    """

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str],
        sites: Mapping[str, SiteSetup | tuple[Any, ...]] | None = None,
        *,
        agents: Mapping[str, Any] | None = None,
        seed: int = 0,
        init_params: Callable[[dict[str, Any], int], Tree] | None = None,
        limits: Any = None,
        audit: Any = None,
        keep_frames: bool = False,
    ) -> None:
        from fedjax_room.coordinator.store import Store
        from fedjax_room.identity import generate_key, public_key_bytes
        from fedjax_room.room_manifest import create_manifest

        self.tmp_dir = Path(tmp_dir)
        self.seed = int(seed)
        self.now = 0.0
        self.keep_frames = keep_frames
        self.received: list[tuple[str, Any]] = []  # (site, message) for every frame a site sent (keep_frames)
        self.analyst_inbox: list[Any] = []
        self.cpu: dict[str, float] = collections.defaultdict(float)  # process CPU seconds per party
        self.bytes_up: collections.Counter[str] = collections.Counter()  # bytes each site sent
        self.dead: set[str] = set()
        #: called with (site, message) after the coordinator received each site frame (tests: drop a site there)
        self.after_site_frame: Callable[[str, Any], None] | None = None
        #: a predicate on coordinator frames: from the first match on, the coordinator is down (sends nothing)
        self.cut: Callable[[Any], bool] | None = None
        self._cutting = False
        self._queue: collections.deque[tuple[str, str, Any]] = collections.deque()
        self._conns: dict[int, str] = {}
        self._next_conn = 100
        self._req = 0

        self.store = Store.open(self.tmp_dir / "coordinator")
        self.audit = audit if audit is not None else _TimedAudit()
        self.room_key = generate_key()
        self._machine_args: dict[str, Any] = {"audit": self.audit, "room_key": self.room_key}
        if init_params is not None:
            self._machine_args["init_params"] = init_params
        if limits is not None:
            self._machine_args["limits"] = limits
        self.coord = self._new_coordinator()

        self.sites: dict[str, dict[str, Any]] = {}
        built = {name: self._build_agent(name, setup) for name, setup in sorted((sites or {}).items())}
        for name, agent in sorted({**built, **dict(agents or {})}.items()):
            key = generate_key()
            self._enroll(name, "site", key)
            self.sites[name] = {"key": key, "agent": agent, "audit": getattr(agent, "audit", None)}
        if not self.sites:
            raise ConfigError("a LoopbackRoom needs at least one site")
        self.manifest = create_manifest(
            {n: public_key_bytes(s["key"]) for n, s in self.sites.items()}, public_key_bytes(self.room_key)
        )
        for name, s in self.sites.items():
            s["machine"] = self._site_machine(name, s)
        self.analyst_key = generate_key()
        self._enroll("analyst", "analyst", self.analyst_key)
        self._connect_all()

    # ------------------------------------------------------------------ building

    def _new_coordinator(self) -> Any:
        from fedjax_room.protocol.coordinator import CoordinatorMachine

        coord = CoordinatorMachine(self.store, **self._machine_args)
        self._route(self._timed("coordinator", coord.start, self.now), None)
        return coord

    def _enroll(self, name: str, role: str, key: Any) -> None:
        from fedjax_room.identity import fingerprint, public_key_bytes

        self.store.enroll(name, role, public_key_bytes(key), fingerprint(key))

    def _build_agent(self, name: str, setup: SiteSetup | tuple[Any, ...]) -> Any:
        """A site agent as :func:`fedjax_room.site.runner.build_agent` makes one, from in-memory datasets."""
        from fedjax_room.protocol.coordinator import MemoryAudit
        from fedjax_room.site.agent import SiteAgent
        from fedjax_room.site.policy import Policy

        setup = SiteSetup(*setup)
        if not isinstance(setup.train, Dataset) or not isinstance(setup.heldout, Dataset):
            raise ConfigError(f"site {name!r}: train and heldout must be fedjax_room.data.Dataset objects")
        state = self.tmp_dir / "sites" / name
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = state / "secret"
        if not secret.exists():  # fixed by the room's seed, so that every run of the same room draws the same noise
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_secret(self.seed, name))
        policy = {
            "declared_train_records": len(setup.train),
            "declared_heldout_records": len(setup.heldout),
            **dict(setup.policy or {}),
        }
        factory = setup.agent_factory or SiteAgent
        return factory(
            name=name,
            train=setup.train,
            heldout=setup.heldout,
            policy=Policy.from_dict(policy, where=f"site {name} policy"),
            state_dir=state,
            audit=MemoryAudit(),
        )

    def _site_machine(self, name: str, s: dict[str, Any]) -> Any:
        from fedjax_room.protocol import messages as m
        from fedjax_room.protocol.site import SiteMachine
        from fedjax_room.secagg.sessions import SessionBindings

        agent = s["agent"]
        audit = s["audit"]
        state_dir = getattr(agent, "state_dir", None)
        policy = getattr(agent, "policy", None)
        machine = SiteMachine(
            agent.status,
            identity_key=s["key"],
            audit=audit.append if audit is not None else None,
            manifest=self.manifest,
            name=name,
            min_sites=getattr(policy, "min_sites", 1),
            sessions=SessionBindings(state_dir) if state_dir is not None else None,
        )
        if hasattr(agent, "notify"):  # a job tells the coordinator something (run_waiting), as serve_site does
            agent.notify = lambda msg, name=name: self._queue.append(("coord", name, m.encode(msg)))
        return machine

    def _handshake(self, name: str, key: Any, role: str) -> int:
        """Challenge, verify the room key's proof (as a client pinning it does), answer with a hello."""
        from fedjax_room.identity import public_key_bytes
        from fedjax_room.protocol import messages as m
        from fedjax_room.protocol.handshake import make_hello, verify_challenge

        conn = self._next_conn
        self._next_conn += 1
        self._conns[conn] = name
        client_nonce = os.urandom(32)
        actions = self._timed("coordinator", self.coord.open, conn, self.now, client_nonce)
        (challenge,) = [m.decode(a.data) for a in actions]
        if not isinstance(challenge, m.Challenge):
            raise RoundError(f"the coordinator opened with {challenge.TYPE}, not a challenge")
        verify_challenge(
            challenge, client_nonce=client_nonce, pinned=public_key_bytes(self.room_key), room_id=self.store.room_id
        )
        hello = m.encode(make_hello(challenge, key, role=role, name=name))
        out = self._timed("coordinator", self.coord.receive, conn, hello, self.now)
        welcome = m.decode(out[0].data)
        if not isinstance(welcome, m.Welcome):
            raise error_from_dict(welcome.error_dict()) if isinstance(welcome, m.Error) else RoundError(str(welcome))
        self._route(out[1:], None)
        return conn

    def _connect_all(self) -> None:
        self.analyst = self._handshake("analyst", self.analyst_key, "analyst")
        for name, s in self.sites.items():
            if name in self.dead:
                continue
            s["conn"] = self._handshake(name, s["key"], "site")
            self._route(s["machine"].welcomed(), name)
        self.pump()

    # ------------------------------------------------------------------ frames and the clock

    def _timed(self, who: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.process_time()
        try:
            return fn(*args)
        finally:
            self.cpu[who] += time.process_time() - started

    def _route(self, actions: Iterable[Any], site: str | None) -> None:
        from fedjax_room.protocol import messages as m
        from fedjax_room.protocol.actions import Close, Send, Work

        for a in actions:
            if site is None:  # from the coordinator
                if isinstance(a, Send) and self.cut is not None:
                    self._cutting = self._cutting or self.cut(m.decode(a.data))
                    if self._cutting:
                        continue
                who = self._conns.get(a.conn)
                if isinstance(a, Send):
                    if who == "analyst":
                        self.analyst_inbox.append(m.decode(a.data))
                    elif who in self.sites and who not in self.dead:
                        self._queue.append(("site", who, a.data))
                elif isinstance(a, Close) and who in self.sites:
                    log.warning("the coordinator closed %s's connection: %s", who, a.reason)
                    self.sites[who]["machine"].disconnected()
                    self._conns.pop(a.conn, None)
            elif site not in self.dead:
                if isinstance(a, Send):
                    self.bytes_up[site] += len(a.data)
                    self._queue.append(("coord", site, a.data))
                elif isinstance(a, Work):
                    self._queue.append(("work", site, a))
                elif isinstance(a, Close):
                    log.warning("%s closed its connection: %s", site, a.reason)
                    self._route(self.coord.close(self.sites[site]["conn"], self.now), None)

    def pump(self, limit: int = 1_000_000) -> None:
        """Deliver frames and run jobs until nothing is left (raises :class:`RoundError` if it never settles)."""
        from fedjax_room.protocol import messages as m

        for _ in range(limit):
            if not self._queue:
                return
            kind, site, item = self._queue.popleft()
            if site in self.dead:
                continue
            s = self.sites[site]
            if kind == "coord":
                self._route(self._timed("coordinator", self.coord.receive, s["conn"], item, self.now), None)
                if self.keep_frames or self.after_site_frame is not None:
                    msg = m.decode(item)
                    if self.keep_frames:
                        self.received.append((site, msg))
                    if self.after_site_frame is not None:
                        self.after_site_frame(site, msg)
            elif kind == "site":
                self._route(self._timed(site, s["machine"].receive, item), site)
            else:
                result = self._timed(site, s["agent"].handle, item.kind, item.message)
                self._route(self._timed(site, s["machine"].work_done, item.key, result), site)
        raise RoundError("the loopback room did not settle (a message loop?)")

    def tick(self, dt: float) -> None:
        """Advance the virtual clock by ``dt`` seconds and let the coordinator act on it."""
        self.now += float(dt)
        self._route(self._timed("coordinator", self.coord.tick, self.now), None)
        self.pump()

    def settle(self, run_id: str, *, max_ticks: int = 10_000) -> None:
        """Run the clock (deadline to deadline) until ``run_id`` is over."""
        for _ in range(max_ticks):
            run = self.store.run(run_id)
            if run is None or run.status in FINAL:
                return
            deadline = self.coord.next_deadline()
            self.tick(max(1.0, (deadline - self.now) if deadline is not None else 1.0) + 1e-3)
        raise RoundError(f"run {run_id} did not finish after {max_ticks} deadlines")

    def kill(self, site: str) -> None:
        """``site`` drops off the network for good (its connection closes; it never answers again)."""
        self.dead.add(site)
        self._route(self.coord.close(self.sites[site]["conn"], self.now), None)

    def restart_coordinator(self) -> None:
        """A new coordinator machine on the same store (a crash and restart); every party reconnects."""
        self.cut, self._cutting = None, False
        self._queue.clear()
        self._conns = {}
        self.coord = self._new_coordinator()
        for s in self.sites.values():
            s["machine"].disconnected()
        self._connect_all()

    # ------------------------------------------------------------------ the analyst

    def _ask(self, msg: Any, reply: type) -> Any:
        from fedjax_room.protocol import messages as m

        seen = len(self.analyst_inbox)
        self._route(self._timed("coordinator", self.coord.receive, self.analyst, m.encode(msg), self.now), None)
        self.pump()
        for x in self.analyst_inbox[seen:]:
            if isinstance(x, reply) and getattr(x, "req", None) == msg.req:
                return x
            if isinstance(x, m.Error) and getattr(x, "req", None) in (None, msg.req):
                raise error_from_dict(x.error_dict())
        raise RoundError(f"the coordinator did not answer {msg.TYPE}")

    def _next_req(self) -> int:
        self._req += 1
        return self._req

    def start(self, spec: Any, config: Any = None, *, settle: bool = True) -> str:
        """Ask for a run as the analyst (``spec``: a ModelSpec or its dict; ``config``: a RunConfig or dict);
        with ``settle`` run the clock until it is over. Returns the run id; a refused request raises its typed
        error."""
        from fedjax_room.protocol import messages as m

        spec_dict = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        created = self._ask(m.StartRun(req=self._next_req(), spec=spec_dict, config=config_dict), m.RunCreated)
        if settle:
            self.settle(created.run_id)
        return str(created.run_id)

    def train(self, spec: Any, config: Any = None) -> TrainResult:
        """Run to the end and return :meth:`result`."""
        return self.result(self.start(spec, config))

    def global_params(self, run_id: str) -> Tree:
        """The run's current global model, downloaded as the analyst downloads it (``get_model``)."""
        from fedjax_room.protocol import messages as m
        from fedjax_room.protocol.codec import unpack_tree

        reply = self._ask(m.GetModel(req=self._next_req(), run_id=run_id), m.ModelReply)
        return unpack_tree(reply.params)

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """What the analyst sees of a run (``watch_run``'s snapshot)."""
        return dict(self.coord.snapshot(run_id))

    def result(self, run_id: str) -> TrainResult:
        """The run's snapshot, and every finished round with its global model from the room's checkpoints."""
        snap = self.snapshot(run_id)
        run = self.store.run(run_id)
        if run is None:
            raise ConfigError(f"the room has no run {run_id!r}")
        defences = self.store.defences(run_id)
        applied = {
            int(fields.get("round", -1)): t
            for kind, fields, t in getattr(self.audit, "times", [])
            if kind == "aggregate_applied" and fields.get("run_id") == run_id
        }
        started = next(
            (t for kind, fields, t in getattr(self.audit, "times", []) if fields.get("run_id") == run_id), None
        )
        rounds = []
        previous = started
        for row in self.store.rounds(run_id):
            if row.round > run.rounds_done:
                continue
            t = applied.get(row.round)
            seconds = (t - previous) if t is not None and previous is not None else float("nan")
            previous = t if t is not None else previous
            rounds.append(
                RoundResult(
                    round=row.round,
                    params=self.store.load_checkpoint(run_id, row.round)[0],
                    sites=tuple(row.sites),
                    dropped=tuple(row.dropped),
                    accuracy=row.accuracy,
                    loss=row.loss,
                    epsilon=dict(row.epsilon),
                    defence=defences.get(row.round),
                    seconds=seconds,
                )
            )
        return TrainResult(
            run_id=run_id,
            status=run.status,
            error=run.error,
            initial_params=self.store.load_checkpoint(run_id, 0)[0],
            rounds=tuple(rounds),
            privacy=dict(snap.get("privacy") or {}),
            snapshot=snap,
        )

    def close(self) -> None:
        """Close the store and the sites' ledgers' files (the directory stays)."""
        for s in self.sites.values():
            closer = getattr(s["agent"], "close", None)
            if callable(closer):
                try:
                    closer()
                except FedRoomError:  # pragma: no cover - best effort on the way out
                    log.debug("closing %s failed", s["agent"], exc_info=True)
        self.store.close()

    def __enter__(self) -> LoopbackRoom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
