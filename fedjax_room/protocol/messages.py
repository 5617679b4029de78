"""Typed, versioned protocol messages: msgspec Structs <-> msgpack frames.

A frame is one msgpack map ``{"t": <type name>, "v": VERSION, <field>: <value>, ...}`` in one binary
websocket message; every message is a frozen, keyword-only :class:`msgspec.Struct` tagged with its type name,
and :func:`decode` is one ``msgspec.msgpack.Decoder`` over the union of them all. Before that decoder runs,
the frame's size is checked against its byte limit, its top-level map is split into undecoded values (in C,
nothing allocated), the version is checked (:class:`~fedjax_room.errors.VersionError`), then the type name,
and :func:`~fedjax_room.protocol.codec.scan` bounds the items, depth and keys of every field that holds a
nested map or list; the decoder then checks that exactly the declared fields are present, each field's type
and each string's pattern or length (the annotated types of :mod:`.fields`); :func:`.fields.check_message`
cleans free text and nested maps (:class:`~fedjax_room.errors.ProtocolError` for anything wrong). Nested
maps (model specs, configs, plans) are validated by whoever reads them. See ``docs/protocol.md`` for the flow.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Union

import msgspec

from fedjax_room.errors import FedRoomError, ProtocolError, VersionError
from fedjax_room.protocol.codec import MAX_DECODED_ITEMS, MAX_FRAME_BYTES, check_size, scan
from fedjax_room.protocol.fields import Hex, Id, OptId, OptWord, Text, Word, check_message, describe_pattern

__all__ = [
    "MESSAGE_TYPES",
    "STORED_VERSIONS",
    "VERSION",
    "AuditReply",
    "BudgetReply",
    "CancelRun",
    "Challenge",
    "Error",
    "EstimateAnswer",
    "EstimateOffer",
    "EstimateReply",
    "EstimateRun",
    "GetAudit",
    "GetTune",
    "GetBudget",
    "GetModel",
    "Hello",
    "ListRuns",
    "ListSites",
    "Message",
    "Metrics",
    "ModelReply",
    "Query",
    "QueryAnswer",
    "QueryAsk",
    "QueryRefuse",
    "QueryReply",
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
    "StartTune",
    "TuneReply",
    "TuneStarted",
    "Update",
    "WatchRun",
    "Welcome",
    "decode",
    "encode",
]

#: Protocol version; a peer with another version is refused with a ``version`` error. (2: msgspec messages,
#: optional fields always written, SecAgg bodies in the shared ``{"t", "v"}`` envelope with integer-keyed maps.)
VERSION = 2

#: A nested free-form map (spec, config, plan, schema, ...): validated by its reader, bounded by ``scan``.
Tree = dict[str, Any]
#: The records of an analyst reply (sites, runs, audit records).
Records = list[dict[str, Any]]
#: A key, nonce or signature.
SmallBytes = Annotated[bytes, msgspec.Meta(max_length=256)]


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="t"):
    """Base of every message; ``TYPE`` is its name on the wire (its msgspec tag), ``v`` the protocol version."""

    TYPE: ClassVar[str] = ""
    v: int = VERSION


# ---------------------------------------------------------------------------------- handshake


class Challenge(Message, frozen=True, kw_only=True, tag="challenge"):
    """coordinator -> client, first frame: sign ``nonce`` with your key."""

    nonce: SmallBytes
    room_id: Id
    version: int
    coordinator_key: SmallBytes = b""  # the room's raw Ed25519 public key (see handshake.make_challenge)
    proof: SmallBytes = b""  # its signature over the client's nonce and this challenge


class Hello(Message, frozen=True, kw_only=True, tag="hello"):
    """client -> coordinator: who I am, and my signature over the challenge (see :mod:`.handshake`)."""

    role: Word
    name: OptId
    public_key: SmallBytes
    nonce: SmallBytes
    signature: SmallBytes


class Welcome(Message, frozen=True, kw_only=True, tag="welcome"):
    """coordinator -> client: identity proven; ``name`` is the enrolled name."""

    name: Id
    role: Word
    room_id: Id


class Error(Message, frozen=True, kw_only=True, tag="error"):
    """Either way: a typed error (``code`` from :mod:`fedjax_room.errors`); ``fatal`` closes the connection."""

    code: Word
    message: Text
    party: OptId = ""
    reason: OptWord = ""
    req: int | None = None
    run_id: Id | None = None
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


class SiteStatus(Message, frozen=True, kw_only=True, tag="site_status"):
    """site -> coordinator after welcome: schema, coarse record count, policy summary, ledger summary."""

    schema: Tree
    record_count: Text
    policy: Tree
    ledger: Tree


class RunOffer(Message, frozen=True, kw_only=True, tag="run_offer"):
    """coordinator -> site: will you take part in this run?"""

    run_id: Id
    spec: Tree
    config: Tree


class RunAccept(Message, frozen=True, kw_only=True, tag="run_accept"):
    """site -> coordinator: yes, with my plan (noise multipliers, planned epsilon, weight)."""

    run_id: Id
    plan: Tree


class RunRefuse(Message, frozen=True, kw_only=True, tag="run_refuse"):
    """site -> coordinator: no (``round`` None: the whole run; else that round and the rest)."""

    run_id: Id
    round: int | None
    error: Tree


class RunWaiting(Message, frozen=True, kw_only=True, tag="run_waiting"):
    """site -> coordinator: the offer waits for the data owner's approval of ``spec_hash`` (then accept/refuse)."""

    run_id: Id
    spec_hash: Hex
    message: Text


