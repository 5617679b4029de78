"""``fedjax_room.attach("room-1")``: a notebook connects to a room the Jupyter server's Clean Room sidebar shows.

The server writes, for every room its sidebar shows, how it connected (:mod:`fedjax_room.analyst.presence`: the
URL and the *paths* of the analyst key and coordinator pin, in the runtime folder kernels share with it);
:func:`attach` finds the record by the sidebar's id or the coordinator's room id and connects with
:func:`fedjax_room.analyst.client.connect`, so a notebook uses the sidebar's room in one line and no key path is
written into it.
"""

from __future__ import annotations

import os
from typing import Any

from fedjax_room.analyst.client import connect
from fedjax_room.analyst.presence import kernel_presence_dir, pid_alive, read_records
from fedjax_room.errors import ConfigError

__all__ = ["attach"]


def attach(room: str, **options: Any) -> Any:
    """Connect to a room the Jupyter sidebar shows, by its id there (``room-1``) or the coordinator's room id.

    The credentials are the ones the server connected that room with (its analyst key file and coordinator
    pin, by path); ``options`` go to :func:`fedjax_room.analyst.connect` (``timeout=``, ...). Raises
    :class:`~fedjax_room.errors.ConfigError` naming the rooms there are when none matches.
    """
    if not isinstance(room, str) or not room.strip():
        raise ConfigError("attach takes a room id, as the Clean Room sidebar shows it (e.g. 'room-1')")
    room = room.strip()
    folder = kernel_presence_dir()
    if folder is None:
        raise ConfigError(
            "fedjax_room.attach works in a notebook on the Jupyter server whose sidebar shows the room; "
            "elsewhere use fedjax_room.connect(url, key='analyst.key')"
        )
    parent = os.getppid()
    found: list[dict[str, Any]] = []
    known: list[str] = []
    for _name, record in read_records(folder, "server-"):
        if not pid_alive(record.get("server_pid")):
            continue
        known.append(str(record.get("id")))
        if room in (record.get("id"), record.get("room_id")):
            found.append(record)
    if len(found) > 1:  # two Jupyter servers share the runtime folder: prefer the one this kernel runs under
        found = [r for r in found if r.get("server_pid") == parent] or found[:1]
    if not found:
        shown = ", ".join(sorted(set(known))) or "none"
        raise ConfigError(f"no room {room!r} in the Clean Room sidebar of this Jupyter server (it shows: {shown})")
    record = found[0]
    kwargs: dict[str, Any] = {}
    if record.get("coordinator_key"):
        kwargs["coordinator_key"] = record["coordinator_key"]
    if record.get("tls_ca"):
        kwargs["tls_ca"] = record["tls_ca"]
    if record.get("insecure"):
        kwargs["insecure"] = True
    kwargs.update(options)
    return connect(record["url"], key=record["key"], **kwargs)
