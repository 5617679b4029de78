"""One room seen from every surface, in a real JupyterLab driven through Debian's Chromium by Playwright.

A notebook (its own kernel) starts a demo room with ``%room demo`` and trains on it from Python; the Clean
Room sidebar, which never connected to anything, shows that room (labelled, with the notebook that opened
it, the line that attaches another notebook and no ✕: it is the notebook's) and the notebook's run going
round by round to finished. Cancel asks first (and "Keep running" keeps it running). The room's "Dashboard"
button writes a notebook that attaches by room id (no key path in it), opens it on a kernel and runs it: the
live dashboard of that run renders, and the sidebar lists the second notebook on the same room. Saved and
reopened without its kernel's widgets, the dashboard notebook shows its static snapshot, not an error.

JupyterLab and Chromium are the shared fixtures of tests/browser/conftest.py. Skips only when Debian's
Chromium (/usr/bin/chromium) is absent.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if not Path("/usr/bin/chromium").exists():
    pytest.skip(
        "Debian's Chromium is not installed at /usr/bin/chromium "
        "(apt-get install -y --no-install-recommends chromium; .ci/run does this)",
        allow_module_level=True,
    )

from playwright.sync_api import expect  # noqa: E402

ROUNDS = 4
NOTEBOOK = "one-room.ipynb"
CELLS = [
    "%load_ext fedjax_room",
    "%room demo --sites 2 --dataset digits",
    "from fedjax_room.models import spec_from_schema\n"
    "\n"
    'spec = spec_from_schema(room.sites()[0].schema, "logistic")\n'
    f"run = room.train(spec, rounds={ROUNDS}, local_steps=5)",
    'run.wait(600)\nprint("the notebook\'s run:", run.id, run.status)',
]


def write_notebook(path: Path, cells: list[str]) -> None:
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": []}
                    | {"source": source}
                    for i, source in enumerate(cells)
                ],
                "metadata": {
                    "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )


def wait_for_kernel(lab, path: str, timeout: float = 120) -> None:
    """Until the notebook at ``path`` has a kernel that is idle (started, ready to run cells)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for session in lab.api("api/sessions"):
            if session["path"] == path and session["kernel"]["execution_state"] == "idle":
                return
        time.sleep(0.5)
    pytest.fail(f"no idle kernel for {path} within {timeout:g} s:\n{lab.log_tail()}")


@pytest.fixture(scope="module")
def notebook_room(lab, page, ui):
    """The notebook's room and run, as the sidebar shows them (the sidebar was opened first, empty)."""
    sidebar = ui.open_lab(page, lab)
    expect(sidebar).to_contain_text("Not connected to a room")
    write_notebook(lab.root / NOTEBOOK, CELLS)
    page.goto(f"{lab.base}/lab/tree/{NOTEBOOK}?token={lab.token}")
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell").first).to_contain_text("%load_ext fedjax_room", timeout=60_000)
    wait_for_kernel(lab, NOTEBOOK)
    notebook.locator(".jp-Cell").first.click()
    ui.run_command(page, "Run All Cells")
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="fedjax-room-sidebar"]')
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    room = sidebar.locator(".fjr-room").first
    expect(room).to_contain_text("Demo room (digits, 2 sites)", timeout=120_000)
    return sidebar, room, notebook


def test_the_sidebar_shows_a_notebooks_room_and_its_run(lab, page, ui, notebook_room) -> None:
    sidebar, room, notebook = notebook_room
    expect(room).to_contain_text(f"Opened in {NOTEBOOK}")
    expect(room.locator(".fjr-attach-code")).to_have_text(re.compile(r"room = fedjax_room\.attach\('room-\d+'\)"))
    expect(room.locator('[data-action="disconnect"]')).to_have_count(0)  # the notebook's: closed there
    expect(room.locator(".fjr-sites")).to_contain_text("site-a")
    expect(room.locator(".fjr-sites")).to_contain_text("ε cap 10")  # a readable policy
    run_box = room.locator('.fjr-run[data-run="run-1"]')
    expect(run_box).to_be_visible(timeout=120_000)
    ui.shot(page, "01-notebook-room")

    # Cancel asks first; "Keep running" leaves the run alone
    cancel = run_box.locator('[data-action="cancel-run"]')
    expect(cancel).to_be_visible()
    cancel.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Cancel run-1?")
    expect(dialog).to_contain_text("Its sites stop")
    ui.shot(page, "02-cancel-asks-first")
    dialog.locator(".jp-Dialog-button", has_text="Keep running").click()
    expect(dialog).to_have_count(0)

    expect(run_box).to_contain_text("finished", timeout=300_000)
    expect(run_box).to_contain_text(f"round {ROUNDS} / {ROUNDS}")
    expect(run_box.locator(".fjr-table-wrap .fjr-rounds tbody tr")).to_have_count(ROUNDS)
    expect(room.locator(".fjr-budget")).to_contain_text("site-b")
    output = notebook.locator(".jp-OutputArea-output", has_text="the notebook's run:")
    expect(output).to_contain_text("run-1 finished", timeout=60_000)  # the same run, seen from the notebook
    ui.shot(page, "03-notebook-run-finished")


