"""Stopping a serving process: SIGTERM and SIGINT ask its loop to stop cleanly, with a deadline.

Used by the coordinator (:func:`fedjax_room.coordinator.server.serve_coordinator`) and the site
(:func:`fedjax_room.site.runner.run_site`) processes. A shutdown can stall behind an import lock held by a
background JAX warm-up; every write these processes make is atomic, so leaving after the grace period is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable

__all__ = ["install_stop_signals", "stopper"]


def stopper(stop: asyncio.Event, grace: float = 5.0) -> Callable[[], None]:
    """A signal handler: set ``stop``, and exit the process anyway if it has not ended in ``grace`` s."""

    def handler() -> None:
        stop.set()
        timer = threading.Timer(grace, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    return handler


def install_stop_signals(stop: asyncio.Event, grace: float = 5.0) -> None:
    """Make SIGTERM and SIGINT set ``stop`` on the running loop (where the platform allows signal handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopper(stop, grace))
