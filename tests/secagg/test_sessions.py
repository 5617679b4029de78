"""One masked input per (run, round), remembered across restarts (fedjax_room.secagg.sessions)."""

from __future__ import annotations

import stat

import pytest

from fedjax_room.errors import ReplayError, StateError
from fedjax_room.secagg.sessions import SESSIONS_FILE, SessionBindings


def test_a_second_session_after_a_release_is_refused_even_after_a_restart(tmp_path):
    b = SessionBindings(tmp_path)
    b.join("run-1", 1, "aa")
    b.join("run-1", 1, "bb")  # nothing released yet: joining a new session is harmless
    b.release("run-1", 1, "bb")
    for session in ("aa", "bb", "cc"):
        with pytest.raises(ReplayError, match="already released"):
            b.join("run-1", 1, session)
    with pytest.raises(ReplayError):
        b.release("run-1", 1, "bb")
    b.join("run-1", 2, "dd")  # the next round is a new (run, round)

    again = SessionBindings(tmp_path)  # a restarted site
    assert again.released("run-1", 1) == "bb"
    with pytest.raises(ReplayError):
        again.join("run-1", 1, "ee")
    assert stat.S_IMODE((tmp_path / SESSIONS_FILE).stat().st_mode) == 0o600


def test_an_unreadable_record_stops_the_site(tmp_path):
    (tmp_path / SESSIONS_FILE).write_text("{not json")
    with pytest.raises(StateError, match="restore it"):
        SessionBindings(tmp_path)