def test_open_dashboard_runs_a_notebook_on_a_kernel_attached_by_room_id(lab, page, ui, notebook_room) -> None:
    sidebar, room, _ = notebook_room
    room.locator(".fjr-room-head [data-action='open-dashboard']").click()
    dashboard = page.locator(".jp-NotebookPanel:visible")
    first = dashboard.locator(".jp-Cell").first
    expect(first).to_contain_text("fedjax_room.attach(", timeout=60_000)
    output = first.locator(".jp-OutputArea-output")
    expect(output).to_contain_text("run-1", timeout=120_000)  # run by the sidebar, nobody pressed Run
    expect(output).to_contain_text("finished", timeout=60_000)
    # the run had ended: its dashboard is the static snapshot (each site's epsilon against its cap, the charts)
    expect(output).to_contain_text("/ 10")
    assert output.locator("svg").count() > 0, "the dashboard's charts are not in its output"
    assert not dashboard.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    ui.shot(page, "04-dashboard-notebook")

    book = json.loads((lab.root / "clean-room-dashboard-run-1.ipynb").read_text())
    source = "".join(book["cells"][0]["source"])
    assert "fedjax_room.attach(" in source and ".key" not in source and "key=" not in source
    sessions = {s["path"]: s["kernel"]["name"] for s in lab.api("api/sessions")}
    specs = lab.api("api/kernelspecs")["kernelspecs"]
    expected = "fedjax-room" if "fedjax-room" in specs else "python3"  # the Clean Room kernel when installed
    assert sessions.get("clean-room-dashboard-run-1.ipynb") == expected, sessions
    # the dashboard's kernel attached to the same room: the sidebar lists both notebooks on it
    expect(room).to_contain_text("clean-room-dashboard-run-1.ipynb", timeout=30_000)
    assert len(lab.api("fedjax-room/status")["rooms"]) == 1


def test_a_reopened_saved_dashboard_shows_its_static_snapshot(lab, page, ui, notebook_room) -> None:
    path = "clean-room-dashboard-run-1.ipynb"
    if not (lab.root / path).exists():
        pytest.fail("the dashboard notebook was not written (the test before this one failed)")
    dashboard = page.locator(".jp-NotebookPanel:visible")
    expect(dashboard.locator(".jp-Cell").first.locator(".jp-OutputArea-output")).to_contain_text("finished")
    dashboard.locator(".jp-Cell").first.click()
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        saved = json.loads((lab.root / path).read_text())
        if saved["cells"][0].get("outputs"):
            break
        time.sleep(0.5)
    outputs = saved["cells"][0]["outputs"]
    bundle = next((o.get("data", {}) for o in outputs if "text/html" in o.get("data", {})), {})
    assert "run-1" in "".join(bundle.get("text/html", "")), f"no static snapshot saved with the widget: {outputs}"

    # closed, its kernel gone, opened again: the widget's model is nowhere, the snapshot shows
    for session in lab.api("api/sessions"):
        if session["path"] == path:
            lab.api(f"api/sessions/{session['id']}", method="DELETE")
    ui.run_command(page, "Close All Tabs")
    page.goto(f"{lab.base}/lab/tree/{path}?token={lab.token}")
    reopened = page.locator(".jp-NotebookPanel:visible").locator(".jp-Cell").first.locator(".jp-OutputArea-output")
    expect(reopened).to_contain_text("run-1", timeout=60_000)
    expect(reopened).to_contain_text("finished")
    expect(reopened).not_to_contain_text("Error displaying widget")
    ui.shot(page, "05-reopened-static-dashboard")
