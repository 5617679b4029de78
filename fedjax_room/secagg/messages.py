"""The messages of one secure-aggregation round, and their wire format.

Every message is a frozen :class:`msgspec.Struct` in the room protocol's envelope, a msgpack map
``{"t": "secagg/<name>", "v": WIRE_VERSION, "round": <32-byte config digest>, ...}``; id-keyed maps are
msgpack maps with integer keys. Every field is typed and bounded (ids in ``[1, 2^32)``, exact byte lengths
for keys, digests, signatures, shares and ciphertexts, at most :data:`MAX_CLIENTS` entries in a list or
map), so msgspec checks it all while it decodes, before anything unbounded is allocated, and raises
:class:`~fedjax_room.errors.ProtocolError` (:class:`~fedjax_room.errors.VersionError` for another ``v``).
``to_dict()`` / :func:`message_from_dict` give and check the plain-dict form the room carries inside its
``secagg`` frames (whose decoder also refuses a key twice in one map); :func:`encode` / :func:`decode` are
the msgpack bytes for a transport that carries bytes. No pickle.

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
from typing import Annotated, Any, ClassVar, Union

import msgspec

from fedjax_room.errors import FrameTooLargeError, ProtocolError, VersionError

__all__ = [
    "CIPHERTEXT_BYTES",
    "MAX_CLIENTS",
    "MAX_MESSAGE_BYTES",
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

#: Version of these messages (2: msgspec Structs in the room's ``{"t", "v"}`` envelope, integer-keyed maps).
WIRE_VERSION = 2
CIPHERTEXT_BYTES = 12 + 8 + 33 + 33 + 16
#: Most clients a list or an id-keyed map of one message may name.
MAX_CLIENTS = 1 << 16
#: Largest encoded message :func:`decode` reads by default (the room's frame limit: 64 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MAX_ID = 2**32

ClientId = Annotated[int, msgspec.Meta(gt=0, lt=_MAX_ID)]
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Key = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Share = Annotated[bytes, msgspec.Meta(min_length=33, max_length=33)]
Ciphertext = Annotated[bytes, msgspec.Meta(min_length=CIPHERTEXT_BYTES, max_length=CIPHERTEXT_BYTES)]
Ciphertexts = Annotated[dict[ClientId, Ciphertext], msgspec.Meta(max_length=MAX_CLIENTS)]
Signatures = Annotated[dict[ClientId, Signature], msgspec.Meta(max_length=MAX_CLIENTS)]
Shares = Annotated[dict[ClientId, Share], msgspec.Meta(max_length=MAX_CLIENTS)]


# ---------------------------------------------------------------- messages


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="t"):
    """The envelope every message shares with the room protocol's: type tag ``t`` and version ``v``."""

    v: int = WIRE_VERSION


class Message(_Envelope, frozen=True):
    """Base of every SecAgg message; ``round`` is the 32-byte :attr:`SecAggConfig.digest`. Fields are given in
    order (``AdvertiseKeys(digest, sender, ...)``) or by name; ``type`` is the name on the wire."""

    type: ClassVar[str] = ""
    round: Digest

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-able dict (bytes, ints, str, lists, integer-keyed maps); :func:`message_from_dict` inverts it."""
        out: dict[str, Any] = msgspec.to_builtins(self, builtin_types=(bytes,))
        return out


class AdvertiseKeys(Message, frozen=True, tag="secagg/advertise_keys"):
    """Stage 0, client -> server (and forwarded to its neighbours inside :class:`KeyDirectory`)."""

    sender: ClientId
    enc_key: Key
    mask_key: Key
    seed_commitment: Digest
    signature: Signature


class KeyDirectory(Message, frozen=True, tag="secagg/key_directory"):
    """Stage 0, server -> client: the signed adverts of the recipient's neighbours that advertised."""

    adverts: Annotated[tuple[AdvertiseKeys, ...], msgspec.Meta(max_length=MAX_CLIENTS)]


class ShareKeys(Message, frozen=True, tag="secagg/share_keys"):
    """Stage 1, client -> server: ``{recipient id: share ciphertext}``."""

    sender: ClientId
    ciphertexts: Ciphertexts