class RoundStart(Message, frozen=True, kw_only=True, tag="round_start"):
    """coordinator -> site: ``phase`` "train" (send an Update) or "eval" (send Metrics) on ``params``."""

    run_id: Id
    round: int
    phase: Word
    params: bytes
    cohort: int
    timeout: float


class Update(Message, frozen=True, kw_only=True, tag="update"):
    """site -> coordinator: the DP model delta (``payload`` = packed tree) and what it cost."""

    run_id: Id
    round: int
    weight: int
    payload: bytes
    epsilon: float
    ledger_epsilon: float
    delta: float
    #: site-level (whole-site) epsilon of this run so far; None without distributed DP (secure runs only)
    site_epsilon: float | None = None


class Metrics(Message, frozen=True, kw_only=True, tag="metrics"):
    """site -> coordinator: Skellam-noised evaluation counts on held-out data, and what they cost. In a secure run
    the counts are 0: the noised vector travels masked in the eval SecAgg session, and only its sum is seen."""

    run_id: Id
    round: int
    correct: float
    count: float
    loss_sum: float
    epsilon: float
    ledger_epsilon: float
    delta: float
    #: site-level epsilon of this run so far, this evaluation included; None without distributed DP
    site_epsilon: float | None = None


class RunEnd(Message, frozen=True, kw_only=True, tag="run_end"):
    """coordinator -> site: the run is over."""

    run_id: Id
    status: Word
    message: Text


class SecAggSetup(Message, frozen=True, kw_only=True, tag="secagg_setup"):
    """coordinator -> site, before a secure ``round_start``: the round's SecAgg config, the site's id, and
    ``fraction`` (its FedAvg weight over the roster's, or 1.0 for an unweighted mean) to scale its update by;
    ``phase`` "eval": the session that sums the sites' noised evaluation vectors (``fraction`` 1.0)."""

    run_id: Id
    round: int
    config: Tree
    id: int
    fraction: float
    #: "train" (the masked update) or "eval" (the masked evaluation vector, ``protocol/evaluation.py``)
    phase: Word = "train"


class SecAgg(Message, frozen=True, kw_only=True, tag="secagg"):
    """both ways, during a secure train or eval phase: one SecAgg message (``fedjax_room.secagg`` ``to_dict()``)."""

    run_id: Id
    round: int
    body: Tree
    phase: Word = "train"


