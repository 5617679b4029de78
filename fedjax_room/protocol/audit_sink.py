"""Where the coordinator machine records what it does: the :class:`AuditSink` contract and two sinks.

The machine appends a record *before* the action it records. Its glue gives it an adapter over the room's
hash-chained :class:`~fedjax_room.audit.AuditLog` (:class:`fedjax_room.coordinator.server.LogAudit`); tests and
in-process rooms use :class:`MemoryAudit`. :class:`TailCache` is the machine's own view of its sink, so answering
``get_audit`` never re-reads the log.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MAX_AUDIT_TAIL", "AuditSink", "MemoryAudit", "TailCache"]

#: The most audit records an analyst gets in one ``get_audit`` (and the records the machine keeps in memory).
MAX_AUDIT_TAIL = 1000


class AuditSink(Protocol):
    """Where the machine records what it does (an :class:`~fedjax_room.audit.AuditLog` adapter)."""

    def append(self, kind: str, **fields: Any) -> Any: ...

    def tail(self, last: int) -> list[dict[str, Any]]: ...


class TailCache:
    """The machine's view of its audit sink: appends go through; the last records are kept as appended, so
    ``get_audit`` never re-reads (and re-verifies) the whole log in the event loop. The sink's own ``tail`` is
    read once, on the first request (a verified prefix), and after an append that returned no record."""

    def __init__(self, sink: AuditSink, keep: int) -> None:
        self.sink = sink
        self._keep = keep
        self._tail: collections.deque[dict[str, Any]] | None = None
        #: which records an analyst may read (the machine sets it: hidden tuning trials' are not); None: all
        self.visible: Callable[[dict[str, Any]], bool] | None = None
        self._shown: collections.deque[dict[str, Any]] | None = None

    def append(self, kind: str, **fields: Any) -> Any:
        rec = self.sink.append(kind, **fields)
        if self._tail is not None:
            if isinstance(rec, dict):
                self._tail.append(rec)
            else:
                self._tail = None
        if self._shown is not None:
            if not isinstance(rec, dict):
                self._shown = None
            elif self.visible is None or self.visible(rec):
                self._shown.append(rec)
        return rec

    def shown(self, last: int) -> list[dict[str, Any]]:
        """The last ``last`` records an analyst may read (:attr:`visible`), kept like :meth:`tail`: the last
        ``keep`` visible ones however many hidden ones came after them (read from the whole log when first asked
        and after :meth:`reset_shown`)."""
        if self._shown is None:
            keep = self.visible or (lambda rec: True)
            self._shown = collections.deque((r for r in self.sink.tail(sys.maxsize) if keep(r)), maxlen=self._keep)
        return list(self._shown)[-last:] if last > 0 else []

    def reset_shown(self) -> None:
        """Read the analysts' view again from the log at the next :meth:`shown` (what is visible changed)."""
        self._shown = None

    def tail(self, last: int) -> list[dict[str, Any]]:
        if self._tail is None:
            self._tail = collections.deque(self.sink.tail(self._keep), maxlen=self._keep)
        return list(self._tail)[-last:] if last > 0 else []

    def __getattr__(self, name: str) -> Any:  # e.g. MemoryAudit.records in tests
        return getattr(self.sink, name)


class MemoryAudit:
    """An in-memory :class:`AuditSink` (tests, or a room without a log)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"index": len(self.records), "kind": kind, "fields": fields}
        self.records.append(rec)
        return rec

    def tail(self, last: int) -> list[dict[str, Any]]:
        return self.records[-last:] if last > 0 else []
