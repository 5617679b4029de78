"""docs/deploy.md runs as written: its ``sh`` blocks, in order, bring a room up on loopback (TLS, manifest, two
sites behind nothing but an outbound connection), the sites join, a short secure run finishes, the logs verify.

The only change to the text is the first block's placement line (``ROOM_HOST=localhost``, ``ROOM_BIND=127.0.0.1``
and a free port instead of a public name); every other command is run exactly as the guide shows it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
PLACEMENT = "export ROOM_HOST=room.example.org ROOM_BIND=0.0.0.0 ROOM_PORT=8765"


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_guide_covers_each_step_and_its_example_policy_is_valid():
    from fedjax_room.site.policy import Policy

    text = DOC.read_text()
    blocks = _blocks(text)
    assert blocks and blocks[0].splitlines()[0] == PLACEMENT
    script = "\n".join(blocks)
    for step in (
        "fedjax-room keygen",
        "fedjax-room enroll",
        "fedjax-room manifest create",
        "manifest sign",
        "manifest verify",
        "openssl req",
        "--tls-cert",
        "--tls-ca",
        "fedjax-room site",
        "audit verify",
    ):
        assert step in script, step
    assert "behind a firewall" in text and "examples/policy.toml" in script
    example = ROOT / "examples" / "policy.toml"
    policy = Policy.load(example)
    assert policy.require_secure_aggregation and policy.min_sites == 2
    # every optional setting shown commented out is valid too, once uncommented
    lines = example.read_text().splitlines()
    uncommented = "\n".join(re.sub(r"^# (?=\[queries\]|[a-z_]+ = )", "", line) for line in lines)
    import tomllib

    everything = Policy.from_dict(tomllib.loads(uncommented))
    assert everything.site_epsilon_cap == 8.0 and everything.queries.allowed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the guide makes its certificate with openssl")
def test_the_guides_commands_bring_up_a_room_and_finish_a_run(tmp_path):
    blocks = _blocks(DOC.read_text())
    port = _free_port()
    blocks[0] = blocks[0].replace(PLACEMENT, f"export ROOM_HOST=localhost ROOM_BIND=127.0.0.1 ROOM_PORT={port}")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    script = "set -euo pipefail\n" + "\n".join(blocks)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        try:  # the coordinator and the two sites the guide left running in the background
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    logs = "".join(f"\n--- {p}\n{p.read_text()[-1500:]}" for p in tmp_path.glob("*/*.log"))
    assert proc.returncode == 0, out + logs
    assert re.search(r"^run \S+ finished \| secure aggregation", out, flags=re.M), out
    assert "site-b signed" in out and "2 of 2 sites have signed" in out
    assert out.count("OK: ") >= 2 and "MISMATCH" not in out  # both logs verify, and the cross-check agrees
