"""Reading and verifying audit logs: the on-disk format, and what verification catches.

Where it lives
--------------
Every party (the coordinator and each site) keeps one log in its state directory::

    STATE_DIR/audit.jsonl        the records, one canonical JSON object per line
    STATE_DIR/audit.jsonl.head   the signed head: how many records, and the hash of the last

Wherever a path is taken (``AuditLog.open``, :func:`verify_log`, the CLI), a directory means
``DIR/audit.jsonl`` (:data:`LOG_FILENAME`); any other path is the log file itself, and its head is
that path with ``.head`` appended. A path that does not exist yet is a directory unless it ends in
``.jsonl``.

Record format (version 1)
-------------------------
Each line is the *canonical JSON* of one record: keys sorted, no whitespace (``","`` and ``":"``),
ASCII only (``\\uXXXX`` escapes), no NaN or infinity, followed by ``"\\n"``::

    {"fields":{...},"index":3,"kind":"update_released","prev":"<64 hex>","sig":"<128 hex>",
     "time":"2025-01-01T12:00:00.000000+00:00","v":1,"writer":"site-a"}

- ``index``: the record's position, from 0.
- ``time``: when it was written, UTC, ISO 8601 with microseconds.
- ``writer``: the party's name (a site's name, or ``"coordinator"``); the same on every record.
- ``kind`` and ``fields``: what happened (kinds are listed in ``docs/interfaces.md``).
- ``prev``: hex sha256 of the previous record's line (its canonical bytes, without the newline);
  :data:`GENESIS` (64 zeros) for record 0.
- ``sig``: hex Ed25519 signature, by the writer's key, over :data:`RECORD_DOMAIN` followed by the
  canonical JSON of the record without ``sig``. The domain prefix keeps an audit signature from ever
  being mistaken for a signed protocol message made with the same identity key.

Record 0 is always ``log_opened`` with fields ``public_key`` (hex of the writer's raw 32-byte Ed25519
public key), ``fingerprint`` and ``format``; every later record must verify under that key.

The head file is one canonical JSON object ``{"count","hash","sig","time","v","writer"}`` signed over
:data:`HEAD_DOMAIN` + canonical JSON without ``sig``. It is rewritten atomically after each append,
so that deleting the *last* record(s) is caught too (a hash chain alone cannot see a cut tail). A
crash between writing a record and its head leaves the head one record behind, which is accepted; a
head further behind (rolled back) is not, nor is a missing head once the log has more than
``log_opened`` (unless the caller passes ``head=False``, for a log file copied on its own).

What verification catches
-------------------------
Any edited byte (the line stops being canonical, its signature fails, or the next record's ``prev``
no longer matches), a deleted or reordered record (``index``/``prev`` out of step), a record signed
with another key, a truncated tail (the signed head counts more records), a torn last line, and,
with ``public_key`` given, a whole log re-signed under another key. What it cannot catch on its
own: someone holding the writer's private key, or a whole-file rollback to an older log *and* its
older head; cross-checking the site and coordinator logs (:mod:`fedjax_room.audit.crosscheck`)
narrows the latter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedjax_room.errors import AuditError, BadSignatureError
from fedjax_room.identity import fingerprint, load_public_key, public_key_bytes, public_key_from_bytes, verify

__all__ = [
    "FORMAT",
    "GENESIS",
    "HEAD_DOMAIN",
    "LOG_FILENAME",
    "RECORD_DOMAIN",
    "VERSION",
    "PublicKeyLike",
    "canonical_json",
    "head_path",
    "read_log",
    "record_hash",
    "resolve_log_path",
    "verify_log",
]

#: The log's file name inside a state directory.
LOG_FILENAME = "audit.jsonl"
#: ``prev`` of record 0.
GENESIS = "0" * 64
#: Format tag carried by ``log_opened``.
FORMAT = "fedjax-room-audit/1"
#: Prefix of the bytes a record signature covers.
RECORD_DOMAIN = b"fedjax-room audit record v1\n"
#: Prefix of the bytes a head signature covers.
HEAD_DOMAIN = b"fedjax-room audit head v1\n"
#: The record format version this code writes and reads.
VERSION = 1
_RECORD_KEYS = frozenset({"v", "index", "time", "writer", "kind", "fields", "prev", "sig"})
_HEAD_KEYS = frozenset({"v", "count", "hash", "writer", "time", "sig"})


class _Head(TypedDict):
    """A signed head, as :func:`_parse_head` returns it once its keys, types and signature are checked."""

    v: int
    count: int
    hash: str
    writer: str
    time: object  # covered by the signature, not read
    sig: str


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

PublicKeyLike = Ed25519PublicKey | Ed25519PrivateKey | bytes | str | os.PathLike[str]


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding: sorted keys, no whitespace, ASCII, no NaN. Raises TypeError/ValueError."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(line: bytes) -> str:
    """Hex sha256 of a record's line (canonical bytes, no newline): the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


