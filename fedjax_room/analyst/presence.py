"""Which rooms the analysts on this Jupyter server are connected to: one small file per connection.

A kernel and the Jupyter server it runs under share one private folder, the server's runtime directory
(where jupyter_server writes the kernels' connection files, 0700). In it, :data:`SUBDIR` holds one JSON
record per connected room (0600, written atomically)::

    kernel-<kernel id>-<pid>-<n>.json   written by a kernel when a Room connects (Room.__init__), removed
                                        when it closes or the kernel exits; read by the server extension,
                                        which connects its own analyst client to show the room in the sidebar
    server-<server pid>-<room>.json     written by the server extension for every room its sidebar shows
                                        (<room> is the sidebar's id, ``room-1``); read by ``attach``

A record holds how to connect, never key material: the coordinator's URL, the *path* of the analyst's
private key (a file the user already has; the reader opens it itself), the path of the coordinator pin
(``coordinator.key.pub`` or the room manifest), ``tls_ca``/``insecure``, the coordinator's room id, and for
the people reading the sidebar: the kind (``demo``/``remote``), the dataset and site names of a demo room,
the notebook the kernel runs (``$JPY_SESSION_NAME``). A connection made with an in-memory key object has no
path to share and is not recorded.

The folder is found the same way on both sides: ``$FEDJAX_ROOM_PRESENCE_DIR`` if set; in a kernel, beside
its connection file; in the server, beside the kernels' (``KernelManager.connection_dir``). Outside a kernel
(a script, a CLI), :func:`announce` does nothing. Every failure here is swallowed and logged: announcing a
room must never break connecting to it.

:func:`fedjax_room.analyst.attach.attach` is the other direction: ``fedjax_room.attach("room-1")`` (or the
coordinator's room id) in a notebook connects to a room the sidebar shows, with the credentials that room was
connected with (it reads the server's records with :func:`read_records`).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedjax_room.files import atomic_write, private_dir

__all__ = [
    "PRESENCE_ENV",
    "RECORD_VERSION",
    "SUBDIR",
    "announce",
    "describe",
    "kernel_presence_dir",
    "pid_alive",
    "read_records",
    "record_for",
    "withdraw",
]

log = logging.getLogger("fedjax_room.analyst.presence")

PRESENCE_ENV = "FEDJAX_ROOM_PRESENCE_DIR"
SUBDIR = "fedjax-room-rooms"
RECORD_VERSION = 1
#: Records bigger than this are not read (a record is a few hundred bytes).
MAX_RECORD_BYTES = 16_384
#: At most this many records are read from the folder.
MAX_RECORDS = 256

_NAME = re.compile(r"^(kernel|server)-[A-Za-z0-9_.-]{1,120}\.json$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_counter = itertools.count(1)
_lock = threading.Lock()
#: id(Room) -> the record file this process wrote for it
_written: dict[int, Path] = {}
_atexit_registered = False
#: False in a process that must not announce its connections (the Jupyter server's own analyst clients).
enabled = True


def kernel_presence_dir() -> Path | None:
    """The folder this process announces into: ``$FEDJAX_ROOM_PRESENCE_DIR``, else beside this kernel's
    connection file; None outside a Jupyter kernel."""
    env = os.environ.get(PRESENCE_ENV)
    if env:
        return Path(env)
    connection = _connection_file()
    return connection.parent / SUBDIR if connection is not None else None


def _connection_file() -> Path | None:
    """This kernel's connection file (ipykernel only, and only if it is already imported)."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is None:
        return None
    try:
        app_class = kernelapp.IPKernelApp
        if not app_class.initialized():
            return None
        app = app_class.instance()
        path = getattr(app, "abs_connection_file", None) or app.connection_file
    except Exception:
        return None
    return Path(path) if path else None


def _kernel_id() -> str:
    connection = _connection_file()
    if connection is None:
        return "process"
    name = connection.stem  # kernel-<uuid>
    return _SAFE.sub("-", name[len("kernel-") :] if name.startswith("kernel-") else name)[:64] or "kernel"


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive, though not ours
        return True
    return True


