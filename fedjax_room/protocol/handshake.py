"""Challenge-response authentication of a connection (pure functions, no I/O).

The coordinator opens every connection with a :class:`~fedjax_room.protocol.messages.Challenge`
carrying a fresh 32-byte nonce. The client answers :class:`~fedjax_room.protocol.messages.Hello`
with its role, name, raw Ed25519 public key, the nonce, and a signature over
:func:`signed_bytes` — a domain-separated encoding of (protocol version, room id, role, nonce), so a
signature can never be reused for another room, role, version or connection, nor mistaken for an
audit-log signature made with the same key.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import BadSignatureError, ProtocolError, ReplayError
from fedjax_room.identity import public_key_bytes, public_key_from_bytes, sign, verify
from fedjax_room.protocol.codec import pack
from fedjax_room.protocol.messages import VERSION, Challenge, Hello

__all__ = ["DOMAIN", "NONCE_BYTES", "ROLES", "make_hello", "signed_bytes", "verify_hello"]

#: Prefix of the bytes a handshake signature covers.
DOMAIN = b"fedjax-room handshake v1\n"
#: Size of a challenge nonce.
NONCE_BYTES = 32
#: Roles an identity can be enrolled with.
ROLES = ("site", "analyst")


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
