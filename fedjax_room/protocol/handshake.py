"""Challenge-response authentication of a connection (pure functions, no I/O).

The coordinator opens every connection with a :class:`~fedjax_room.protocol.messages.Challenge`
carrying a fresh 32-byte nonce. The client answers :class:`~fedjax_room.protocol.messages.Hello`
with its role, name, raw Ed25519 public key, the nonce, and a signature over
:func:`signed_bytes` — a domain-separated encoding of (protocol version, room id, role, nonce), so a
signature can never be reused for another room, role, version or connection, nor mistaken for an
audit-log signature made with the same key.

The coordinator proves its identity in the same exchange: the client sends a fresh 32-byte nonce of its
own in the websocket upgrade request (header :data:`CLIENT_NONCE_HEADER`, hex), and the challenge carries
the coordinator's raw room public key and ``proof``, its signature over :func:`coordinator_signed_bytes`
(protocol version, room id, the challenge nonce, the client's nonce, the room key). A client checks it
with :func:`verify_challenge` against the key it pinned out of band (the room manifest or
``--coordinator-key``) before it sends anything, so a coordinator that cannot sign with the pinned key
never sees a hello.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import BadSignatureError, ProtocolError, ReplayError, UnknownIdentityError
from fedjax_room.identity import public_key_bytes, public_key_from_bytes, sign, verify
from fedjax_room.protocol.codec import pack
from fedjax_room.protocol.messages import VERSION, Challenge, Hello

__all__ = [
    "CLIENT_NONCE_HEADER",
    "COORDINATOR_DOMAIN",
    "DOMAIN",
    "NONCE_BYTES",
    "ROLES",
    "coordinator_signed_bytes",
    "make_challenge",
    "make_hello",
    "signed_bytes",
    "verify_challenge",
    "verify_hello",
]

#: Prefix of the bytes a handshake signature covers.
DOMAIN = b"fedjax-room handshake v1\n"
#: Size of a challenge nonce.
NONCE_BYTES = 32
#: Roles an identity can be enrolled with.
ROLES = ("site", "analyst")
#: Prefix of the bytes the coordinator's proof covers.
COORDINATOR_DOMAIN = b"fedjax-room coordinator proof v1\n"
#: HTTP header of the websocket upgrade request that carries the client's nonce (64 hex digits).
CLIENT_NONCE_HEADER = "Fedjax-Client-Nonce"


def coordinator_signed_bytes(
    *, version: int, room_id: str, nonce: bytes, client_nonce: bytes, coordinator_key: bytes
) -> bytes:
    """The exact bytes the coordinator signs with its room key to prove itself to one client."""
    return COORDINATOR_DOMAIN + pack([version, room_id, nonce, client_nonce, coordinator_key])


def make_challenge(*, nonce: bytes, room_id: str, client_nonce: bytes, room_key: Ed25519PrivateKey | None) -> Challenge:
    """The coordinator's first frame; with ``room_key`` it carries the proof over ``client_nonce``."""
    if room_key is None or len(client_nonce) != NONCE_BYTES:  # no key, or a client that sent no nonce
        return Challenge(nonce=nonce, room_id=room_id, version=VERSION)
    public = public_key_bytes(room_key)
    message = coordinator_signed_bytes(
        version=VERSION, room_id=room_id, nonce=nonce, client_nonce=client_nonce, coordinator_key=public
    )
    return Challenge(
        nonce=nonce, room_id=room_id, version=VERSION, coordinator_key=public, proof=sign(room_key, message)
    )


def verify_challenge(challenge: Challenge, *, client_nonce: bytes, pinned: bytes, room_id: str = "") -> None:
    """Check that the coordinator signed *this* client's nonce with the pinned room key.

    Raises :class:`UnknownIdentityError` when the coordinator presents another key (or none) than
    ``pinned``, :class:`BadSignatureError` when its proof does not verify, and :class:`ReplayError` when
    ``room_id`` is given and the challenge names another room.
    """
    if not challenge.coordinator_key or not challenge.proof:
        raise UnknownIdentityError(
            "the coordinator did not prove its identity (no room key signature in its challenge); it is not "
            "a fedjax-room coordinator of this version, or someone is impersonating it: nothing was sent"
        )
    if not hmac.compare_digest(bytes(challenge.coordinator_key), bytes(pinned)):
        raise UnknownIdentityError(
            "the coordinator's room key is not the one pinned for this room (manifest or --coordinator-key): "
            "refusing to send anything; check that the URL is right and ask the operator for its coordinator.key.pub"
        )
    if room_id and challenge.room_id != room_id:
        raise ReplayError(f"the coordinator says it serves room {challenge.room_id!r}; the manifest names {room_id!r}")
    message = coordinator_signed_bytes(
        version=challenge.version,
        room_id=challenge.room_id,
        nonce=challenge.nonce,
        client_nonce=client_nonce,
        coordinator_key=bytes(pinned),
    )
    try:
        verify(public_key_from_bytes(bytes(pinned)), challenge.proof, message)
    except BadSignatureError:
        raise BadSignatureError(
            "the coordinator's proof does not verify for this connection's nonce (a replayed or forged "
            "challenge): refusing to send anything"
        ) from None


def signed_bytes(*, version: int, room_id: str, role: str, nonce: bytes) -> bytes:
    """The exact bytes a client signs to answer a challenge."""
    return DOMAIN + pack([version, room_id, role, nonce])


def make_hello(challenge: Challenge, key: Ed25519PrivateKey, *, role: str, name: str = "") -> Hello:
    """The client's answer to ``challenge``; refuses a challenge for another protocol version."""
    if challenge.version != VERSION:
        raise ProtocolError(
            f"the coordinator speaks protocol version {challenge.version}, this client {VERSION}; "
            "install the same fedjax-room version on both ends"
        )
    if len(challenge.nonce) != NONCE_BYTES:
        raise ProtocolError(f"challenge nonce must be {NONCE_BYTES} bytes")
    message = signed_bytes(version=VERSION, room_id=challenge.room_id, role=role, nonce=challenge.nonce)
    return Hello(
        role=role, name=name, public_key=public_key_bytes(key), nonce=challenge.nonce, signature=sign(key, message)
    )


def verify_hello(hello: Hello, *, room_id: str, nonce: bytes) -> None:
    """Check ``hello`` answers *this* connection's ``nonce`` and its signature verifies.

    Raises :class:`ReplayError` for a nonce that is not this connection's fresh one, and
    :class:`BadSignatureError` for a signature that does not verify. (Whether the key is enrolled
    and with which role is the coordinator's business.)
    """
    if not hmac.compare_digest(hello.nonce, nonce):
        raise ReplayError(
            "hello answers a challenge that is not this connection's (a replayed or stale handshake); "
            "reconnect and sign the fresh challenge"
        )
    key = public_key_from_bytes(hello.public_key)
    try:
        verify(key, hello.signature, signed_bytes(version=VERSION, room_id=room_id, role=hello.role, nonce=nonce))
    except BadSignatureError:
        raise BadSignatureError(
            "the hello signature does not verify for the public key it carries; sign the challenge "
            "with the private key whose public half was enrolled"
        ) from None
