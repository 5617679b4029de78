"""With ``%load_ext fedjax_room``, a room error raised by Python code in a cell is one typed line."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.utils.capture import capture_output

from fedjax_room.analyst import Room
from fedjax_room.errors import ConfigError
from fedjax_room.models import logistic


class _RecordingCore:
    """The one piece under test is Room.train's checking: this core records anything that would be sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.timeout = 5.0
        self.runs: dict[str, Any] = {}

    def request(self, build: Any, *, resend: bool = True) -> Any:
        self.sent.append(build(1))
        raise AssertionError("nothing may be sent for a refused option")

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        return coro


@pytest.fixture
def shell():
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "fedjax_room")
    yield ip
    ip.run_line_magic("unload_ext", "fedjax_room")


def test_median_with_secure_aggregation_is_one_config_error_line_and_nothing_is_sent(shell):
    core = _RecordingCore()
    room = Room.__new__(Room)
    room.url, room._core = "wss://room.example:8765", core
    shell.user_ns.update(room=room, spec=logistic([4], 2))
    with capture_output() as cap:
        result = shell.run_cell("room.train(spec, aggregator='median', secure_aggregation=True)")
    assert isinstance(result.error_in_exec, ConfigError)  # the cell failed (papermill stops on it)
    lines = [line for line in (cap.stdout + cap.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ConfigError: aggregator 'median' needs each site's update")
    assert "Traceback" not in cap.stdout + cap.stderr
    assert core.sent == []
    from fedjax_room.jupyter import exc_hook

    assert exc_hook.last_error() is result.error_in_exec and result.error_in_exec.__traceback__ is not None


def test_other_errors_keep_their_traceback_and_unload_restores(shell):
    with capture_output() as cap:
        result = shell.run_cell("def f():\n    raise KeyError('x')\nf()")
    assert isinstance(result.error_in_exec, KeyError)
    assert "Traceback" in cap.stdout + cap.stderr or "f()" in cap.stdout + cap.stderr
    shell.run_line_magic("unload_ext", "fedjax_room")
    assert shell.custom_exceptions == ()
    with capture_output() as cap:
        result = shell.run_cell("from fedjax_room.errors import ConfigError\nraise ConfigError('plain')")
    assert len([line for line in cap.stdout.splitlines() if line.strip()]) > 1  # IPython's own traceback again
    shell.run_line_magic("load_ext", "fedjax_room")


def test_a_handler_someone_else_installed_is_left_alone(shell):
    from fedjax_room.jupyter import exc_hook

    def theirs(self, etype, value, tb, tb_offset=None):
        return ["theirs"]

    shell.set_custom_exc((ValueError,), theirs)
    try:
        assert exc_hook.install(shell) is False and shell.custom_exceptions == (ValueError,)
    finally:
        shell.set_custom_exc((), None)
        shell.custom_exceptions = ()
        assert exc_hook.install(shell) is True
