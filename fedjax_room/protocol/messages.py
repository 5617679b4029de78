"""Typed, versioned protocol messages: frozen dataclasses <-> msgpack frames.

A frame is one msgpack map ``{"v": VERSION, "t": <type name>, <field>: <value>, ...}`` in one binary
websocket message. :func:`decode` checks the version (:class:`~fedjax_room.errors.VersionError`),
the type name, that exactly the declared fields are present, and each field's type
(:class:`~fedjax_room.errors.ProtocolError` otherwise). Nested maps (model specs, configs, plans)
are validated by whoever reads them. See ``docs/protocol.md`` for the flow.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from fedjax_room.errors import FedRoomError, ProtocolError, VersionError
from fedjax_room.protocol.codec import MAX_FRAME_BYTES, pack, unpack
from fedjax_room.protocol.fields import validate_fields

__all__ = [
    "MESSAGE_TYPES",
    "VERSION",
    "AuditReply",
    "BudgetReply",
    "CancelRun",
    "Challenge",
    "Error",
    "GetAudit",
    "GetBudget",
    "GetModel",
    "Hello",
    "ListRuns",
    "ListSites",
    "Message",
    "Metrics",
    "ModelReply",
    "RoundStart",
    "RunAccept",
    "RunCancelled",
    "RunCreated",
    "RunEnd",
    "RunEvent",
    "RunOffer",
    "RunRefuse",
    "RunSnapshot",
    "RunWaiting",
    "RunsReply",
    "SecAgg",
    "SecAggSetup",
    "SiteStatus",
    "SitesReply",
    "StartRun",
    "Update",
    "WatchRun",
    "Welcome",
    "decode",
    "encode",
]

#: Protocol version; a peer with another version is refused with a ``version`` error.
VERSION = 1


class Message:
    """Base of every message; ``TYPE`` is its name on the wire."""

    TYPE: ClassVar[str] = ""


_REGISTRY: dict[str, type[Message]] = {}


def _message(cls: type) -> type:
    cls = dataclasses.dataclass(frozen=True)(cls)
    _REGISTRY[cls.TYPE] = cls
    return cls


# ---------------------------------------------------------------------------------- handshake


@_message
class Challenge(Message):
    """coordinator -> client, first frame: sign ``nonce`` with your key."""

    TYPE: ClassVar[str] = "challenge"
    nonce: bytes
    room_id: str
    version: int
    coordinator_key: bytes = b""  # the room's raw Ed25519 public key (see handshake.make_challenge)
    proof: bytes = b""  # its signature over the client's nonce and this challenge


@_message
class Hello(Message):
    """client -> coordinator: who I am, and my signature over the challenge (see :mod:`.handshake`)."""

    TYPE: ClassVar[str] = "hello"
    role: str
    name: str
    public_key: bytes
    nonce: bytes
    signature: bytes


@_message
class Welcome(Message):
    """coordinator -> client: identity proven; ``name`` is the enrolled name."""

    TYPE: ClassVar[str] = "welcome"
    name: str
    role: str
    room_id: str


@_message
class Error(Message):
    """Either way: a typed error (``code`` from :mod:`fedjax_room.errors`); ``fatal`` closes the connection."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    party: str = ""
    reason: str = ""
    req: int | None = None
    run_id: str | None = None
    fatal: bool = False

    @classmethod
    def of(cls, exc: FedRoomError, *, req: int | None = None, run_id: str | None = None, fatal: bool = False) -> Error:
        """The frame for a :class:`FedRoomError`."""
        d = exc.to_dict()
        return cls(
            code=d["code"],
            message=d["message"],
            party=d.get("party", ""),
            reason=d.get("reason", ""),
            req=req,
            run_id=run_id,
            fatal=fatal,
        )

    def error_dict(self) -> dict[str, str]:
        """The ``to_dict`` form, for :func:`fedjax_room.errors.error_from_dict`."""
        return {"code": self.code, "message": self.message, "party": self.party, "reason": self.reason}


# ---------------------------------------------------------------------------------- site <-> coordinator


@_message
class SiteStatus(Message):
    """site -> coordinator after welcome: schema, coarse record count, policy summary, ledger summary."""

    TYPE: ClassVar[str] = "site_status"
    schema: dict
    record_count: str
    policy: dict
    ledger: dict