# ---------------------------------------------------------------------------------- analyst <-> coordinator


class ListSites(Message, frozen=True, kw_only=True, tag="list_sites"):
    req: int


class SitesReply(Message, frozen=True, kw_only=True, tag="sites_reply"):
    req: int
    sites: Records


class ListRuns(Message, frozen=True, kw_only=True, tag="list_runs"):
    req: int


class RunsReply(Message, frozen=True, kw_only=True, tag="runs_reply"):
    req: int
    runs: Records


class StartRun(Message, frozen=True, kw_only=True, tag="start_run"):
    req: int
    spec: Tree
    config: Tree


class RunCreated(Message, frozen=True, kw_only=True, tag="run_created"):
    req: int
    run_id: Id


class WatchRun(Message, frozen=True, kw_only=True, tag="watch_run"):
    """analyst -> coordinator: send me this run's snapshot now and its events from now on."""

    req: int
    run_id: Id


class RunSnapshot(Message, frozen=True, kw_only=True, tag="run_snapshot"):
    req: int
    run: Tree


class RunEvent(Message, frozen=True, kw_only=True, tag="run_event"):
    """coordinator -> watching analysts: ``kind`` "round" | "status" | "refusal"."""

    run_id: Id
    kind: Word
    data: Tree


class GetModel(Message, frozen=True, kw_only=True, tag="get_model"):
    req: int
    run_id: Id


class ModelReply(Message, frozen=True, kw_only=True, tag="model_reply"):
    req: int
    run_id: Id
    round: int
    params: bytes


class GetBudget(Message, frozen=True, kw_only=True, tag="get_budget"):
    req: int


class BudgetReply(Message, frozen=True, kw_only=True, tag="budget_reply"):
    req: int
    sites: Records


class GetAudit(Message, frozen=True, kw_only=True, tag="get_audit"):
    req: int
    last: int


class AuditReply(Message, frozen=True, kw_only=True, tag="audit_reply"):
    req: int
    records: Records


class CancelRun(Message, frozen=True, kw_only=True, tag="cancel_run"):
    """analyst -> coordinator: stop my run ``run_id`` (``message``: why, for the record); sites get ``run_end``."""

    req: int
    run_id: Id
    message: Text = ""


class StartTune(Message, frozen=True, kw_only=True, tag="start_tune"):
    """analyst -> coordinator: run a tuning session (``room.tune``; protocol/tuning.py): the coordinator draws the
    number of trials (mean ``trials``, ``shape``) and each trial's options from ``space`` (``{option: {"values":
    [...]}}`` or ``{"range": [low, high]}``) over ``config``, runs them hidden and publishes only the best by
    ``metric``."""

    req: int
    spec: Tree
    space: Tree
    trials: int
    shape: float = 1.0
    metric: Word = "accuracy"
    config: Tree


class TuneStarted(Message, frozen=True, kw_only=True, tag="tune_started"):
    req: int
    session: int


class GetTune(Message, frozen=True, kw_only=True, tag="get_tune"):
    """analyst -> coordinator: where my tuning session stands (running, or its best trial once published)."""

    req: int
    session: int


class TuneReply(Message, frozen=True, kw_only=True, tag="tune_reply"):
    """coordinator -> analyst: ``tune``: ``session``, ``status`` (running, finished, failed), ``trials`` (the mean),
    ``shape``, ``metric`` and, once finished, the best trial's ``run_id``, ``value`` and drawn ``config`` (or
    ``error``); nothing about the other trials or their number."""

    req: int
    tune: Tree


class RunCancelled(Message, frozen=True, kw_only=True, tag="run_cancelled"):
    """coordinator -> analyst: ``run_id`` is cancelled (``status`` is its final status)."""

    req: int
    run_id: Id
    status: Word


# ---------------------------------------------------------------------------------- estimates (nothing spent)


class EstimateRun(Message, frozen=True, kw_only=True, tag="estimate_run"):
    """analyst -> coordinator: what would each site plan, and would it accept, for this run now? (no run starts)"""

    req: int
    spec: Tree
    config: Tree


