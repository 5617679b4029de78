"""Refused handshakes, counted instead of each written to the audit log (pure, the clock passed in).

Anyone who can reach the coordinator's port can open connections and send garbage; each such connection
is refused before it authenticates. Writing every refusal as a signed, fsynced audit record let 1,600
garbage connections add 1,600 records. :class:`RefusalCounter` lets the first :attr:`individual`
refusals of each ``window`` seconds be audited one by one (``connection_refused``, as before, so an
operator still sees the first failures of a misconfigured client), counts the rest by error code, and
hands back one summary (``connections_refused``: ``count``, ``codes``,
``window_seconds``) when the window is over. Memory is bounded: one counter per error code (a fixed set).
The per-source rate limit that stops a flood from reaching the machine at all lives in the websocket
glue (:mod:`fedjax_room.transport.server`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RefusalCounter"]


class RefusalCounter:
    """Per time window: the first ``individual`` refusals are audited, the rest summarised."""

    def __init__(self, *, window: float = 60.0, individual: int = 5) -> None:
        self.window, self.individual = window, individual
        self._start: float | None = None
        self._seen = 0
        self._codes: dict[str, int] = {}

    def note(self, now: float, code: str) -> bool:
        """One refusal at ``now``; True when it should be audited on its own."""
        if self._start is None or now >= self._start + self.window:
            # the summary of an older window is taken by flush(); a refusal never waits for it
            if self._start is not None and self._codes:
                return self._carry(now, code)
            self._start, self._seen, self._codes = now, 0, {}
        self._seen += 1
        if self._seen <= self.individual:
            return True
        self._codes[code] = self._codes.get(code, 0) + 1
        return False

    def _carry(self, now: float, code: str) -> bool:
        # an unflushed window is still open: count this one into it (flush() closes it soon)
        self._codes[code] = self._codes.get(code, 0) + 1
        return False

    def flush(self, now: float) -> list[dict[str, Any]]:
        """The summary record(s) of a window that is over (at most one), to audit; [] otherwise."""
        if self._start is None or now < self._start + self.window:
            return []
        out: list[dict[str, Any]] = []
        if self._codes:
            out.append(
                {
                    "count": sum(self._codes.values()),
                    "codes": dict(sorted(self._codes.items())),
                    "window_seconds": round(now - self._start, 3),
                }
            )
        self._start, self._seen, self._codes = None, 0, {}
        return out

    @property
    def pending(self) -> int:
        """Refusals counted but not yet summarised."""
        return sum(self._codes.values())
