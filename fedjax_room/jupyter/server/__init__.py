"""The jupyter_server extension behind the Clean Room sidebar: REST routes under ``/fedjax-room/``.

Enabled on install by ``jupyter-config/jupyter_server_config.d/fedjax_room.json`` (which names
``fedjax_room.jupyter``, whose ``_jupyter_server_extension_points`` points here). On load it creates
one :class:`~.registry.RoomRegistry` per server — the rooms this server is connected to, its notebooks'
rooms included (:mod:`.notebook_rooms`, read from the kernels' presence folder) — and registers the routes
in :mod:`.handlers`; when the server's process exits it closes every connection and stops
every demo room (their processes run in sessions of their own, so nothing else would).

Importing this package is cheap: jupyter_server and tornado are imported only when the server loads it,
so a kernel can import :mod:`.notebook` without them.
"""

from __future__ import annotations

import atexit
from typing import Any

__all__ = ["load_jupyter_server_extension"]

_REGISTRY_KEY = "fedjax_room_registry"


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server: register the routes with a fresh room registry."""
    from fedjax_room.jupyter.server.handlers import setup_handlers
    from fedjax_room.jupyter.server.registry import RoomRegistry

    registry = RoomRegistry(presence_dir=_presence_dir(serverapp), root_dir=getattr(serverapp, "root_dir", None))
    registry.notebook_rooms.clean()  # records a killed server or kernel left behind
    # jupyter_server has no shutdown hook for a module-style extension; a server that stops (Ctrl-C,
    # SIGTERM, the shutdown API) exits the interpreter, so the demo rooms' processes are stopped here.
    atexit.register(registry.close_all)
    serverapp.web_app.settings[_REGISTRY_KEY] = registry
    setup_handlers(serverapp.web_app, registry)
    serverapp.log.info("fedjax-room: Clean Room routes registered under /fedjax-room/")


def _presence_dir(serverapp: Any) -> Any:
    """Where the kernels announce their rooms (fedjax_room.analyst.presence): beside their connection files."""
    import os
    from pathlib import Path

    from fedjax_room.analyst import presence

    presence.enabled = False  # this process's own analyst clients are the sidebar's, not a notebook's
    if os.environ.get(presence.PRESENCE_ENV):
        return Path(os.environ[presence.PRESENCE_ENV])
    folder = getattr(getattr(serverapp, "kernel_manager", None), "connection_dir", None) or getattr(
        serverapp, "runtime_dir", None
    )
    return Path(folder) / presence.SUBDIR if folder else None


# The name older jupyter_server / notebook versions look for.
load_jupyter_server_extension = _load_jupyter_server_extension
