"""The site's protocol after authentication, as a sans-I/O state machine.

The glue (:mod:`fedjax_room.site.runner`) authenticates with
:func:`fedjax_room.transport.client.open_connection`, then calls :meth:`SiteMachine.welcomed`,
:meth:`SiteMachine.receive` for each frame, :meth:`SiteMachine.disconnected`, and
:meth:`SiteMachine.work_done` when a job it was asked to run (:class:`~fedjax_room.protocol.actions.Work`:
``offer``, ``train``, ``eval``) finishes. The machine sends the site's status on every (re)connection,
turns offers and round starts into jobs, never runs the same (run, round, phase) job twice at once
(a coordinator that re-asks after a reconnect gets the answer when the job ends), and refuses a
malformed or out-of-order frame with a fatal ``error`` and a close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedjax_room.errors import FedRoomError, FrameTooLargeError, ProtocolError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Action, Close, Send, Work
from fedjax_room.protocol.codec import MAX_FRAME_BYTES

__all__ = ["SiteMachine"]

log = logging.getLogger("fedjax_room.site")


class SiteMachine:
    """Post-handshake site logic. ``status`` builds the ``site_status`` frame to send on connecting."""

    def __init__(self, status: Callable[[], m.SiteStatus], *, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._status = status
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
            return self._job(msg.phase, f"{msg.run_id}/{msg.round}/{msg.phase}", msg)
        if isinstance(msg, m.RunEnd):
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

    def work_done(self, key: str, result: m.Message | None) -> list[Action]:
        """A job finished; send its answer if connected (else the coordinator will ask again)."""
        self.inflight.discard(key)
        if result is None or not self.connected:
            return []
        return [Send(0, m.encode(result))]
