"""The dashboard notebook the sidebar opens, and the kernel-side call its first cell makes.

:func:`dashboard_notebook` builds the notebook (plain nbformat 4 JSON, no outputs, on the Clean Room
kernel when it is installed: :func:`pick_kernel`) whose first cell attaches to the room by its id
(``fedjax_room.attach``: no key path is written into the notebook) and calls :func:`show_dashboard`, which
runs in the notebook's kernel: it finds the run and returns a live
:class:`~fedjax_room.jupyter.dashboard.RunDashboard` attached to it — or, when there is no run yet, the
:class:`~fedjax_room.jupyter.launch.LaunchForm` that starts one with its dashboard below. The sidebar
opens the notebook and runs it.

This module imports neither jupyter_server nor ipywidgets at import time, so the server can build
notebooks and the kernel can import it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["dashboard_notebook", "dashboard_source", "notebook_path", "pick_kernel", "show_dashboard"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]")


def notebook_path(run_id: str | None) -> str:
    """``clean-room-dashboard-<run>.ipynb`` (``clean-room-dashboard.ipynb`` with no run), at the server root."""
    if not run_id:
        return "clean-room-dashboard.ipynb"
    return f"clean-room-dashboard-{_SAFE.sub('-', run_id).strip('-.') or 'run'}.ipynb"


def _comment(text: str) -> str:
    """``text`` safe inside a ``#`` comment line: printable ASCII only, nothing that could end the line."""
    return _COMMENT_UNSAFE.sub("?", text)[:200]


def dashboard_source(room_id: str, run_id: str | None, *, label: str = "") -> str:
    """The first cell: attach to the room by its id and show the run's live dashboard.

    No key path is written into the notebook: :func:`fedjax_room.attach` finds how this server connected to
    the room (analyst/presence.py). ``room_id`` and ``run_id`` come from the room: each must be a valid id
    (:data:`~fedjax_room.protocol.fields.ID_PATTERN`, else :class:`~fedjax_room.errors.ProtocolError`), and
    they are written only as ``repr`` literals (and, sanitised, in the comment), so no string adds code.
    """
    from fedjax_room.protocol.fields import check_id

    check_id(room_id, "room id")
    if run_id is not None and run_id != "":
        check_id(run_id, "run id")
    run = f", run={run_id!r}" if run_id else ""
    what = f"run {run_id!r}" if run_id else "a new run"
    where = f" ({_comment(label)})" if label else ""
    return (
        f"# Clean Room: the live dashboard for {_comment(what)} in room {_comment(repr(room_id))}{where}\n"
        "import fedjax_room\n"
        "from fedjax_room.jupyter.server.notebook import show_dashboard\n"
        "\n"
        f"room = fedjax_room.attach({room_id!r})  # the room the Clean Room sidebar shows\n"
        f"dashboard = show_dashboard(room{run})\n"
        "dashboard"
    )


def dashboard_notebook(
    room_id: str,
    run_id: str | None,
    *,
    kernel_name: str = "python3",
    kernel_display_name: str = "Python 3 (ipykernel)",
    label: str = "",
) -> dict[str, Any]:
    """An nbformat 4 notebook whose first cell shows the dashboard for ``run_id`` in room ``room_id``."""
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "clean-room-dashboard",
            "metadata": {"tags": ["clean-room-dashboard"]},
            "outputs": [],
            "source": dashboard_source(room_id, run_id, label=label),
        },
        {
            "cell_type": "markdown",
            "id": "clean-room-next",
            "metadata": {},
            "source": (
                "`room` is the connected `Room` and `dashboard.run` the run: `room.budget()`, "
                "`room.audit(last=20)`, `run.wait()`, `run.history` and `run.privacy` go on from here."
            ),
        },
    ]
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": kernel_name, "display_name": kernel_display_name, "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def pick_kernel(specs: Mapping[str, Any], default: str | None = None) -> tuple[str, str]:
    """``(name, display name)`` of the kernel a dashboard notebook declares: the Clean Room kernel if it is
    installed (``fedjax-room``), else the server's default, else ``python3``."""
    from fedjax_room.jupyter.kernelspec import DISPLAY_NAME, KERNEL_NAME

    if KERNEL_NAME in specs:
        return KERNEL_NAME, DISPLAY_NAME
    name = default if default and default in specs else "python3"
    spec = specs.get(name)
    display = getattr(spec, "display_name", None) or (spec.get("display_name") if isinstance(spec, Mapping) else None)
    return name, str(display or "Python 3 (ipykernel)")


def show_dashboard(room: Any, run: str | None = None, *, attach: Callable[[str], Any] | None = None) -> Any:
    """A live dashboard for ``run`` in ``room`` (a connected ``Room``, or a room id for
    :func:`fedjax_room.attach`); with no run, the launch form that starts one.

    The widget keeps ``.room`` (the connection) and ``.run``.
    """
    from fedjax_room.analyst.views import records
    from fedjax_room.jupyter.dashboard import RunDashboard

    if isinstance(room, str):
        if attach is None:
            from fedjax_room.analyst.attach import attach as attach_room

            attach = attach_room
        room = attach(room)
    if run is None:
        from fedjax_room.jupyter.launch import LaunchForm

        form = LaunchForm(room)
        form.room = room
        return form
    caps: dict[str, float] = {}
    try:
        for row in records(room.budget()):
            cap = row.get("epsilon_cap", row.get("cap"))
            if isinstance(cap, int | float) and cap > 0:
                caps[str(row.get("site") or row.get("name"))] = float(cap)
    except Exception:  # the gauges fall back to the run's target epsilon
        pass
    rounds = 0
    for summary in room.runs():
        if str(getattr(summary, "id", "")) == run:
            rounds = int(getattr(summary, "rounds", 0) or 0)
    handle = room.run(run)  # watched: its events are pushed to the dashboard
    dashboard = RunDashboard(run_id=run, rounds=rounds, sites=caps.keys(), caps=caps)
    dashboard.room, dashboard.run = room, handle
    dashboard.attach(handle)
    if getattr(handle, "done", False):
        # an ended run: let the dashboard record its end before the cell displays it, so the cell shows (and a
        # saved notebook keeps) the static snapshot rather than a widget whose model a reopened notebook lacks
        dashboard.wait(10)
    return dashboard
