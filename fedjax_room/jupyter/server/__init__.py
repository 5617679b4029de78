"""The jupyter_server extension behind the Clean Room sidebar: REST routes under ``/fedjax-room/``.

Enabled on install by ``jupyter-config/jupyter_server_config.d/fedjax_room.json`` (which names
``fedjax_room.jupyter``, whose ``_jupyter_server_extension_points`` points here). On load it creates
one :class:`~.registry.RoomRegistry` per server — the rooms this server is connected to — and registers
the routes in :mod:`.handlers`; on unload it closes every connection and stops every demo room.

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

    registry = RoomRegistry()
    atexit.register(registry.close_all)  # demo rooms' processes outlive a server that is not shut down cleanly
    serverapp.web_app.settings[_REGISTRY_KEY] = registry
    setup_handlers(serverapp.web_app, registry)
    serverapp.log.info("fedjax-room: Clean Room routes registered under /fedjax-room/")


def _unload_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server on shutdown: close the rooms and stop the demo rooms."""
    registry = serverapp.web_app.settings.pop(_REGISTRY_KEY, None)
    if registry is not None:
        registry.close_all()
        atexit.unregister(registry.close_all)


# The name older jupyter_server / notebook versions look for.
load_jupyter_server_extension = _load_jupyter_server_extension
