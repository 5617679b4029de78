"""fedjax_room: a Jupyter-native data clean room for federated learning with differential privacy."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext fedjax_room``: register the ``%room`` magics (see :mod:`fedjax_room.jupyter`)."""
    from fedjax_room.jupyter import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext fedjax_room``: remove the magics and stop an embedded room."""
    from fedjax_room.jupyter import unload_ipython_extension as unload

    unload(ipython)
