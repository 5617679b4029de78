"""The messages of one secure-aggregation round, and their wire format.

Every message is a frozen dataclass. ``to_dict()`` gives a msgpack-able dict of ``bytes``, ``int``,
``str`` and lists (``{"type": ..., "v": 1, "round": <32-byte config digest>, ...}``; id-keyed maps are
lists of ``[id, bytes]`` pairs); :func:`message_from_dict` checks every field and raises
:class:`~fedjax_room.errors.ProtocolError` on anything malformed. :func:`encode` / :func:`decode` wrap
that in msgpack for a transport that carries bytes. No pickle.

======  ======================  ==============  ====================================================
stage   message                 direction       content
======  ======================  ==============  ====================================================
0       AdvertiseKeys           client->server  two X25519 public keys (``enc_key`` for share
                                                encryption, ``mask_key`` for pairwise masks), a hash
                                                commitment to the self-mask seed, Ed25519 signature
0       KeyDirectory            server->client  the signed adverts of the client's live neighbours
1       ShareKeys               client->server  for each live neighbour: ChaCha20Poly1305 ciphertext
                                                of (seed share, mask-key share) for that neighbour
1       ShareBundle             server->client  the ciphertexts addressed to this client, by sender
2       MaskedInput             client->server  the masked ring vector (little-endian), signed
2       SurvivorList            server->client  U3: the clients whose masked input arrived
3       ConsistencySignature    client->server  Ed25519 signature over (round, U3)
3       UnmaskRequest           server->client  the signatures of every client that signed U3
3       UnmaskShares            client->server  seed shares of survivors, mask-key shares of dropouts
any     RoundAborted            server->client  why the round stopped; nothing is released
======  ======================  ==============  ====================================================

Sizes: ids are < 2^32; keys, digests and commitments 32 bytes; signatures 64 bytes; a share
ciphertext is 12 (nonce) + 74 (sender, receiver, two 33-byte shares) + 16 (tag) = 102 bytes; a
Shamir share 33 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from fedjax_room.errors import ProtocolError, VersionError

__all__ = [
    "CIPHERTEXT_BYTES",
    "WIRE_VERSION",
    "AdvertiseKeys",
    "ConsistencySignature",
    "Envelope",
    "KeyDirectory",
    "MaskedInput",
    "Message",
    "RoundAborted",
    "ShareBundle",
    "ShareKeys",
    "SurvivorList",
    "UnmaskRequest",
    "UnmaskShares",
    "decode",
    "encode",
    "message_from_dict",
]

WIRE_VERSION = 1
CIPHERTEXT_BYTES = 12 + 8 + 33 + 33 + 16
_MAX_ID = 2**32


# ---------------------------------------------------------------- field checks


def _get(d: Mapping[str, Any], key: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise ProtocolError(f"secagg message {d.get('type')!r} lacks field {key!r}") from None


def _id(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < _MAX_ID:
        raise ProtocolError(f"{what} must be a client id in [1, 2^32), got {value!r}")
    return value


def _bytes(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise ProtocolError(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ProtocolError(f"{what} must be {length} bytes, got {len(value)}")
    return bytes(value)


def _id_map(value: Any, what: str, length: int | None = None) -> dict[int, bytes]:
    if not isinstance(value, list | tuple):
        raise ProtocolError(f"{what} must be a list of [id, bytes] pairs")
    out: dict[int, bytes] = {}
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ProtocolError(f"{what} must be a list of [id, bytes] pairs")
        cid = _id(pair[0], f"{what} id")
        if cid in out:
            raise ProtocolError(f"{what} names client {cid} twice")
        out[cid] = _bytes(pair[1], f"{what}[{cid}]", length)
    return out


def _pairs(mapping: Mapping[int, bytes]) -> list[list[Any]]:
    return [[cid, mapping[cid]] for cid in sorted(mapping)]


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of every SecAgg message; ``round`` is the 32-byte :attr:`SecAggConfig.digest`."""

    type: ClassVar[str] = ""
    round: bytes

    def _fields(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-able dict; :func:`message_from_dict` inverts it."""
        return {"type": self.type, "v": WIRE_VERSION, "round": self.round, **self._fields()}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Stage 0, client -> server (and forwarded to its neighbours inside :class:`KeyDirectory`)."""

    type: ClassVar[str] = "secagg/advertise_keys"
    sender: int
    enc_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "enc_key": self.enc_key,
            "mask_key": self.mask_key,
            "seed_commitment": self.seed_commitment,
            "signature": self.signature,
        }

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> AdvertiseKeys:
        return cls(
            round_,
            _id(_get(d, "sender"), "sender"),
            _bytes(_get(d, "enc_key"), "enc_key", 32),
            _bytes(_get(d, "mask_key"), "mask_key", 32),
            _bytes(_get(d, "seed_commitment"), "seed_commitment", 32),
            _bytes(_get(d, "signature"), "signature", 64),
        )


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Stage 0, server -> client: the signed adverts of the recipient's neighbours that advertised."""

    type: ClassVar[str] = "secagg/key_directory"
    adverts: tuple[AdvertiseKeys, ...]

    def _fields(self) -> dict[str, Any]:
        return {"adverts": [a.to_dict() for a in self.adverts]}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> KeyDirectory:
        raw = _get(d, "adverts")
        if not isinstance(raw, list | tuple):
            raise ProtocolError("adverts must be a list")
        adverts = tuple(message_from_dict(a) for a in raw)
        if not all(isinstance(a, AdvertiseKeys) for a in adverts):
            raise ProtocolError("a key directory may only hold AdvertiseKeys messages")
        return cls(round_, adverts)


