"""The Clean Room sidebar in a real JupyterLab, driven through Debian's Chromium by Playwright.

JupyterLab runs on 127.0.0.1 (a free port, a token, a temporary root and config) with the server
extension enabled and the labextension built from this checkout. Through the palette and the sidebar
the test starts a demo room (two site processes), sees the sites, starts a run and watches its rounds
advance, opens the dashboard notebook and sees the run dashboard widget render, then asks for a run over
the sites' epsilon cap and sees their refusals with the reason. It asserts on the page's text;
screenshots go to artifacts/browser/ for a person to look at.

Chromium is /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it); no browser is
downloaded. The test skips only when that binary is absent.
"""

from __future__ import annotations

import json
import os
import re
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

import pytest

pytestmark = pytest.mark.slow

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
ROUNDS = 8

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's Chromium is not installed at /usr/bin/chromium "
        "(apt-get install -y --no-install-recommends chromium; .ci/run does this)",
        allow_module_level=True,
    )

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str, root: Path, proc: subprocess.Popen, log: Path) -> None:
        self.port, self.token, self.root, self.proc, self.log = port, token, root, proc, log
        self.base = f"http://127.0.0.1:{port}"
        self.room_pids: list[int] = []

    def api(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 10) -> dict | None:
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail(
            f"the labextension is not built at {LABEXTENSION}: pip install -e . (or `npm install && npm run build` "
            "in extension/) builds it"
        )
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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
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
    server = Lab(port, token, root, proc, log)
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
        server.stop()
        for state_dir in state_dirs:  # the room's process logs, for a person reading a failure
            for room_log in Path(state_dir).glob("**/logs/*.log"):
                if ARTIFACTS.exists():
                    shutil.copy(room_log, ARTIFACTS / f"room-{room_log.name}")
        for pid in server.room_pids:  # a demo room the server failed to stop: end what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if ARTIFACTS.exists():
            shutil.copy(log, ARTIFACTS / "jupyterlab.log")


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
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
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # two shared cores: a request to the room can take seconds
            yield page
        finally:
            context.close()


# Focus the live run's Cancel button (a person about to press it), scroll the sidebar a little, remember both.
FOCUS_AND_SCROLL = """() => {
  const panel = document.querySelector('#fedjax-room-sidebar');
  const button = panel.querySelector('.fjr-run [data-action="cancel-run"]');
  if (button) { button.focus(); window.__fjrFocused = button; }
  panel.scrollTop = 30;
  return { focused: !!button && document.activeElement === button, scroll: panel.scrollTop };
}"""
# After later rounds were pushed: the very same button is still in the panel and still has the focus.
STILL_FOCUSED_AND_SCROLLED = """() => {
  const panel = document.querySelector('#fedjax-room-sidebar');
  const kept = window.__fjrFocused;
  return { same_node: !!kept && panel.contains(kept) && document.activeElement === kept, scroll: panel.scrollTop };
}"""


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def run_command(page: Page, label: str) -> None:
    """Run a command from the palette by its label (as a person would)."""
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


