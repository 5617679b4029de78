"""What the browser tests share: a real JupyterLab (``lab``), Debian's Chromium driven by Playwright (``page``)
and the helpers a test drives the UI with (``ui``).

JupyterLab runs on 127.0.0.1 (a free port, a token, a temporary root, config and runtime folder) with the
server extension enabled and the labextension built from this checkout, one server per test module.
Chromium is /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it); no browser is downloaded:
each test module skips itself when that binary is absent. Screenshots go to artifacts/browser/<module>/, and
the server's and the demo rooms' logs next to them, for a person reading a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
LABEXTENSION = REPO / "fedjax_room" / "labextension"
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str, root: Path, proc: subprocess.Popen, log: Path, runtime: Path) -> None:
        self.port, self.token, self.root, self.proc, self.log, self.runtime = port, token, root, proc, log, runtime
        self.base = f"http://127.0.0.1:{port}"
        self.room_pids: list[int] = []

    def api(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 10) -> Any:
        request = urllib.request.Request(
            f"{self.base}/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
        return json.loads(data) if data else None

    def stop(self) -> None:
        """SIGTERM, as a person's Ctrl-C: the server exits and stops its demo rooms on the way out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def processes_under(state_dir: str) -> list[int]:
    """Live processes whose command line names ``state_dir`` (the demo room's coordinator and sites)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state_dir in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _artifacts(request: pytest.FixtureRequest) -> Path:
    return ARTIFACTS / Path(str(request.module.__file__)).stem


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail(
            f"the labextension is not built at {LABEXTENSION}: pip install -e . (or `npm install && npm run build` "
            "in extension/) builds it"
        )
    artifacts = _artifacts(request)
    tmp = tmp_path_factory.mktemp("lab")
    root, config, labext = tmp / "root", tmp / "config", tmp / "labextensions"
    for folder in (root, config / "labconfig", labext, tmp / "settings", tmp / "workspaces"):
        folder.mkdir(parents=True)
    (labext / "fedjax-room").symlink_to(LABEXTENSION, target_is_directory=True)  # this checkout's build wins
    (config / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {"jpserver_extensions": {"fedjax_room.jupyter": True}},
                "LabApp": {"extra_labextensions_path": [str(labext)], "news_url": None},
            }
        )
    )
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp / "runtime"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    env.pop("FEDJAX_ROOM_PRESENCE_DIR", None)  # the kernels and the server find their shared folder themselves
    log = tmp / "lab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Lab(port, token, root, proc, log, runtime)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                status = server.api("fedjax-room/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within 90 s:\n{server.log_tail()}")
                time.sleep(0.5)
        assert status["rooms"] == []
        yield server
    finally:
        state_dirs = []
        try:
            rooms = server.api("fedjax-room/status", timeout=5)["rooms"]
            state_dirs = [r["state_dir"] for r in rooms if r["state_dir"]]
        except Exception:
            pass
        try:  # the notebooks' kernels (and the demo rooms they started) end with the server
            for session in server.api("api/sessions", timeout=5) or []:
                server.api(f"api/sessions/{session['id']}", method="DELETE", timeout=10)
        except Exception:
            pass
        server.stop()
        for state_dir in state_dirs:  # the room's process logs, for a person reading a failure
            for room_log in Path(state_dir).glob("**/logs/*.log"):
                if artifacts.exists():
                    shutil.copy(room_log, artifacts / f"room-{room_log.name}")
        for pid in server.room_pids:  # a demo room the server failed to stop: end what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if artifacts.exists():
            shutil.copy(log, artifacts / "jupyterlab.log")


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory, request):
    from playwright.sync_api import expect, sync_playwright

    artifacts = _artifacts(request)
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*.png"):
        old.unlink()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 950},
        )
        try:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.base)
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # two shared cores: a request to the room can take seconds
            yield page
        finally:
            context.close()


class UI:
    """What a test does in the page as a person would: the palette, the sidebar, screenshots."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.artifacts / f"{name}.png"))

    def run_command(self, page: Any, label: str) -> None:
        """Run a command from the palette by its label."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import expect

        palette = page.locator(".lm-CommandPalette-input:visible")
        for attempt in range(4):  # the palette can lose focus (and close) while the shell is still settling
            page.keyboard.press("Control+Shift+C")
            try:
                expect(palette).to_be_visible(timeout=5_000)
                palette.fill(label, timeout=5_000)
                item = page.locator(".lm-CommandPalette-item", has_text=label).first
                expect(item).to_be_visible(timeout=5_000)
                item.click(timeout=5_000)
                return
            except (AssertionError, PlaywrightError):
                if attempt == 3:
                    raise
                page.keyboard.press("Escape")

    def open_lab(self, page: Any, lab: Lab, path: str = "") -> Any:
        """JupyterLab (at ``path``, a notebook, if given) with the shell restored; the Clean Room sidebar open."""
        from playwright.sync_api import expect

        page.goto(f"{lab.base}/lab{'/tree/' + path if path else ''}?token={lab.token}")
        tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="fedjax-room-sidebar"]')
        expect(tab).to_be_visible(timeout=60_000)
        if not path:
            expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)  # the shell is restored
        if "lm-mod-current" not in (tab.get_attribute("class") or ""):
            tab.click()
        sidebar = page.locator("#fedjax-room-sidebar")
        expect(sidebar).to_contain_text("Clean Room")
        return sidebar

    processes_under = staticmethod(processes_under)


@pytest.fixture(scope="module")
def ui(request) -> UI:
    return UI(_artifacts(request))
