"""The Clean Room sidebar in a real JupyterLab, driven through Debian's Chromium by Playwright.

JupyterLab and Chromium are the shared fixtures of tests/browser/conftest.py (``lab``, ``page``, ``ui``).
Through the palette and the sidebar the test starts a demo room (two site processes), sees the sites,
starts a run and watches its rounds advance, opens the dashboard notebook and sees the run dashboard
widget render, then asks for a run over the sites' epsilon cap and sees it refused at once, each site's reason.
It asserts on the page's text; screenshots go to artifacts/browser/test_sidebar/ for a person to look at.
The test skips only when Debian's Chromium (/usr/bin/chromium) is absent.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROUNDS = 8

if not Path("/usr/bin/chromium").exists():
    pytest.skip(
        "Debian's Chromium is not installed at /usr/bin/chromium "
        "(apt-get install -y --no-install-recommends chromium; .ci/run does this)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect  # noqa: E402

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


def test_sidebar_demo_room_live_run_and_dashboard(lab, page: Page, ui) -> None:
    t0 = time.monotonic()
    page.goto(f"{lab.base}/lab?token={lab.token}")
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="fedjax-room-sidebar"]')
    expect(tab).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)  # the shell is restored
    tab.click()
    sidebar = page.locator("#fedjax-room-sidebar")
    expect(sidebar).to_contain_text("Clean Room")
    expect(sidebar).to_contain_text("Not connected to a room")
    ui.shot(page, "01-sidebar-empty")

    # Palette: "Clean Room: Start demo room" -> its dialog -> two sites with digits.
    ui.run_command(page, "Clean Room: Start demo room")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Start a demo room")
    dialog.locator("input[name=sites]").fill("2")
    dialog.locator("select[name=dataset]").select_option("digits")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    # the ~20 s start shows what is happening, with a spinner, until the room is there
    expect(sidebar.locator(".fjr-busy")).to_contain_text("Starting a demo room: a coordinator and 2 sites")
    expect(sidebar.locator(".fjr-sites")).to_contain_text("site-a", timeout=120_000)
    expect(sidebar.locator(".fjr-busy")).to_have_count(0)
    expect(sidebar.locator(".fjr-sites")).to_contain_text("site-b")
    expect(sidebar).to_contain_text("Demo room (digits, 2 sites)")
    expect(sidebar.locator(".fjr-sites")).to_contain_text("64 features")
    expect(sidebar.locator(".fjr-sites")).to_contain_text("ε cap 10")
    expect(sidebar).to_contain_text("No runs yet.")
    ui.shot(page, "02-sites")

    # The sidebar's Run button -> the run dialog.
    sidebar.locator(".fjr-room-head button", has_text="Run").click()
    expect(dialog).to_contain_text("Start a run")
    # every field and its default come from GET /fedjax-room/options (RunConfig), batch size and learning rate too
    options = {o["name"]: o for o in lab.api("fedjax-room/options")["options"]}
    for name in ("rounds", "batch_size", "learning_rate", "local_steps", "clip_norm"):
        default = options[name]["default"]
        shown = str(int(default)) if float(default).is_integer() else str(default)  # as JavaScript prints it
        expect(dialog.locator(f"input[name={name}]")).to_have_value(shown)
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
            ui.shot(page, "03-run-in-progress")
            mid_shot = True
        if 0 < done <= ROUNDS - 2 and kept is None:
            kept = {"round": done, **page.evaluate(FOCUS_AND_SCROLL)}
        elif kept is not None and "after" not in kept and kept["round"] < done < ROUNDS:
            kept["after"] = page.evaluate(STILL_FOCUSED_AND_SCROLLED)
        if done == ROUNDS and "finished" in sidebar.locator(".fjr-run").first.inner_text():
            break
        time.sleep(0.2)
    if not seen or seen[-1] != ROUNDS:
        ui.shot(page, "03-run-stuck")
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
    ui.shot(page, "04-run-finished")

    # Palette: "Clean Room: Open dashboard notebook" -> a notebook whose first cell shows the dashboard.
    ui.run_command(page, "Clean Room: Open dashboard notebook")
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell").first).to_contain_text("show_dashboard(", timeout=60_000)
    output = notebook.locator(".jp-Cell").first.locator(".jp-OutputArea-output")
    expect(output).to_contain_text("run-1", timeout=120_000)
    expect(output).to_contain_text("finished", timeout=60_000)
    # the run had ended: the dashboard shows its static snapshot (each site's epsilon against its cap, charts)
    expect(output).to_contain_text("/ 10")
    assert output.locator("svg").count() > 0, "the dashboard's charts are not in its output"
    assert not notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    ui.shot(page, "05-dashboard-notebook")
    assert (lab.root / "clean-room-dashboard-run-1.ipynb").exists()

    # A run that would take the sites past their epsilon cap: refused at once (the sites' own estimate, nothing
    # spent, no run started), and the error says each site's reason and what to change.
    sidebar.locator(".fjr-room-head button", has_text="Run").click()
    expect(dialog).to_contain_text("Start a run")
    dialog.locator("input[name=target_epsilon]").fill("50")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(dialog).to_contain_text("the run was not started", timeout=60_000)
    expect(dialog).to_contain_text("site-a would refuse (epsilon_cap)")
    expect(dialog).to_contain_text("site-b would refuse (epsilon_cap)")
    expect(dialog).to_contain_text("change target_epsilon")
    ui.shot(page, "06-refused-at-once")
    dialog.locator(".jp-Dialog-button").first.click()
    expect(dialog).to_have_count(0)
    expect(sidebar.locator('.fjr-run[data-run="run-2"]')).to_have_count(0)

    # ✕ asks first: "Keep it" leaves the demo room running
    sidebar.locator(".fjr-room-head [data-action='disconnect']").click()
    expect(dialog).to_contain_text("Stop the demo room?")
    ui.shot(page, "07-stop-asks-first")
    dialog.locator(".jp-Dialog-button", has_text="Keep it").click()
    expect(dialog).to_have_count(0)
    expect(sidebar).to_contain_text("Demo room (digits, 2 sites)")

    # Shutting JupyterLab down stops the demo room's coordinator and site processes.
    [room] = lab.api("fedjax-room/status")["rooms"]
    lab.room_pids = ui.processes_under(room["state_dir"])
    assert len(lab.room_pids) == 3, "expected a coordinator and two sites"
    lab.stop()
    deadline = time.monotonic() + 20
    while ui.processes_under(room["state_dir"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ui.processes_under(room["state_dir"]), "the demo room outlived JupyterLab"
    print(f"browser test: {time.monotonic() - t0:.0f} s; progress seen in the sidebar: {seen}")
