"""Room processes started by an embedded room stop when the process that started them dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_PARENT = """
import sys, time
from pathlib import Path
from fedjax_room.sim.launch import spawn
state = Path(sys.argv[1])
proc = spawn(["coordinator", "--state", str(state), "--port", "0"], state / "coordinator.log")
print(proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_coordinator_stops_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "coordinator.url").exists():
            assert time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()
            time.sleep(0.2)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the coordinator outlived the process that started it"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
