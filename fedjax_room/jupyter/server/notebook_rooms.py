"""The rooms this server's notebooks are connected to, seen by the sidebar (and the sidebar's, by notebooks).

A kernel's ``Room`` announces itself in the presence folder (:mod:`fedjax_room.analyst.presence`: a
``kernel-*.json`` record with the URL and the *paths* of the analyst key and coordinator pin). On each
:meth:`NotebookRooms.sync` (every poll of the sidebar's live feed, and GET /fedjax-room/status) the server

* links a record to the room it already shows when URL and key file are the same (a notebook that attached
  to the sidebar's demo room, or two notebooks on one room): the sidebar lists the notebooks using it;
* otherwise connects its own analyst client with those credentials (the same pin check as any client:
  nothing is sent to a coordinator that cannot prove the pinned key) and shows the room, ``origin`` notebook;
* forgets a notebook's room once no kernel record names it (the kernel closed it, or exited: a record whose
  process is gone is removed), closing only the server's own connection: the room is the notebook's.

For every room it shows, the server writes ``server-<pid>-<room>.json`` (:meth:`publish`), which
``fedjax_room.attach("room-1")`` reads in a notebook. A connection that fails is retried after
:data:`RETRY_AFTER` seconds, and said in the room list's ``notices``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from fedjax_room.analyst import presence
from fedjax_room.files import atomic_write, private_dir

__all__ = ["RETRY_AFTER", "NotebookRooms", "same_key"]

log = logging.getLogger("fedjax_room.jupyter.server")

#: Seconds before a notebook's room that could not be connected to is tried again.
RETRY_AFTER = 30.0
#: Seconds a notebook's room stays after its last kernel record went (a kernel that reconnects, or the demo
#: room's start-up client handing over to the notebook's, keeps the same room in the sidebar).
FORGET_AFTER = 10.0


def same_key(a: Any, b: Any) -> bool:
    """Whether two key paths name the same file."""
    if not a or not b:
        return False
    try:
        return os.path.realpath(str(a)) == os.path.realpath(str(b))
    except (OSError, ValueError):
        return False


class NotebookRooms:
    """The presence folder as this server reads and writes it.

    ``entry`` and ``registry`` are :class:`.registry.RoomEntry` and :class:`.registry.RoomRegistry` (typed
    ``Any`` here: the registry imports this module).
    """

    def __init__(self, folder: Path | None, root_dir: str | Path | None = None) -> None:
        self.folder = folder
        #: the server's root: a kernel's notebook path is shown relative to it
        self.root_dir = root_dir
        #: room id -> when its last kernel record went (monotonic)
        self.orphaned: dict[str, float] = {}
        self._lock = threading.Lock()
        #: kernel record name -> (monotonic time to try again, the error)
        self.failed: dict[str, tuple[float, str]] = {}

    # ---------------------------------------------------------------- what the server writes

    def _server_file(self, room_id: str) -> Path | None:
        return None if self.folder is None else self.folder / f"server-{os.getpid()}-{room_id}.json"

    def publish(self, entry: Any) -> None:
        """Write the record ``fedjax_room.attach(entry.id)`` reads (how this server connected to the room)."""
        path = self._server_file(entry.id)
        if path is None:
            return
        record = presence.record_for(
            entry.url,
            entry.key,
            coordinator_key=entry.coordinator_key,
            tls_ca=entry.tls_ca,
            insecure=entry.insecure,
            room_id=str(getattr(entry.room, "room_id", "") or ""),
            id=entry.id,
            server_pid=os.getpid(),
            kind=entry.kind,
            label=entry.label,
        )
        if record is None:
            return
        try:
            private_dir(path.parent)
            atomic_write(path, _json(record))
        except OSError as exc:
            log.warning("fedjax-room: cannot write %s: %s", path, exc)

    def unpublish(self, room_id: str) -> None:
        path = self._server_file(room_id)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def clean(self) -> None:
        """Remove records whose writer is gone (a server or kernel that was killed)."""
        for name, record in presence.read_records(self.folder):
            pid = record.get("server_pid") if name.startswith("server-") else record.get("pid")
            if not presence.pid_alive(pid) and self.folder is not None:
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()

    # ---------------------------------------------------------------- what the kernels wrote

    def records(self) -> dict[str, dict[str, Any]]:
        """The live kernels' records (a dead kernel's is removed)."""
        out = {}
        for name, record in presence.read_records(self.folder, "kernel-"):
            if presence.pid_alive(record.get("pid")):
                notebook = record.get("notebook")
                if isinstance(notebook, str) and self.root_dir and os.path.isabs(notebook):
                    try:
                        relative = os.path.relpath(notebook, self.root_dir)
                    except ValueError:  # another drive
                        relative = notebook
                    record["notebook"] = notebook if relative.startswith("..") else relative
                out[name] = record
            elif self.folder is not None:
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
        return out

    def sync(self, registry: Any) -> bool:
        """Bring the registry in line with the kernels' records; True if the room list changed."""
        if self.folder is None or not self._lock.acquire(blocking=False):
            return False  # another thread is syncing
        try:
            return self._sync(registry)
        finally:
            self._lock.release()

    def _sync(self, registry: Any) -> bool:
        records = self.records()
        changed = False
        now = time.monotonic()
        for entry in registry.entries():
            for name in [n for n in entry.records if n not in records]:
                entry.records.pop(name)
                changed = True
            for name in [n for n in entry.records if entry.records[n] != records[n]]:
                entry.records[name] = records[name]  # described since (a demo room's dataset and sites)
                changed = True
            if entry.origin == "notebook" and not entry.records:
                since = self.orphaned.setdefault(entry.id, now)
                if now - since >= FORGET_AFTER:
                    # the notebook closed it (room.close(), %room stop, the kernel exited): only the server's
                    # own connection goes; the room is the notebook's
                    self.orphaned.pop(entry.id, None)
                    registry.forget(entry.id)
                    changed = True
        self.failed = {n: f for n, f in self.failed.items() if n in records}
        linked = {n for e in registry.entries() for n in e.records}
        for name, record in records.items():
            if name in linked:
                continue
            match = next(
                (e for e in registry.entries() if e.url == record["url"] and same_key(e.key, record["key"])),
                None,
            )
            if match is not None:
                match.records[name] = record
                self.orphaned.pop(match.id, None)
                changed = True
                continue
            if name in self.failed and self.failed[name][0] > now:
                continue
            try:
                registry.add_notebook_room(name, record)
            except Exception as exc:  # shown as a notice; tried again later
                message = " ".join(str(getattr(exc, "message", None) or exc or type(exc).__name__).split())
                self.failed[name] = (now + RETRY_AFTER, f"{type(exc).__name__}: {message}")
                log.warning("fedjax-room: cannot follow the room at %s from %s: %s", record["url"], name, message)
                changed = True
            else:
                self.failed.pop(name, None)
                changed = True
        return changed

    def notices(self) -> list[str]:
        return [f"a notebook's room could not be shown: {message}" for _, message in self.failed.values()]


def _json(record: dict[str, Any]) -> bytes:
    import json

    return json.dumps(record, allow_nan=False).encode()
