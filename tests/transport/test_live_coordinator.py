"""A real coordinator process on loopback: handshake refusals, bad frames, TLS. The room carries on."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fedjax_room.coordinator.store import Store
from fedjax_room.errors import RoleError, UnknownIdentityError
from fedjax_room.identity import fingerprint, generate_key, public_key_bytes
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.handshake import make_hello
from fedjax_room.sim.launch import spawn_coordinator, stop_process
from fedjax_room.transport import client as transport_client
from fedjax_room.transport.client import recv_message

pytestmark = pytest.mark.slow

_PINS: dict[str, object] = {}  # url -> the coordinator.key.pub its clients pin


def open_connection(url, key, **kwargs):
    kwargs.setdefault("coordinator_key", _PINS[url])
    return transport_client.open_connection(url, key, **kwargs)


def _enroll(state, name, role):
    key = generate_key()
    store = Store.open(state)
    store.enroll(name, role, public_key_bytes(key), fingerprint(key))
    store.close()
    return key


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    state = tmp_path_factory.mktemp("coord")
    keys = {"site-a": _enroll(state, "site-a", "site"), "analyst": _enroll(state, "analyst", "analyst")}
    proc, url = spawn_coordinator(state)
    _PINS[url] = state / "coordinator.key.pub"
    yield state, url, keys
    assert stop_process(proc) == 0, (state / "logs" / "coordinator.log").read_text()


def _snapshot(state):
    store = Store.open(state)
    try:
        return store.runs(), store.sites(), store.identities()
    finally:
        store.close()


async def _raw(url):
    ws = await connect(url, proxy=None, compression=None, max_size=None)
    challenge = await recv_message(ws)
    assert isinstance(challenge, m.Challenge)
    return ws, challenge


async def _expect_refusal(ws, code):
    err = await recv_message(ws)
    assert isinstance(err, m.Error) and err.fatal and err.code == code, err
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    return err


async def _analyst_still_served(url, key):
    ws, welcome = await open_connection(url, key, role="analyst")
    await ws.send(m.encode(m.ListSites(req=1)))
    reply = await recv_message(ws)
    await ws.close()
    assert isinstance(reply, m.SitesReply)


def test_identity_refusals_and_the_room_carries_on(room):
    state, url, keys = room

    async def scenario():
        # a long-lived, legitimate analyst connection that must survive everything below
        keeper, _ = await open_connection(url, keys["analyst"], role="analyst")

        ws, welcome = await open_connection(url, keys["site-a"], role="site", name="site-a")
        assert welcome.name == "site-a"
        await ws.close()

        with pytest.raises(UnknownIdentityError, match="enroll"):
            await open_connection(url, generate_key(), role="site", name="site-zz")

        with pytest.raises(RoleError, match="enrolled as analyst"):
            await open_connection(url, keys["analyst"], role="site")

        # bad signature
        ws, challenge = await _raw(url)
        hello = make_hello(challenge, keys["site-a"], role="site")
        await ws.send(
            m.encode(m.Hello(role="site", name="", public_key=hello.public_key, nonce=hello.nonce, signature=bytes(64)))
        )
        await _expect_refusal(ws, "bad_signature")

        # a captured hello replayed on a new connection
        first, challenge = await _raw(url)
        captured = make_hello(challenge, keys["site-a"], role="site")
        await first.send(m.encode(captured))
        assert isinstance(await recv_message(first), m.Welcome)
        second, _ = await _raw(url)
        await second.send(m.encode(captured))
        await _expect_refusal(second, "replay")
        await first.close()

        await keeper.send(m.encode(m.ListRuns(req=7)))
        assert isinstance(await recv_message(keeper), m.RunsReply)
        await keeper.close()
        await _analyst_still_served(url, keys["analyst"])

    asyncio.run(scenario())
    log = (state / "logs" / "coordinator.log").read_text()
    for code in ("unknown_identity", "wrong_role", "bad_signature", "replay"):
        assert "refused" in log and code in log, code


def test_bad_frames_close_only_that_connection_and_change_nothing(room):
    state, url, keys = room
    before = _snapshot(state)

    async def scenario():
        keeper, _ = await open_connection(url, keys["analyst"], role="analyst")
        # malformed before auth
        ws, _ = await _raw(url)
        await ws.send(b"\xc1\xc1not msgpack")
        await _expect_refusal(ws, "protocol")
        # oversized before auth (limit 4 KiB)
        ws, _ = await _raw(url)
        await ws.send(b"\x00" * 20_000)
        await _expect_refusal(ws, "frame_too_large")
        # out of order: an update instead of a hello
        ws, _ = await _raw(url)
        await ws.send(
            m.encode(
                m.Update(run_id="run-1", round=1, weight=1, payload=b"", epsilon=0.0, ledger_epsilon=0.0, delta=1e-5)
            )
        )
        err = await _expect_refusal(ws, "protocol")
        assert "hello" in err.message
        # out of order after auth: a site sending an update before site_status
        ws, _ = await open_connection(url, keys["site-a"], role="site")
        await ws.send(
            m.encode(
                m.Update(run_id="run-1", round=1, weight=1, payload=b"", epsilon=0.0, ledger_epsilon=0.0, delta=1e-5)
            )
        )
        await _expect_refusal(ws, "protocol")
        # malformed after auth: wrong field type
        ws, _ = await open_connection(url, keys["analyst"], role="analyst")
        await ws.send(msgpack.packb({"v": m.VERSION, "t": "get_audit", "req": 1, "last": "all"}))
        await _expect_refusal(ws, "protocol")
        # text frame
        ws, _ = await _raw(url)
        await ws.send("hello?")
        await _expect_refusal(ws, "protocol")

        await keeper.send(m.encode(m.ListSites(req=3)))
        assert isinstance(await recv_message(keeper), m.SitesReply)
        await keeper.close()

    asyncio.run(scenario())
    assert _snapshot(state) == before


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_wss_with_a_self_signed_certificate(tmp_path):
    state = tmp_path / "tls-room"
    site_key = _enroll(state, "site-a", "site")
    cert, key = _self_signed(tmp_path)
    proc, url = spawn_coordinator(state, tls_cert=cert, tls_key=key)
    _PINS[url] = state / "coordinator.key.pub"
    try:
        assert url.startswith("wss://127.0.0.1:")

        async def scenario():
            ws, welcome = await open_connection(url, site_key, role="site", cafile=cert)
            assert welcome.name == "site-a"
            await ws.close()
            with pytest.raises((ssl.SSLError, OSError)):  # an untrusted certificate is refused
                await open_connection(url, site_key, role="site")

        asyncio.run(scenario())
    finally:
        assert stop_process(proc) == 0


def test_room_connect_magic_trusts_the_certificate_given_by_tls_ca(tmp_path):
    """`%room connect wss://... --tls-ca CERT`: the analyst's magic reaches a room whose certificate is self-signed,
    and without `--tls-ca` the same line is refused (the system's CAs do not trust it) and binds nothing."""
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    from fedjax_room.identity import save_private_key

    state = tmp_path / "tls-room"
    analyst_key = _enroll(state, "analyst", "analyst")
    key_file = tmp_path / "analyst.key"
    save_private_key(analyst_key, key_file)
    cert, key = _self_signed(tmp_path)
    proc, url = spawn_coordinator(state, tls_cert=cert, tls_key=key)
    shell = get_ipython()
    shell.run_line_magic("load_ext", "fedjax_room")
    pin = state / "coordinator.key.pub"
    try:
        line = f"connect {url} --key {key_file} --coordinator-key {pin} --as tls_room"
        with pytest.raises(UsageError, match="SSL|certificate|CERTIFICATE"):
            shell.run_line_magic("room", line)
        assert "tls_room" not in shell.user_ns
        shell.run_line_magic("room", f"{line} --tls-ca {cert}")
        room = shell.user_ns["tls_room"]
        assert room.url == url and room.sites() == []  # a real request over wss, answered
        shell.run_line_magic("room", "stop")
    finally:
        shell.run_line_magic("unload_ext", "fedjax_room")
        assert stop_process(proc) == 0, (state / "logs" / "coordinator.log").read_text()
