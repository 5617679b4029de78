"""The room manifest: structure, signatures by the data owners, tampering, and the CLI."""

from __future__ import annotations

import json

import pytest

from fedjax_room.cli import main
from fedjax_room.errors import BadSignatureError, ConfigError
from fedjax_room.identity import generate_key, public_key_bytes, save_private_key
from fedjax_room.room_manifest import Manifest, create_manifest, load_manifest, save_manifest, sign_manifest


@pytest.fixture
def keys():
    return {n: generate_key() for n in ("site-a", "site-b", "coord")}


def _manifest(keys):
    sites = {n: public_key_bytes(k) for n, k in keys.items() if n != "coord"}
    return create_manifest(sites, public_key_bytes(keys["coord"]))


def test_signed_by_every_owner_round_trips(keys, tmp_path):
    manifest = _manifest(keys)
    for name in ("site-a", "site-b"):
        manifest = sign_manifest(manifest, name, keys[name])
    path = save_manifest(manifest, tmp_path / "room-manifest.json")
    loaded = load_manifest(path)
    assert loaded.verify(require="all") == ["site-a", "site-b"]
    assert loaded.coordinator == public_key_bytes(keys["coord"])
    assert loaded.name_of(public_key_bytes(keys["site-b"])) == "site-b"
    assert loaded.name_of(public_key_bytes(generate_key())) is None


def test_an_edited_manifest_no_longer_verifies(keys, tmp_path):
    manifest = sign_manifest(_manifest(keys), "site-a", keys["site-a"])
    path = save_manifest(manifest, tmp_path / "m.json")
    data = json.loads(path.read_text())
    data["sites"]["site-b"] = public_key_bytes(generate_key()).hex()  # the coordinator swaps in its own key
    path.write_text(json.dumps(data))
    with pytest.raises(BadSignatureError, match="changed after it signed"):
        load_manifest(path)


def test_only_listed_owners_sign_and_missing_signatures_are_named(keys):
    manifest = _manifest(keys)
    with pytest.raises(ConfigError, match="not a site"):
        sign_manifest(manifest, "site-z", generate_key())
    with pytest.raises(ConfigError, match="not the one the manifest lists"):
        sign_manifest(manifest, "site-a", keys["site-b"])
    with pytest.raises(ConfigError, match="not signed by site-a, site-b"):
        manifest.verify(require="all")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"format": "other"}, "not a fedjax-room-manifest"),
        ({"sites": {}}, "sites must map"),
        ({"sites": {"bad name!": "00" * 32}}, "site name"),
        ({"coordinator": "zz"}, "hex"),
        ({"extra": 1}, "unexpected fields"),
        ({"signatures": {"site-z": "00" * 64}}, "not a site of this manifest"),
    ],
)
def test_malformed_manifests_are_refused(keys, change, match):
    data = {**_manifest(keys).to_dict(), **change}
    with pytest.raises(ConfigError, match=match):
        Manifest.from_dict(data)


def test_duplicate_keys_are_refused(keys):
    same = public_key_bytes(keys["site-a"])
    with pytest.raises(ConfigError, match="same public key"):
        create_manifest({"site-a": same, "site-b": same}, public_key_bytes(keys["coord"]))
    with pytest.raises(ConfigError, match="also listed as a site"):
        create_manifest({"site-a": same}, same)


def test_cli_create_sign_verify(tmp_path, capsys):
    for name in ("site-a", "site-b", "coordinator"):
        save_private_key(generate_key(), tmp_path / f"{name}.key")
    out = tmp_path / "room-manifest.json"
    args = ["manifest", "create", "--out", str(out), "--coordinator-key", str(tmp_path / "coordinator.key.pub")]
    args += ["--site", f"site-a={tmp_path / 'site-a.key.pub'}", "--site", f"site-b={tmp_path / 'site-b.key.pub'}"]
    assert main(args) == 0
    assert main(["manifest", "verify", str(out), "--require-all"]) == 2  # nobody signed yet
    for name in ("site-a", "site-b"):
        assert main(["manifest", "sign", str(out), "--key", str(tmp_path / f"{name}.key")]) == 0
    assert main(["manifest", "verify", str(out), "--require-all", "--site", "site-a"]) == 0
    assert "signed by site-a, site-b" in capsys.readouterr().out
    wrong = ["manifest", "verify", str(out), "--site", "site-a", "--public-key", str(tmp_path / "site-b.key.pub")]
    assert main(wrong) == 2


def test_cli_create_from_a_coordinator_state(tmp_path):
    from fedjax_room.coordinator.store import Store
    from fedjax_room.identity import fingerprint

    store = Store.open(tmp_path / "coord")
    for name, role in (("site-a", "site"), ("analyst", "analyst")):
        key = generate_key()
        store.enroll(name, role, public_key_bytes(key), fingerprint(key))
    room_id = store.room_id
    store.close()
    out = tmp_path / "m.json"
    assert main(["manifest", "create", "--out", str(out), "--state", str(tmp_path / "coord")]) == 0
    manifest = load_manifest(out)
    assert sorted(manifest.sites) == ["site-a"] and manifest.room_id == room_id  # analysts are not listed
    assert (tmp_path / "coord" / "coordinator.key.pub").exists()
