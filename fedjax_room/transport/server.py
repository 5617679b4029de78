"""Thin asyncio glue between websockets and a sans-I/O server machine.

:class:`MachineServer` accepts websocket connections and feeds the machine
(:class:`~fedjax_room.protocol.coordinator.CoordinatorMachine` or anything with the same
``start/open/receive/close/tick/next_deadline`` methods) with frames and the monotonic clock, then
performs the :class:`~fedjax_room.protocol.actions.Send` / ``Close`` actions it returns. Each
connection has one writer task, so frames leave in the order the machine produced them (an error
frame always goes out before its close). The machine is only ever called from the event loop.

Security at this layer: the client's nonce (header :data:`~fedjax_room.protocol.handshake.CLIENT_NONCE_HEADER`
of the upgrade request) is handed to ``machine.open`` so the challenge can prove the room key over it;
listening on a non-loopback address without TLS is refused unless ``insecure=True`` (``--insecure``);
a source address whose connections keep ending unauthenticated is refused at the upgrade (HTTP 429) for
a while (:class:`~fedjax_room.transport.limits.SourceLimiter`), before the machine or the audit log sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.actions import Close, Send
from fedjax_room.protocol.codec import MAX_FRAME_BYTES
from fedjax_room.protocol.handshake import CLIENT_NONCE_HEADER, NONCE_BYTES
from fedjax_room.transport.client import is_loopback_host
from fedjax_room.transport.limits import SourceLimiter

__all__ = ["MachineServer", "server_ssl_context"]

log = logging.getLogger("fedjax_room.transport")

_CLOSE = object()


def server_ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate chain and its private key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


class MachineServer:
    """Serve ``machine`` on ``host:port`` (``port=0`` picks a free one); ``ssl_context`` for wss://."""

    def __init__(
        self,
        machine: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        ssl_context: ssl.SSLContext | None = None,
        max_frame: int = MAX_FRAME_BYTES,
        tick_interval: float = 0.5,
        insecure: bool = False,
        limiter: SourceLimiter | None = None,
    ) -> None:
        if ssl_context is None and not insecure and not is_loopback_host(host):
            raise ConfigError(
                f"refusing to serve plain ws:// on {host!r}, which is not a loopback address: anyone on the "
                "network could read and alter the frames; give --tls-cert and --tls-key, or pass --insecure "
                "on a network you trust"
            )
        self.machine = machine
        self.limiter = limiter or SourceLimiter()
        self._authed: set[int] = set()
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        self.tick_interval = tick_interval
        self._server: Server | None = None
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._sockets: dict[int, ServerConnection] = {}
        self._ids = itertools.count(1)
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def url(self) -> str:
        """``ws://host:port`` (or ``wss://``) with the port actually bound."""
        assert self._server is not None, "start() first"
        port = next(iter(self._server.sockets)).getsockname()[1]
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}"

    async def start(self) -> str:
        """Listen, start the machine and the clock; returns the URL."""
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                ssl=self.ssl_context,
                process_request=self._admit,
                max_size=2 * self.max_frame,
                compression=None,
                ping_interval=20,
                ping_timeout=60,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc}; choose another --port") from None
        self._perform(self.machine.start(time.monotonic()))
        self._ticker = asyncio.create_task(self._tick_loop())
        return self.url

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _tick_loop(self) -> None:
        while True:
            now = time.monotonic()
            deadline = self.machine.next_deadline()
            delay = self.tick_interval if deadline is None else min(self.tick_interval, max(0.0, deadline - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay + 0.01)
            try:
                self._perform(self.machine.tick(time.monotonic()))
            except Exception:  # pragma: no cover - a bug; keep the room alive and say so
                log.exception("coordinator tick failed")

    def _perform(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                q = self._queues.get(action.conn)
                if q is not None:
                    q.put_nowait(action.data)
            elif isinstance(action, Close):
                q = self._queues.get(action.conn)
                if q is not None:
                    q.put_nowait((_CLOSE, action.code, action.reason))
        self._wake.set()

    async def _writer(self, ws: ServerConnection, q: asyncio.Queue[Any]) -> None:
        while True:
            item = await q.get()
            if isinstance(item, tuple) and item and item[0] is _CLOSE:
                await ws.close(item[1], item[2][:120])
                return
            try:
                await ws.send(item)
            except ConnectionClosed:
                return

    @staticmethod
    def _source(ws: ServerConnection) -> str:
        address = ws.remote_address
        return str(address[0]) if address else ""

    def _admit(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse the upgrade from a source over its failed-handshake limit (nothing else sees it)."""
        source = self._source(ws)
        if self.limiter.allow(source, time.monotonic()):
            return None
        if self.limiter.first_refusal(source):
            log.warning("too many failed handshakes from %s: refusing its connections for a while", source)
        return Response(429, "Too Many Requests", Headers([("Content-Length", "0")]), b"")

    def _client_nonce(self, ws: ServerConnection) -> bytes:
        request = ws.request
        value = request.headers.get(CLIENT_NONCE_HEADER, "") if request is not None else ""
        try:
            nonce = bytes.fromhex(value)
        except ValueError:
            return b""
        return nonce if len(nonce) == NONCE_BYTES else b""

    async def _handle(self, ws: ServerConnection) -> None:
        conn = next(self._ids)
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[conn] = q
        self._sockets[conn] = ws
        writer = asyncio.create_task(self._writer(ws, q))
        authenticated = getattr(self.machine, "authenticated", None)
        try:
            self._perform(self.machine.open(conn, time.monotonic(), self._client_nonce(ws)))
            async for data in ws:
                try:
                    actions = self.machine.receive(conn, data, time.monotonic())
                except Exception:  # a bug in the machine must not take the room down
                    log.exception("coordinator failed on a frame from connection %d", conn)
                    actions = [Close(conn, 1011, "internal error")]
                if authenticated is not None and conn not in self._authed and authenticated(conn):
                    self._authed.add(conn)
                self._perform(actions)
                if writer.done():
                    break
        except ConnectionClosed:
            pass
        finally:
            if authenticated is not None and conn not in self._authed:
                self.limiter.failed(self._source(ws), time.monotonic())
            self._authed.discard(conn)
            self._perform(self.machine.close(conn, time.monotonic()))
            self._queues.pop(conn, None)
            self._sockets.pop(conn, None)
            if not writer.done():
                # let queued frames (an error before a close) go out, then stop
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._drain(q)), 2.0)
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer

    @staticmethod
    async def _drain(q: asyncio.Queue[Any]) -> None:
        while not q.empty():
            await asyncio.sleep(0.01)
