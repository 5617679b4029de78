"""The %room magics through IPython's own test shell, against the stand-in analyst API (conftest)."""

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import fedjax_room.jupyter as jupyter
from fedjax_room.jupyter.dashboard import RunDashboard
from fedjax_room.jupyter.display import Table
from fedjax_room.models import ModelSpec

SPEC = """\
family: logistic
input_shape: [64]
num_classes: 10
layers: [{type: dense, features: 10}]
"""


def run(ip, cell):
    with capture_output() as cap:
        result = ip.run_cell(cell)
    return result, cap


def usage_error(ip, cell) -> str:
    result, cap = run(ip, cell)
    assert isinstance(result.error_in_exec, UsageError), (cell, result.error_in_exec)
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), cap.stderr
    assert "Traceback" not in cap.stdout + cap.stderr
    return lines[0]


def test_help_lists_every_command(ip):
    result, cap = run(ip, "%room --help")
    assert result.success
    for word in ("demo", "connect", "sites", "runs", "budget", "audit", "train", "launch", "stop"):
        assert word in cap.stdout
    _, cap = run(ip, "%room train --help")
    assert "--target-epsilon" in cap.stdout and "--secure-aggregation" in cap.stdout
    _, cap = run(ip, "%%room train --help\n# the body is ignored")
    assert "--clip-norm" in cap.stdout


def test_sites_runs_budget_audit_render_tables(ip, fake_room):
    result, _ = run(ip, "%room sites")
    sites = result.result
    assert isinstance(sites, Table) and [s.name for s in sites] == ["alpha", "beta", "gamma"]
    html = sites._repr_html_()
    assert "<table" in html and "alpha" in html and "x: 64" in html and "500-1000" in html
    assert "alpha" in sites.to_text()

    result, _ = run(ip, "%room budget")
    budget = result.result
    assert "ε spent" in budget._repr_html_() and "gamma" in budget._repr_html_()
    assert [row["site"] for row in budget] == ["alpha", "beta", "gamma"]

    result, _ = run(ip, "%room audit --last 3")
    assert len(result.result) == 3 and "run-49" in result.result._repr_html_()
    assert "x" * 64 not in result.result._repr_html_()  # hashes are hidden

    result, _ = run(ip, "%room runs")
    assert list(result.result) == [] and "no runs" in result.result._repr_html_()


def test_train_cell_starts_a_run_and_shows_the_dashboard(ip, fake_room, fakes):
    line = "%%room train --rounds 2 --target-epsilon 3 --aggregator mean --secure-aggregation\n"
    result, cap = run(ip, line + SPEC)
    assert result.success, result.error_in_exec
    spec, kwargs = fake_room.trained[-1]
    assert isinstance(spec, ModelSpec) and spec.family == "logistic"
    assert kwargs == {"rounds": 2, "target_epsilon": 3.0, "aggregator": "mean", "secure_aggregation": True}
    assert result.result is None  # the dashboard is the output, no second static summary
    the_run = ip.user_ns["run"]
    assert the_run is fake_room.runs_[-1]
    dashboard = jupyter._magics.dashboard
    assert isinstance(dashboard, RunDashboard)
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    assert dashboard.rounds_total == 2 and dashboard.epsilon_cap == {"alpha": 10.0, "beta": 10.0, "gamma": 10.0}
    the_run.emit(fakes.RoundResult(1, ["alpha", "beta", "gamma"], [], 2.1, 0.4, {"alpha": 1.0, "beta": 1.1}))
    assert dashboard.rounds_done == 1 and dashboard.status == "running"
    the_run.emit(fakes.RoundResult(2, ["alpha", "beta"], ["gamma"], 1.5, 0.7, {"alpha": 2.0, "beta": 2.2}))
    the_run.finish()
    assert dashboard.wait(5)
    assert dashboard.status == "finished" and dashboard.losses == [2.1, 1.5]
    assert dashboard.site_status == {"alpha": "active", "beta": "active", "gamma": "dropped"}


def test_train_no_dashboard_and_as(ip, fake_room):
    result, cap = run(ip, "%%room train --no-dashboard --as r7\n" + SPEC)
    assert result.success and ip.user_ns["r7"] is result.result
    assert not any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    assert fake_room.trained[-1][1] == {}