class ShareBundle(Message, frozen=True, tag="secagg/share_bundle"):
    """Stage 1, server -> client: ``{sender id: share ciphertext addressed to the recipient}``."""

    ciphertexts: Ciphertexts


class MaskedInput(Message, frozen=True, tag="secagg/masked_input"):
    """Stage 2, client -> server: the masked vector as little-endian ring elements, signed."""

    sender: ClientId
    data: bytes
    signature: Signature


class SurvivorList(Message, frozen=True, tag="secagg/survivor_list"):
    """Stage 2, server -> client: U3, the sorted ids whose masked input the server holds."""

    survivors: Annotated[tuple[ClientId, ...], msgspec.Meta(max_length=MAX_CLIENTS)]

    def __post_init__(self) -> None:
        if any(a >= b for a, b in zip(self.survivors, self.survivors[1:], strict=False)):
            raise ValueError("survivors must be sorted and distinct")


class ConsistencySignature(Message, frozen=True, tag="secagg/consistency_signature"):
    """Stage 3, client -> server: the client's signature over (round, U3 as it was told)."""

    sender: ClientId
    signature: Signature


class UnmaskRequest(Message, frozen=True, tag="secagg/unmask_request"):
    """Stage 3, server -> client: ``{signer id: signature over U3}`` for every client that signed."""

    signatures: Signatures


class UnmaskShares(Message, frozen=True, tag="secagg/unmask_shares"):
    """Stage 3, client -> server: 33-byte seed shares of survivors and mask-key shares of dropouts."""

    sender: ClientId
    seed_shares: Shares
    key_shares: Shares


class RoundAborted(Message, frozen=True, tag="secagg/round_aborted"):
    """Server -> client: the round stopped (too few clients, a bad message); nothing is released."""

    reason: Annotated[str, msgspec.Meta(max_length=4096)]


@dataclass(frozen=True)
class Envelope:
    """A server message and the client id it goes to."""

    recipient: int
    message: Message


_TYPES: dict[str, type[Message]] = {}
for _cls in (
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
):
    _cls.type = str(_cls.__struct_config__.tag)
    _TYPES[_cls.type] = _cls
_UNION: Any = Union[tuple(_TYPES.values())]  # noqa: UP007
_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_UNION)
_ENCODER = msgspec.msgpack.Encoder()


class _Head(msgspec.Struct):
    v: Any = None
    t: Any = None


_HEAD = msgspec.msgpack.Decoder(_Head)


def _check_head(version: Any, name: Any) -> None:
    if version != WIRE_VERSION or isinstance(version, bool):
        raise VersionError(f"secagg wire version {version!r} is not {WIRE_VERSION}; upgrade the older party")
    if not isinstance(name, str) or name not in _TYPES:
        raise ProtocolError(f"unknown secagg message type {str(name)[:80]!r}")


def _refuse(name: str, exc: Exception) -> ProtocolError:
    return ProtocolError(f"malformed {name} message: {exc}")


def message_from_dict(d: Mapping[str, Any]) -> Message:
    """Rebuild and check a message from :meth:`Message.to_dict`; :class:`ProtocolError` if malformed."""
    if not isinstance(d, Mapping):
        raise ProtocolError("a secagg message must be a map")
    _check_head(d.get("v"), d.get("t"))
    try:
        return msgspec.convert(d, _UNION)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _refuse(d["t"], exc) from None


def encode(message: Message) -> bytes:
    """The msgpack bytes of ``message``."""
    return _ENCODER.encode(message)


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse bytes from :func:`encode` (at most ``max_bytes``); :class:`ProtocolError` if they are not a valid
    message. Every field is bounded by its type, so nothing unbounded is allocated on the way."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"a secagg frame must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise FrameTooLargeError(f"secagg frame of {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        head = _HEAD.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"a secagg frame must be a msgpack map: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"secagg frame is not valid msgpack: {exc}") from None
    _check_head(head.v, head.t)
    try:
        return _DECODER.decode(data)  # type: ignore[no-any-return]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _refuse(head.t, exc) from None
