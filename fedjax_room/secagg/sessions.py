"""One masked input per (run, round): the site's record of the SecAgg sessions it joined, on disk.

A coordinator that runs a second SecAgg session for a round it already ran (a subset of the sites, or
the same roster with a faked dropout) and subtracts the two sums learns one site's input exactly. So a
site releases a masked input into at most one session per (run, round), ever: :class:`SessionBindings`
keeps ``secagg_sessions.json`` in the site's state directory (0600, written atomically before the
masked input leaves, so a restart keeps it)::

    {"<run>/<round>": {"session": "<config digest hex>", "released": true}, ...}

* :meth:`SessionBindings.join` is called before the site makes a SecAgg client for a ``secagg_setup``:
  it raises :class:`~fedjax_room.errors.ReplayError` when a masked input for that (run, round) has
  already been released (in this session or any other); joining again before anything was released is
  allowed (the new client has fresh keys and nothing of the old one was revealed).
* :meth:`SessionBindings.release` is called just before the masked input is sent: it refuses a second
  release for the (run, round) and persists the first.

The site does not re-noise and pay again for a second session: it refuses it, so the round completes
without it or aborts (the coordinator's choice), and nothing more about its input leaves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedjax_room.errors import ReplayError, StateError
from fedjax_room.files import atomic_write

__all__ = ["SESSIONS_FILE", "SessionBindings"]

#: The file name in the site's state directory.
SESSIONS_FILE = "secagg_sessions.json"


class SessionBindings:
    """The persisted (run, round) -> session binding of one site (``state_dir`` None: in memory only)."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(state_dir) / SESSIONS_FILE if state_dir is not None else None
        self._rounds: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise StateError(
                    f"{self.path} cannot be read ({exc}); it records which secure rounds this site already "
                    "released a masked input into: restore it from a backup rather than deleting it"
                ) from None
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise StateError(f"{self.path} is not a map of rounds to sessions; restore it from a backup")
            self._rounds = data

    @staticmethod
    def _key(run_id: str, round: int) -> str:
        return f"{run_id}/{int(round)}"

    def released(self, run_id: str, round: int) -> str | None:
        """The session (config digest hex) a masked input for (run, round) went into, if any."""
        entry = self._rounds.get(self._key(run_id, round))
        return str(entry["session"]) if entry and entry.get("released") else None

    def join(self, run_id: str, round: int, session: str) -> None:
        """May this site join ``session`` for (run, round)? Raises :class:`ReplayError` if not."""
        done = self.released(run_id, round)
        if done is not None:
            same = "the same session again" if done == session else "a second session"
            raise ReplayError(
                f"round {round} of run {run_id}: this site already released its masked input into session "
                f"{done[:12]}; the coordinator opened {same} for that round (a replay that would let it "
                "subtract sums and see this site's update): refused"
            )
        self._rounds[self._key(run_id, round)] = {"session": session, "released": False}

    def release(self, run_id: str, round: int, session: str) -> None:
        """Record, durably, that the masked input for (run, round) goes into ``session`` (once only)."""
        self.join(run_id, round, session)
        self._rounds[self._key(run_id, round)] = {"session": session, "released": True}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self._rounds, sort_keys=True).encode())

    def __len__(self) -> int:
        return len(self._rounds)