def _path(value: Any) -> str | None:
    if isinstance(value, str | os.PathLike):
        return str(Path(value).expanduser().resolve())
    return None


def record_for(
    url: str,
    key: Any,
    *,
    coordinator_key: Any = None,
    tls_ca: Any = None,
    insecure: bool = False,
    room_id: str = "",
    **info: Any,
) -> dict[str, Any] | None:
    """The record for a connection, or None when it cannot be shared (the key is not a file path)."""
    key_path = _path(key)
    if key_path is None:
        return None
    if coordinator_key is not None and _path(coordinator_key) is None:
        return None  # pinned with raw bytes: nothing another process could open
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "url": str(url),
        "key": key_path,
        "coordinator_key": _path(coordinator_key),
        "tls_ca": _path(tls_ca),
        "insecure": bool(insecure),
        "room_id": str(room_id or ""),
        "pid": os.getpid(),
        "created": time.time(),
        "kind": "remote",
    }
    record.update({k: v for k, v in info.items() if v is not None})
    return record


def _write(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(dict(record), allow_nan=False).encode())


def announce(
    room: Any,
    url: str,
    key: Any,
    *,
    coordinator_key: Any = None,
    tls_ca: Any = None,
    insecure: bool = False,
) -> Path | None:
    """Record that ``room`` (a connected ``Room``) is open in this kernel; returns the file, or None.

    Nothing happens outside a Jupyter kernel or for a key that is not a file; a failure is logged only.
    """
    global _atexit_registered
    if not enabled:
        return None
    try:
        folder = kernel_presence_dir()
        if folder is None:
            return None
        record = record_for(
            url,
            key,
            coordinator_key=coordinator_key,
            tls_ca=tls_ca,
            insecure=insecure,
            room_id=str(getattr(room, "room_id", "") or ""),
            kernel_id=_kernel_id(),
            notebook=os.environ.get("JPY_SESSION_NAME") or None,
        )
        if record is None:
            return None
        private_dir(folder)
        path = folder / f"kernel-{_kernel_id()}-{os.getpid()}-{next(_counter)}.json"
        _write(path, record)
        with _lock:
            _written[id(room)] = path
            if not _atexit_registered:
                atexit.register(_withdraw_all)
                _atexit_registered = True
        return path
    except Exception as exc:  # announcing must never break connecting
        log.debug("could not announce the room to the Jupyter server: %s", exc)
        return None


def describe(room: Any, **info: Any) -> None:
    """Add what a person reads in the sidebar (``kind="demo"``, ``dataset``, ``site_names``, ``state_dir``)
    to ``room``'s record, if it has one."""
    with _lock:
        path = _written.get(id(room))
    if path is None:
        return
    try:
        record = json.loads(path.read_text())
        record.update({k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in info.items() if v is not None})
        _write(path, record)
    except Exception as exc:
        log.debug("could not describe the room to the Jupyter server: %s", exc)


def withdraw(room: Any) -> None:
    """``room`` closed: remove its record."""
    with _lock:
        path = _written.pop(id(room), None)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _withdraw_all() -> None:
    with _lock:
        paths = list(_written.values())
        _written.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _trusted_folder(folder: Path) -> bool:
    """Ours and private: a folder anyone else could write to is not read."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def read_records(folder: Path | None, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, record)`` for each well-formed record in ``folder`` whose name starts with ``prefix``.

    Skipped: a folder or file not owned by this user or writable by others, names not in the scheme, files
    over :data:`MAX_RECORD_BYTES`, anything that is not a JSON object of this version with a URL and a key path.
    """
    if folder is None or not _trusted_folder(folder):
        return
    try:
        names = sorted(os.listdir(folder))[:MAX_RECORDS]
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or not _NAME.match(name):
            continue
        path = folder / name
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                continue
            if st.st_size > MAX_RECORD_BYTES:
                continue
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(record, dict)
            and record.get("version") == RECORD_VERSION
            and isinstance(record.get("url"), str)
            and isinstance(record.get("key"), str)
        ):
            yield name, record
