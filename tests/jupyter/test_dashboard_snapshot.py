"""A notebook executed by nbclient (as papermill does) and saved keeps the finished dashboard as static HTML.

The run dashboard is shown as a live widget under a display id; when the run ends it replaces that output by its
snapshot (``text/html`` with the charts as inline SVG, and ``text/plain``), so a saved notebook reopened without
its kernel, or rendered by nbviewer or GitHub, shows the dashboard instead of "Error displaying widget". The
updates here come from a later cell and from a background thread after the displaying cell ended, as the analyst
client's callback thread sends them. The same kernel shows a room error as one typed line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROUND = (
    '{{"round": {n}, "sites": ["a", "b"], "dropped": [], "loss": {loss}, "accuracy": {acc}, '
    '"epsilon": {{"a": {n}.0, "b": {n}.5}}}}'
)
WIDGET = "application/vnd.jupyter.widget-view+json"


def _cells() -> list[str]:
    r1, r2 = ROUND.format(n=1, loss=1.2, acc=0.4), ROUND.format(n=2, loss=0.8, acc=0.7)
    new = 'RunDashboard(run_id="{}", rounds=2, sites=["a", "b"], caps={{"a": 4.0, "b": 4.0}})'
    return [
        "%load_ext fedjax_room\nfrom fedjax_room.jupyter.dashboard import RunDashboard",
        f"later = {new.format('run-later')}\nlater",
        f"later.update({r1})\nlater.update({r2})\nlater.finish('finished')",
        f"threaded = {new.format('run-thread')}\nthreaded",
        "import threading\n"
        f"t = threading.Thread(target=lambda: (threaded.update({r1}), threaded.update({r2}), threaded.finish()))\n"
        "t.start()\nt.join()",
        f"done = {new.format('run-done')}\ndone.update({r1})\ndone.finish('failed', error='site-b <refused>')\ndone",
        "from fedjax_room.errors import ConfigError\nraise ConfigError('aggregator median needs each update')",
        # attached to a run: the client's callback thread delivers its events; the end is published after it
        "from fedjax_room.analyst.events import RoundEvent, StatusEvent\n"
        "from fedjax_room.analyst.results import RoundResult\n"
        "class Run:\n"
        "    id, callbacks = 'run-attached', []\n"
        "    def subscribe(self, cb, *, kinds=None, replay=False):\n"
        "        self.callbacks.append(cb)\n"
        "        if replay:\n"
        "            cb(StatusEvent(self.id, 'running', 0))\n"
        "        return lambda: None\n"
        "fake = Run()\n"
        "attached = RunDashboard(rounds=1, sites=['a']).attach(fake)\n"
        "attached",
        "result = RoundResult(1, ('a',), (), 0.5, 0.9, {'a': 1.0})\n"
        "t = threading.Thread(target=lambda: [cb(e) for e in (RoundEvent(fake.id, result), "
        "StatusEvent(fake.id, 'finished', 1)) for cb in fake.callbacks])\n"
        "t.start()\nt.join()\nassert attached.wait(5)",
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    repo = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(src) for src in _cells()]
    book.cells[6].metadata["tags"] = ["raises-exception"]  # the ConfigError cell
    nbclient.NotebookClient(book, timeout=120, kernel_name="python3").execute()
    path = tmp_path_factory.mktemp("nb") / "dashboard.ipynb"
    nbformat.write(book, path)
    return path


def _outputs(path: Path, index: int) -> list[dict]:
    return nbformat.read(path, as_version=4).cells[index].outputs


@pytest.mark.parametrize(("index", "run_id"), [(1, "run-later"), (3, "run-thread")], ids=["later-cell", "thread"])
def test_the_saved_output_is_the_final_static_dashboard(saved, index, run_id):
    (output,) = _outputs(saved, index)
    data = output["data"]
    assert WIDGET not in data  # nothing that needs a live kernel's widget model
    html = data["text/html"]
    assert f"Run {run_id}" in html and "finished" in html and "round 2 / 2" in html
    assert html.count("<svg") == 2 and html.count("<polyline") == 2  # loss and accuracy, two rounds each
    assert "<td>a</td><td>active</td>" in html and "2.5 / 4 (62%)" in html  # each site's epsilon against its cap
    assert data["text/plain"] == f"RunDashboard(run {run_id}: finished, 2/2 rounds)"


def test_a_dashboard_shown_after_its_run_ended_is_static_at_once(saved):
    (output,) = _outputs(saved, 5)
    assert WIDGET not in output["data"]
    html = output["data"]["text/html"]
    assert "failed" in html and "site-b &lt;refused&gt;" in html and "<circle" in html  # one round: one point


def test_a_room_error_is_one_typed_line_in_the_kernel(saved):
    (error,) = [o for o in _outputs(saved, 6) if o["output_type"] == "error"]
    assert error["ename"] == "ConfigError"
    assert error["traceback"] == ["ConfigError: aggregator median needs each update"]


def test_an_attached_dashboard_is_replaced_once_its_run_has_ended(saved):
    (output,) = _outputs(saved, 7)
    assert WIDGET not in output["data"]
    html = output["data"]["text/html"]
    assert "Run run-attached" in html and "finished" in html and "round 1 / 1" in html
    assert output["data"]["text/plain"] == "RunDashboard(run run-attached: finished, 1/1 rounds)"
