"""The coordinator's protocol as a sans-I/O state machine: frames and the clock in, actions out.

:class:`CoordinatorMachine` never touches a socket or sleeps. Its glue
(:mod:`fedjax_room.coordinator.server`) calls :meth:`~CoordinatorMachine.open` when a connection
arrives, :meth:`~CoordinatorMachine.receive` for each frame, :meth:`~CoordinatorMachine.close` when
it goes, and :meth:`~CoordinatorMachine.tick` with the time; each returns a list of
:class:`~fedjax_room.protocol.actions.Send` / :class:`~fedjax_room.protocol.actions.Close` to perform.
State that must survive a crash goes to the :class:`~fedjax_room.coordinator.store.Store` as it
changes; audit records go to an :class:`AuditSink` before the action they record. Tests drive it by
feeding frames and times (``tests/protocol``). The run driver (offers, phases, deadlines,
aggregation, resume, analyst views) is :class:`~fedjax_room.protocol.runs.RunDriver`, which this class
inherits.

Strictness: a frame that cannot be decoded, is over its size limit, breaks the handshake, or is out
of order for its connection (anything but ``hello`` before authentication, a second ``hello``, a
message of the other role, site traffic before ``site_status``) gets a fatal typed ``error`` frame
and its connection is closed; nothing in the store changes and the room carries on. A well-formed
message about a run or round that is no longer open (a straggler's late update) gets a non-fatal
``error`` and is ignored.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from typing import Any, Protocol

from fedjax_room.errors import (
    AuthError,
    ConfigError,
    FedRoomError,
    FrameTooLargeError,
    ProtocolError,
    RefusedError,
    RoleError,
    RoundError,
    StateError,
    UnknownIdentityError,
    error_from_dict,
)
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Action, Close, Send
from fedjax_room.protocol.bounds import bound_metrics, bound_weight, declared_size, eval_margin, weight_problem
from fedjax_room.protocol.codec import MAX_FRAME_BYTES, Tree, digest, unpack_tree
from fedjax_room.protocol.config import RunConfig, RunLimits, check_run_request
from fedjax_room.protocol.handshake import NONCE_BYTES, ROLES, make_challenge, verify_hello
from fedjax_room.protocol.refusals import RefusalCounter
from fedjax_room.protocol.runs import APPROVAL_TIMEOUT, RunDriver, _Active
from fedjax_room.protocol.secure import SecureDriver

__all__ = ["HANDSHAKE_MAX_BYTES", "AuditSink", "CoordinatorMachine", "MemoryAudit"]

log = logging.getLogger("fedjax_room.coordinator")

#: How long an offer stays open once a site said it waits for its data owner's approval (seconds).
#: Largest frame accepted before a connection has authenticated.
HANDSHAKE_MAX_BYTES = 4096
_SITE_TYPES = (m.SiteStatus, m.RunAccept, m.RunRefuse, m.RunWaiting, m.Update, m.Metrics, m.SecAgg, m.Error)
_ANALYST_TYPES = (
    m.ListSites,
    m.ListRuns,
    m.StartRun,
    m.WatchRun,
    m.GetModel,
    m.GetBudget,
    m.GetAudit,
    m.CancelRun,
    m.Error,
)
_MAX_AUDIT = 1000
#: Largest policy / plan / ledger summary a site may send (a schema may be 4x: feature names).
_MAX_DESCRIPTION = 64 * 1024


class AuditSink(Protocol):
    """Where the machine records what it does (an :class:`~fedjax_room.audit.AuditLog` adapter)."""

    def append(self, kind: str, **fields: Any) -> Any: ...

    def tail(self, last: int) -> list[dict[str, Any]]: ...


class _TailCache:
    """The machine's view of its audit sink: appends go through; the last records are kept as appended, so
    ``get_audit`` never re-reads (and re-verifies) the whole log in the event loop. The sink's own ``tail`` is
    read once, on the first request (a verified prefix), and after an append that returned no record."""

    def __init__(self, sink: AuditSink, keep: int) -> None:
        self.sink = sink
        self._keep = keep
        self._tail: collections.deque[dict[str, Any]] | None = None

    def append(self, kind: str, **fields: Any) -> Any:
        rec = self.sink.append(kind, **fields)
        if self._tail is not None:
            if isinstance(rec, dict):
                self._tail.append(rec)
            else:
                self._tail = None
        return rec

    def tail(self, last: int) -> list[dict[str, Any]]:
        if self._tail is None:
            self._tail = collections.deque(self.sink.tail(self._keep), maxlen=self._keep)
        return list(self._tail)[-last:] if last > 0 else []

    def __getattr__(self, name: str) -> Any:  # e.g. MemoryAudit.records in tests
        return getattr(self.sink, name)


class MemoryAudit:
    """An in-memory :class:`AuditSink` (tests, or a room without a log)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"index": len(self.records), "kind": kind, "fields": fields}
        self.records.append(rec)
        return rec

    def tail(self, last: int) -> list[dict[str, Any]]:
        return self.records[-last:] if last > 0 else []