def resolve_log_path(path: str | os.PathLike[str]) -> Path:
    """``DIR`` -> ``DIR/audit.jsonl``; a file path (or a new path ending ``.jsonl``) is kept as is."""
    p = Path(path)
    if p.is_dir():
        return p / LOG_FILENAME
    if p.exists() or p.suffix == ".jsonl":
        return p
    return p / LOG_FILENAME


def head_path(log_path: str | os.PathLike[str]) -> Path:
    """Where the signed head of the log at ``log_path`` lives (``<log>.head``)."""
    p = Path(log_path)
    return p.with_name(p.name + ".head")


def _as_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, bytes):
        return public_key_from_bytes(key)
    return load_public_key(key)


# --------------------------------------------------------------------------------------------- reading


@dataclass
class _Scan:
    """The outcome of reading a log: the records that verified, and the first failure if any."""

    path: Path
    records: list[dict[str, Any]]
    hashes: list[str]
    error: AuditError | None
    public_key: Ed25519PublicKey | None
    torn_tail: bool = False


def _describe(index: int, rec: dict[str, Any] | None) -> str:
    kind = rec.get("kind") if isinstance(rec, dict) else None
    what = f" ({kind})" if isinstance(kind, str) else ""
    return f"record {index}{what} on line {index + 1}"


def _scan(
    data: bytes,
    path: Path,
    public_key: Ed25519PublicKey | None,
    *,
    signatures_from: int = 0,
) -> _Scan:
    """Check ``data`` record by record and stop at the first bad one.

    Signatures are checked for record 0 and every record at or after ``signatures_from``.
    """
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    body = lines if torn else lines[:-1]
    records: list[dict[str, Any]] = []
    hashes: list[str] = []
    key: Ed25519PublicKey | None = None
    writer: str | None = None
    prev = GENESIS
    n_lines = len(body)

    def fail(i: int, rec: dict[str, Any] | None, why: str) -> _Scan:
        err = AuditError(f"audit log {path}: {_describe(i, rec)} {why}", index=i)
        return _Scan(path, records, hashes, err, key, torn_tail=torn and i == n_lines - 1)

    if not body:
        return _Scan(
            path,
            records,
            hashes,
            AuditError(f"audit log {path}: record 0 (log_opened) is missing: the file is empty", index=0),
            None,
        )

    for i, line in enumerate(body):
        if torn and i == n_lines - 1:
            return fail(
                i,
                None,
                "is incomplete (the file does not end with a newline): the writer was interrupted mid-write "
                "or the file was cut",
            )
        if not line:
            return fail(i, None, "is a blank line: a record was removed or the file was edited")
        try:
            rec = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return fail(i, None, "is not valid ASCII JSON: its bytes were edited")
        if not isinstance(rec, dict) or set(rec) != _RECORD_KEYS:
            return fail(i, rec if isinstance(rec, dict) else None, "does not have the record fields: it was edited")
        try:
            canon = canonical_json(rec)
        except (TypeError, ValueError):
            canon = b""
        if canon != line:
            return fail(i, rec, "is not in canonical form: its bytes were edited")
        if rec["v"] != VERSION:
            return fail(i, rec, f"has format version {rec['v']!r}; this fedjax-room reads version {VERSION}")
        index = rec["index"]
        if type(index) is not int or index != i:
            return fail(
                i,
                rec,
                f"claims index {index!r} at position {i}: a record before it was deleted, "
                "or records were reordered or inserted",
            )
        if (
            not isinstance(rec["kind"], str)
            or not isinstance(rec["writer"], str)
            or not isinstance(rec["fields"], dict)
        ):
            return fail(i, rec, "has a kind, writer or fields of the wrong type")
        if not isinstance(rec["time"], str):
            return fail(i, rec, "has a time that is not a string")
        try:
            datetime.fromisoformat(rec["time"])
        except ValueError:
            return fail(i, rec, f"has a time {rec['time']!r} that is not ISO 8601")
        if rec["prev"] != prev:
            return fail(
                i,
                rec,
                "does not chain to the record before it (prev hash differs): the record before it "
                "was edited, deleted or moved",
            )
        sig = rec["sig"]
        if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
            return fail(i, rec, "has a malformed signature: it was edited")
        if i == 0:
            if rec["kind"] != "log_opened":
                return fail(i, rec, "is not log_opened: the start of the log was deleted or replaced")
            raw = rec["fields"].get("public_key")
            if not isinstance(raw, str) or not _HEX64.fullmatch(raw):
                return fail(i, rec, "does not carry the writer's public key (64 hex digits)")
            try:
                key = public_key_from_bytes(bytes.fromhex(raw))
            except BadSignatureError:
                return fail(i, rec, "carries an invalid Ed25519 public key")
            writer = rec["writer"]
            if public_key is not None and public_key_bytes(public_key) != public_key_bytes(key):
                return fail(
                    i,
                    rec,
                    f"says the log is signed by key {fingerprint(key)[:16]}..., not the expected key "
                    f"{fingerprint(public_key)[:16]}...: the log was replaced by one under another key",
                )
        else:
            if rec["kind"] == "log_opened":
                return fail(i, rec, "is a second log_opened: another log was spliced in")
            if rec["writer"] != writer:
                return fail(i, rec, f"names writer {rec['writer']!r}, but the log was opened by {writer!r}")
        assert key is not None
        if i == 0 or i >= signatures_from:
            unsigned = {k: v for k, v in rec.items() if k != "sig"}
            try:
                verify(key, bytes.fromhex(sig), RECORD_DOMAIN + canonical_json(unsigned))
            except BadSignatureError:
                return fail(
                    i,
                    rec,
                    f"has a signature that does not verify under the log's key {fingerprint(key)[:16]}...: "
                    "it was edited, or written with another key",
                )
        prev = record_hash(line)
        records.append(rec)
        hashes.append(prev)
    return _Scan(path, records, hashes, None, key)


