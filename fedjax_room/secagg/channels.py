"""What each party signs, and how Shamir shares travel sealed through the server.

Signatures (Ed25519, the parties' enrolled identity keys) are over domain-separated msgpack lists that
start with the protocol name and a label, and always include the round digest:

* advert:      ``[PROTOCOL, "advertise", digest, sender, enc_key, mask_key, seed_commitment]``
* input:       ``[PROTOCOL, "masked-input", digest, sender, sha256(data)]``
* consistency: ``[PROTOCOL, "survivors", digest, [sorted U3]]``

Share sealing: the sender ``u`` and recipient ``v`` agree an X25519 secret from ``u``'s ``enc`` private key
and ``v``'s advertised ``enc_key``; HKDF-SHA256 (salt: digest; info: label, ``u``, ``v`` in that order)
gives a ChaCha20Poly1305 key per *direction*, so ``u -> v`` and ``v -> u`` never share a key. The
ciphertext is ``nonce (12 random bytes) || AEAD(plaintext, aad)``; the plaintext is ``u || v`` (uint32 big
endian) followed by the two 33-byte shares, and the AAD is ``PROTOCOL || digest || u || v``. Opening
checks the tag *and* the ids inside, so a ciphertext moved to another pair, round or direction fails
with :class:`~fedjax_room.errors.CryptoError`.

The self-mask seed is committed to as ``sha256(PROTOCOL || "seed" || digest || id || seed)`` inside the
signed advert, so the server can check each seed it reconstructs (a client sending bad shares is caught).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedjax_room.errors import CryptoError
from fedjax_room.identity import public_key_from_bytes, verify
from fedjax_room.secagg.config import PROTOCOL
from fedjax_room.secagg.masking import hkdf, shared_secret
from fedjax_room.secagg.shamir import SHARE_BYTES

__all__ = [
    "advert_transcript",
    "enc_shared_secret",
    "input_transcript",
    "open_shares",
    "seal_shares",
    "seed_commitment",
    "sign",
    "survivors_transcript",
    "verify_signature",
]

_PROTO = PROTOCOL.encode()
_NONCE = 12
_PLAIN = 8 + 2 * SHARE_BYTES


def _pack(*items: object) -> bytes:
    packed: bytes = msgpack.packb([PROTOCOL, *items], use_bin_type=True)
    return packed


def advert_transcript(digest: bytes, sender: int, enc_key: bytes, mask_key: bytes, commitment: bytes) -> bytes:
    return _pack("advertise", digest, sender, enc_key, mask_key, commitment)


def input_transcript(digest: bytes, sender: int, data: bytes) -> bytes:
    return _pack("masked-input", digest, sender, hashlib.sha256(data).digest())


def survivors_transcript(digest: bytes, survivors: Sequence[int]) -> bytes:
    return _pack("survivors", digest, sorted(survivors))


def seed_commitment(digest: bytes, cid: int, seed: bytes) -> bytes:
    return hashlib.sha256(_PROTO + b"seed" + digest + struct.pack(">I", cid) + seed).digest()


def enc_shared_secret(private: X25519PrivateKey, peer_enc_key: bytes) -> bytes:
    """The X25519 secret behind the share-sealing keys between two clients."""
    return shared_secret(private, peer_enc_key)


def sign(key: Ed25519PrivateKey, transcript: bytes) -> bytes:
    return key.sign(transcript)


def verify_signature(public_key: bytes, signature: bytes, transcript: bytes) -> None:
    """Raise :class:`~fedjax_room.errors.BadSignatureError` unless the signature verifies."""
    verify(public_key_from_bytes(public_key), signature, transcript)


def _aead(shared: bytes, digest: bytes, sender: int, receiver: int) -> tuple[ChaCha20Poly1305, bytes]:
    ids = struct.pack(">II", sender, receiver)
    key = hkdf(shared, salt=digest, info=_PROTO + b"/share-enc" + ids)
    return ChaCha20Poly1305(key), _PROTO + digest + ids


def seal_shares(
    shared: bytes,
    digest: bytes,
    sender: int,
    receiver: int,
    seed_share: bytes,
    key_share: bytes,
) -> bytes:
    """Encrypt ``sender``'s shares for ``receiver``.

    ``shared`` is the X25519 secret between the sender's and receiver's ``enc`` keys
    (:func:`enc_shared_secret`), the same on both sides.
    """
    if len(seed_share) != SHARE_BYTES or len(key_share) != SHARE_BYTES:
        raise CryptoError("shares must be 33 bytes")
    aead, aad = _aead(shared, digest, sender, receiver)
    nonce = os.urandom(_NONCE)
    plaintext = struct.pack(">II", sender, receiver) + seed_share + key_share
    return nonce + aead.encrypt(nonce, plaintext, aad)


def open_shares(shared: bytes, digest: bytes, sender: int, receiver: int, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Decrypt and check the shares ``sender`` sealed for ``receiver`` (called by the receiver).

    Returns ``(seed_share, key_share)``; :class:`CryptoError` if the ciphertext was tampered with, was
    made for another pair, direction or round, or holds the wrong ids.
    """
    aead, aad = _aead(shared, digest, sender, receiver)
    try:
        plaintext = aead.decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], aad)
    except (InvalidTag, ValueError):
        raise CryptoError(
            f"the share ciphertext from client {sender} to {receiver} does not authenticate: it was altered "
            "or made for another round; the round must be aborted"
        ) from None
    if len(plaintext) != _PLAIN or plaintext[:8] != struct.pack(">II", sender, receiver):
        raise CryptoError(f"the share ciphertext from client {sender} names the wrong sender or recipient")
    return plaintext[8 : 8 + SHARE_BYTES], plaintext[8 + SHARE_BYTES :]