@dataclasses.dataclass
class _Conn:
    id: int
    nonce: bytes
    opened: float
    state: str = "challenged"  # challenged | ready | closed
    role: str = ""
    name: str = ""
    reported: bool = False
    watching: set[str] = dataclasses.field(default_factory=set)


def _default_init(spec: dict[str, Any], seed: int) -> Tree:
    import jax
    import numpy as np

    from fedjax_room.models import init_params

    params = init_params(spec, jax.random.PRNGKey(seed))
    return jax.tree.map(lambda a: np.asarray(a, np.float32), dict(params))


def _small(obj: Any, what: str, limit: int) -> None:
    from fedjax_room.protocol.codec import pack

    if len(pack(obj)) > limit:
        raise FrameTooLargeError(f"{what} is over {limit} bytes; send a summary, not data")


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def _plan_problem(plan: Any, limits: RunLimits) -> str | None:
    """Why a site's ``run_accept`` plan cannot be scheduled on (None: it can): the coordinator reads
    ``min_sites`` (and shows ``weight``) from it."""
    if not isinstance(plan, dict):
        return "the plan must be a map"
    min_sites = plan.get("min_sites", 1)
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or not 1 <= min_sites <= limits.max_min_sites:
        return f"min_sites must be an integer in [1, {limits.max_min_sites}], got {min_sites!r}"
    weight = plan.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        return f"weight must be a finite non-negative number, got {weight!r}"
    return None


