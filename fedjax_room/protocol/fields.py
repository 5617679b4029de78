"""What a string from the room may look like: strict patterns for names and ids, clean bounded free text.

Every frame :func:`fedjax_room.protocol.messages.decode` accepts has passed these rules, so whatever a
coordinator, a site or an analyst sends can be shown or put into generated code without surprises. The
message classes declare their string fields with the annotated types below, which msgspec checks while it
decodes (``Meta(pattern=..., max_length=...)``); :func:`check_message` does what a pattern cannot, after:

- **ids and names** (run ids, site and party names, room ids): :data:`Id`, i.e. :data:`ID_PATTERN`,
  1-64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit; no spaces, quotes,
  newlines or markup (:data:`OptId`: the same or empty);
- **words** (roles, error codes, reasons, phases, statuses, event kinds): :data:`Word`,
  ``[a-z][a-z0-9_]{0,63}`` (:data:`OptWord`: or empty); **hex digests**: :data:`Hex`;
- **free text** (error messages, refusal messages): :data:`Text`, at most :data:`MAX_TEXT` characters;
  :func:`check_message` removes control characters other than newline and tab;
- **nested maps and lists** (schemas with feature and class names, plans, policies, run summaries): every
  key is a string, every string in them is cleaned like free text and bounded by :data:`MAX_NESTED_TEXT`;
  in the analyst's replies the ``id`` / ``run_id`` / ``site`` / ``name`` of each record and the site lists
  must be ids. (Their size and depth are bounded before decoding, by :func:`~fedjax_room.protocol.codec.scan`.)

A frame that breaks a rule is refused with :class:`~fedjax_room.errors.ProtocolError` naming the field.
Generated code (the Jupyter dashboard notebook) additionally writes room strings only as ``repr`` literals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec

from fedjax_room.errors import ProtocolError

__all__ = [
    "ID_PATTERN",
    "MAX_NESTED_TEXT",
    "MAX_TEXT",
    "WORD_PATTERN",
    "Hex",
    "Id",
    "OptId",
    "OptWord",
    "Text",
    "Word",
    "check_id",
    "check_message",
    "clean_text",
    "describe_pattern",
    "is_id",
]

#: A run id, site, party or room name.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A role, error code, refusal reason, phase, status or event kind.
WORD_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Longest free-text field (an error or refusal message), in characters.
MAX_TEXT = 4096
#: Longest string inside a nested map or list (a feature name, a class name, a policy value).
MAX_NESTED_TEXT = 1024
#: C0 and C1 control characters (and DEL) except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

# msgspec searches (re.search): anchored with \A...\Z (a "$" would let a trailing newline through)
_ID_RE = rf"\A{ID_PATTERN.pattern}\Z"
_OPT_ID_RE = rf"\A(?:{ID_PATTERN.pattern})?\Z"
_WORD_RE = rf"\A{WORD_PATTERN.pattern}\Z"
_OPT_WORD_RE = rf"\A(?:{WORD_PATTERN.pattern})?\Z"
_HEX_RE = r"\A[0-9a-f]{1,128}\Z"
_ID_TEXT = "a name of 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
_WORD_TEXT = "a lower_snake_case word (1-64 letters, digits, '_')"
_PATTERN_TEXT = {
    _ID_RE: _ID_TEXT,
    _OPT_ID_RE: f"empty or {_ID_TEXT}",
    _WORD_RE: _WORD_TEXT,
    _OPT_WORD_RE: f"empty or {_WORD_TEXT}",
    _HEX_RE: "a lowercase hex digest",
}

#: A run id, site, party or room name (checked while decoding).
Id = Annotated[str, msgspec.Meta(pattern=_ID_RE)]
#: An id, or empty.
OptId = Annotated[str, msgspec.Meta(pattern=_OPT_ID_RE)]
#: A role, error code, reason, phase, status or event kind.
Word = Annotated[str, msgspec.Meta(pattern=_WORD_RE)]
#: A word, or empty.
OptWord = Annotated[str, msgspec.Meta(pattern=_OPT_WORD_RE)]
#: A lowercase hex digest (spec hashes).
Hex = Annotated[str, msgspec.Meta(pattern=_HEX_RE)]
#: Free text: bounded while decoding, control characters removed by :func:`check_message`.
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]

#: analyst-bound replies whose records name runs and sites
_RECORD_REPLIES = {"sites_reply": "sites", "runs_reply": "runs", "budget_reply": "sites", "estimate_reply": "sites"}
_RECORD_ID_KEYS = ("id", "run_id", "site", "name")
_ID_LIST_KEYS = ("sites", "dropped", "eval_sites", "waiting")
#: frames whose nested maps are carried verbatim: signed audit records (cleaning would break their signatures;
#: they are shown escaped; only their keys are checked) and SecAgg bodies and configs (checked, integer client
#: ids included, by ``fedjax_room.secagg``)
_KEYS_ONLY = {"audit_reply"}
_UNCHECKED = {"secagg", "secagg_setup"}


def is_id(value: Any) -> bool:
    """Whether ``value`` is a valid run id / site name."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: Any, what: str = "id") -> str:
    """``value`` if it is a valid id, else :class:`ProtocolError` saying what it must look like."""
    if not is_id(value):
        raise ProtocolError(
            f"{what} {str(value)[:80]!r} is not a valid name: use 1-64 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return str(value)


def clean_text(value: str, limit: int = MAX_TEXT, what: str = "text") -> str:
    """``value`` without control characters (newline and tab kept); :class:`ProtocolError` past ``limit``."""
    if len(value) > limit:
        raise ProtocolError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    return _CONTROL.sub("", value)


def describe_pattern(message: str) -> str:
    """msgspec's validation ``message`` with the regular expressions above put in words."""
    for pattern, text in _PATTERN_TEXT.items():
        message = message.replace(f"`str` matching regex {pattern!r}", text)
    return message


def _clean_tree(value: Any, what: str, clean: bool) -> Any:
    if isinstance(value, str):
        return clean_text(value, MAX_NESTED_TEXT, what) if clean else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{what} has a key {k!r} that is not a string")
            key = clean_text(k, MAX_NESTED_TEXT, f"a key in {what}") if clean else k
            out[key] = _clean_tree(v, what, clean)
        return out if clean else value
    if isinstance(value, list | tuple):
        items = [_clean_tree(v, what, clean) for v in value]
        return items if clean else value
    return value


def _check_record(record: Any, what: str) -> None:
    if not isinstance(record, Mapping):
        return
    for key in _RECORD_ID_KEYS:
        v = record.get(key)
        if isinstance(v, str) and v:
            check_id(v, f"{what} {key}")
    for key in _ID_LIST_KEYS:
        v = record.get(key)
        if isinstance(v, list):
            for item in v:
                if isinstance(item, str):
                    check_id(item, f"{what} {key} entry")


_M = TypeVar("_M", bound=msgspec.Struct)
_PLANS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _plan(cls: type[msgspec.Struct]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(free-text fields, nested map/list fields) of a message class, from its msgspec field types."""
    if cls not in _PLANS:
        text, trees = [], []
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        for f in info.fields:
            types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
            if any(isinstance(t, msgspec.inspect.StrType) and t.pattern is None for t in types):
                text.append(f.name)
            elif any(isinstance(t, msgspec.inspect.DictType | msgspec.inspect.ListType) for t in types):
                trees.append(f.name)
        _PLANS[cls] = (tuple(text), tuple(trees))
    return _PLANS[cls]


def check_message(msg: _M, type_name: str) -> _M:
    """Clean and check what msgspec's patterns do not cover in a decoded ``type_name`` message (free text,
    nested maps and lists, the names in the analyst's records); raise :class:`ProtocolError` naming the field."""
    text, trees = _plan(type(msg))
    changes: dict[str, Any] = {}
    for name in text:
        value = getattr(msg, name)
        if _CONTROL.search(value):
            changes[name] = _CONTROL.sub("", value)
    if type_name not in _UNCHECKED:
        clean = type_name not in _KEYS_ONLY
        for name in trees:
            value = getattr(msg, name)
            cleaned = _clean_tree(value, f"{type_name}: field {name!r}", clean)
            if cleaned != value:
                changes[name] = cleaned
    if changes:
        msg = msgspec.structs.replace(msg, **changes)
    records = _RECORD_REPLIES.get(type_name)
    if records is not None:
        for record in getattr(msg, records):
            _check_record(record, f"{type_name}: a {records[:-1]}")
    if type_name == "run_snapshot":
        _check_record(msg.run, "run_snapshot: the run")  # type: ignore[attr-defined]
    if type_name == "run_event":
        _check_record(msg.data, "run_event: the event")  # type: ignore[attr-defined]
    return msg
