"""The coordinator proves its room key; ws:// stays on loopback; refused handshakes are counted, not each audited."""

from __future__ import annotations

import asyncio
import os

import pytest

from fedjax_room.errors import BadSignatureError, ConfigError, ReplayError, UnknownIdentityError
from fedjax_room.identity import generate_key, public_key_bytes
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.coordinator import CoordinatorMachine, MemoryAudit
from fedjax_room.protocol.handshake import make_challenge, verify_challenge
from fedjax_room.protocol.refusals import RefusalCounter
from fedjax_room.transport.client import is_loopback_host, load_coordinator_pin, open_connection
from fedjax_room.transport.limits import SourceLimiter
from fedjax_room.transport.server import MachineServer

ROOM = generate_key()
PIN = public_key_bytes(ROOM)


def _challenge(client_nonce, key=ROOM, room_id="room-1"):
    return make_challenge(nonce=os.urandom(32), room_id=room_id, client_nonce=client_nonce, room_key=key)


def test_the_proof_verifies_only_for_this_client_nonce_and_the_pinned_key():
    nonce = os.urandom(32)
    challenge = _challenge(nonce)
    verify_challenge(challenge, client_nonce=nonce, pinned=PIN)
    verify_challenge(challenge, client_nonce=nonce, pinned=PIN, room_id="room-1")
    with pytest.raises(BadSignatureError):  # a challenge captured from another client's connection
        verify_challenge(challenge, client_nonce=os.urandom(32), pinned=PIN)
    with pytest.raises(UnknownIdentityError, match="not the one pinned"):
        verify_challenge(_challenge(nonce, key=generate_key()), client_nonce=nonce, pinned=PIN)
    with pytest.raises(UnknownIdentityError, match="did not prove"):
        verify_challenge(_challenge(nonce, key=None), client_nonce=nonce, pinned=PIN)
    with pytest.raises(ReplayError, match="room"):
        verify_challenge(challenge, client_nonce=nonce, pinned=PIN, room_id="another-room")
    forged = m.Challenge(nonce=challenge.nonce, room_id="room-2", version=1, coordinator_key=PIN, proof=challenge.proof)
    with pytest.raises(BadSignatureError):  # the proof covers the room id too
        verify_challenge(forged, client_nonce=nonce, pinned=PIN)


def test_pins_load_from_key_files_and_manifests(tmp_path):
    from fedjax_room.identity import save_private_key
    from fedjax_room.room_manifest import create_manifest, save_manifest

    save_private_key(ROOM, tmp_path / "coordinator.key")
    assert load_coordinator_pin(tmp_path / "coordinator.key.pub").key == PIN
    manifest = create_manifest({"site-a": public_key_bytes(generate_key())}, PIN, room_id="r")
    pin = load_coordinator_pin(save_manifest(manifest, tmp_path / "room-manifest.json"))
    assert (pin.key, pin.room_id) == (PIN, "r")
    with pytest.raises(ConfigError):
        load_coordinator_pin(tmp_path / "missing.pub")


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.0.2.1", False),
        ("", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


def test_clients_refuse_without_a_pin_and_plain_ws_off_loopback():
    key = generate_key()
    with pytest.raises(ConfigError, match="no pinned room key"):
        asyncio.run(open_connection("ws://127.0.0.1:9", key, role="site"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        asyncio.run(open_connection("ws://192.0.2.1:9", key, role="site", coordinator_key=PIN))


def test_the_server_refuses_plain_ws_off_loopback_unless_insecure(tmp_path):
    from fedjax_room.coordinator.store import Store

    store = Store.open(tmp_path)
    try:
        machine = CoordinatorMachine(store)
        with pytest.raises(ConfigError, match="--insecure"):
            MachineServer(machine, host="0.0.0.0", port=0)
        MachineServer(machine, host="0.0.0.0", port=0, insecure=True)  # the operator's explicit choice
        MachineServer(machine, host="127.0.0.1", port=0)
    finally:
        store.close()


def test_the_source_limiter_blocks_one_source_in_bounded_memory():
    limiter = SourceLimiter(max_failures=3, window=10.0, max_sources=100)
    for _ in range(3):
        assert limiter.allow("10.0.0.1", 0.0)
        limiter.failed("10.0.0.1", 0.0)
    assert not limiter.allow("10.0.0.1", 1.0) and limiter.first_refusal("10.0.0.1")
    assert not limiter.allow("10.0.0.1", 2.0) and not limiter.first_refusal("10.0.0.1")
    assert limiter.allow("127.0.0.1", 2.0)  # another source is untouched
    assert limiter.allow("10.0.0.1", 10.5)  # the window is over
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}", 3.0)
    assert len(limiter) == 100


def test_refused_handshakes_are_audited_a_few_at_a_time(tmp_path):
    from fedjax_room.coordinator.store import Store

    store = Store.open(tmp_path)
    audit = MemoryAudit()
    try:
        machine = CoordinatorMachine(store, audit=audit, room_key=ROOM)
        machine.start(0.0)
        base = len(audit.records)
        for conn in range(1, 501):  # 500 garbage connections
            machine.open(conn, 1.0, os.urandom(32))
            machine.receive(conn, b"\xc1 not msgpack", 1.0)
        refused = [r for r in audit.records[base:] if r["kind"] == "connection_refused"]
        assert len(audit.records) - base == len(refused) == machine.refusals.individual
        machine.tick(1.0 + machine.refusals.window + 1)
        (summary,) = [r for r in audit.records if r["kind"] == "connections_refused"]
        assert summary["fields"]["count"] == 500 - machine.refusals.individual
        assert summary["fields"]["codes"] == {"protocol": 500 - machine.refusals.individual}
    finally:
        store.close()


def test_the_refusal_counter_starts_a_new_window_after_a_flush():
    counter = RefusalCounter(window=10.0, individual=2)
    assert [counter.note(0.0, "protocol") for _ in range(4)] == [True, True, False, False]
    assert counter.flush(5.0) == []
    (summary,) = counter.flush(11.0)
    assert summary["count"] == 2
    assert counter.note(12.0, "replay") is True and counter.pending == 0
