"""Client-side websockets glue: connect, authenticate, reconnect with backoff.

:func:`open_connection` dials the coordinator (``ws://`` or ``wss://``), answers its challenge with
:func:`~fedjax_room.protocol.handshake.make_hello` and returns the open websocket and the
``welcome``. A refusal arrives as a typed ``error`` frame and is raised as the matching
:class:`~fedjax_room.errors.FedRoomError` (e.g. :class:`~fedjax_room.errors.UnknownIdentityError`).
:class:`Backoff` spaces out reconnection attempts (exponential, with jitter, capped).
"""

from __future__ import annotations

import random
import ssl
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fedjax_room.errors import ConfigError, ProtocolError, error_from_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import MAX_FRAME_BYTES
from fedjax_room.protocol.handshake import make_hello

__all__ = ["Backoff", "client_ssl_context", "open_connection", "recv_message"]


class Backoff:
    """Delays ``initial, initial*factor, ...`` up to ``maximum``, each with +-``jitter`` (fraction)."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0, jitter: float = 0.2) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._next = initial

    def reset(self) -> None:
        """After a successful connection."""
        self._next = self.initial

    def next(self) -> float:
        """The next delay in seconds."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay * (1.0 + random.uniform(-self.jitter, self.jitter))


def client_ssl_context(url: str, cafile: str | Path | None = None) -> ssl.SSLContext | None:
    """For ``wss://``: a verifying TLS context (trusting ``cafile`` if given); None for ``ws://``."""
    if url.startswith("ws://"):
        return None
    if not url.startswith("wss://"):
        raise ConfigError(f"coordinator URL {url!r} must start with ws:// or wss://")
    ctx = ssl.create_default_context()
    if cafile:
        try:
            ctx.load_verify_locations(str(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA certificate {cafile}: {exc}") from None
    return ctx


async def recv_message(ws: ClientConnection, *, max_bytes: int = MAX_FRAME_BYTES) -> m.Message:
    """Receive and decode one frame."""
    data = await ws.recv()
    if isinstance(data, str):
        raise ProtocolError("the coordinator sent a text frame; expected binary msgpack")
    return m.decode(data, max_bytes=max_bytes)


async def open_connection(
    url: str,
    key: Ed25519PrivateKey,
    *,
    role: str,
    name: str = "",
    cafile: str | Path | None = None,
    max_frame: int = MAX_FRAME_BYTES,
    open_timeout: float = 10.0,
) -> tuple[ClientConnection, m.Welcome]:
    """Connect and authenticate; returns ``(websocket, welcome)`` or raises the coordinator's typed refusal.

    Network failures raise :class:`OSError` (the caller decides whether to retry).
    """
    try:
        ws = await connect(
            url,
            ssl=client_ssl_context(url, cafile),
            max_size=2 * max_frame,
            compression=None,
            proxy=None,
            open_timeout=open_timeout,
            ping_interval=20,
            ping_timeout=60,
        )
    except InvalidURI as exc:
        raise ConfigError(f"bad coordinator URL {url!r}: {exc}") from None
    except (InvalidHandshake, TimeoutError) as exc:
        raise OSError(f"cannot open a websocket to {url}: {exc}") from None
    try:
        challenge = await recv_message(ws, max_bytes=max_frame)
        if isinstance(challenge, m.Error):
            raise error_from_dict(challenge.error_dict())
        if not isinstance(challenge, m.Challenge):
            raise ProtocolError(f"expected a challenge from the coordinator, got {challenge.TYPE}")
        await ws.send(m.encode(make_hello(challenge, key, role=role, name=name)))
        reply = await recv_message(ws, max_bytes=max_frame)
        if isinstance(reply, m.Error):
            raise error_from_dict(reply.error_dict())
        if not isinstance(reply, m.Welcome):
            raise ProtocolError(f"expected welcome from the coordinator, got {reply.TYPE}")
        return ws, reply
    except ConnectionClosed as exc:
        await ws.close()
        raise OSError(f"the coordinator closed the connection during the handshake: {exc}") from None
    except BaseException:
        await ws.close()
        raise