def _read_head_bytes(path: Path) -> bytes | None:
    """The raw signed head next to the log at ``path``; None if there is none."""
    hp = head_path(path)
    try:
        return hp.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read the audit head {hp}: {exc}", index=-1) from None


def _read_head(path: Path, key: Ed25519PublicKey, writer: str) -> _Head | None:
    """The signed head next to the log at ``path``, checked against ``key``; None if there is none."""
    return _parse_head(path, _read_head_bytes(path), key, writer)


def _parse_head(path: Path, data: bytes | None, key: Ed25519PublicKey, writer: str) -> _Head | None:
    """Check a head read from beside ``path`` against ``key`` and ``writer``; None if there was none."""
    if data is None:
        return None
    hp = head_path(path)
    line = data[:-1] if data.endswith(b"\n") else data
    try:
        head = json.loads(line.decode("ascii"))
        ok = isinstance(head, dict) and set(head) == _HEAD_KEYS and canonical_json(head) == line
    except (UnicodeDecodeError, ValueError, TypeError):
        ok = False
    if ok:
        ok = (
            head["v"] == VERSION
            and type(head["count"]) is int
            and head["count"] >= 1
            and isinstance(head["hash"], str)
            and isinstance(head["sig"], str)
            and _HEX128.fullmatch(head["sig"]) is not None
            and head["writer"] == writer
        )
    if not ok:
        raise AuditError(
            f"the audit head {hp} is corrupt or was edited; the log cannot be trusted to be complete", index=-1
        )
    unsigned = {k: v for k, v in head.items() if k != "sig"}
    try:
        verify(key, bytes.fromhex(head["sig"]), HEAD_DOMAIN + canonical_json(unsigned))
    except BadSignatureError:
        raise AuditError(
            f"the audit head {hp} is not signed by the log's key: it was edited or replaced", index=-1
        ) from None
    return cast(_Head, head)  # its keys and their types are checked above