def test_sidebar_demo_room_live_run_and_dashboard(lab: Lab, page: Page) -> None:
    t0 = time.monotonic()
    page.goto(f"{lab.base}/lab?token={lab.token}")
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="fedjax-room-sidebar"]')
    expect(tab).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)  # the shell is restored
    tab.click()
    sidebar = page.locator("#fedjax-room-sidebar")
    expect(sidebar).to_contain_text("Clean Room")
    expect(sidebar).to_contain_text("Not connected to a room")
    shot(page, "01-sidebar-empty")

    # Palette: "Clean Room: Start demo room" -> its dialog -> two sites with digits.
    run_command(page, "Clean Room: Start demo room")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Start a demo room")
    dialog.locator("input[name=sites]").fill("2")
    dialog.locator("select[name=dataset]").select_option("digits")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(sidebar.locator(".fjr-sites")).to_contain_text("site-a", timeout=120_000)
    expect(sidebar.locator(".fjr-sites")).to_contain_text("site-b")
    expect(sidebar).to_contain_text("Demo room (digits, 2 sites)")
    expect(sidebar.locator(".fjr-sites")).to_contain_text("64 features")
    expect(sidebar.locator(".fjr-sites")).to_contain_text("epsilon_cap=10")
    expect(sidebar).to_contain_text("No runs yet.")
    shot(page, "02-sites")

    # The sidebar's Run button -> the run dialog.
    sidebar.locator(".fjr-room-head button", has_text="Run").click()
    expect(dialog).to_contain_text("Start a run")
    dialog.locator("input[name=rounds]").fill(str(ROUNDS))
    dialog.locator("input[name=target_epsilon]").fill("3")
    dialog.locator("input[name=local_steps]").fill("20")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    progress = sidebar.locator(".fjr-run .fjr-progress-label").first
    expect(progress).to_contain_text(f"/ {ROUNDS}", timeout=60_000)

    seen: list[int] = []
    mid_shot = False
    kept: dict | None = None  # focus and scroll position taken mid-run, checked after later rounds
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        match = re.search(r"round (\d+) /", progress.inner_text())
        done = int(match.group(1)) if match else -1
        if not seen or seen[-1] != done:
            seen.append(done)
        if 0 < done < ROUNDS and not mid_shot:
            shot(page, "03-run-in-progress")
            mid_shot = True
        if 0 < done <= ROUNDS - 2 and kept is None:
            kept = {"round": done, **page.evaluate(FOCUS_AND_SCROLL)}
        elif kept is not None and "after" not in kept and kept["round"] < done < ROUNDS:
            kept["after"] = page.evaluate(STILL_FOCUSED_AND_SCROLLED)
        if done == ROUNDS and "finished" in sidebar.locator(".fjr-run").first.inner_text():
            break
        time.sleep(0.2)
    if not seen or seen[-1] != ROUNDS:
        shot(page, "03-run-stuck")
        runs = lab.api("fedjax-room/rooms/room-1/runs")["runs"]
        pytest.fail(f"the run did not finish in the sidebar; progress seen: {seen}; the server says: {runs}")
    assert seen == sorted(seen) and len([d for d in seen if d > 0]) >= 2, f"rounds did not advance live: {seen}"
    # rounds arrived after the focus moved to the run's Cancel button and the sidebar was scrolled: the pushed
    # updates patched the panel in place, so the same button kept the focus and the scroll stayed
    assert kept is not None and kept["focused"], f"could not focus the live run's Cancel button: {kept}"
    assert "after" in kept, f"no live round after the focus was taken: {seen}"
    assert kept["after"]["same_node"], "an update replaced the focused button (or took its focus)"
    assert kept["after"]["scroll"] == kept["scroll"], f"the sidebar's scroll moved: {kept}"
    run_box = sidebar.locator(".fjr-run").first
    expect(run_box).to_contain_text("finished")
    expect(run_box).to_contain_text("DP-noised loss")
    expect(run_box.locator(".fjr-rounds tbody tr")).to_have_count(ROUNDS)
    budget = sidebar.locator(".fjr-budget")
    expect(budget).to_contain_text("site-a")
    assert re.search(r"ε \d\.\d+ / 10", budget.inner_text()), budget.inner_text()
    expect(sidebar.locator(".fjr-audit")).to_contain_text("aggregate_applied")
    expect(sidebar.locator(".fjr-audit")).to_contain_text("run_finished")
    shot(page, "04-run-finished")

    # Palette: "Clean Room: Open dashboard notebook" -> a notebook whose first cell shows the dashboard.
    run_command(page, "Clean Room: Open dashboard notebook")
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell").first).to_contain_text("show_dashboard(", timeout=60_000)
    output = notebook.locator(".jp-Cell").first.locator(".jp-OutputArea-output")
    expect(output).to_contain_text("run-1", timeout=120_000)
    expect(output).to_contain_text("finished", timeout=60_000)
    expect(output).to_contain_text("ε")
    assert output.locator(".widget-progress, .jupyter-widgets").count() > 0, "the dashboard is not a live widget"
    assert not notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    shot(page, "05-dashboard-notebook")
    assert (lab.root / "clean-room-dashboard-run-1.ipynb").exists()

    # A run that would take the sites past their epsilon cap: each refuses, and the sidebar says why.
    sidebar.locator(".fjr-room-head button", has_text="Run").click()
    expect(dialog).to_contain_text("Start a run")
    dialog.locator("input[name=target_epsilon]").fill("50")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    refused = sidebar.locator('.fjr-run[data-run="run-2"]')
    expect(refused).to_contain_text("failed", timeout=60_000)
    expect(refused.locator(".fjr-refusal")).to_have_count(2)
    expect(refused).to_contain_text("site-a refused (epsilon_cap)")
    expect(refused).to_contain_text("past its cap")
    shot(page, "06-refusals")

    # Shutting JupyterLab down stops the demo room's coordinator and site processes.
    [room] = lab.api("fedjax-room/status")["rooms"]
    lab.room_pids = processes_under(room["state_dir"])
    assert len(lab.room_pids) == 3, "expected a coordinator and two sites"
    lab.stop()
    deadline = time.monotonic() + 20
    while processes_under(room["state_dir"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_under(room["state_dir"]), "the demo room outlived JupyterLab"
    print(f"browser test: {time.monotonic() - t0:.0f} s; progress seen in the sidebar: {seen}")


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