@dataclass(frozen=True)
class ShareKeys(Message):
    """Stage 1, client -> server: ``{recipient id: share ciphertext}``."""

    type: ClassVar[str] = "secagg/share_keys"
    sender: int
    ciphertexts: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "ciphertexts": _pairs(self.ciphertexts)}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> ShareKeys:
        return cls(
            round_,
            _id(_get(d, "sender"), "sender"),
            _id_map(_get(d, "ciphertexts"), "ciphertexts", CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True)
class ShareBundle(Message):
    """Stage 1, server -> client: ``{sender id: share ciphertext addressed to the recipient}``."""

    type: ClassVar[str] = "secagg/share_bundle"
    ciphertexts: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"ciphertexts": _pairs(self.ciphertexts)}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> ShareBundle:
        return cls(round_, _id_map(_get(d, "ciphertexts"), "ciphertexts", CIPHERTEXT_BYTES))


@dataclass(frozen=True)
class MaskedInput(Message):
    """Stage 2, client -> server: the masked vector as little-endian ring elements, signed."""

    type: ClassVar[str] = "secagg/masked_input"
    sender: int
    data: bytes
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "data": self.data, "signature": self.signature}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> MaskedInput:
        return cls(
            round_,
            _id(_get(d, "sender"), "sender"),
            _bytes(_get(d, "data"), "data"),
            _bytes(_get(d, "signature"), "signature", 64),
        )


@dataclass(frozen=True)
class SurvivorList(Message):
    """Stage 2, server -> client: U3, the sorted ids whose masked input the server holds."""

    type: ClassVar[str] = "secagg/survivor_list"
    survivors: tuple[int, ...]

    def _fields(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors)}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> SurvivorList:
        raw = _get(d, "survivors")
        if not isinstance(raw, list | tuple):
            raise ProtocolError("survivors must be a list of ids")
        ids = tuple(_id(x, "survivor") for x in raw)
        if list(ids) != sorted(set(ids)):
            raise ProtocolError("survivors must be sorted and distinct")
        return cls(round_, ids)


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Stage 3, client -> server: the client's signature over (round, U3 as it was told)."""

    type: ClassVar[str] = "secagg/consistency_signature"
    sender: int
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "signature": self.signature}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> ConsistencySignature:
        return cls(round_, _id(_get(d, "sender"), "sender"), _bytes(_get(d, "signature"), "signature", 64))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Stage 3, server -> client: ``{signer id: signature over U3}`` for every client that signed."""

    type: ClassVar[str] = "secagg/unmask_request"
    signatures: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"signatures": _pairs(self.signatures)}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> UnmaskRequest:
        return cls(round_, _id_map(_get(d, "signatures"), "signatures", 64))


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Stage 3, client -> server: 33-byte seed shares of survivors and mask-key shares of dropouts."""

    type: ClassVar[str] = "secagg/unmask_shares"
    sender: int
    seed_shares: Mapping[int, bytes]
    key_shares: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "seed_shares": _pairs(self.seed_shares),
            "key_shares": _pairs(self.key_shares),
        }

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> UnmaskShares:
        return cls(
            round_,
            _id(_get(d, "sender"), "sender"),
            _id_map(_get(d, "seed_shares"), "seed_shares", 33),
            _id_map(_get(d, "key_shares"), "key_shares", 33),
        )


@dataclass(frozen=True)
class RoundAborted(Message):
    """Server -> client: the round stopped (too few clients, a bad message); nothing is released."""

    type: ClassVar[str] = "secagg/round_aborted"
    reason: str

    def _fields(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def _parse(cls, d: Mapping[str, Any], round_: bytes) -> RoundAborted:
        reason = _get(d, "reason")
        if not isinstance(reason, str):
            raise ProtocolError("reason must be a string")
        return cls(round_, reason)


@dataclass(frozen=True)
class Envelope:
    """A server message and the client id it goes to."""

    recipient: int
    message: Message


_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (
        AdvertiseKeys,
        KeyDirectory,
        ShareKeys,
        ShareBundle,
        MaskedInput,
        SurvivorList,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskShares,
        RoundAborted,
    )
}


def message_from_dict(d: Mapping[str, Any]) -> Message:
    """Rebuild and check a message from :meth:`Message.to_dict`; :class:`ProtocolError` if malformed."""
    if not isinstance(d, Mapping):
        raise ProtocolError("a secagg message must be a map")
    cls = _TYPES.get(d.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown secagg message type {d.get('type')!r}")
    if d.get("v") != WIRE_VERSION:
        raise VersionError(f"secagg wire version {d.get('v')!r} is not {WIRE_VERSION}; upgrade the older party")
    return cls._parse(d, _bytes(_get(d, "round"), "round", 32))


def encode(message: Message) -> bytes:
    """msgpack bytes of ``message.to_dict()``."""
    return msgpack.packb(message.to_dict(), use_bin_type=True)


def decode(data: bytes) -> Message:
    """Parse bytes from :func:`encode`; :class:`ProtocolError` if they are not a valid message."""
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"secagg frame is not valid msgpack: {exc}") from None
    return message_from_dict(d)