@_message
class RunOffer(Message):
    """coordinator -> site: will you take part in this run?"""

    TYPE: ClassVar[str] = "run_offer"
    run_id: str
    spec: dict
    config: dict


@_message
class RunAccept(Message):
    """site -> coordinator: yes, with my plan (noise multipliers, planned epsilon, weight)."""

    TYPE: ClassVar[str] = "run_accept"
    run_id: str
    plan: dict


@_message
class RunRefuse(Message):
    """site -> coordinator: no (``round`` None: the whole run; else that round and the rest)."""

    TYPE: ClassVar[str] = "run_refuse"
    run_id: str
    round: int | None
    error: dict


@_message
class RunWaiting(Message):
    """site -> coordinator: the offer waits for the data owner's approval of ``spec_hash`` (then accept/refuse)."""

    TYPE: ClassVar[str] = "run_waiting"
    run_id: str
    spec_hash: str
    message: str


@_message
class RoundStart(Message):
    """coordinator -> site: ``phase`` "train" (send an Update) or "eval" (send Metrics) on ``params``."""

    TYPE: ClassVar[str] = "round_start"
    run_id: str
    round: int
    phase: str
    params: bytes
    cohort: int
    timeout: float


@_message
class Update(Message):
    """site -> coordinator: the DP model delta (``payload`` = packed tree) and what it cost."""

    TYPE: ClassVar[str] = "update"
    run_id: str
    round: int
    weight: int
    payload: bytes
    epsilon: float
    ledger_epsilon: float
    delta: float
    #: site-level (whole-site) epsilon of this run so far; None without distributed DP (secure runs only)
    site_epsilon: float | None = None


@_message
class Metrics(Message):
    """site -> coordinator: Gaussian-noised evaluation counts on held-out data, and what they cost."""

    TYPE: ClassVar[str] = "metrics"
    run_id: str
    round: int
    correct: float
    count: float
    loss_sum: float
    epsilon: float
    ledger_epsilon: float
    delta: float
    #: site-level epsilon of this run so far, this evaluation included; None without distributed DP
    site_epsilon: float | None = None


@_message
class RunEnd(Message):
    """coordinator -> site: the run is over."""

    TYPE: ClassVar[str] = "run_end"
    run_id: str
    status: str
    message: str


@_message
class SecAggSetup(Message):
    """coordinator -> site, before a secure train ``round_start``: the round's SecAgg config, the site's id, and
    ``fraction`` (its FedAvg weight over the roster's, or 1.0 for an unweighted mean) to scale its update by."""

    TYPE: ClassVar[str] = "secagg_setup"
    run_id: str
    round: int
    config: dict
    id: int
    fraction: float


@_message
class SecAgg(Message):
    """both ways, during a secure train phase: one SecAgg message (``fedjax_room.secagg`` ``to_dict()``)."""

    TYPE: ClassVar[str] = "secagg"
    run_id: str
    round: int
    body: dict


# ---------------------------------------------------------------------------------- analyst <-> coordinator


@_message
class ListSites(Message):
    TYPE: ClassVar[str] = "list_sites"
    req: int


@_message
class SitesReply(Message):
    TYPE: ClassVar[str] = "sites_reply"
    req: int
    sites: list


@_message
class ListRuns(Message):
    TYPE: ClassVar[str] = "list_runs"
    req: int


@_message
class RunsReply(Message):
    TYPE: ClassVar[str] = "runs_reply"
    req: int
    runs: list


@_message
class StartRun(Message):
    TYPE: ClassVar[str] = "start_run"
    req: int
    spec: dict
    config: dict


@_message
class RunCreated(Message):
    TYPE: ClassVar[str] = "run_created"
    req: int
    run_id: str


@_message
class WatchRun(Message):
    """analyst -> coordinator: send me this run's snapshot now and its events from now on."""

    TYPE: ClassVar[str] = "watch_run"
    req: int
    run_id: str


@_message
class RunSnapshot(Message):
    TYPE: ClassVar[str] = "run_snapshot"
    req: int
    run: dict


