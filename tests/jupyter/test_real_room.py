"""The magics and the dashboard against a real embedded room (coordinator and sites as processes)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

pytestmark = pytest.mark.slow

SPEC = """\
family: logistic
input_shape: [64]
num_classes: 10
layers: [{type: dense, features: 10}]
"""


@pytest.fixture(scope="module")
def shell():
    pytest.importorskip("fedjax_room.sim.demo")
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "fedjax_room")
    with capture_output() as cap:
        result = ip.run_cell("%room demo --sites 2 --dataset digits")
    assert result.success, (result.error_in_exec, cap.stderr)
    yield ip
    ip.run_cell("%room stop")
    ip.run_line_magic("unload_ext", "fedjax_room")


def cell(ip, source):
    with capture_output() as cap:
        result = ip.run_cell(source)
    return result, cap


def test_magics_and_dashboard_follow_a_real_run(shell):
    import fedjax_room.jupyter as jupyter
    from fedjax_room.analyst import Room, Run

    room = shell.user_ns["room"]
    assert isinstance(room, Room) and jupyter.current_room() is room

    result, _ = cell(shell, "%room sites")
    assert [s.name for s in result.result] == ["site-a", "site-b"]
    html = result.result._repr_html_()
    assert "site-a" in html and "x: 64" in html and "classes: 0, 1, 2" in html

    seen_rounds: list[int] = []
    result, cap = cell(
        shell,
        "%%room train --rounds 2 --target-epsilon 3 --local-steps 25 --batch-size 48 --learning-rate 0.5 "
        "--local-optimizer momentum\n" + SPEC,  # an option declared only in RunConfig, end to end
    )
    assert result.success, (result.error_in_exec, cap.stderr)
    assert result.result is None  # the live dashboard is the output
    run = shell.user_ns["run"]
    assert isinstance(run, Run)
    dashboard = jupyter._magics.dashboard
    dashboard.observe(lambda change: seen_rounds.append(change["new"]), names="rounds_done")
    assert dashboard.rounds_total == 2 and dashboard.epsilon_cap == {"site-a": 10.0, "site-b": 10.0}
    run.wait(timeout=300)
    assert dashboard.wait(30)
    assert run.status == "finished", run.error
    assert run.config["local_optimizer"] == "momentum"  # the room's own record of the run
    assert dashboard.status == "finished" and dashboard.rounds_done == 2
    assert seen_rounds in ([], [2], [1, 2])  # rounds arrive one at a time (none if both came before observe)
    assert dashboard.losses == pytest.approx([r.loss for r in run.history])
    assert dashboard.accuracies == pytest.approx([r.accuracy for r in run.history])
    assert dashboard.epsilon == pytest.approx({s: p.epsilon for s, p in run.privacy.sites.items()})
    assert dashboard.site_status == {"site-a": "active", "site-b": "active"}
    assert all(0 < eps <= 3.0 + 1e-6 for eps in dashboard.epsilon.values())
    assert dashboard._gauge_widgets["site-a"][0].max == 10.0

    result, _ = cell(shell, "%room budget")
    assert "site-b" in result.result._repr_html_() and "ε spent" in result.result._repr_html_()
    result, _ = cell(shell, "%room runs")
    assert [r.id for r in result.result] == [run.id] and "2 / 2" in result.result._repr_html_()
    result, _ = cell(shell, "%room audit --last 3")
    assert len(result.result) == 3 and "run_finished" in result.result._repr_html_()

    result, _ = cell(shell, f"%room watch {run.id} --as again")
    assert result.success and shell.user_ns["again"] is run
    assert jupyter._magics.dashboard.wait(30) and jupyter._magics.dashboard.rounds_done == 2


def test_refusals_show_on_the_dashboard_and_bad_requests_are_one_line(shell):
    import fedjax_room.jupyter as jupyter

    # Every site caps epsilon at 10: a run planned at 50 is refused up front (the sites answer room.estimate
    # with their real plan and policy), in one line naming each site, its reason and the option to change, and
    # no run is started.
    before = {r.id for r in shell.user_ns["room"].runs()}
    result, cap = cell(shell, "%%room train --rounds 1 --target-epsilon 50\n" + SPEC)
    assert result.error_in_exec is not None
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1, cap.stderr
    assert "epsilon_cap" in lines[0] and "target_epsilon" in lines[0]
    assert "site-a" in lines[0] or "site-b" in lines[0]
    assert {r.id for r in shell.user_ns["room"].runs()} == before
    assert jupyter._magics.dashboard is None or jupyter._magics.dashboard.status != "running"

    result, cap = cell(shell, "%room watch no-such-run")
    assert isinstance(result.error_in_exec, UsageError)
    assert cap.stderr.strip().startswith("UsageError: ConfigError: no run 'no-such-run' in this room")


def test_launch_form_starts_a_real_run(shell):
    from fedjax_room.jupyter.launch import LaunchForm

    result, cap = cell(shell, "%room launch")
    form = result.result
    assert isinstance(form, LaunchForm), cap.stderr
    assert form.input_shape == (64,) and form.num_classes == 10  # from the sites' schema
    form.family, form.rounds, form.target_epsilon = "logistic", 1, 1.0
    form.button.click()
    assert form.run is not None and shell.user_ns["run"] is form.run, form._message.value
    form.run.wait(timeout=300)
    assert form.dashboard.wait(30)
    assert form.run.status == "finished" and form.dashboard.status == "finished"
    assert form.dashboard.rounds_done == 1 and max(form.dashboard.epsilon.values()) <= 1.0 + 1e-6


def test_tune_cell_releases_one_run_and_binds_the_best_trial(shell):
    """`%%room tune`: one session on the real room; the notebook gets the best trial (bound to --as) and the room's
    run list grows by exactly that one run, whatever number of trials the coordinator drew."""
    from fedjax_room.analyst.tune import TuneResult

    room = shell.user_ns["room"]
    before = {r.id for r in room.runs()}
    result, cap = cell(
        shell,
        "%%room tune --trials 2 --search learning_rate=4,10 --rounds 2 --target-epsilon 1 --as best\n" + SPEC,
    )
    assert result.success, (result.error_in_exec, cap.stderr)
    assert "only the best trial will be released" in cap.stdout
    best = shell.user_ns["best"]
    assert isinstance(best, TuneResult) and result.result is best
    assert set(best.config) == {"learning_rate"} and best.config["learning_rate"] in (4, 10)  # what was drawn
    assert best.run.status == "finished" and best.run.config["rounds"] == 2  # and the options every trial shared
    assert {r.id for r in room.runs()} - before == {best.run.id}

    result, cap = cell(shell, "%%room tune --trials 2 --search rounds=2,3 --rounds 2\n" + SPEC)
    assert isinstance(result.error_in_exec, UsageError)
    assert "both searched (--search) and fixed" in str(result.error_in_exec)


def test_connect_pins_the_coordinator_key(shell, tmp_path):
    """`%room connect --coordinator-key`: a wrong pin or no pin sends nothing; the room's own key connects.

    Last in this module: a successful `%room connect` replaces (and stops) the demo room.
    """
    import shutil

    import fedjax_room.jupyter as jupyter
    from fedjax_room.identity import generate_key, save_private_key

    embedded = jupyter._magics.embedded
    alone = tmp_path / "alone"
    alone.mkdir()
    key = shutil.copy(embedded.analyst_key, alone / "analyst.key")  # no pin beside this copy
    other = tmp_path / "other.key"
    save_private_key(generate_key(), other)

    result, cap = cell(shell, f"%room connect {embedded.url} --key {key} --coordinator-key {other}.pub --as r2")
    assert isinstance(result.error_in_exec, UsageError)
    assert "not the one pinned" in cap.stderr or "UnknownIdentityError" in cap.stderr, cap.stderr
    assert "r2" not in shell.user_ns

    result, cap = cell(shell, f"%room connect {embedded.url} --key {key} --as r2")
    assert isinstance(result.error_in_exec, UsageError), "connected without any pin"
    assert "r2" not in shell.user_ns

    result, cap = cell(
        shell, f"%room connect {embedded.url} --key {key} --coordinator-key {embedded.coordinator_key} --as r2"
    )
    assert result.success, cap.stderr
    assert "Connected to" in cap.stdout and "r2" in shell.user_ns
