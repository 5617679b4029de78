"""A Jupyter server with the fedjax-room extension loaded (pytest-jupyter), and a stand-in analyst API.

The fakes (tests/conftest.py) have the shapes docs/interfaces.md specifies (Room, Run, EmbeddedRoom), so
the routes are tested without processes; test_routes_real.py runs the same routes against a real embedded room.
"""

from __future__ import annotations

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ... and their hooks)

from fedjax_room.errors import BudgetExceededError


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"fedjax_room.jupyter": True}}}


@pytest.fixture
def registry(jp_serverapp, fakes):
    """The server's room registry, wired to the fakes."""
    reg = jp_serverapp.web_app.settings["fedjax_room_registry"]
    reg.embedded_made = []

    def start_room(**kwargs):
        embedded = fakes.FakeEmbedded(**kwargs)
        reg.embedded_made.append(embedded)
        return embedded

    reg.start_room_fn = start_room
    reg.connect_fn = lambda url, key, **options: fakes.FakeRoom(("north", "south"))
    yield reg
    reg.close_all()


@pytest.fixture
def budget_error() -> Exception:
    return BudgetExceededError("site alpha would spend epsilon 12 > cap 10; lower target_epsilon")
