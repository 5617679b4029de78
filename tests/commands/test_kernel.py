"""``fedjax-room install-kernel``: a kernelspec in a temporary prefix whose kernel has the %room magics."""

import json
import os
import queue
import site
import sys
from pathlib import Path

import pytest

from fedjax_room.cli import main
from fedjax_room.errors import ConfigError
from fedjax_room.jupyter.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernel_spec, kernel_json


def test_kernel_json_loads_the_extension():
    spec = kernel_json()
    assert spec["display_name"] == "Clean Room (Python 3)" and spec["language"] == "python"
    assert spec["argv"][:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert "{connection_file}" in spec["argv"] and "--ext=fedjax_room.jupyter" in spec["argv"]


def test_the_wheel_ships_the_same_kernelspec():
    # pip install puts jupyter-kernel/fedjax-room in share/jupyter/kernels (pyproject's shared data); "python" is
    # replaced by jupyter_client with the Python that runs the server
    import tomllib

    from fedjax_room.jupyter.kernelspec import PACKAGED_KERNEL_JSON

    assert json.loads(PACKAGED_KERNEL_JSON.read_text()) == kernel_json(python="python")
    root = PACKAGED_KERNEL_JSON.parents[2]
    shared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert shared["shared-data"]["jupyter-kernel/fedjax-room"] == f"share/jupyter/kernels/{KERNEL_NAME}"


def test_ensure_kernel_spec_installs_it_once_where_jupyter_finds_it(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    from fedjax_room.jupyter.kernelspec import ensure_kernel_spec

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    # no environment-wide kernels either (a fresh `pip install` puts the Clean Room kernel in sys.prefix: jupyter_core
    # read that path at import, so patching sys.prefix alone does not hide it)
    import jupyter_core.paths

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(jupyter_core.paths, "ENV_JUPYTER_PATH", [str(tmp_path / "prefix" / "share" / "jupyter")])
    monkeypatch.setattr(jupyter_core.paths, "SYSTEM_JUPYTER_PATH", [str(tmp_path / "system")])
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)  # nor the user site's (~/.local/share/jupyter)
    assert KERNEL_NAME not in KernelSpecManager().find_kernel_specs()
    installed = ensure_kernel_spec()
    assert installed is not None and (installed / "kernel.json").exists()
    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).display_name == DISPLAY_NAME
    assert ensure_kernel_spec() is None  # found: nothing to do


def test_cli_installs_into_a_prefix(tmp_path, capsys):
    assert main(["install-kernel", "--prefix", str(tmp_path)]) == 0
    kernel_dir = tmp_path / "share" / "jupyter" / "kernels" / KERNEL_NAME
    assert str(kernel_dir) in capsys.readouterr().out
    spec = json.loads((kernel_dir / "kernel.json").read_text())
    assert spec["display_name"] == DISPLAY_NAME and "--ext=fedjax_room.jupyter" in spec["argv"]
    assert (kernel_dir / "logo-64x64.png").exists()
    # installing again replaces it
    assert main(["install-kernel", "--prefix", str(tmp_path), "--display-name", "Room 2"]) == 0
    assert json.loads((kernel_dir / "kernel.json").read_text())["display_name"] == "Room 2"


def test_location_flags_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["install-kernel", "--user", "--prefix", str(tmp_path)])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="at most one"):
        install_kernel_spec(user=True, sys_prefix=True)
    assert main(["install-kernel", "--prefix", str(tmp_path), "--name", "bad name!"]) == 2
    assert "Invalid kernel name" in capsys.readouterr().err


FEED_THREAD = """
import threading, time
from IPython.display import display
from fedjax_room.jupyter import RunDashboard
dash = RunDashboard(rounds=3)
display(dash)
def feed():  # stands in for a Run's background thread
    for r in (1, 2, 3):
        time.sleep(0.3)
        dash.update({"round": r, "loss": 1.0 / r, "accuracy": 0.3 * r, "epsilon": {"a": float(r)}, "sites": ["a"]})
    dash.finish()
feeder = threading.Thread(target=feed)
feeder.start()
"""


@pytest.mark.slow
def test_a_kernel_started_from_the_spec_has_the_magics(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    repo = str(Path(__file__).resolve().parents[2])  # the kernel imports this checkout, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))  # where the kernel's first %load_ext installs
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")  # and no Clean Room kernel of this user's (~/.local) is found
    install_kernel_spec(prefix=tmp_path)
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    assert ksm.get_kernel_spec(KERNEL_NAME).display_name == DISPLAY_NAME
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel()
    try:
        client = km.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        outputs: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                outputs.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                outputs.append(msg["content"]["ename"])

        # every notebook starts with %load_ext fedjax_room (to run on a plain kernel too): silent here
        reply = client.execute_interactive("%load_ext fedjax_room", timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok" and outputs == []
        # and the Clean Room kernel is available to this user's Jupyter: where `pip install` put it (the wheel's
        # shared data, in sys.prefix), or else installed by the kernel's first %load_ext into JUPYTER_DATA_DIR
        outputs.clear()
        code = "from jupyter_client.kernelspec import KernelSpecManager as K; print(sorted(K().find_kernel_specs()))"
        reply = client.execute_interactive(code, timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok" and KERNEL_NAME in "".join(outputs), outputs
        outputs.clear()
        reply = client.execute_interactive("%room --help", timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok", outputs
        text = "".join(outputs)
        assert "%room COMMAND" in text and "demo" in text and "budget" in text
        outputs.clear()
        reply = client.execute_interactive("%room sites", timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
        assert "not connected to a room" in "".join(outputs)

        # The dashboard updates from another thread while the kernel stays free for the next cell.
        messages: list[dict] = []

        def keep(msg):
            messages.append(msg)
            hook(msg)

        outputs.clear()
        reply = client.execute_interactive(FEED_THREAD, timeout=60, output_hook=keep)
        assert reply["content"]["status"] == "ok"
        client.execute_interactive("print(feeder.is_alive())", timeout=60, output_hook=keep)
        assert outputs == ["True\n"]  # the kernel answered while the rounds were still coming in
        outputs.clear()
        client.execute_interactive("feeder.join(); print(dash.rounds_done, dash.status)", timeout=60, output_hook=keep)
        assert outputs == ["3 finished\n"]
        while True:
            try:
                messages.append(client.get_iopub_msg(timeout=1))
            except queue.Empty:
                break
        states = [
            m["content"]["data"]["state"]
            for m in messages
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
        ]
        assert {"value": 3} in states  # the progress bar reached round 3 in the front end's model
        client.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