def _check_head(scan: _Scan, head: _Head | None, *, require: bool) -> None:
    """Raise :class:`AuditError` unless the head agrees with the (fully scanned) records."""
    n = len(scan.records)
    path = scan.path
    if head is None:
        if require and n >= 1:  # every non-empty log has one: record 0's head is written before record 0
            raise AuditError(
                f"audit log {path} has no signed head ({head_path(path).name}): it was deleted, so records cut from "
                "the end could not be seen; verify a copied log file on its own with --no-head",
                index=-1,
            )
        return
    count = head["count"]
    if count > n:
        raise AuditError(
            f"audit log {path}: record {n} is missing: the signed head says the log has {count} records but only "
            f"{n} remain: the last {count - n} were deleted",
            index=n,
        )
    if count < n - 1:
        raise AuditError(
            f"audit log {path}: record {count} and after are not covered by the signed head (it counts {count} of "
            f"{n} records): the head was rolled back",
            index=count,
        )
    if scan.hashes[count - 1] != head["hash"]:
        raise AuditError(
            f"audit log {path}: {_describe(count - 1, scan.records[count - 1])} is not the record the signed head "
            "covers: it was replaced",
            index=count - 1,
        )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"no audit log at {path}: give a state directory or an audit.jsonl file", index=-1) from None
    except IsADirectoryError:
        raise AuditError(f"{path} is a directory, not an audit log", index=-1) from None


def _head_caught_up(path: Path, scan: _Scan, head_then: _Head | None) -> bool:
    """True when the records ran ahead of the head read before them because the writer kept appending.

    The earlier head must cover a prefix of what was read, and the head as it is now must count at least
    every record read. A head rolled back by hand would not have moved on.
    """
    n = len(scan.records)
    if head_then is None or not 1 <= head_then["count"] < n or scan.hashes[head_then["count"] - 1] != head_then["hash"]:
        return False
    assert scan.public_key is not None
    try:
        head_now = _read_head(path, scan.public_key, scan.records[0]["writer"])
    except AuditError:
        return False
    if head_now is None or head_now["count"] < n:
        return False
    return head_now["count"] > n or scan.hashes[n - 1] == head_now["hash"]


#: How often :func:`read_log` re-reads a log whose head and records disagree on the count (a live writer).
_LIVE_RETRIES = 4


def read_log(
    path: str | os.PathLike[str], public_key: PublicKeyLike | None = None, *, head: bool = True
) -> tuple[list[dict[str, Any]], AuditError | None]:
    """Like :func:`verify_log` but returns ``(records that verified, first error or None)``.

    For showing a damaged log up to its first bad record.
    """
    p = resolve_log_path(path)
    expected = _as_public_key(public_key) if public_key is not None else None
    for attempt in range(_LIVE_RETRIES + 1):
        # The head first: a live writer appends a record and only then replaces the head, so records read
        # after the head are never fewer than it counts; at most they run ahead of it.
        head_bytes = _read_head_bytes(p)
        try:
            scan = _scan(_read_bytes(p), p, expected)
        except AuditError as exc:
            return [], exc
        if scan.error is not None:
            return scan.records, scan.error
        assert scan.public_key is not None
        writer = scan.records[0]["writer"]
        signed_head = None
        try:
            signed_head = _parse_head(p, head_bytes, scan.public_key, writer)
            _check_head(scan, signed_head, require=head)
        except AuditError as exc:
            if _head_caught_up(p, scan, signed_head):
                return scan.records, None
            behind = signed_head is None or signed_head["count"] != len(scan.records)  # a writer mid-append
            if behind and attempt < _LIVE_RETRIES:
                time.sleep(0.02 * (attempt + 1))
                continue
            good = scan.records[: exc.index] if exc.index >= 0 else scan.records
            return good, exc
        return scan.records, None
    raise AssertionError("unreachable")  # pragma: no cover


def verify_log(
    path: str | os.PathLike[str], public_key: PublicKeyLike | None = None, *, head: bool = True
) -> list[dict[str, Any]]:
    """Verify the whole log at ``path`` (a state directory or the log file) and return its records.

    Checks every record's form, index, chain link and signature, and the signed head. With
    ``public_key`` (a key object, raw 32 bytes, or a PEM file) the log must be signed by that key.
    ``head=False`` skips the requirement that a head exists (for a log file copied on its own).
    Raises :class:`~fedjax_room.errors.AuditError` whose ``index`` is the first bad record (``-1``
    when the fault is not one record's, such as a missing file or a forged head).
    """
    records, error = read_log(path, public_key, head=head)
    if error is not None:
        raise error
    return records
