"""Client-side websockets glue: connect, authenticate both ends, reconnect with backoff.

:func:`open_connection` dials the coordinator (``wss://``, or ``ws://`` to a loopback address only,
unless ``insecure``), sends a fresh nonce in the upgrade request, checks that the challenge carries the
coordinator's proof over that nonce under the room key the client pinned out of band
(:func:`~fedjax_room.protocol.handshake.verify_challenge`; the key comes from the room manifest or a
``coordinator.key.pub`` file, see :func:`load_coordinator_pin`), and only then answers with
:func:`~fedjax_room.protocol.handshake.make_hello`; it returns the open websocket and the ``welcome``.
A coordinator that cannot prove the pinned key gets nothing but the upgrade request.

Frames after the handshake are not signed one by one: their integrity rests on TLS (``wss://``), or on
the connection never leaving the machine (``ws://`` is refused to any non-loopback host unless
``insecure=True`` / ``--insecure``, and the coordinator refuses to listen off loopback without TLS).

A refusal arrives as a typed ``error`` frame and is raised as the matching
:class:`~fedjax_room.errors.FedRoomError` (e.g. :class:`~fedjax_room.errors.UnknownIdentityError`).
:class:`Backoff` spaces out reconnection attempts (exponential, with jitter, capped).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fedjax_room.errors import ConfigError, ProtocolError, error_from_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import MAX_FRAME_BYTES
from fedjax_room.protocol.handshake import CLIENT_NONCE_HEADER, NONCE_BYTES, make_hello, verify_challenge

__all__ = [
    "COORDINATOR_KEY_ENV",
    "Backoff",
    "CoordinatorPin",
    "client_ssl_context",
    "default_pin_path",
    "is_loopback_host",
    "load_coordinator_pin",
    "open_connection",
    "recv_message",
]

#: Environment variable naming a coordinator key or manifest file (used when none is given).
COORDINATOR_KEY_ENV = "FEDJAX_ROOM_COORDINATOR_KEY"
#: File names looked for next to a client's key file when no pin is given.
PIN_FILES = ("room-manifest.json", "coordinator.key.pub")


class CoordinatorPin:
    """The coordinator's room key a client trusts (raw 32 bytes) and, from a manifest, the room id."""

    def __init__(self, key: bytes, room_id: str = "", source: str = "") -> None:
        if len(key) != 32:
            raise ConfigError("a coordinator key must be a 32-byte Ed25519 public key")
        self.key, self.room_id, self.source = bytes(key), room_id, source

    def __repr__(self) -> str:
        return f"CoordinatorPin({self.key.hex()[:16]}..., room_id={self.room_id!r}, source={self.source!r})"


def load_coordinator_pin(value: Any) -> CoordinatorPin:
    """A pin from: a :class:`CoordinatorPin`, raw key bytes, an Ed25519 public key, a manifest, or a file
    path (a PEM public key such as ``coordinator.key.pub``, or a room manifest JSON)."""
    from fedjax_room.identity import load_public_key, public_key_bytes
    from fedjax_room.room_manifest import Manifest, load_manifest

    if isinstance(value, CoordinatorPin):
        return value
    if isinstance(value, bytes | bytearray):
        return CoordinatorPin(bytes(value), source="bytes")
    if isinstance(value, Ed25519PublicKey):
        return CoordinatorPin(public_key_bytes(value), source="key")
    if isinstance(value, Manifest):
        return CoordinatorPin(value.coordinator, value.room_id, source="manifest")
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        try:
            head = path.read_bytes()[:64].lstrip()
        except OSError as exc:
            raise ConfigError(f"cannot read the coordinator key {path}: {exc}") from None
        if head.startswith(b"{"):
            manifest = load_manifest(path)
            return CoordinatorPin(manifest.coordinator, manifest.room_id, source=str(path))
        return CoordinatorPin(public_key_bytes(load_public_key(path)), source=str(path))
    raise ConfigError(f"coordinator_key must be a key file, a manifest or a public key, got {type(value).__name__}")


def default_pin_path(key_path: Any = None) -> Path | None:
    """Where a client finds its pin when none is given: ``$FEDJAX_ROOM_COORDINATOR_KEY``, else
    ``room-manifest.json`` or ``coordinator.key.pub`` next to its own key file; None if there is none."""
    env = os.environ.get(COORDINATOR_KEY_ENV)
    if env:
        return Path(env)
    if isinstance(key_path, str | os.PathLike):
        folder = Path(key_path).parent
        for name in PIN_FILES:
            if (folder / name).exists():
                return folder / name
    return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address) resolves only to loopback addresses."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def _check_scheme(url: str, insecure: bool) -> None:
    if url.startswith("ws://") and not insecure:
        host = urlsplit(url).hostname or ""
        if not is_loopback_host(host):
            raise ConfigError(
                f"refusing plain ws:// to {host!r}, which is not a loopback address: frames would travel "
                "unprotected; use wss:// (the coordinator's --tls-cert/--tls-key), or pass --insecure / "
                "insecure=True on a network you trust"
            )


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
    coordinator_key: Any = None,
    insecure: bool = False,
) -> tuple[ClientConnection, m.Welcome]:
    """Connect and authenticate both ends; returns ``(websocket, welcome)`` or raises a typed refusal.

    ``coordinator_key`` is the pinned room key (anything :func:`load_coordinator_pin` takes); without it
    nothing is dialled (:class:`ConfigError`). A coordinator that does not prove that key raises
    :class:`~fedjax_room.errors.AuthError` before the client sends anything. Network failures raise
    :class:`OSError` (the caller decides whether to retry).
    """
    if coordinator_key is None:
        raise ConfigError(
            "cannot authenticate the coordinator: no pinned room key; pass the room manifest or the "
            "operator's coordinator.key.pub (--manifest / --coordinator-key, coordinator_key=...)"
        )
    pin = load_coordinator_pin(coordinator_key)
    _check_scheme(url, insecure)
    client_nonce = os.urandom(NONCE_BYTES)
    try:
        ws = await connect(
            url,
            ssl=client_ssl_context(url, cafile),
            additional_headers={CLIENT_NONCE_HEADER: client_nonce.hex()},
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
        verify_challenge(challenge, client_nonce=client_nonce, pinned=pin.key, room_id=pin.room_id)
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
