"""The site's protocol after authentication, as a sans-I/O state machine.

The glue (:mod:`fedjax_room.site.runner`) authenticates with
:func:`fedjax_room.transport.client.open_connection`, then calls :meth:`SiteMachine.welcomed`,
:meth:`SiteMachine.receive` for each frame, :meth:`SiteMachine.disconnected`, and
:meth:`SiteMachine.work_done` when a job it was asked to run (:class:`~fedjax_room.protocol.actions.Work`:
``offer``, ``train``, ``eval``) finishes. The machine sends the site's status on every (re)connection,
turns offers and round starts into jobs, never runs the same (run, round, phase) job twice at once
(a coordinator that re-asks after a reconnect gets the answer when the job ends), and refuses a
malformed or out-of-order frame with a fatal ``error`` and a close.

Secure aggregation (``fedjax_room.protocol.secure``): a ``secagg_setup`` frame makes the machine join that
round's SecAgg as a :class:`~fedjax_room.secagg.SecAggClient` signing with ``identity_key`` (it advertises at
once); the following train ``round_start`` becomes a job on a
:class:`~fedjax_room.protocol.secure.SecureTrain`; ``secagg`` frames go to the client; when the job returns a
:class:`~fedjax_room.protocol.secure.SecureRelease` the machine sends its ``update`` (accounting only) and hands
the encoded vector to the client, which masks it; with an ``audit`` callable the machine records
``masked_input_released`` (the sha256 of the masked bytes) before that frame is sent. A bad SecAgg frame aborts
this site's part of the round (logged), never the connection.

What a malicious coordinator cannot make the site do (``secagg_setup`` refused with a typed ``error``):

* join a round whose roster holds a key that is not in this site's room ``manifest`` (pinned out of band,
  :mod:`fedjax_room.room_manifest`), or whose own entry is not the manifest's key for this site: the peers'
  keys are checked against the manifest, never taken from the coordinator (a sybil roster is refused);
  without a manifest the site joins no secure round at all;
* join a round with fewer roster entries, or a lower ``min_clients``, than the site's own ``min_sites`` (the
  roster is counted; the ``cohort`` the coordinator states is not trusted);
* release a second masked input for a (run, round): :class:`~fedjax_room.secagg.sessions.SessionBindings`
  persists, before the masked input leaves, that it went into one session, and refuses any later session
  for that round (a replay to subtract sums).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import (
    ConfigError,
    FedRoomError,
    FrameTooLargeError,
    PolicyViolation,
    ProtocolError,
    ReplayError,
    UnknownIdentityError,
)
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Action, Close, Send, Work
from fedjax_room.protocol.codec import MAX_FRAME_BYTES, digest

if TYPE_CHECKING:
    from fedjax_room.secagg import SecAggConfig
    from fedjax_room.secagg.sessions import SessionBindings

__all__ = ["MAX_ESTIMATES_IN_FLIGHT", "SiteMachine"]

#: estimate jobs a site runs at once; a further ``estimate_offer`` is answered "busy" at once
MAX_ESTIMATES_IN_FLIGHT = 2

log = logging.getLogger("fedjax_room.site")


class SiteMachine:
    """Post-handshake site logic. ``status`` builds the ``site_status`` frame to send on connecting."""

    def __init__(
        self,
        status: Callable[[], m.SiteStatus],
        *,
        max_frame: int = MAX_FRAME_BYTES,
        identity_key: Ed25519PrivateKey | None = None,
        audit: Callable[..., Any] | None = None,
        manifest: Any = None,
        name: str = "",
        min_sites: int = 1,
        sessions: SessionBindings | None = None,
    ) -> None:
        from fedjax_room.secagg.sessions import SessionBindings

        self._status = status
        self._identity = identity_key
        self._audit = audit
        self.manifest = manifest  # a room_manifest.Manifest: the only source of peers' keys for SecAgg
        self.name = name
        self.min_sites = max(1, int(min_sites))
        self.sessions = sessions if sessions is not None else SessionBindings()
        self.secagg: dict[tuple[str, int], tuple[m.SecAggSetup, Any]] = {}
        #: the eval SecAgg sessions (protocol/evaluation.py), apart from the train ones: each round has one of each
        self.secagg_eval: dict[tuple[str, int], tuple[m.SecAggSetup, Any]] = {}
        self.max_frame = max_frame
        self.connected = False
        self.inflight: set[str] = set()
        self.ended: dict[str, str] = {}

    def welcomed(self) -> list[Action]:
        """A connection was authenticated: announce ourselves."""
        self.connected = True
        return [Send(0, m.encode(self._status()))]

    def disconnected(self) -> list[Action]:
        """The connection went away (jobs in flight keep running)."""
        self.connected = False
        return []

    def receive(self, data: bytes | str) -> list[Action]:
        """One frame from the coordinator."""
        try:
            if isinstance(data, str):
                raise ProtocolError("text frames are not part of the protocol")
            msg = m.decode(data, max_bytes=self.max_frame)
            return self._dispatch(msg)
        except FedRoomError as exc:
            log.warning("refusing a frame from the coordinator: %s: %s", exc.code, exc.message)
            code = 1009 if isinstance(exc, FrameTooLargeError) else 1002
            self.connected = False
            return [Send(0, m.encode(m.Error.of(exc, fatal=True))), Close(0, code, exc.code)]

    def _job(self, kind: str, key: str, msg: m.Message) -> list[Action]:
        if key in self.inflight:
            return []
        self.inflight.add(key)
        return [Work(kind, key, msg)]

    def _dispatch(self, msg: m.Message) -> list[Action]:
        if isinstance(msg, m.RunOffer):
            return self._job("offer", f"{msg.run_id}/offer", msg)
        if isinstance(msg, m.RoundStart):
            if msg.phase not in ("train", "eval"):
                raise ProtocolError(f"round_start phase must be 'train' or 'eval', got {msg.phase!r}")
            job: Any = msg
            joined = self._sessions(msg.phase).get((msg.run_id, msg.round))
            if msg.phase == "train" and joined is not None:
                from fedjax_room.protocol.secure import SecureTrain

                job = SecureTrain(start=msg, setup=joined[0])
            elif msg.phase == "eval" and joined is not None:
                from fedjax_room.protocol.secure import SecureEval

                job = SecureEval(start=msg, setup=joined[0])
            return self._job(msg.phase, f"{msg.run_id}/{msg.round}/{msg.phase}", job)
        if isinstance(msg, m.EstimateOffer):  # nothing spent (site/estimate.py); a few at a time
            if sum(k.startswith("estimate/") for k in self.inflight) >= MAX_ESTIMATES_IN_FLIGHT:
                busy = {"accept": False, "reason": "busy", "message": f"{self.name or 'site'} is busy estimating"}
                return [Send(0, m.encode(m.EstimateAnswer(est=msg.est, estimate=busy)))]
            return self._job("estimate", f"estimate/{msg.est}", msg)
        if isinstance(msg, m.SecAggSetup):
            return self._secagg_setup(msg)
        if isinstance(msg, m.QueryAsk):  # a DP exploration query (secure: after its secagg_setup)
            from fedjax_room.protocol.query_tasks import QUERY_ROUND, SecureQuery

            query_job: Any = msg
            joined_query = self.secagg.get((msg.query_id, QUERY_ROUND))
            if joined_query is not None:
                query_job = SecureQuery(ask=msg, setup=joined_query[0], min_sites=joined_query[1].config.min_clients)
            return self._job("query", f"{msg.query_id}/query", query_job)
        if isinstance(msg, m.SecAgg):
            return self._secagg_frame(msg)
        if isinstance(msg, m.RunEnd):
            for sessions in (self.secagg, self.secagg_eval):
                for k in [k for k in sessions if k[0] == msg.run_id]:
                    del sessions[k]
            self.ended[msg.run_id] = msg.status
            log.info("run %s ended: %s %s", msg.run_id, msg.status, msg.message)
            return [Work("end", f"{msg.run_id}/end", msg)]
        if isinstance(msg, m.Error):
            log.warning("coordinator says %s: %s", msg.code, msg.message)
            if msg.fatal:
                self.connected = False
                return [Close(0, 1000, "coordinator reported a fatal error")]
            return []
        raise ProtocolError(f"out of order: a site does not expect {msg.TYPE} from the coordinator")

    def work_done(self, key: str, result: Any) -> list[Action]:
        """A job finished; send its answer if connected (else the coordinator will ask again)."""
        self.inflight.discard(key)
        if result is None or not self.connected:
            return []
        from fedjax_room.protocol.query_tasks import QUERY_ROUND, SecureQueryRelease
        from fedjax_room.protocol.secure import SecureRelease

        if isinstance(result, SecureQueryRelease):  # the accounting answer, then the vector, masked
            query = self.secagg.get((result.answer.query_id, QUERY_ROUND))
            return self._masked(result.answer, query, result.vector, "secure query")
        if isinstance(result, SecureRelease):
            joined = self._sessions(result.phase).get((result.update.run_id, result.update.round))
            return self._masked(result.update, joined, result.vector, "secure aggregation", extra=result.extra)
        return [Send(0, m.encode(result))]

    def _masked(self, frame: m.Message, joined: Any, vector: Any, what: str, *, extra: Any = None) -> list[Action]:
        """``frame`` (the accounting), then ``vector`` as this site's masked input of the session ``joined`` (none:
        the frame alone; an input the session refuses is logged and only the frame goes); ``extra``: terms the
        session adds just before masking (SecAggClient.set_input)."""
        out: list[Action] = [Send(0, m.encode(frame))]
        if joined is None:
            return out
        try:
            sent = joined[1].set_input(vector, extra=extra)
        except FedRoomError as exc:
            log.warning("%s: cannot give the input: %s: %s", what, exc.code, exc.message)
            return out
        return out + self._wrap(joined[0], sent)

    # ------------------------------------------------------------------ secure aggregation

    def _sessions(self, phase: str) -> dict[tuple[str, int], tuple[m.SecAggSetup, Any]]:
        return self.secagg_eval if phase == "eval" else self.secagg

    @staticmethod
    def _binding(setup: m.SecAggSetup) -> str:
        """The run key a session is bound under: the run id, or ``<run>/eval`` for its eval sessions."""
        return f"{setup.run_id}/eval" if setup.phase == "eval" else setup.run_id

    def _wrap(self, setup: m.SecAggSetup, msgs: list[Any]) -> list[Action]:
        from fedjax_room.secagg.messages import MaskedInput

        for x in msgs:
            if isinstance(x, MaskedInput):  # once per (run, round, phase), persisted before it leaves
                joined = self._sessions(setup.phase).get((setup.run_id, setup.round))
                session = joined[1].config.digest.hex() if joined is not None else ""
                try:
                    self.sessions.release(self._binding(setup), setup.round, session)
                except FedRoomError as exc:
                    log.warning("secure aggregation %s/%d: %s", setup.run_id, setup.round, exc.message)
                    if joined is not None:
                        joined[1].abort(exc.message)
                    return [Send(0, m.encode(m.Error.of(exc, run_id=setup.run_id)))]
            if isinstance(x, MaskedInput) and self._audit is not None:
                # Written before the frame leaves: the digest of the exact masked bytes, which the
                # coordinator records on receipt (``masked_input_received``) for the cross-check.
                self._audit(
                    "masked_input_released",
                    run_id=setup.run_id,
                    round=setup.round,
                    phase=setup.phase,  # a round has a train and (when scheduled) an eval session
                    digest=digest(x.data),
                )
        return [
            Send(0, m.encode(m.SecAgg(run_id=setup.run_id, round=setup.round, body=x.to_dict(), phase=setup.phase)))
            for x in msgs
        ]

    def _secagg_setup(self, msg: m.SecAggSetup) -> list[Action]:
        from fedjax_room.protocol import evaluation as ev
        from fedjax_room.secagg import SecAggClient, SecAggConfig

        if msg.phase not in ("train", "eval"):
            raise ProtocolError(f"secagg_setup phase must be 'train' or 'eval', got {msg.phase!r}")
        sessions = self._sessions(msg.phase)
        for k in [k for k in sessions if k[0] == msg.run_id and k[1] != msg.round]:
            del sessions[k]  # an older round of the run is over
        if self._identity is None:
            raise ProtocolError("this site was started without its identity key and cannot do secure aggregation")
        try:
            config = SecAggConfig.from_dict(msg.config)
            want = f"{msg.run_id}/{msg.round}" + ("/eval" if msg.phase == "eval" else "")
            if config.round_id != want:
                raise ProtocolError(f"secagg round id {config.round_id!r} is not {want}")
            if not 0 < msg.fraction <= 1:
                raise ProtocolError(f"secagg fraction must be in (0, 1], got {msg.fraction}")
            if msg.phase == "eval" and (
                config.vector_length != ev.EVAL_LENGTH or config.modulus_bits != ev.EVAL_MODULUS_BITS
            ):
                raise ProtocolError(
                    f"an eval secagg session sums {ev.EVAL_LENGTH} values modulo 2^{ev.EVAL_MODULUS_BITS}, not "
                    f"{config.vector_length} modulo 2^{config.modulus_bits}"
                )
            self._check_roster(config, msg, self._identity)
            self.sessions.join(self._binding(msg), msg.round, config.digest.hex())
            client = SecAggClient(config, msg.id, self._identity)
        except FedRoomError as exc:
            log.warning("not joining secure aggregation for %s/%d: %s", msg.run_id, msg.round, exc.message)
            return [Send(0, m.encode(m.Error.of(exc, run_id=msg.run_id)))]
        sessions[(msg.run_id, msg.round)] = (msg, client)
        return self._wrap(msg, [client.advertise()])

    def _check_roster(self, config: SecAggConfig, msg: m.SecAggSetup, identity: Ed25519PrivateKey) -> None:
        """Every roster key must be the manifest's; the roster must be at least this site's ``min_sites``."""
        from fedjax_room.identity import public_key_bytes

        manifest = self.manifest
        if manifest is None:
            raise ConfigError(
                "this site has no room manifest, so it cannot tell its peers' keys from keys the coordinator "
                "made up: it takes part in no secure aggregation; start it with --manifest FILE"
            )
        mine = public_key_bytes(identity)
        listed = manifest.sites.get(self.name) if self.name else mine
        if listed is None or listed != mine or manifest.name_of(mine) is None:
            raise ConfigError(
                f"this site's key is not the one the room manifest lists for {self.name or 'it'}; "
                "fix the manifest (fedjax-room manifest create/sign) before joining secure rounds"
            )
        keys = [bytes(k) for k in config.clients.values()]
        if len(set(keys)) != len(keys):
            raise ReplayError("the secagg roster lists one key twice: refused")
        strangers = sorted(cid for cid, k in config.clients.items() if manifest.name_of(bytes(k)) is None)
        if strangers:
            raise UnknownIdentityError(
                f"the secagg roster of {msg.run_id}/{msg.round} holds {len(strangers)} key(s) that are not in this "
                f"site's room manifest (ids {strangers[:8]}): a roster with sites nobody vouched for is refused"
            )
        if bytes(config.clients.get(msg.id, b"")) != mine:
            raise ConfigError(f"the secagg roster gives this site's id {msg.id} another key: refused")
        n = len(config.clients)
        if n < self.min_sites or config.min_clients < self.min_sites:
            raise PolicyViolation(
                f"the secagg roster of {msg.run_id}/{msg.round} has {n} sites and releases sums of "
                f"{config.min_clients}; this site's policy needs at least {self.min_sites}",
                party=self.name,
                reason="min_sites",
            )

    def _secagg_frame(self, msg: m.SecAgg) -> list[Action]:
        from fedjax_room.secagg import message_from_dict

        joined = self._sessions(msg.phase).get((msg.run_id, msg.round))
        if joined is None:
            log.info("ignored a secagg frame for %s/%d (not in that round)", msg.run_id, msg.round)
            return []
        try:
            out = joined[1].receive(message_from_dict(msg.body))
        except FedRoomError as exc:  # the client aborts itself on anything but a wrong-state message
            log.warning("secure aggregation %s/%d: %s: %s", msg.run_id, msg.round, exc.code, exc.message)
            return []
        return self._wrap(joined[0], out)
