"""The coordinator's protocol as a sans-I/O state machine: frames and the clock in, actions out.

:class:`CoordinatorMachine` never touches a socket or sleeps. Its glue
(:mod:`fedjax_room.coordinator.server`) calls :meth:`~CoordinatorMachine.open` when a connection
arrives, :meth:`~CoordinatorMachine.receive` for each frame, :meth:`~CoordinatorMachine.close` when
it goes, and :meth:`~CoordinatorMachine.tick` with the time; each returns a list of
:class:`~fedjax_room.protocol.actions.Send` / :class:`~fedjax_room.protocol.actions.Close` to perform.
State that must survive a crash goes to the :class:`~fedjax_room.coordinator.store.Store` as it
changes; audit records go to an :class:`AuditSink` before the action they record. Tests drive it by
feeding frames and times (``tests/protocol``).

This module holds the machine's entry points, its plumbing, the handshake and the dispatch of frames by type and
role. The rest is inherited, one concern per module: the sites' answers (:mod:`.answers`, with the secure train
phase of :mod:`.secure`), the analysts' requests (:mod:`.requests`), the run driver (:mod:`.runs`: offers,
phases, deadlines, aggregation, resume) and the analyst views and run events (:mod:`.views`); the audit sinks are
in :mod:`.audit_sink`.

Strictness: a frame that cannot be decoded, is over its size limit, breaks the handshake, or is out
of order for its connection (anything but ``hello`` before authentication, a second ``hello``, a
message of the other role, site traffic before ``site_status``) gets a fatal typed ``error`` frame
and its connection is closed; nothing in the store changes and the room carries on. A well-formed
message about a run or round that is no longer open (a straggler's late update) gets a non-fatal
``error`` and is ignored.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import (
    AuthError,
    FedRoomError,
    FrameTooLargeError,
    ProtocolError,
    RoleError,
    RoundError,
    UnknownIdentityError,
)
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Action, Close, Send
from fedjax_room.protocol.answers import SiteAnswers
from fedjax_room.protocol.audit_sink import MAX_AUDIT_TAIL, AuditSink, MemoryAudit, TailCache
from fedjax_room.protocol.codec import MAX_FRAME_BYTES, Tree
from fedjax_room.protocol.config import RunLimits
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.estimates import EstimateRequests
from fedjax_room.protocol.handshake import NONCE_BYTES, ROLES, make_challenge, verify_hello
from fedjax_room.protocol.queries import QueryRouter
from fedjax_room.protocol.refusals import RefusalCounter
from fedjax_room.protocol.requests import AnalystRequests
from fedjax_room.protocol.runs import _Active
from fedjax_room.protocol.store import RoomStore

__all__ = ["HANDSHAKE_MAX_BYTES", "AuditSink", "CoordinatorMachine", "MemoryAudit"]

log = logging.getLogger("fedjax_room.coordinator")

#: Largest frame accepted before a connection has authenticated.
HANDSHAKE_MAX_BYTES = 4096
_SITE_TYPES = (
    m.SiteStatus,
    m.RunAccept,
    m.RunRefuse,
    m.RunWaiting,
    m.Update,
    m.Metrics,
    m.SecAgg,
    m.Error,
    m.EstimateAnswer,
    m.QueryAnswer,
    m.QueryRefuse,
)
_ANALYST_TYPES = (
    m.ListSites,
    m.ListRuns,
    m.StartRun,
    m.WatchRun,
    m.GetModel,
    m.GetBudget,
    m.GetAudit,
    m.CancelRun,
    m.EstimateRun,
    m.Query,
    m.StartTune,
    m.GetTune,
    m.Error,
)


def _default_init(spec: dict[str, Any], seed: int) -> Tree:
    import jax
    import numpy as np

    from fedjax_room.models import init_params

    params = init_params(spec, jax.random.PRNGKey(seed))
    return cast(Tree, jax.tree.map(lambda a: np.asarray(a, np.float32), dict(params)))


class CoordinatorMachine(QueryRouter, SiteAnswers, AnalystRequests, EstimateRequests):
    """The room's logic. ``store`` persists, ``audit`` records, ``nonce`` makes challenge nonces."""

    def __init__(
        self,
        store: RoomStore,
        *,
        audit: AuditSink | None = None,
        nonce: Callable[[int], bytes] = os.urandom,
        init_params: Callable[[dict[str, Any], int], Tree] = _default_init,
        max_frame: int = MAX_FRAME_BYTES,
        handshake_timeout: float = 10.0,
        room_key: Ed25519PrivateKey | None = None,
        limits: RunLimits | None = None,
        background: bool = False,
    ) -> None:
        self.store = store
        self.room_id: str = store.room_id
        self.audit: AuditSink = TailCache(audit if audit is not None else MemoryAudit(), MAX_AUDIT_TAIL)
        #: bounds on run requests (the operator's DIR/limits.toml when the store has one)
        self.limits: RunLimits = limits or (store.run_limits() if hasattr(store, "run_limits") else RunLimits())
        #: prepare a new run's initial model (JAX) and checkpoint (fsync) in a worker thread, off the event loop
        self.background = background
        self._preparing: dict[str, concurrent.futures.Future[None]] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._nonce = nonce
        self._init_params = init_params
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.room_key = room_key  # Ed25519 room key: signs each client's nonce (handshake.make_challenge)
        self.refusals = RefusalCounter()  # unauthenticated refusals: a few audited, the rest counted
        self._conns: dict[int, Conn] = {}
        self._declared: dict[tuple[str, str], int | None] = {}  # (run, site) -> the size it declared at accept
        self._site_conns: dict[str, int] = {}
        self._active: _Active | None = None
        self._out: list[Action] = []
        self._started = False
        self._queries = {}  # open DP exploration queries (protocol/queries.py)
        self._estimates: dict[int, Any] = {}  # room.estimate in flight (protocol/estimates.py)
        self._estimate_times: dict[str, list[float]] = {}

    # ================================================================== glue entry points

    def start(self, now: float) -> list[Action]:
        """Resume an unfinished run from the store (call once, when listening)."""
        if not self._started:
            self._started = True
            self._audit_enrollments()
            self._activate_next(now, resumed=True)
        return self._flush()

    def open(self, conn: int, now: float, client_nonce: bytes = b"") -> list[Action]:
        """A connection arrived: challenge it (proving the room key over ``client_nonce``)."""
        nonce = self._nonce(NONCE_BYTES)
        self._conns[conn] = Conn(id=conn, nonce=nonce, opened=now)
        self._send(
            conn, make_challenge(nonce=nonce, room_id=self.room_id, client_nonce=client_nonce, room_key=self.room_key)
        )
        return self._flush()

    def close(self, conn: int, now: float) -> list[Action]:
        """A connection went away."""
        c = self._conns.get(conn)
        self._forget(conn)
        if c is not None and c.role == "site" and c.name not in self._site_conns:
            self._secure_dropped(c.name, now)  # a dropout of a secure round in progress
        return self._flush()

    def _forget(self, conn: int) -> None:
        c = self._conns.pop(conn, None)
        if c and c.role == "site" and self._site_conns.get(c.name) == conn:
            del self._site_conns[c.name]
            log.info("site %s disconnected", c.name)

    def receive(self, conn: int, data: bytes | str, now: float) -> list[Action]:
        """One frame from ``conn``."""
        c = self._conns.get(conn)
        if c is None or c.state == "closed":
            return []
        try:
            if isinstance(data, str):
                raise ProtocolError("text frames are not part of the protocol; send binary msgpack frames")
            limit = HANDSHAKE_MAX_BYTES if c.state == "challenged" else self.max_frame
            msg = m.decode(data, max_bytes=limit)
            if c.state == "challenged":
                self._on_hello(c, msg, now)
            else:
                self._dispatch(c, msg, now)
        except FedRoomError as exc:
            self._refuse(c, exc)
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """Advance the clock: handshake timeouts, round deadlines, waiting runs."""
        self._started = True
        self._audit_enrollments()
        for summary in self.refusals.flush(now):
            log.warning("refused %d more unauthenticated connections: %s", summary["count"], summary["codes"])
            self.audit.append("connections_refused", **summary)
        for c in list(self._conns.values()):
            if c.state == "challenged" and now - c.opened > self.handshake_timeout:
                self._refuse(c, ProtocolError("no hello within the handshake timeout; answer the challenge promptly"))
        try:
            self._collect_prepared(now)
            self._operator_cancels(now)
            self._query_tick(now)
            self._estimates_tick(now)
            a = self._active
            if a is not None and now >= a.deadline:
                self._close_phase(now, timed_out=True)
            if self._active is None:
                self._activate_next(now)
        except Exception as exc:  # one party's data must never stop the scheduler: fail that run, once
            self._tick_failed(now, exc)
        return self._flush()

    def _tick_failed(self, now: float, exc: Exception) -> None:
        a = self._active
        log.exception("run %s: the scheduler could not advance it; failing it", a.id if a else "-")
        if a is None:
            return
        message = exc.message if isinstance(exc, FedRoomError) else f"{type(exc).__name__}: {exc}"
        try:
            self._fail(now, RoundError(f"run {a.id} stopped: {message}"))
        except Exception:  # pragma: no cover - the store itself failed; drop the run from memory
            log.exception("could not record the failure of run %s", a.id)
            self._active = None

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do (None: nothing scheduled)."""
        times = [c.opened + self.handshake_timeout for c in self._conns.values() if c.state == "challenged"]
        if self._active is not None:
            times.append(self._active.deadline)
        times += self._query_deadlines()
        if self._estimates:
            times.append(min(e.deadline for e in self._estimates.values()))
        return min(times) if times else None

    @property
    def connected_sites(self) -> list[str]:
        """Names of the sites connected and reported, sorted."""
        return sorted(n for n, cid in self._site_conns.items() if self._conns.get(cid, Conn(0, b"", 0)).reported)

    def authenticated(self, conn: int) -> bool:
        """Whether connection ``conn`` has proven an enrolled identity (the glue's flood limit asks)."""
        c = self._conns.get(conn)
        return c is not None and c.state == "ready"

    @property
    def active_run(self) -> str | None:
        """The id of the run in progress, if any."""
        return self._active.id if self._active else None

    # ================================================================== plumbing

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _send(self, conn: int, msg: m.Message) -> None:
        self._out.append(Send(conn, m.encode(msg)))

    def _refuse(self, c: Conn, exc: FedRoomError) -> None:
        who = f"{c.role} {c.name}" if c.name else f"connection {c.id}"
        # before authentication anyone can cause a refusal: a few per window are audited, the rest counted
        individual = c.state != "challenged" or self.refusals.note(c.opened, exc.code)
        if individual:
            log.warning("refused %s: %s: %s", who, exc.code, exc.message)
        try:
            if individual:
                self.audit.append(
                    "connection_refused", who=c.name or "", role=c.role or "", code=exc.code, message=exc.message
                )
        except FedRoomError:  # pragma: no cover - the refusal goes ahead regardless
            log.exception("could not audit a refused connection")
        self._send(c.id, m.Error.of(exc, fatal=True))
        if isinstance(exc, FrameTooLargeError):
            code = 1009
        elif isinstance(exc, ProtocolError):
            code = 1002
        else:
            code = 1008
        self._out.append(Close(c.id, code, exc.code))
        c.state = "closed"
        self._forget(c.id)

    def _audit_enrollments(self) -> None:
        for ident in self.store.unaudited_identities():
            self.audit.append("identity_enrolled", name=ident.name, role=ident.role, fingerprint=ident.fingerprint)
            self.store.mark_audited(ident.name)
        for ident in self.store.unaudited_revocations():  # `fedjax-room revoke` writes the store; we log it
            self.audit.append("identity_revoked", name=ident.name, role=ident.role, fingerprint=ident.fingerprint)
            self.store.mark_revocation_audited(ident.name)
        revoked = self.store.revoked_names()
        for c in list(self._conns.values()):  # a revoked key loses its live connection at once
            if c.state == "ready" and c.name in revoked:
                self._refuse(c, UnknownIdentityError(f"the identity {c.name!r} was revoked in this room"))

    # ================================================================== handshake

    def _on_hello(self, c: Conn, msg: m.Message, now: float) -> None:
        if not isinstance(msg, m.Hello):
            raise ProtocolError(f"expected a hello answering the challenge first, got {msg.TYPE}")
        if msg.role not in ROLES:
            raise RoleError(f"role must be one of {', '.join(ROLES)}, got {msg.role!r}")
        verify_hello(msg, room_id=self.room_id, nonce=c.nonce)
        ident = self.store.identity_by_key(msg.public_key)
        if ident is None or ident.revoked:
            raise UnknownIdentityError(
                f"this public key is not enrolled in room {self.room_id} (or was revoked); ask the operator to run "
                "`fedjax-room enroll --state DIR --name NAME --role ROLE --public-key YOUR.key.pub`"
            )
        if ident.role != msg.role:
            raise RoleError(
                f"{ident.name!r} is enrolled as {ident.role}, not {msg.role}; connect with the {ident.role} role "
                "or enroll a separate key for the other role"
            )
        if msg.name and msg.name != ident.name:
            raise UnknownIdentityError(f"this key is enrolled as {ident.name!r}, not {msg.name!r}")
        c.state, c.role, c.name = "ready", ident.role, ident.name
        c.nonce = b""
        log.info("%s %s authenticated (connection %d)", c.role, c.name, c.id)
        self._send(c.id, m.Welcome(name=ident.name, role=ident.role, room_id=self.room_id))
        if c.role == "site":
            old = self._site_conns.get(c.name)
            if old is not None and old in self._conns:
                self._out.append(Close(old, 4000, "replaced by a newer connection"))
                self._conns[old].state = "closed"
                self._conns.pop(old, None)
            self._site_conns[c.name] = c.id

    # ================================================================== dispatch

    def _dispatch(self, c: Conn, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Error):
            log.warning("%s %s reports %s: %s", c.role, c.name, msg.code, msg.message)
            if msg.fatal:
                self._out.append(Close(c.id, 1000, "peer reported a fatal error"))
                c.state = "closed"
                self._forget(c.id)
            return
        allowed = _SITE_TYPES if c.role == "site" else _ANALYST_TYPES
        if not isinstance(msg, allowed):
            raise ProtocolError(f"out of order: a {c.role} may not send {msg.TYPE} at this point")
        if c.role == "site":
            if not c.reported and not isinstance(msg, m.SiteStatus):
                raise ProtocolError(f"out of order: send site_status before {msg.TYPE}")
            getattr(self, f"_on_{msg.TYPE}")(c, msg, now)
        else:
            try:
                getattr(self, f"_on_{msg.TYPE}")(c, msg, now)
            except (ProtocolError, AuthError):
                raise
            except FedRoomError as exc:  # the request cannot be served; the connection is fine
                self._send(c.id, m.Error.of(exc, req=getattr(msg, "req", None)))