@pytest.mark.parametrize(
    "cell, expect",
    [
        ("%room fly", "unknown command 'fly'"),
        ("%room demo --sites 0", "positive integer"),
        ("%room audit --last x", "positive integer"),
        ("%room connect ws://x", "--key"),
        ("%room train", "cell magic"),
        ("%%room sites\nfoo", "only cell magic"),
        ("%%room train --rounds -1\n" + SPEC, "rounds must be an integer in"),
        ("%%room train\n", "cell body is empty"),  # IPython's own one-line error
        ("%%room train\n# nothing yet\n", "needs a model spec"),
        ("%%room train\nfamily: [", "neither valid YAML nor JSON"),
        ("%%room train\nfamily: rnn\ninput_shape: [2]\nnum_classes: 2\nlayers: [{type: dense, features: 2}]", "rnn"),
    ],
)
def test_bad_arguments_are_one_line(ip, cell, expect):
    line = usage_error(ip, cell)
    assert expect in line


def test_room_errors_are_one_line(ip, fake_room, budget_error):
    fake_room.refuse_with = budget_error
    line = usage_error(ip, "%%room train --target-epsilon 12\n" + SPEC)
    assert line == f"UsageError: BudgetExceededError: {budget_error.message}"


def test_connect_failure_is_one_line(ip):
    def refuse(url, key):
        raise ConnectionRefusedError(111, "Connection refused")

    jupyter._magics.connect_fn = refuse
    assert "ConnectionRefusedError" in usage_error(ip, "%room connect ws://127.0.0.1:1 --key k.pem")


def test_not_connected(ip):
    run(ip, "%room stop")
    for cell in ("%room sites", "%room budget", "%%room train\n" + SPEC):
        assert "not connected to a room" in usage_error(ip, cell)


def test_demo_connect_stop(ip, fake_room):
    result, cap = run(ip, "%room demo --sites 2 --dataset breast_cancer --non-iid 0.3 --state-dir /tmp/r")
    assert result.success and result.result is None
    embedded = jupyter._magics.embedded
    assert embedded.kwargs == {"sites": 2, "dataset": "breast_cancer", "non_iid": 0.3, "state_dir": "/tmp/r"}
    assert "ws://127.0.0.1:9999" in cap.stdout and "site-0, site-1" in cap.stdout
    assert ip.user_ns["room"] is embedded.room and fake_room.closed  # the earlier connection was closed
    assert jupyter.current_room() is embedded.room and jupyter.current_demo() is embedded

    result, cap = run(ip, "%room connect ws://elsewhere:1 --key analyst.key --as other")
    assert result.success and embedded.stopped and ip.user_ns["other"] is fake_room
    assert "room" not in ip.user_ns  # the stopped room is no longer offered

    result, cap = run(ip, "%room stop")
    assert "disconnected" in cap.stdout and jupyter.current_room() is None and jupyter.current_demo() is None
    _, cap = run(ip, "%room stop")
    assert "no room to stop" in cap.stdout


def test_launch_returns_a_form(ip, fake_room):
    from fedjax_room.jupyter.launch import LaunchForm

    result, _ = run(ip, "%room launch")
    form = result.result
    assert isinstance(form, LaunchForm) and form.input_shape == (64,) and form.num_classes == 10
    form.rounds = 3
    form.button.click()
    assert fake_room.trained[-1][1]["rounds"] == 3 and ip.user_ns["run"] is form.run


def test_unload_removes_magics(ip):
    ip.run_line_magic("unload_ext", "fedjax_room")
    assert "room" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "fedjax_room")
    assert "room" in ip.magics_manager.magics["line"] and "room" in ip.magics_manager.magics["cell"]


def test_watch_follows_an_existing_run(ip, fake_room, fakes):
    started = fake_room.train("spec", rounds=4)
    started.emit(fakes.RoundResult(1, ["alpha"], [], 1.0, 0.5, {"alpha": 0.7}))
    result, cap = run(ip, "%room watch run-1 --as w")
    assert result.success and ip.user_ns["w"] is started and jupyter.current_run() is started
    dashboard = jupyter._magics.dashboard
    assert dashboard.run_id == "run-1" and dashboard.rounds_done == 1 and dashboard.rounds_total == 4
    assert "no run 'run-9'" in usage_error(ip, "%room watch run-9")


def test_audit_hides_chain_hashes_and_signatures():
    from fedjax_room.analyst.views import audit_html

    record = {
        "fields": {"run_id": "run-1", "round": 2},
        "index": 13,
        "kind": "update_received",
        "prev": "p" * 64,
        "sig": "s" * 128,
        "time": "2026-01-01T00:00:00+00:00",
        "v": 1,
        "writer": "coordinator",
    }
    html = audit_html([record])
    assert "p" * 64 not in html and "s" * 128 not in html and "coordinator" in html
    assert "&quot;round&quot;: 2" in html and "update_received" in html