class CoordinatorMachine(SecureDriver, RunDriver):
    """The room's logic. ``store`` persists, ``audit`` records, ``nonce`` makes challenge nonces."""

    def __init__(
        self,
        store: Any,
        *,
        audit: AuditSink | None = None,
        nonce: Callable[[int], bytes] = os.urandom,
        init_params: Callable[[dict[str, Any], int], Tree] = _default_init,
        max_frame: int = MAX_FRAME_BYTES,
        handshake_timeout: float = 10.0,
        room_key: Any = None,
        limits: RunLimits | None = None,
        background: bool = False,
    ) -> None:
        self.store = store
        self.room_id: str = store.room_id
        self.audit: AuditSink = _TailCache(audit if audit is not None else MemoryAudit(), _MAX_AUDIT)
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
        self._conns: dict[int, _Conn] = {}
        self._declared: dict[tuple[str, str], int | None] = {}  # (run, site) -> the size it declared at accept
        self._site_conns: dict[str, int] = {}
        self._active: _Active | None = None
        self._out: list[Action] = []
        self._started = False

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
        self._conns[conn] = _Conn(id=conn, nonce=nonce, opened=now)
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
        return min(times) if times else None

    @property
    def connected_sites(self) -> list[str]:
        """Names of the sites connected and reported, sorted."""
        return sorted(n for n, cid in self._site_conns.items() if self._conns.get(cid, _Conn(0, b"", 0)).reported)

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

    def _refuse(self, c: _Conn, exc: FedRoomError) -> None:
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

    def _on_hello(self, c: _Conn, msg: m.Message, now: float) -> None:
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

    def _dispatch(self, c: _Conn, msg: m.Message, now: float) -> None:
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

    # ================================================================== site messages

    def _on_site_status(self, c: _Conn, msg: m.SiteStatus, now: float) -> None:
        if len(msg.record_count) > 32:
            raise ProtocolError("site_status record_count must be a short coarse count such as '~500'")
        _small(msg.schema, "site_status schema", 4 * _MAX_DESCRIPTION)
        _small(msg.policy, "site_status policy", _MAX_DESCRIPTION)
        _small(msg.ledger, "site_status ledger", _MAX_DESCRIPTION)
        self.store.save_site(
            c.name, schema=msg.schema, record_count=msg.record_count, policy=msg.policy, ledger=msg.ledger
        )
        c.reported = True
        a = self._active
        if a is None:
            return
        if a.phase == "offer" and c.name not in a.answered:
            a.invited.add(c.name)
            self._send(c.id, m.RunOffer(run_id=a.id, spec=a.spec, config=a.config.to_dict()))
        elif a.phase in ("train", "eval") and c.name in a.accepted and c.name not in a.answered:
            if a.phase == "train" and a.secure is not None:
                if not a.secure.can_join(c.name):
                    return  # it left the SecAgg round when its connection closed; it rejoins next round
                self._send(c.id, a.secure.setup(c.name))  # connected late (e.g. the coordinator restarted)
            self._send(c.id, self._round_start(a))

    def _stale(self, c: _Conn, run_id: str, what: str) -> None:
        log.info("ignored %s from %s for %s (not open)", what, c.name, run_id)
        err = ProtocolError(f"{what} for {run_id} ignored: that run, round or phase is not open (late or unknown)")
        self._send(c.id, m.Error.of(err, run_id=run_id))

    def _on_run_accept(self, c: _Conn, msg: m.RunAccept, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or a.phase != "offer" or c.name not in a.invited:
            if not (a is not None and a.id == msg.run_id and c.name in a.accepted):
                self._stale(c, msg.run_id, "run_accept")
            return
        if c.name in a.answered:
            return
        _small(msg.plan, "run_accept plan", _MAX_DESCRIPTION)
        was_waiting = c.name in self._waiting_sites(a.id, c.name)
        problem = _plan_problem(msg.plan, self.limits)
        if problem is None:  # the weight is bounded by the size the site declared (protocol/bounds.py)
            self._declared[(a.id, c.name)] = size = declared_size(self._site_info(c.name).get("record_count"))
            problem = weight_problem(msg.plan, size)
        if problem is not None:  # refused once, recorded as this site's refusal; never scheduled on
            err = RefusedError(f"{c.name}'s plan for {a.id} is malformed: {problem}", party=c.name, reason="bad_plan")
            log.warning("run %s: %s", a.id, err.message)
            self.audit.append("run_refused", run_id=a.id, site=c.name, reason="bad_plan", round=None)
            self.store.set_run_site(a.id, c.name, "refused", error=err.to_dict())
            a.answered[c.name] = "refused"
            self._send(c.id, m.Error.of(err, run_id=a.id))
            self._event(a.id, "refusal", {"site": c.name, "reason": "bad_plan", "message": err.message, "round": None})
            if was_waiting:
                self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
            self._maybe_close(now)
            return
        self.audit.append("run_accepted", run_id=a.id, site=c.name, reason="")
        self.store.set_run_site(a.id, c.name, "accepted", plan=msg.plan)
        a.accepted[c.name] = dict(msg.plan)
        a.answered[c.name] = "accepted"
        if was_waiting:
            self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
        self._maybe_close(now)

    def _on_run_refuse(self, c: _Conn, msg: m.RunRefuse, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or (c.name not in a.invited and c.name not in a.accepted):
            self._stale(c, msg.run_id, "run_refuse")
            return
        err = error_from_dict(msg.error if isinstance(msg.error, dict) else {})
        reason = getattr(err, "reason", "") or err.code
        was_waiting = c.name in self._waiting_sites(a.id, c.name)
        self.audit.append("run_refused", run_id=a.id, site=c.name, reason=reason, round=msg.round)
        state = "refused" if a.phase == "offer" else "left"
        self.store.set_run_site(a.id, c.name, state, error=err.to_dict(), round=msg.round)
        a.accepted.pop(c.name, None)
        a.answered[c.name] = "refused"
        if a.phase == "train" and a.secure is not None:
            self._secure_dropped(c.name, now)
            if self._active is not a:
                return
        refusal = {"site": c.name, "reason": reason, "message": err.message, "round": msg.round}
        self._event(a.id, "refusal", refusal)
        if was_waiting:
            self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
        if a.phase != "offer" and len(a.accepted) < a.min_sites:
            self._fail(
                now,
                RoundError(
                    f"run {a.id} stopped at round {a.round}: site {c.name} refused ({reason}: {err.message}); "
                    f"{len(a.accepted)} site(s) remain but the run needs at least {a.min_sites}"
                ),
            )
            return
        self._maybe_close(now)

    def _waiting_sites(self, run_id: str, only: str | None = None) -> list[str]:
        """Sites whose data owner has not yet approved the run's model (``run_waiting``), sorted."""
        sites = self.store.run_sites(run_id)
        return sorted(s for s, info in sites.items() if info["state"] == "waiting" and only in (None, s))

    def _on_run_waiting(self, c: _Conn, msg: m.RunWaiting, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or a.phase != "offer" or c.name not in a.invited or c.name in a.answered:
            self._stale(c, msg.run_id, "run_waiting")
            return
        if len(msg.message) > 1024 or len(msg.spec_hash) > 128:
            raise ProtocolError("run_waiting fields must be short (a spec hash and one line)")
        log.info("run %s waits for approval by %s", a.id, c.name)
        self.audit.append("run_waiting", run_id=a.id, site=c.name, spec_hash=msg.spec_hash)
        self.store.set_run_site(a.id, c.name, "waiting")
        a.deadline = max(a.deadline, now + APPROVAL_TIMEOUT)  # a person decides: the offer stays open
        self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": msg.message})

    def _record_spend(self, c: _Conn, msg: m.Update | m.Metrics, phase: str) -> None:
        """Store what the site reports it spent on this release, and its whole ledger's epsilon."""
        self.store.record_spend(
            c.name,
            msg.run_id,
            msg.round,
            phase,
            epsilon=msg.epsilon,
            ledger_epsilon=msg.ledger_epsilon,
            delta=msg.delta,
        )
        self.store.update_site_ledger(c.name, {"epsilon": msg.ledger_epsilon})

    def _on_update(self, c: _Conn, msg: m.Update, now: float) -> None:
        if not _finite(msg.epsilon, msg.ledger_epsilon, msg.delta) or msg.weight <= 0:
            raise ProtocolError("update: weight must be positive and epsilon/delta finite numbers")
        if msg.site_epsilon is not None and not _finite(msg.site_epsilon):
            raise ProtocolError("update: site_epsilon must be a finite number")
        if self._asked(c, msg.run_id, msg.round, "train"):  # only releases this site was asked for count as spend
            self._record_spend(c, msg, "train")
            if msg.site_epsilon is not None:
                self.store.record_site_spend(c.name, msg.run_id, msg.round, msg.site_epsilon)
        a = self._awaiting(c, msg.run_id, msg.round, "train")
        if a is None:
            self._stale(c, msg.run_id, f"update for round {msg.round}")
            return
        if a.config.secure_aggregation:  # the update itself travels masked in secagg frames
            if msg.payload:
                raise ProtocolError("update: with secure aggregation the payload must be empty (send it masked)")
            self.audit.append("update_received", run_id=a.id, round=a.round, site=c.name, digest=digest(msg.payload))
            a.answered[c.name] = "secure"
            return
        from fedjax_room.robust.aggregate import check_update

        delta = check_update(unpack_tree(msg.payload, max_bytes=self.max_frame), a.params)
        self.audit.append("update_received", run_id=a.id, round=a.round, site=c.name, digest=digest(msg.payload))
        weight = bound_weight(msg.weight, a.accepted[c.name], self._size(a.id, c.name))  # protocol/bounds.py
        if weight < msg.weight:
            log.warning(
                "run %s round %d: %s claimed weight %g, clamped to %g", a.id, a.round, c.name, msg.weight, weight
            )
        a.answered[c.name] = (delta, weight)
        self._maybe_close(now)

    def _awaiting(self, c: _Conn, run_id: str, round_: int, phase: str) -> _Active | None:
        """The active run if it is waiting for this site's answer in ``phase`` of ``round_``, else None."""
        a = self._active
        if (
            a is None
            or a.id != run_id
            or a.phase != phase
            or a.round != round_
            or c.name not in a.accepted
            or c.name in a.answered
        ):
            return None
        return a

    def _on_metrics(self, c: _Conn, msg: m.Metrics, now: float) -> None:
        if not _finite(msg.correct, msg.count, msg.loss_sum, msg.epsilon, msg.ledger_epsilon, msg.delta):
            raise ProtocolError("metrics: every value must be a finite number")
        if msg.site_epsilon is not None and not _finite(msg.site_epsilon):
            raise ProtocolError("metrics: site_epsilon must be a finite number")
        if self._asked(c, msg.run_id, msg.round, "eval"):
            self._record_spend(c, msg, "eval")
            if msg.site_epsilon is not None:  # distributed DP: the site-level ledger includes evaluations
                self.store.record_site_spend(c.name, msg.run_id, msg.round, msg.site_epsilon)
        a = self._awaiting(c, msg.run_id, msg.round, "eval")
        if a is None:
            self._stale(c, msg.run_id, f"metrics for round {msg.round}")
            return
        size = self._size(a.id, c.name)
        margin = eval_margin(a.accepted[c.name], size)
        bounded = bound_metrics(msg.correct, msg.count, msg.loss_sum, size=size, margin=margin)
        if bounded != (msg.correct, msg.count, msg.loss_sum):
            log.warning("run %s round %d: %s's metrics clamped to %s (~%s)", a.id, a.round, c.name, bounded, size)
        a.answered[c.name] = bounded
        self._maybe_close(now)

    def _size(self, run_id: str, name: str) -> int | None:
        """The size ``name`` declared when it accepted ``run_id`` (after a restart: what it declares now)."""
        if (run_id, name) in self._declared:
            return self._declared[(run_id, name)]
        return declared_size(self._site_info(name).get("record_count"))

    def _site_info(self, name: str) -> dict[str, Any]:
        """What the site last declared in ``site_status`` (empty if it never did)."""
        sites = getattr(self.store, "sites", None)
        return dict((sites() if callable(sites) else {}).get(name) or {})

    def _asked(self, c: _Conn, run_id: str, round_: int, phase: str) -> bool:
        """Whether the active run asked this site for ``phase`` of ``round_`` (now, or in a round already past).

        Every accepted site is asked in every round, so a late release for a past round is real spend; a frame for
        another run, a future round, or from a site not (or no longer) in the run is not.
        """
        a = self._active
        if a is None or a.id != run_id or c.name not in a.accepted or a.phase not in ("train", "eval"):
            return False
        if round_ < a.round:
            return round_ >= 1
        return round_ == a.round and (phase == a.phase or (phase == "train" and a.phase == "eval"))

    # ================================================================== analyst messages

    def _on_list_sites(self, c: _Conn, msg: m.ListSites, now: float) -> None:
        connected = set(self.connected_sites)
        sites = [
            {
                "name": name,
                "schema": info["schema"],
                "record_count": info["record_count"],
                "status": "connected" if name in connected else "offline",
                "policy": info["policy"],
            }
            for name, info in self.store.sites().items()
        ]
        self._send(c.id, m.SitesReply(req=msg.req, sites=sites))

    def _on_list_runs(self, c: _Conn, msg: m.ListRuns, now: float) -> None:
        from fedjax_room.models import spec_hash

        runs = [
            {
                "id": r.id,
                "spec_hash": spec_hash(r.spec),
                "status": r.status,
                "rounds_done": r.rounds_done,
                "rounds": int(r.config.get("rounds", 0)),
                "waiting": self._waiting_sites(r.id) if r.status == "pending" else [],
            }
            for r in self.store.runs()
        ]
        self._send(c.id, m.RunsReply(req=msg.req, runs=runs))

    def _on_start_run(self, c: _Conn, msg: m.StartRun, now: float) -> None:
        # every bound (model size, checkpoint size, accountant work, durations) before anything is built
        spec, config = check_run_request(
            msg.spec,
            msg.config,
            limits=self.limits,
            max_frame=min(self.max_frame, getattr(self.store, "max_params_bytes", self.max_frame)),
            max_checkpoint=getattr(self.store, "max_checkpoint_bytes", 4 * self.max_frame),
        )
        run_id = self.store.create_run(c.name, spec.to_dict(), config.to_dict())
        self.audit.append("run_requested", run_id=run_id, analyst=c.name, spec_hash=spec.hash, config=config.to_dict())
        if self.background:
            self._prepare_later(run_id, spec.to_dict(), config)
        else:
            try:
                self._prepare(run_id, spec.to_dict(), config)
            except FedRoomError as exc:
                self._fail_pending(now, run_id, exc)
                raise
        self._send(c.id, m.RunCreated(req=msg.req, run_id=run_id))
        log.info("run %s requested by %s", run_id, c.name)
        if self._active is None:
            self._activate_next(now)

    # ------------------------------------------------------------------ preparing a run's initial model

    def _prepare(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:
        """Build the initial model and write checkpoint 0 (touches no machine state: runs in a worker thread)."""
        from fedjax_room.robust.server import server_optimizer

        params = self._init_params(spec, config.seed)
        opt = server_optimizer(config.server_optimizer, config.server_learning_rate)
        self.store.save_checkpoint(run_id, 0, params, opt.init(params))

    def _prepare_later(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:
        if run_id in self._preparing:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-run")
        self._preparing[run_id] = self._executor.submit(self._prepare, run_id, spec, config)

    def _collect_prepared(self, now: float) -> None:
        for run_id, fut in list(self._preparing.items()):
            if not fut.done():
                continue
            del self._preparing[run_id]
            exc = fut.exception()
            if exc is not None:
                if not isinstance(exc, FedRoomError):
                    log.error("run %s: preparing its initial model failed", run_id, exc_info=exc)
                    exc = StateError(f"could not build the initial model of {run_id}: {type(exc).__name__}: {exc}")
                self._fail_pending(now, run_id, exc)

    def _fail_pending(self, now: float, run_id: str, exc: FedRoomError) -> None:
        """End a run that is not the active one (never offered, or cancelled while queued)."""
        run = self.store.run(run_id)
        if run is None or run.status in ("finished", "failed"):
            return
        log.warning("run %s failed: %s", run_id, exc.message)
        self.audit.append("run_finished", run_id=run_id, status="failed", message=exc.message)
        self.store.set_run_status(run_id, "failed", exc.to_dict())
        self._status_event(run_id)

    # ------------------------------------------------------------------ cancelling

    def _on_cancel_run(self, c: _Conn, msg: m.CancelRun, now: float) -> None:
        run = self._run_or_error(msg.run_id)
        if run.analyst != c.name:
            raise RefusedError(
                f"{run.id} was started by {run.analyst}, not {c.name}; only its analyst or the room's operator "
                "(`fedjax-room cancel --state DIR RUN_ID`) can cancel it",
                party="room",
                reason="not_your_run",
            )
        self._cancel(run.id, f"analyst {c.name}", msg.message, now)
        self._send(c.id, m.RunCancelled(req=msg.req, run_id=run.id, status="failed"))

    def _operator_cancels(self, now: float) -> None:
        for run_id, by, reason in self.store.pending_cancels():
            try:
                self._cancel(run_id, by or "operator", reason, now)
            except FedRoomError as exc:
                log.warning("operator cancel of %s: %s", run_id, exc.message)
            self.store.mark_cancel_done(run_id)

    def _cancel(self, run_id: str, by: str, reason: str, now: float) -> None:
        """Cancel ``run_id``: audited (``run_cancelled``), it ends ``failed`` with a ``cancelled`` refusal, and the
        sites taking part get ``run_end`` (they start no further round of it)."""
        run = self._run_or_error(run_id)
        if run.status in ("finished", "failed"):
            raise ConfigError(f"{run_id} is already {run.status}; nothing to cancel")
        reason = " ".join(str(reason).split())[:500]
        self.audit.append("run_cancelled", run_id=run_id, by=by, message=reason)
        log.info("run %s cancelled by %s%s", run_id, by, f": {reason}" if reason else "")
        exc = RefusedError(
            f"{run_id} was cancelled by {by}" + (f": {reason}" if reason else ""), party="room", reason="cancelled"
        )
        self._preparing.pop(run_id, None)  # a model still being built is dropped when it is done
        if self._active is not None and self._active.id == run_id:
            self._finish(now, "failed", exc)
        else:
            self._fail_pending(now, run_id, exc)

    def _on_watch_run(self, c: _Conn, msg: m.WatchRun, now: float) -> None:
        snapshot = self.snapshot(msg.run_id)
        c.watching.add(msg.run_id)
        self._send(c.id, m.RunSnapshot(req=msg.req, run=snapshot))

    def _on_get_model(self, c: _Conn, msg: m.GetModel, now: float) -> None:
        run = self._run_or_error(msg.run_id)
        if self._active is not None and self._active.id == run.id:
            params_bytes, rnd = self._active.params_bytes, run.rounds_done
        else:
            _, _, params_bytes = self.store.load_checkpoint(run.id, run.rounds_done)
            rnd = run.rounds_done
        self.audit.append("model_downloaded", run_id=run.id, by=c.name, round=rnd)
        self._send(c.id, m.ModelReply(req=msg.req, run_id=run.id, round=rnd, params=params_bytes))

    def _on_get_budget(self, c: _Conn, msg: m.GetBudget, now: float) -> None:
        self._send(c.id, m.BudgetReply(req=msg.req, sites=self.budget()))

    def _on_get_audit(self, c: _Conn, msg: m.GetAudit, now: float) -> None:
        last = max(0, min(int(msg.last), _MAX_AUDIT))
        self._send(c.id, m.AuditReply(req=msg.req, records=list(self.audit.tail(last))))

    def _run_or_error(self, run_id: str) -> Any:
        run = self.store.run(run_id)
        if run is None:
            raise ConfigError(f"no run {run_id!r} in this room; list them with room.runs()")
        return run
