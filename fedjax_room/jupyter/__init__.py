"""Notebook-native access to a clean room: magics, live widgets, rich displays, a kernelspec.

``%load_ext fedjax_room`` (or the "Clean Room (Python 3)" kernel, which loads it for you) registers
``%room`` / ``%%room train`` (:mod:`.magics`). The widgets — :class:`RunDashboard` and
:class:`LaunchForm` — and the HTML helpers in :mod:`.display` are a thin layer over the analyst API
(:mod:`fedjax_room.analyst`); nothing here trains, accounts or talks to a site.

Submodules are imported lazily, so ``import fedjax_room`` stays cheap and the CLI can install the
kernelspec without importing IPython widgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedjax_room._lazy import lazy_names

if TYPE_CHECKING:
    from fedjax_room.jupyter.dashboard import RunDashboard
    from fedjax_room.jupyter.launch import LaunchForm
    from fedjax_room.jupyter.magics import RoomMagics

__all__ = [
    "LaunchForm",
    "RoomMagics",
    "RunDashboard",
    "current_demo",
    "current_room",
    "current_run",
    "load_ipython_extension",
    "unload_ipython_extension",
]

__getattr__, __dir__ = lazy_names(
    __name__, {"LaunchForm": "launch", "RoomMagics": "magics", "RunDashboard": "dashboard"}
)

_magics: RoomMagics | None = None


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%room`` and ``%%room`` in this IPython shell (``%load_ext fedjax_room``)."""
    global _magics
    from fedjax_room.jupyter import exc_hook
    from fedjax_room.jupyter.magics import RoomMagics

    exc_hook.install(ipython)  # a FedRoomError from Python code in a cell: one typed line, not a traceback
    if _magics is not None and _magics.shell is ipython:
        return
    _magics = RoomMagics(ipython)
    ipython.register_magics(_magics)
    if getattr(ipython, "kernel", None) is not None:  # in a Jupyter kernel: make the Clean Room kernel available
        from fedjax_room.jupyter.kernelspec import ensure_kernel_spec

        ensure_kernel_spec()


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics, close the connection and stop an embedded room (``%unload_ext fedjax_room``)."""
    global _magics
    from fedjax_room.jupyter import exc_hook

    exc_hook.uninstall(ipython)
    if _magics is None:
        return
    _magics.stop(quiet=True)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("room", None)
    _magics = None


def current_room() -> Any:
    """The Room the magics are connected to (``None`` if none)."""
    return _magics.room if _magics is not None else None


def current_demo() -> Any:
    """The analyst's handle on the room ``%room demo`` started (``fedjax_room.sim.demo.AnalystDemo``: URL,
    ``connect()``, the analyst's own ``central_test()``; no site's data), or ``None`` if none."""
    embedded = _magics.embedded if _magics is not None else None
    for_analyst = getattr(embedded, "for_analyst", None)
    return for_analyst() if for_analyst is not None else embedded


def current_run() -> Any:
    """The Run most recently started by ``%%room train`` or the launch form (``None`` if none)."""
    return _magics.run if _magics is not None else None


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server: the Clean Room REST routes live in :mod:`fedjax_room.jupyter.server`."""
    return [{"module": "fedjax_room.jupyter.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """``jupyter labextension develop``: the built sidebar extension and where it installs."""
    return [{"src": "../labextension", "dest": "fedjax-room"}]
