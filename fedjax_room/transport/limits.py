"""Per-source limit on failed handshakes, in bounded memory (pure, the clock passed in).

:class:`SourceLimiter` counts, per remote address, connections that ended without authenticating. A
source with ``max_failures`` failures within ``window`` seconds is refused at the websocket upgrade
(HTTP 429, the coordinator's state machine never sees it) until the window is over. At most
``max_sources`` addresses are tracked (least recently seen forgotten first), so a flood from many
addresses costs bounded memory; an honest client from another address is never affected.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["SourceLimiter"]


class SourceLimiter:
    """Fixed-window failure counter per source address."""

    def __init__(self, *, max_failures: int = 30, window: float = 30.0, max_sources: int = 4096) -> None:
        self.max_failures, self.window, self.max_sources = max_failures, window, max_sources
        self._sources: OrderedDict[str, list[float]] = OrderedDict()  # source -> [window start, failures, refused]
        self.refused = 0  # upgrades refused because their source was over the limit (for logs and tests)

    def _entry(self, source: str, now: float) -> list[float]:
        entry = self._sources.get(source)
        if entry is None or now >= entry[0] + self.window:
            entry = [now, 0.0, 0.0]
            self._sources[source] = entry
        self._sources.move_to_end(source)
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return entry

    def failed(self, source: str, now: float) -> None:
        """A connection from ``source`` ended without authenticating."""
        self._entry(source, now)[1] += 1

    def allow(self, source: str, now: float) -> bool:
        """Whether a new connection from ``source`` may start its handshake."""
        entry = self._sources.get(source)
        if entry is None or now >= entry[0] + self.window or entry[1] < self.max_failures:
            return True
        entry[2] += 1
        self.refused += 1
        return False

    def first_refusal(self, source: str) -> bool:
        """True for the first refused upgrade of ``source`` in its window (log that one only)."""
        entry = self._sources.get(source)
        return entry is not None and entry[2] == 1

    def __len__(self) -> int:
        return len(self._sources)
