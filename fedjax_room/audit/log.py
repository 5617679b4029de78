"""Writing the append-only, hash-chained, Ed25519-signed audit log.

A party's log is ``STATE_DIR/audit.jsonl`` with its signed head ``STATE_DIR/audit.jsonl.head``; the
record format and what verification catches are in :mod:`fedjax_room.audit.verify`.

Writing
-------
:meth:`AuditLog.append` writes the record and ``fsync``\\ s it before returning, so a caller records
an action *before* letting it take effect. One process writes a log at a time (an exclusive
``flock`` on the file; threads within that process are serialised by a lock). Reopening a log
continues its chain after checking it: the chain of every record, the signatures of the first and the
last :data:`TAIL_SIGNATURES` records, and the head; a log whose tail is broken refuses to append.
Checking only the tail's signatures loses nothing: changing any earlier record changes its hash, so
every later ``prev`` would have to change too, and the last record's signature (and the head) with it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedjax_room.audit.verify import (
    FORMAT,
    GENESIS,
    HEAD_DOMAIN,
    RECORD_DOMAIN,
    VERSION,
    _check_head,
    _read_head,
    _scan,
    canonical_json,
    head_path,
    record_hash,
    resolve_log_path,
    verify_log,
)
from fedjax_room.errors import AuditError, ConfigError, StateError
from fedjax_room.files import fsync_dir, open_private, private_dir
from fedjax_room.identity import fingerprint, load_private_key, public_key_bytes, sign

try:  # POSIX; elsewhere the one-writer rule is the caller's to keep
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["REQUIRED_FIELDS", "TAIL_SIGNATURES", "AuditLog"]

#: How many of the last records :meth:`AuditLog.open` re-verifies signatures of (it checks the whole chain).
TAIL_SIGNATURES = 16
#: Fields that :meth:`AuditLog.append` requires for the kinds that the cross-check relies on.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "update_released": ("run_id", "round", "digest"),
    "update_received": ("run_id", "round", "site", "digest"),
    "masked_input_released": ("run_id", "round", "digest"),
    "masked_input_received": ("run_id", "round", "site", "digest"),
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ConfigError("the audit clock returned a naive datetime; return an aware UTC datetime")
    return t.astimezone(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------- writing


def _check_fields(kind: str, fields: dict[str, Any]) -> None:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ConfigError(f"audit record kind {kind!r} must be lower_snake_case (letters, digits, _), 1-64 chars")
    if kind == "log_opened":
        raise ConfigError("log_opened is written by AuditLog.open itself; choose another kind")
    missing = [f for f in REQUIRED_FIELDS.get(kind, ()) if f not in fields]
    if missing:
        raise ConfigError(f"audit record {kind} needs fields {', '.join(missing)}")
    if kind in REQUIRED_FIELDS:
        if not isinstance(fields["run_id"], str):
            raise ConfigError(f"audit record {kind}: run_id must be a string")
        if type(fields["round"]) is not int:
            raise ConfigError(f"audit record {kind}: round must be an int")
        if not isinstance(fields["digest"], str) or not _HEX64.fullmatch(fields["digest"]):
            raise ConfigError(f"audit record {kind}: digest must be the lowercase hex sha256 of the payload bytes")
        if "site" in REQUIRED_FIELDS[kind] and not isinstance(fields["site"], str):
            raise ConfigError(f"audit record {kind}: site must be a string")


class AuditLog:
    """One party's open audit log; make one with :meth:`AuditLog.open`.

    ``append`` is safe to call from several threads of the one writer process; another process that
    tries to open the same log gets :class:`~fedjax_room.errors.StateError` until this one is closed.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        signing_key: Ed25519PrivateKey,
        writer: str,
        records: int,
        last_hash: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._path = path
        self._fd: int | None = fd
        self._key = signing_key
        self._writer = writer
        self._count = records
        self._last_hash = last_hash
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        signing_key: Ed25519PrivateKey | str | os.PathLike[str],
        writer: str,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> AuditLog:
        """Open (or start) the log at ``path`` (a state directory, or the ``.jsonl`` file) for appending.

        A new log gets record 0, ``log_opened``, carrying ``signing_key``'s public key. An existing one
        is checked first (see the module docstring) and must have been started by the same ``writer``
        with the same key; a broken tail raises :class:`~fedjax_room.errors.AuditError` and nothing is
        appended. ``clock`` returns an aware datetime (for tests; default: now, UTC).
        """
        if not isinstance(writer, str) or not writer or writer != writer.strip():
            raise ConfigError(f"audit writer name {writer!r} must be a non-empty string without outer spaces")
        key = signing_key if isinstance(signing_key, Ed25519PrivateKey) else load_private_key(signing_key)
        p = resolve_log_path(path)
        private_dir(p.parent)  # 0700, the log and its head 0600: nobody else reads what a party did
        created = not p.exists()
        fd = open_private(p, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        log: AuditLog | None = None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StateError(
                        f"audit log {p} is open for writing in another process (or another AuditLog); "
                        "close that one first - a log has one writer"
                    ) from None
            if created:
                fsync_dir(p.parent)
            log = cls(p, fd, key, writer, 0, GENESIS, clock or _now)
            data = p.read_bytes()
            if not data:
                if head_path(p).exists():
                    head = _read_head(p, key.public_key(), writer)  # a head not signed by this key: AuditError
                    if head is None or head["count"] != 1:
                        raise AuditError(
                            f"audit log {p} is empty but its signed head {head_path(p).name} says it had records: "
                            "it was emptied; move both aside to start a new log",
                            index=0,
                        )
                    # count 1 over an empty file: the writer died between the head of record 0 and the record
                    # itself (record 0's head is written first, so a log never has a record without a head)
                log._write(
                    "log_opened",
                    {"public_key": public_key_bytes(key).hex(), "fingerprint": fingerprint(key), "format": FORMAT},
                    head_first=True,
                )
                return log
            log._resume(data)
            return log
        except BaseException:
            if log is not None:
                log._fd = None  # the fd is closed here, never again by the object
            os.close(fd)
            raise

    def _resume(self, data: bytes) -> None:
        # Cheap checks on every record, signatures on the first and the tail.
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        scan = _scan(data, self._path, None, signatures_from=max(1, n_lines - TAIL_SIGNATURES))
        if scan.error is not None:
            raise AuditError(
                f"{scan.error.message}; refusing to append to a broken log - inspect it with "
                f"`fedjax-room audit show {self._path}` and move it aside to start a new one",
                index=scan.error.index,
            )
        first = scan.records[0]
        assert scan.public_key is not None
        if public_key_bytes(scan.public_key) != public_key_bytes(self._key) or first["writer"] != self._writer:
            raise AuditError(
                f"audit log {self._path} was started by {first['writer']!r} with key "
                f"{fingerprint(scan.public_key)[:16]}...; it cannot be continued by {self._writer!r} with key "
                f"{fingerprint(self._key)[:16]}...: use that party's key and name, or another state directory",
                index=0,
            )
        head = _read_head(self._path, scan.public_key, self._writer)
        _check_head(scan, head, require=True)
        self._count = len(scan.records)
        self._last_hash = scan.hashes[-1]
        if head is None or head["count"] != self._count:
            self._write_head()  # a crash left the head one record behind

    # ---- properties

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def writer(self) -> str:
        return self._writer

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def count(self) -> int:
        """How many records the log holds (``log_opened`` included)."""
        return self._count

    @property
    def last_hash(self) -> str:
        """Hex sha256 of the last record: the value that commits to the whole log so far."""
        return self._last_hash

    @property
    def closed(self) -> bool:
        return self._fd is None

    # ---- writing

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record, fsync it, and return it as :func:`verify_log` will read it back.

        Call it *before* the action it records takes effect: if it raises, the action must not go
        ahead. ``fields`` must be JSON values (str, int, finite float, bool, None, lists, str-keyed
        dicts); a tuple comes back as a list.
        """
        _check_fields(kind, fields)
        return self._write(kind, fields)

    def _write(self, kind: str, fields: dict[str, Any], *, head_first: bool = False) -> dict[str, Any]:
        with self._lock:
            if self._fd is None:
                raise StateError(f"audit log {self._path} is closed; open it again to append")
            rec: dict[str, Any] = {
                "v": VERSION,
                "index": self._count,
                "time": _iso(self._clock()),
                "writer": self._writer,
                "kind": kind,
                "fields": fields,
                "prev": self._last_hash,
            }
            try:
                unsigned = canonical_json(rec)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"audit record {kind}: fields must be JSON values (finite numbers only): {exc}"
                ) from None
            rec["sig"] = sign(self._key, RECORD_DOMAIN + unsigned).hex()
            line = canonical_json(rec)
            if head_first:  # record 0: its head first, so that no non-empty log is ever without a head
                self._write_head(self._count + 1, record_hash(line))
            self._append_line(line + b"\n")
            self._count += 1
            self._last_hash = record_hash(line)
            if not head_first:
                self._write_head()
            written: dict[str, Any] = json.loads(line)
            return written

    def _append_line(self, data: bytes) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            try:  # take back a partial line so the log stays whole
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError:
                pass
            raise AuditError(
                f"could not write to audit log {self._path}: {exc}; the action it records must not go ahead",
                index=self._count,
            ) from None

    def _write_head(self, count: int | None = None, last_hash: str | None = None) -> None:
        head: dict[str, Any] = {
            "v": VERSION,
            "count": self._count if count is None else count,
            "hash": self._last_hash if last_hash is None else last_hash,
            "writer": self._writer,
            "time": _iso(self._clock()),
        }
        head["sig"] = sign(self._key, HEAD_DOMAIN + canonical_json(head)).hex()
        hp = head_path(self._path)
        tmp = hp.with_name(hp.name + ".tmp")
        try:
            fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "wb") as fh:
                fh.write(canonical_json(head) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, hp)
            fsync_dir(hp.parent)
        except OSError as exc:
            raise AuditError(
                f"record {self._count - 1} was written to {self._path}, but its head {hp} could not be: {exc}",
                index=self._count - 1,
            ) from None

    # ---- reading and closing

    def records(self) -> list[dict[str, Any]]:
        """Every record, verified (reads the file again, between appends of this process)."""
        with self._lock:
            return verify_log(self._path, self.public_key)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def close(self) -> None:
        """Release the file (and its lock). Appending afterwards raises StateError."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, writer={self._writer!r}, count={self._count})"