class EstimateOffer(Message, frozen=True, kw_only=True, tag="estimate_offer"):
    """coordinator -> site: plan this run and check it against your policy and ledger; spend nothing, store nothing."""

    est: int
    spec: Tree
    config: Tree


class EstimateAnswer(Message, frozen=True, kw_only=True, tag="estimate_answer"):
    """site -> coordinator: the site's estimate (``fedjax_room.site.estimate``: accept, planned epsilon, ledger
    now and after, cap, and for a refusal its reason, message and the option to change)."""

    est: int
    estimate: Tree


class EstimateReply(Message, frozen=True, kw_only=True, tag="estimate_reply"):
    """coordinator -> analyst: one estimate per site (connected sites answer; others are listed as offline)."""

    req: int
    sites: Records


# ---------------------------------------------------------------------------------- DP exploration queries

#: The released vector of a query answer (``fedjax_room.protocol.query_spec.MAX_ENTRIES`` bounds it).
Values = Annotated[list[float], msgspec.Meta(max_length=4096)]


class Query(Message, frozen=True, kw_only=True, tag="query"):
    """analyst -> coordinator: a DP exploration query (``query``: ``fedjax_room.protocol.query_spec.QuerySpec``);
    ``estimate``: only ask each site what it would do (``room.estimate_query``; nothing spent, no values)."""

    req: int
    query: Tree
    estimate: bool = False


class QueryReply(Message, frozen=True, kw_only=True, tag="query_reply"):
    """coordinator -> analyst: each site's noised vector (plain) or only their noised sum (secure), and refusals."""

    req: int
    result: Tree


class QueryAsk(Message, frozen=True, kw_only=True, tag="query_ask"):
    """coordinator -> site: answer query ``query_id`` (a secure one follows its ``secagg_setup``)."""

    query_id: Id
    query: Tree
    #: only run the checks made before any data is read and answer an estimate (nothing spent or stored)
    estimate: bool = False


class QueryAnswer(Message, frozen=True, kw_only=True, tag="query_answer"):
    """site -> coordinator: the noised integer vector (empty under secure aggregation: it travels masked) and
    what the release cost (committed to the site's ledger before this frame left)."""

    query_id: Id
    values: Values
    epsilon: float
    ledger_epsilon: float
    delta: float
    #: every query of this site composed (its ledger's ``@queries`` epsilon at its delta cap), for the budget view
    queries_epsilon: float | None = None
    #: the answer to an ``estimate`` ask (no values): accept, epsilon_planned, ledger_epsilon, ledger_after, ...
    estimate: Tree | None = None


class QueryRefuse(Message, frozen=True, kw_only=True, tag="query_refuse"):
    """site -> coordinator: this site does not answer ``query_id`` (``error``: the typed refusal; nothing spent)."""

    query_id: Id
    error: Tree


#: Every message class by its wire name.
MESSAGE_TYPES: dict[str, type[Message]] = {}
for _cls in Message.__subclasses__():
    _cls.TYPE = str(_cls.__struct_config__.tag)
    MESSAGE_TYPES[_cls.TYPE] = _cls

# ---------------------------------------------------------------------------------- encode / decode


#: The frame's top-level map, each value left undecoded (a zero-copy view; msgspec steps over it in C).
_TOP = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
#: The envelope's values: a scalar, or refused without anything decoded.
_SCALAR: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Union[int, float, str, None])  # noqa: UP007
_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Union[tuple(MESSAGE_TYPES.values())])  # noqa: UP007


