"""The dashboard notebook the sidebar opens, and the kernel-side call its first cell makes.

:func:`dashboard_notebook` builds the notebook (plain nbformat 4 JSON, no outputs) whose first cell
calls :func:`show_dashboard`; :func:`show_dashboard` runs in the notebook's kernel: it connects to the
room as the analyst (its own connection; the server's stays the sidebar's), finds the run and returns a
live :class:`~fedjax_room.jupyter.dashboard.RunDashboard` attached to it — or, when there is no run yet,
the :class:`~fedjax_room.jupyter.launch.LaunchForm` that starts one with its dashboard below.

This module imports neither jupyter_server nor ipywidgets at import time, so the server can build
notebooks and the kernel can import it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["dashboard_notebook", "notebook_path", "show_dashboard"]

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


def dashboard_source(url: str, key: str, run_id: str | None) -> str:
    """The first cell: one call that shows the run's live dashboard.

    ``run_id`` comes from the room: it must be a valid run id (:data:`~fedjax_room.protocol.fields.ID_PATTERN`,
    else :class:`~fedjax_room.errors.ProtocolError`), and like ``url`` and ``key`` it is written only as a
    ``repr`` literal (and, sanitised, in the comment), so no string can add code to the cell.
    """
    from fedjax_room.protocol.fields import check_id

    if run_id is not None and run_id != "":
        check_id(run_id, "run id")
    run = f", run={run_id!r}" if run_id else ""
    what = f"run {run_id!r}" if run_id else "a new run"
    return (
        f"# Clean Room: the live dashboard for {_comment(what)} in the room at {_comment(repr(url))}\n"
        "from fedjax_room.jupyter.server.notebook import show_dashboard\n"
        "\n"
        f"dashboard = show_dashboard({url!r}, key={key!r}{run})\n"
        "dashboard"
    )


def dashboard_notebook(url: str, key: str, run_id: str | None, *, kernel_name: str = "python3") -> dict[str, Any]:
    """An nbformat 4 notebook whose first cell shows the dashboard for ``run_id`` in the room at ``url``."""
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "clean-room-dashboard",
            "metadata": {"tags": ["clean-room-dashboard"]},
            "outputs": [],
            "source": dashboard_source(url, key, run_id),
        },
        {
            "cell_type": "markdown",
            "id": "clean-room-next",
            "metadata": {},
            "source": (
                "`dashboard.run` is the run and `dashboard.room` the connected `Room`: `room.budget()`, "
                "`room.audit(last=20)`, `run.wait()`, `run.history` and `run.privacy` go on from here."
            ),
        },
    ]
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": kernel_name, "display_name": "Python 3 (ipykernel)", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def show_dashboard(url: str, key: str, run: str | None = None, *, connect: Callable[..., Any] | None = None) -> Any:
    """Connect to the room at ``url`` and return a live dashboard for ``run`` (a launch form if None).

    The widget keeps ``.room`` (the connection) and ``.run``. ``connect`` defaults to
    ``fedjax_room.analyst.connect``.
    """
    from fedjax_room.analyst.views import records
    from fedjax_room.jupyter.dashboard import RunDashboard

    if connect is None:
        from fedjax_room.analyst import connect as analyst_connect

        connect = analyst_connect
    room = connect(url, key=key)
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
    return dashboard.attach(handle)
