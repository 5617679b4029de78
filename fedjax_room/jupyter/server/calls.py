"""Blocking analyst calls from the server's event loop: each on a daemon thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["in_daemon_thread"]


def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``fn(*args)`` on a daemon thread of its own, as a future of this event loop.

    Not an executor: the analyst API can block for as long as a room does not answer, and a pool's
    worker blocked that way would hold up the server's exit (pools join their workers); a daemon
    thread does not.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as exc:  # delivered to the awaiting handler
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the server's loop closed while the room was answering
            pass

    threading.Thread(target=work, name="fedjax-room-call", daemon=True).start()
    return future
