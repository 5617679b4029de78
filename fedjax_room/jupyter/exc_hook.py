"""In a notebook, an error the room raises on purpose is one typed line, not a traceback wall.

``%load_ext fedjax_room`` installs :func:`show_one_line` as IPython's custom exception handler for
:class:`~fedjax_room.errors.FedRoomError` (``shell.set_custom_exc``): ``room.train(spec, aggregator="median",
secure_aggregation=True)`` shows ``ConfigError: aggregator 'median' needs each site's update, ...`` as the cell's
error output and nothing more. The cell still fails (papermill and "run all" stop on it), and
``fedjax_room.jupyter.exc_hook.last_error()`` keeps the exception (its ``__traceback__`` included) for a closer
look. Every other exception shows IPython's usual traceback; a handler someone else installed is left alone.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from fedjax_room.errors import FedRoomError

__all__ = ["install", "last_error", "one_line", "show_one_line", "uninstall"]

_last: BaseException | None = None


def one_line(exc: BaseException) -> str:
    """``ConfigError: <message>``: the exception's class and its message on one line."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {' '.join(str(message).split())}"


def last_error() -> BaseException | None:
    """The last room error a cell raised (shown as one line), with its traceback; None if none yet."""
    return _last


def show_one_line(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: int | None = None,
) -> list[str]:
    """IPython custom exception handler: show ``value`` as one ``Type: message`` error line."""
    global _last
    _last = value
    line = one_line(value)
    shell._showtraceback(etype, value, [line])  # the kernel sends it as the cell's `error` output
    return [line]


def install(shell: Any) -> bool:
    """Show room errors in ``shell`` as one line; False (nothing changed) if another handler is installed."""
    current = tuple(getattr(shell, "custom_exceptions", ()) or ())
    if current and current != (FedRoomError,):
        return False
    shell.set_custom_exc((FedRoomError,), show_one_line)
    return True


def uninstall(shell: Any) -> None:
    """Back to IPython's tracebacks (only if the handler is ours)."""
    if tuple(getattr(shell, "custom_exceptions", ()) or ()) == (FedRoomError,):
        shell.custom_exceptions = ()
