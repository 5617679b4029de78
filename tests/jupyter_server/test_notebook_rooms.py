"""One room seen from every surface: a notebook's room in the sidebar's registry, and the sidebar's in a notebook.

A kernel's ``Room`` writes a presence record (fedjax_room.analyst.presence: URL and key *paths*); the server's
registry shows that room (its own connection, with the same credentials), links a record naming a room it
already shows, forgets the room when the kernel closes it, and writes the record ``fedjax_room.attach`` reads.
These tests drive the registry and the routes with the stand-in analyst API; tests/browser/test_one_room.py
does it with real kernels, a real room and Chromium.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from tornado.httpclient import HTTPClientError

from fedjax_room.analyst import presence
from fedjax_room.analyst.attach import attach
from fedjax_room.errors import ConfigError
from fedjax_room.jupyter.server.notebook import dashboard_notebook, pick_kernel
from fedjax_room.jupyter.server.registry import RoomRegistry


@pytest.fixture
def folder(tmp_path, monkeypatch):
    path = tmp_path / presence.SUBDIR
    path.mkdir(mode=0o700)
    monkeypatch.setenv(presence.PRESENCE_ENV, str(path))
    return path


def kernel_record(folder, name="kernel-abc-1-1.json", *, pid=None, **fields):
    record = {
        "version": presence.RECORD_VERSION,
        "url": "ws://127.0.0.1:7001",
        "key": "/keys/analyst.key",
        "coordinator_key": "/keys/room-manifest.json",
        "pid": os.getpid() if pid is None else pid,
        "kind": "remote",
        "notebook": "quickstart.ipynb",
        **fields,
    }
    path = folder / name
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    return path


def make_registry(fakes, folder, calls):
    def connect(url, key, **options):
        calls.append((url, key, options))
        room = fakes.FakeRoom(("north", "south"))
        room.room_id = "0123456789abcdef"
        return room

    return RoomRegistry(connect_fn=connect, start_room_fn=fakes.FakeEmbedded, presence_dir=folder)


def test_a_notebooks_room_is_shown_with_its_notebook_and_forgotten_when_it_closes(fakes, folder, monkeypatch):
    monkeypatch.setattr("fedjax_room.jupyter.server.notebook_rooms.FORGET_AFTER", 0.0)
    calls = []
    registry = make_registry(fakes, folder, calls)
    record = kernel_record(folder)
    assert registry.discover() is True
    [room] = registry.status()["rooms"]
    assert room["origin"] == "notebook" and room["notebooks"] == ["quickstart.ipynb"]
    assert room["attach"] == "room = fedjax_room.attach('room-1')" and room["room_id"] == "0123456789abcdef"
    # the server connected with the kernel's credentials: the same key file and coordinator pin
    assert calls == [("ws://127.0.0.1:7001", "/keys/analyst.key", {"coordinator_key": "/keys/room-manifest.json"})]
    assert [s["name"] for s in registry.sites("room-1")] == ["north", "south"]
    assert registry.discover() is False  # nothing new: no second connection
    assert len(calls) == 1

    # the kernel describes its demo room after connecting: the sidebar's label follows
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "kind": "demo", "dataset": "digits", "site_names": ["site-a", "site-b"]}))
    assert registry.discover() is True
    [room] = registry.status()["rooms"]
    assert room["kind"] == "demo" and room["label"] == "Demo room (digits, 2 sites)"

    # not the sidebar's to close
    with pytest.raises(ConfigError, match="quickstart.ipynb"):
        registry.remove("room-1")

    fake = registry.get("room-1").room
    record.unlink()  # the kernel closed the room (room.close(), %room stop, or it exited)
    assert registry.discover() is True
    assert registry.status()["rooms"] == [] and fake.closed


def test_a_record_naming_a_room_already_shown_is_linked_not_connected_twice(fakes, folder):
    calls = []
    registry = make_registry(fakes, folder, calls)
    demo = registry.start_demo(sites=2, dataset="digits")
    kernel_record(folder, url=demo["url"], key="/tmp/analyst.key", notebook="analysis.ipynb")
    assert registry.discover() is True
    assert calls == []
    [room] = registry.status()["rooms"]
    assert room["origin"] == "sidebar" and room["notebooks"] == ["analysis.ipynb"] and room["kernels"] == 1
    for path in folder.glob("kernel-*"):
        path.unlink()
    assert registry.discover() is True
    [room] = registry.status()["rooms"]  # the sidebar's room stays; only the notebook went
    assert room["notebooks"] == [] and not registry.get("room-1").embedded.stopped


def test_a_kernel_that_reconnects_keeps_its_room_and_paths_are_shown_from_the_server_root(fakes, folder, tmp_path):
    """The demo room's start-up client closes and the notebook's connects: one room in the sidebar, not two."""
    calls = []
    registry = make_registry(fakes, folder, calls)
    registry.notebook_rooms.root_dir = str(tmp_path / "root")
    first = kernel_record(folder, "kernel-abc-1-1.json", notebook=str(tmp_path / "root" / "work" / "a.ipynb"))
    registry.discover()
    [room] = registry.status()["rooms"]
    assert room["id"] == "room-1" and room["notebooks"] == ["work/a.ipynb"]
    first.unlink()
    kernel_record(folder, "kernel-abc-1-2.json", notebook="/elsewhere/b.ipynb")
    registry.discover()
    [room] = registry.status()["rooms"]
    assert room["id"] == "room-1" and room["notebooks"] == ["/elsewhere/b.ipynb"] and len(calls) == 1


def test_a_room_with_no_site_yet_has_no_budget_rows(fakes, folder):
    from fedjax_room.analyst.results import BudgetReport

    registry = make_registry(fakes, folder, [])
    registry.connect("ws://127.0.0.1:7003", "/keys/analyst.key")
    registry.get("room-1").room.budget = lambda: BudgetReport(sites={})  # sites still starting
    assert registry.budget("room-1") == []


def test_records_of_dead_processes_and_untrusted_files_are_not_followed(fakes, folder):
    calls = []
    registry = make_registry(fakes, folder, calls)
    dead = kernel_record(folder, "kernel-dead-1-1.json", pid=2**22 + 12345)
    loose = kernel_record(folder, "kernel-loose-1-1.json")
    loose.chmod(0o666)  # writable by others: anyone could have written it
    (folder / "kernel-junk-1-1.json").write_text("not json")
    (folder / "kernel-big-1-1.json").write_text(json.dumps({"url": "x" * presence.MAX_RECORD_BYTES}))
    (folder / "notes.txt").write_text("{}")
    assert registry.discover() is False
    assert calls == [] and registry.status()["rooms"] == []
    assert not dead.exists()  # a killed kernel's record is cleaned up

    folder.chmod(0o777)  # a folder others can write to is not read at all
    kernel_record(folder, "kernel-ok-1-1.json")
    assert registry.discover() is False and calls == []


def test_a_room_that_cannot_be_reached_is_a_notice_and_tried_again_later(fakes, folder, monkeypatch):
    def refuse(url, key, **options):
        raise ConnectionError(f"cannot reach {url}")

    registry = RoomRegistry(connect_fn=refuse, presence_dir=folder)
    kernel_record(folder)
    assert registry.discover() is True
    status = registry.status()
    assert status["rooms"] == [] and status["notices"] == [
        "a notebook's room could not be shown: ConnectionError: cannot reach ws://127.0.0.1:7001"
    ]
    calls = []
    registry.connect_fn = lambda url, key, **o: calls.append(url) or fakes.FakeRoom()
    assert registry.discover() is False and calls == []  # not before RETRY_AFTER
    monkeypatch.setattr("fedjax_room.jupyter.server.notebook_rooms.RETRY_AFTER", 0.0)
    registry.notebook_rooms.failed = {n: (0.0, m) for n, (_, m) in registry.notebook_rooms.failed.items()}
    assert registry.discover() is True and calls == ["ws://127.0.0.1:7001"]
    assert registry.status()["notices"] == []


def test_attach_uses_the_record_the_server_wrote_for_its_room(fakes, folder, monkeypatch):
    registry = make_registry(fakes, folder, [])
    demo = registry.start_demo(sites=2, dataset="digits")
    [server_file] = folder.glob("server-*.json")
    assert server_file.name == f"server-{os.getpid()}-room-1.json"
    assert stat.S_IMODE(server_file.stat().st_mode) == 0o600
    record = json.loads(server_file.read_text())
    assert record["id"] == "room-1" and record["url"] == demo["url"] and record["key"].endswith("analyst.key")
    assert not any("PRIVATE" in str(v) for v in record.values())  # paths, never key material

    connected = []
    monkeypatch.setattr(
        "fedjax_room.analyst.attach.connect", lambda url, key, **kw: connected.append((url, key, kw)) or "a room"
    )
    assert attach("room-1") == "a room"
    assert connected == [(demo["url"], record["key"], {})]
    with pytest.raises(ConfigError, match=r"no room 'room-9'.*it shows: room-1"):
        attach("room-9")

    registry.remove("room-1")  # ✕ in the sidebar: the record goes with the room
    assert not list(folder.glob("server-*.json"))
    with pytest.raises(ConfigError, match="it shows: none"):
        attach("room-1")


def test_a_kernel_announces_a_connection_by_paths_and_withdraws_it(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(presence, "enabled", True)
    monkeypatch.setenv("JPY_SESSION_NAME", "work/hospitals.ipynb")
    room = type("R", (), {"room_id": "feedface00000000"})()
    key = tmp_path / "analyst.key"
    path = presence.announce(room, "ws://127.0.0.1:7002", key, coordinator_key=tmp_path / "coordinator.key.pub")
    assert path is not None and path.parent == folder and stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    assert record["key"] == str(key) and record["notebook"] == "work/hospitals.ipynb"
    assert record["room_id"] == "feedface00000000" and record["pid"] == os.getpid()
    presence.describe(room, kind="demo", dataset="digits")
    assert json.loads(path.read_text())["kind"] == "demo"
    presence.withdraw(room)
    assert not path.exists()

    # an in-memory key object has no path to share: nothing is written
    assert presence.announce(room, "ws://127.0.0.1:7002", object()) is None
    # outside a kernel (no folder), nothing either
    monkeypatch.delenv(presence.PRESENCE_ENV)
    assert presence.announce(room, "ws://127.0.0.1:7002", key) is None


def test_the_dashboard_notebook_attaches_by_room_id_with_no_key_path_and_picks_the_clean_room_kernel():
    nb = dashboard_notebook("0123456789abcdef", "run-3", kernel_name="fedjax-room", label="Demo room")
    source = nb["cells"][0]["source"]
    assert "fedjax_room.attach('0123456789abcdef')" in source and "run='run-3'" in source
    assert ".key" not in source and "key=" not in source
    assert nb["metadata"]["kernelspec"]["name"] == "fedjax-room"
    compile(source, "cell", "exec")
    with pytest.raises(Exception, match="room id"):
        dashboard_notebook("room'); import os; ('", None)

    assert pick_kernel({"python3": {}, "fedjax-room": {}}) == ("fedjax-room", "Clean Room (Python 3)")
    assert pick_kernel({"python3": {"display_name": "Python 3"}}, "python3") == ("python3", "Python 3")
    assert pick_kernel({}) == ("python3", "Python 3 (ipykernel)")


async def test_routes_show_a_notebooks_room_and_refuse_to_close_it(jp_fetch, registry, folder, fakes):
    registry.notebook_rooms.folder = folder
    kernel_record(folder)
    response = await jp_fetch("fedjax-room", "status")
    [room] = json.loads(response.body)["rooms"]
    assert room["origin"] == "notebook" and room["notebooks"] == ["quickstart.ipynb"]
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedjax-room", "rooms", "room-1", method="DELETE")
    assert info.value.code == 400 and "quickstart.ipynb" in json.loads(info.value.response.body)["message"]


def test_room_attach_magic_binds_the_sidebars_room(monkeypatch):
    from IPython.testing.globalipapp import get_ipython

    from fedjax_room.jupyter import args as room_args
    from fedjax_room.jupyter.magics import RoomMagics

    assert room_args.parse_line("attach room-3 --as r") == room_args.AttachArgs(room_id="room-3", var="r")
    shell = get_ipython()
    magics = RoomMagics(shell)
    attached = type("Room", (), {"url": "ws://127.0.0.1:7004", "close": lambda self: None})()
    monkeypatch.setattr("fedjax_room.analyst.attach.attach", lambda room_id: attached if room_id == "room-3" else None)
    magics.room_magic("attach room-3 --as r")
    assert shell.user_ns["r"] is attached and magics.room is attached
