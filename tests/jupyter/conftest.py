"""IPython with the extension loaded against the stand-in room (the fakes are in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fedjax_room.errors import BudgetExceededError


@pytest.fixture
def ip(fake_room: Any, fakes: Any):
    """IPython's test shell with the extension loaded and connected to ``fake_room``."""
    from IPython.testing.globalipapp import get_ipython

    import fedjax_room.jupyter as jupyter

    shell = get_ipython()
    shell.run_line_magic("load_ext", "fedjax_room")
    magics = jupyter._magics
    assert magics is not None
    magics.start_room_fn = fakes.FakeEmbedded
    magics.connect_fn = lambda url, key: fake_room
    magics.room = fake_room
    shell.user_ns["room"] = fake_room
    yield shell
    shell.run_line_magic("unload_ext", "fedjax_room")


@pytest.fixture
def budget_error() -> Exception:
    return BudgetExceededError("site alpha would spend epsilon 12 > cap 10; lower --target-epsilon")