@_message
class RunEvent(Message):
    """coordinator -> watching analysts: ``kind`` "round" | "status" | "refusal"."""

    TYPE: ClassVar[str] = "run_event"
    run_id: str
    kind: str
    data: dict


@_message
class GetModel(Message):
    TYPE: ClassVar[str] = "get_model"
    req: int
    run_id: str


@_message
class ModelReply(Message):
    TYPE: ClassVar[str] = "model_reply"
    req: int
    run_id: str
    round: int
    params: bytes


@_message
class GetBudget(Message):
    TYPE: ClassVar[str] = "get_budget"
    req: int


@_message
class BudgetReply(Message):
    TYPE: ClassVar[str] = "budget_reply"
    req: int
    sites: list


@_message
class GetAudit(Message):
    TYPE: ClassVar[str] = "get_audit"
    req: int
    last: int


@_message
class AuditReply(Message):
    TYPE: ClassVar[str] = "audit_reply"
    req: int
    records: list


@_message
class CancelRun(Message):
    """analyst -> coordinator: stop my run ``run_id`` (``message``: why, for the record); sites get ``run_end``."""

    TYPE: ClassVar[str] = "cancel_run"
    req: int
    run_id: str
    message: str = ""


@_message
class RunCancelled(Message):
    """coordinator -> analyst: ``run_id`` is cancelled (``status`` is its final status)."""

    TYPE: ClassVar[str] = "run_cancelled"
    req: int
    run_id: str
    status: str


#: Every message class by its wire name.
MESSAGE_TYPES: dict[str, type[Message]] = dict(_REGISTRY)

# ---------------------------------------------------------------------------------- encode / decode

_FIELD_TYPES: dict[type, dict[str, tuple[tuple[type, ...], bool]]] = {}


def _field_types(cls: type[Message]) -> dict[str, tuple[tuple[type, ...], bool]]:
    """field -> (accepted python types, optional) from the dataclass annotations."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        out: dict[str, tuple[tuple[type, ...], bool]] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            optional = type(None) in args
            accepted = tuple(a for a in args if a is not type(None))
            out[f.name] = (accepted, optional)
        _FIELD_TYPES[cls] = out
    return _FIELD_TYPES[cls]


def _check(value: Any, accepted: tuple[type, ...]) -> Any:
    for t in accepted:
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is bool and isinstance(value, bool):
            return value
        if t in (str, bytes, dict, list) and isinstance(value, t):
            return value
    raise TypeError


def encode(msg: Message) -> bytes:
    """The frame bytes for ``msg``."""
    if type(msg) not in MESSAGE_TYPES.values():
        raise ProtocolError(f"{type(msg).__name__} is not a protocol message")
    body: dict[str, Any] = {"v": VERSION, "t": msg.TYPE}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if value is None and f.default is None:  # an optional field left out (older frames stay the same)
            continue
        body[f.name] = value
    return pack(body)


def decode(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Parse and validate one frame; raise :class:`ProtocolError` / :class:`VersionError` saying why."""
    body = unpack(data, max_bytes=max_bytes)
    if not isinstance(body, dict):
        raise ProtocolError(f"a frame must be a msgpack map, got {type(body).__name__}")
    version = body.get("v")
    if version != VERSION:
        raise VersionError(
            f"peer speaks protocol version {version!r}, this room speaks {VERSION}; "
            "upgrade fedjax-room on both ends to the same version"
        )
    name = body.get("t")
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {name!r}")
    types_ = _field_types(cls)
    given = set(body) - {"v", "t"}
    extra = given - set(types_)
    if extra:
        raise ProtocolError(f"{name}: unexpected fields {sorted(extra)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        accepted, optional = types_[f.name]
        if f.name not in body:
            if f.default is not dataclasses.MISSING:
                continue
            raise ProtocolError(f"{name}: missing field {f.name!r}")
        value = body[f.name]
        if value is None and optional:
            kwargs[f.name] = None
            continue
        try:
            kwargs[f.name] = _check(value, accepted)
        except TypeError:
            want = " or ".join(t.__name__ for t in accepted)
            raise ProtocolError(f"{name}: field {f.name!r} must be {want}, got {type(value).__name__}") from None
    return cls(**validate_fields(name, kwargs))  # ids, words and text checked (protocol/fields.py)
