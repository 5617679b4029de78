"""The terminal progress bar of a federated run: rounds done, what the round in progress waits for, a clock.

``fedjax-room demo`` shows it on stderr. A round takes tens of seconds on a small machine, so a bar that moved
only when a round closed would sit at ``0/5`` with a frozen clock through the whole first round; this one follows
the run's ``progress`` and ``waiting`` events (:mod:`fedjax_room.analyst.events`) — ``round 1: 2/3 sites
updated``, ``waiting for approval by site-b`` — and redraws once a second, so its elapsed time ticks.
"""

from __future__ import annotations

import threading
from typing import IO, Any

__all__ = ["RoundBar"]


class RoundBar:
    """A tqdm bar over ``total`` rounds of ``run``; call :meth:`update` per finished round and :meth:`close`."""

    def __init__(
        self,
        run: Any,
        total: int,
        *,
        file: IO[str] | None = None,
        disable: bool = False,
        desc: str = "federated rounds",
    ) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="round", file=file, leave=False, disable=disable)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.text = "the sites are checking the run"  # the offer: each site checks its policy and plans its noise
        self.bar.set_postfix_str(self.text, refresh=False)
        self._unsubscribe = run.subscribe(self._on_event, kinds={"progress", "waiting"})
        self._clock = threading.Thread(target=self._tick, name="fedjax-room-progress", daemon=True)
        self._clock.start()

    def _on_event(self, event: Any) -> None:
        if event.kind == "waiting":
            text = f"waiting for approval by {', '.join(event.waiting)}" if event.waiting else ""
        else:
            text = event.text()
        with self._lock:
            self.text = text
            self.bar.set_postfix_str(text, refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self.bar.refresh()

    def update(self, n: int = 1) -> None:
        """``n`` more rounds finished."""
        with self._lock:
            self.text = ""
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        """Stop following the run and remove the bar."""
        self._stop.set()
        self._unsubscribe()
        self._clock.join(5)
        self.bar.close()
