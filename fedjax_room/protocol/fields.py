"""What a string from the room may look like: strict patterns for names and ids, clean bounded free text.

Every frame :func:`fedjax_room.protocol.messages.decode` accepts passes :func:`validate_fields` first, so
whatever a coordinator, a site or an analyst sends can be shown or put into generated code without
surprises:

- **ids and names** (run ids, site and party names, room ids): :data:`ID_PATTERN`, i.e. 1-64 ASCII letters,
  digits, ``.``, ``_`` or ``-``, starting with a letter or digit; no spaces, quotes, newlines or markup;
- **words** (roles, error codes, reasons, phases, statuses, event kinds): ``[a-z][a-z0-9_]{0,63}``;
- **free text** (error messages, refusal messages): at most :data:`MAX_TEXT` characters, control characters
  other than newline and tab removed;
- **nested maps and lists** (schemas with feature and class names, plans, policies, run summaries): every
  string in them is cleaned like free text and bounded by :data:`MAX_NESTED_TEXT`; in the analyst's replies
  the ``id`` / ``run_id`` / ``site`` / ``name`` of each record and the site lists must be ids.

A frame that breaks a rule is refused with :class:`~fedjax_room.errors.ProtocolError` naming the field.
Generated code (the Jupyter dashboard notebook) additionally writes room strings only as ``repr`` literals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fedjax_room.errors import ProtocolError

__all__ = [
    "ID_PATTERN",
    "MAX_NESTED_TEXT",
    "MAX_TEXT",
    "WORD_PATTERN",
    "check_id",
    "clean_text",
    "is_id",
    "validate_fields",
]

#: A run id, site, party or room name.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A role, error code, refusal reason, phase, status or event kind.
WORD_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: A hex digest (spec hashes).
_HEX = re.compile(r"[0-9a-f]{1,128}")
#: Longest free-text field (an error or refusal message), in characters.
MAX_TEXT = 4096
#: Longest string inside a nested map or list (a feature name, a class name, a policy value).
MAX_NESTED_TEXT = 1024
#: Deepest nesting walked (deeper structures are refused).
_MAX_DEPTH = 32
#: C0 and C1 control characters (and DEL) except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

#: field name -> rule, for every message that has the field
_ID_FIELDS = {"run_id", "room_id"}
_WORD_FIELDS = {"role", "code", "phase", "status", "kind"}
_TEXT_FIELDS = {"message"}
#: (message type, field) -> rule where the field name alone does not say
_BY_TYPE: dict[tuple[str, str], str] = {
    ("hello", "name"): "id?",
    ("welcome", "name"): "id",
    ("error", "party"): "id?",
    ("error", "reason"): "word?",
    ("run_waiting", "spec_hash"): "hex",
}
#: analyst-bound replies whose records name runs and sites
_RECORD_REPLIES = {"sites_reply": "sites", "runs_reply": "runs", "budget_reply": "sites"}
_RECORD_ID_KEYS = ("id", "run_id", "site", "name")
_ID_LIST_KEYS = ("sites", "dropped", "eval_sites", "waiting")
#: frames whose nested maps are carried verbatim: signed audit records (cleaning would break their signatures;
#: they are shown escaped) and SecAgg bodies (checked by ``fedjax_room.secagg``; large)
_VERBATIM = {"audit_reply", "secagg", "secagg_setup"}


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
    return value


def clean_text(value: str, limit: int = MAX_TEXT, what: str = "text") -> str:
    """``value`` without control characters (newline and tab kept); :class:`ProtocolError` past ``limit``."""
    if len(value) > limit:
        raise ProtocolError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    return _CONTROL.sub("", value)


def _word(value: str, what: str, *, empty: bool = False) -> str:
    if (empty and value == "") or WORD_PATTERN.fullmatch(value):
        return value
    raise ProtocolError(f"{what} {value[:80]!r} must be a lower_snake_case word (1-64 letters, digits, '_')")


def _clean_tree(value: Any, what: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ProtocolError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, str):
        return clean_text(value, MAX_NESTED_TEXT, what)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = clean_text(k, MAX_NESTED_TEXT, f"a key in {what}") if isinstance(k, str) else k
            out[key] = _clean_tree(v, what, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_clean_tree(v, what, depth + 1) for v in value]
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


def validate_fields(type_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check (and clean) the decoded fields of one ``type_name`` frame; raise :class:`ProtocolError`."""
    out = dict(kwargs)
    for name, value in kwargs.items():
        what = f"{type_name}: field {name!r}"
        rule = _BY_TYPE.get((type_name, name))
        if rule is None:
            rule = "id" if name in _ID_FIELDS else "word" if name in _WORD_FIELDS else ""
        if isinstance(value, str):
            if rule == "id" or (rule == "id?" and value):
                check_id(value, what)
            elif rule in ("word", "word?"):
                _word(value, what, empty=rule == "word?")
            elif rule == "hex":
                if not _HEX.fullmatch(value):
                    raise ProtocolError(f"{what} must be a lowercase hex digest")
            else:
                out[name] = clean_text(value, MAX_TEXT, what)
        elif isinstance(value, dict | list) and type_name not in _VERBATIM:
            out[name] = _clean_tree(value, what)
    records = _RECORD_REPLIES.get(type_name)
    if records is not None and isinstance(out.get(records), list):
        for record in out[records]:
            _check_record(record, f"{type_name}: a {records[:-1]}")
    if type_name == "run_snapshot" and isinstance(out.get("run"), Mapping):
        _check_record(out["run"], "run_snapshot: the run")
    if type_name == "run_event" and isinstance(out.get("data"), Mapping):
        _check_record(out["data"], "run_event: the event")
    return out
