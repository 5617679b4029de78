"""`fedjax-room keygen` and `enroll` write real keys and identities."""

from __future__ import annotations

import pytest

from fedjax_room.cli import main
from fedjax_room.coordinator.store import Store
from fedjax_room.identity import fingerprint, load_private_key


def test_keygen_then_enroll(tmp_path, capsys):
    key = tmp_path / "site-a.key"
    assert main(["keygen", "--out", str(key)]) == 0
    assert (tmp_path / "site-a.key.pub").exists()
    assert main(["keygen", "--out", str(key)]) == 2  # refuses to overwrite an identity
    assert "--force" in capsys.readouterr().err
    state = tmp_path / "room"
    assert (
        main(["enroll", "--state", str(state), "--name", "site-a", "--role", "site", "--public-key", f"{key}.pub"]) == 0
    )
    assert (
        main(["enroll", "--state", str(state), "--name", "site-a", "--role", "site", "--public-key", f"{key}.pub"]) == 0
    )  # idempotent
    assert (
        main(["enroll", "--state", str(state), "--name", "other", "--role", "analyst", "--public-key", f"{key}.pub"])
        == 2
    )  # one key, one identity
    store = Store.open(state)
    (ident,) = store.identities()
    assert (ident.name, ident.role, ident.fingerprint) == ("site-a", "site", fingerprint(load_private_key(key)))
    assert [i.name for i in store.unaudited_identities()] == ["site-a"]
    store.close()


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65])
def test_enroll_rejects_bad_names(tmp_path, name):
    key = tmp_path / "k.key"
    main(["keygen", "--out", str(key)])
    assert (
        main(["enroll", "--state", str(tmp_path / "r"), "--name", name, "--role", "site", "--public-key", str(key)])
        == 2
    )
