"""What the sans-I/O state machines ask their glue to do."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Action", "Close", "Send", "Work"]


@dataclasses.dataclass(frozen=True)
class Send:
    """Send ``data`` (one encoded frame) on connection ``conn``."""

    conn: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class Close:
    """Close connection ``conn`` with websocket close ``code`` and ``reason``."""

    conn: int
    code: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Work:
    """(site) Run job ``kind`` on ``message`` off the event loop; feed the result back with ``work_done``."""

    kind: str
    key: str
    message: Any


Action = Send | Close | Work
