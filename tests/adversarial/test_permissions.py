"""State on disk is its owner's only, whatever the umask (fedjax_room/files.py and its users)."""

from __future__ import annotations

import os
import stat

import pytest

from fedjax_room.coordinator.store import Store, atomic_write
from fedjax_room.files import private_dir
from fedjax_room.identity import generate_key, save_private_key


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the worst case: nothing masked
    yield
    os.umask(old)


def test_atomic_write_and_store_are_private_under_any_umask(tmp_path, open_umask):
    atomic_write(tmp_path / "state" / "deep" / "f.json", b"{}")
    assert mode(tmp_path / "state") == mode(tmp_path / "state" / "deep") == 0o700
    assert mode(tmp_path / "state" / "deep" / "f.json") == 0o600
    store = Store.open(tmp_path / "coord")
    try:
        store.enroll("site-a", "site", b"k" * 32, "fp")
    finally:
        store.close()
    assert mode(tmp_path / "coord") == 0o700 and mode(tmp_path / "coord" / "room.sqlite3") == 0o600
    save_private_key(generate_key(), tmp_path / "keys" / "a.key")
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "a.key") == mode(tmp_path / "keys" / "a.key.pub") == 0o600


def test_an_old_open_state_dir_is_tightened_but_a_users_folder_is_not(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    private_dir(state)
    assert mode(state) == 0o700
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    save_private_key(generate_key(), home / "me.key")  # a key saved in the user's own folder
    assert mode(home) == 0o755 and mode(home / "me.key") == 0o600
