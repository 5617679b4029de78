"""fedjax_room: a Jupyter-native data clean room for federated learning with differential privacy."""

from typing import Any

from fedjax_room._version import __version__

__all__ = ["__version__", "attach", "connect", "load_ipython_extension", "unload_ipython_extension"]


def connect(url: str, key: Any, **kwargs: Any) -> Any:
    """Connect to a room as an analyst: ``fedjax_room.connect(url, key="analyst.key") -> Room``.

    See :func:`fedjax_room.analyst.connect` (imported on first use, so ``import fedjax_room`` stays light).
    """
    from fedjax_room.analyst import connect as _connect

    return _connect(url, key, **kwargs)


def attach(room: str, **kwargs: Any) -> Any:
    """In a notebook: connect to a room the Clean Room sidebar shows, by its id (``attach("room-1")``).

    See :func:`fedjax_room.analyst.attach.attach`: it uses the credentials that Jupyter server connected
    the room with (key and pin files, by path), so no key path is written into the notebook.
    """
    from fedjax_room.analyst.attach import attach as _attach

    return _attach(room, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext fedjax_room``: register the ``%room`` magics (see :mod:`fedjax_room.jupyter`)."""
    from fedjax_room.jupyter import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext fedjax_room``: remove the magics and stop an embedded room."""
    from fedjax_room.jupyter import unload_ipython_extension as unload

    unload(ipython)