def _enc_hook(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars (an epsilon, a count) travel as plain numbers
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    raise NotImplementedError(f"cannot send a {type(obj).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def encode(msg: Message) -> bytes:
    """The frame bytes for ``msg``."""
    if type(msg) not in _CLASSES:
        raise ProtocolError(f"{type(msg).__name__} is not a protocol message")
    try:
        return _ENCODER.encode(msg)
    except (TypeError, ValueError, OverflowError, NotImplementedError) as exc:
        raise ProtocolError(f"cannot encode {msg.TYPE}: {exc}") from None


#: Older versions whose frames of every type but ``secagg`` read the same (their optional fields were left out).
STORED_VERSIONS = frozenset({1})


def decode(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES, stored: bool = False) -> Message:
    """Parse and validate one frame; raise :class:`ProtocolError` / :class:`VersionError` saying why.

    ``stored``: the frame was written to disk by an older version of this package (a site's released
    ``update``); one of :data:`STORED_VERSIONS` is read too, as this version's message."""
    check_size(data, max_bytes)
    data = bytes(data)
    top = _split(data)
    version, name = _scalar(top.get("v")), _scalar(top.get("t"))
    old = stored and version in STORED_VERSIONS and name != "secagg" and not isinstance(version, bool)
    if (version != VERSION or isinstance(version, bool)) and not old:
        raise VersionError(
            f"peer speaks protocol version {version!r}, this room speaks {VERSION}; "
            "upgrade fedjax-room on both ends to the same version"
        )
    if not isinstance(name, str) or name not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {str(name)[:80]!r}")
    items = 1 + len(top)
    for field in _free_fields(MESSAGE_TYPES[name]):  # the maps and lists a reader validates: bounded here
        raw = top.get(field)
        if raw is not None:  # SecAgg bodies key their maps by client id
            key_ints = name == "secagg"
            items = scan(bytes(raw), max_items=MAX_DECODED_ITEMS, int_keys=key_ints, counted=items, depth=1)
    try:
        msg: Message = _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(f"{name}: {_explain(str(exc))}") from None
    if old:
        msg = msgspec.structs.replace(msg, v=VERSION)
    return check_message(msg, name)  # free text and nested maps cleaned, the analyst's record names checked


_CLASSES = frozenset(MESSAGE_TYPES.values())


def _split(data: bytes) -> dict[str, msgspec.Raw]:
    """The top-level map of a frame, its values undecoded; refused if it is not one map with string keys,
    each key once, and nothing after it."""
    try:
        top = _TOP.decode(data)
    except msgspec.ValidationError:
        raise ProtocolError("a frame must be a msgpack map (string keys) with a version 'v' and a type 't'") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"frame is not valid msgpack ({exc})") from None
    except RecursionError:
        raise ProtocolError("frame nests too deep") from None
    first = data[0]
    count = first & 0x0F if first < 0x90 else int.from_bytes(data[1 : 3 if first == 0xDE else 5], "big")
    if len(top) != count:
        raise ProtocolError("frame has a key twice in its top-level map")
    return top


def _scalar(raw: msgspec.Raw | None) -> Any:
    if raw is None:
        return None
    try:
        return _SCALAR.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "<not a scalar>"


_FREE: dict[type, tuple[str, ...]] = {}


def _free_fields(cls: type[Message]) -> tuple[str, ...]:
    """The fields of ``cls`` that hold nested maps or lists of anything (msgspec types everything else)."""
    if cls not in _FREE:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        free = []
        for f in info.fields:
            types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
            if any(isinstance(t, msgspec.inspect.DictType | msgspec.inspect.ListType) for t in types):
                free.append(f.encode_name)
        _FREE[cls] = tuple(free)
    return _FREE[cls]


def _explain(message: str) -> str:
    """msgspec's error in the words of the old checks: "missing field", "unexpected field", "field 'x' must"."""
    message = describe_pattern(message)
    if message.startswith("Object missing required field "):
        return "missing field " + message.removeprefix("Object missing required field ").replace("`", "'")
    if message.startswith("Object contains unknown field "):
        return "unexpected field " + message.removeprefix("Object contains unknown field ").replace("`", "'")
    head, sep, where = message.rpartition(" - at `$.")
    if sep:
        field = where.rstrip("`")
        return f"field {field!r} must be {head.removeprefix('Expected ').replace('`', '')}"
    return message
