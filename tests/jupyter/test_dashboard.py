"""The run dashboard's traits change round by round (no browser), driven by hand and by a live run."""

import threading

import pytest
import traitlets

from fedjax_room.jupyter.dashboard import RunDashboard


def test_traits_follow_the_rounds(fakes):
    RR = fakes.RoundResult
    dash = RunDashboard(run_id="run-1", rounds=3, sites=["a", "b", "c"], caps={"a": 4.0, "b": 4.0}, target_epsilon=3.0)
    assert dash.status == "pending" and dash.rounds_done == 0
    assert dash.site_status == {"a": "waiting", "b": "waiting", "c": "waiting"}
    assert "waiting for the first round" in dash._chart.value

    dash.update(RR(1, ["a", "b", "c"], [], 2.3, 0.31, {"a": 1.0, "b": 1.2, "c": 0.9}))
    assert dash.status == "running" and dash.rounds_done == 1
    assert (dash._progress.value, dash._progress.max) == (1, 3)
    assert dash.losses == [2.3] and dash.accuracies == [0.31]
    bar_a, label_a, _ = dash._gauge_widgets["a"]
    assert (bar_a.value, bar_a.max, bar_a.bar_style) == (1.0, 4.0, "success")
    assert label_a.value == "ε 1 / 4"
    bar_c, label_c, _ = dash._gauge_widgets["c"]
    assert bar_c.max == 3.0  # no cap known: drawn against the run's target
    assert "<polyline" not in dash._chart.value and "<circle" in dash._chart.value  # one point so far

    dash.update(
        {
            "round": 2,
            "sites": ["a", "b"],
            "dropped": ["c"],
            "loss": 1.7,
            "accuracy": 0.55,
            "epsilon": {"a": 3.5, "b": 4.2},
        }
    )
    assert dash.rounds_done == 2 and dash.losses == [2.3, 1.7] and dash.accuracies == [0.31, 0.55]
    assert dash.site_status == {"a": "active", "b": "active", "c": "dropped"}
    assert dash._gauge_widgets["a"][0].bar_style == "warning"
    assert dash._gauge_widgets["b"][0].bar_style == "danger" and dash._gauge_widgets["b"][0].value == 4.0
    assert dash._chart.value.count("<polyline") == 2

    dash.update(RR(3, ["a", "b"], [], float("nan"), None, {}))  # a site may release no metric
    assert dash.losses == [2.3, 1.7, None] and dash.rounds_done == 3

    dash.finish(
        "finished",
        refusals=[fakes.Refusal("c", "epsilon_cap", "would exceed <cap>")],
        privacy=[{"site": "a", "epsilon": 3.6, "cap": 4.0}],
    )
    assert dash.status == "finished" and dash._progress.bar_style == "success"
    assert dash.site_status["c"] == "refused" and dash.epsilon["a"] == 3.6
    assert "would exceed &lt;cap&gt;" in dash._notes.value  # escaped
    html = dash.to_html()
    assert "finished" in html and "<svg" in html
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" in bundle


def test_out_of_order_and_duplicate_rounds(fakes):
    dash = RunDashboard(rounds=2)
    dash.update(fakes.RoundResult(2, ["a"], [], 1.0, 0.5, {"a": 2.0}))
    dash.update(fakes.RoundResult(1, ["a"], [], 2.0, 0.2, {"a": 1.0}))
    dash.update(fakes.RoundResult(2, ["a"], [], 1.0, 0.5, {"a": 2.0}))
    assert dash.losses == [2.0, 1.0] and dash.rounds_done == 2
    dash.update({"kind": "heartbeat"})  # not a round: ignored
    assert dash.rounds_done == 2


def test_validation():
    dash = RunDashboard()
    with pytest.raises(traitlets.TraitError):
        dash.status = "exploded"
    with pytest.raises(traitlets.TraitError):
        dash.rounds_done = -1
    with pytest.raises(traitlets.TraitError):
        dash.epsilon = {"a": -0.5}
    with pytest.raises(traitlets.TraitError):
        dash.epsilon = {"a": float("nan")}
    with pytest.raises(traitlets.TraitError):
        dash.target_epsilon = 0.0
    with pytest.raises(traitlets.TraitError):
        dash.site_status = {"a": "sleepy"}
    with pytest.raises(traitlets.TraitError):
        dash.update({"round": 0})


def test_attach_follows_a_run_from_its_thread(fakes):
    room = fakes.FakeRoom()
    run = room.train("spec", rounds=3)
    run.emit(fakes.RoundResult(1, ["alpha"], [], 2.0, 0.3, {"alpha": 0.5}))  # before the dashboard exists
    dash = RunDashboard(rounds=3).attach(run)
    assert dash.run_id == "run-1" and dash.rounds_done == 1 and dash.status == "running"

    def train():
        for r in (2, 3):
            run.emit(fakes.RoundResult(r, ["alpha", "beta"], [], 2.0 / r, 0.3 * r, {"alpha": 0.5 * r, "beta": 0.4 * r}))
        run.refusals = [fakes.Refusal("gamma", "model_family", "cnn not allowed")]
        run.finish()

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(5)
    assert dash.wait(5)
    assert dash.rounds_done == 3 and dash.status == "finished"
    assert dash.losses == pytest.approx([2.0, 1.0, 2.0 / 3])
    assert dash.epsilon == pytest.approx({"alpha": 1.5, "beta": 1.2})
    assert dash.site_status["gamma"] == "refused" and dash.refusals[0]["reason"] == "model_family"


def test_a_failed_run_shows_its_error(fakes):
    room = fakes.FakeRoom()
    run = room.train("spec", rounds=3)
    dash = RunDashboard(rounds=3).attach(run)
    run.finish("failed", error="RoundError: only 1 site answered; need 2")
    assert dash.wait(5)
    assert dash.status == "failed" and "only 1 site" in dash.error and "only 1 site" in dash._notes.value
    assert dash._progress.bar_style == "danger"


def test_sites_awaiting_approval_and_flagged_sites_are_shown(fakes):
    room = fakes.FakeRoom()
    run = room.train("spec", rounds=1)
    run.status = "pending"
    run.waiting = ["alpha"]
    before = set(threading.enumerate())
    dash = RunDashboard(rounds=1, sites=["alpha", "beta"]).attach(run)
    # pushed events, no watcher thread: the one thread of its own is the label's clock, which asks nothing
    assert set(threading.enumerate()) - before == {dash._clock} and dash._clock.is_alive()
    assert dash.site_status["alpha"] == "awaiting approval"
    run.set_waiting([])  # the data owner approved: a waiting event, no polling
    assert dash.site_status["alpha"] == "waiting"
    dash.update({"round": 1, "sites": ["alpha", "beta"], "dropped": [], "defence": {"flagged": {"beta": ["norm"]}}})
    assert dash.site_status == {"alpha": "active", "beta": "flagged"}
    run.finish()
    assert dash.wait(5)
    dash._clock.join(5)
    assert not dash._clock.is_alive()  # the clock stops when the run ends


def test_typed_events_drive_the_dashboard(fakes):
    from fedjax_room.analyst.events import DefenceEvent, RefusalEvent, StatusEvent
    from fedjax_room.errors import RefusedError

    room = fakes.FakeRoom()
    run = room.train("spec", rounds=2)
    dash = RunDashboard(rounds=2, sites=["alpha", "beta", "gamma"]).attach(run)
    run.emit(fakes.RoundResult(1, ["alpha", "beta"], [], 1.0, 0.5, {"alpha": 0.4}))
    run._send(DefenceEvent(run.id, 1, {"flagged": {"beta": ["norm"]}, "excluded": ["gamma"]}))
    run._send(RefusalEvent(run.id, fakes.Refusal("gamma", "epsilon_cap", "past its cap")))
    assert dash.site_status == {"alpha": "active", "beta": "flagged", "gamma": "refused"}
    assert dash.refusals == [{"site": "gamma", "reason": "epsilon_cap", "message": "past its cap"}]
    assert not dash.wait(0)
    run._send(StatusEvent(run.id, "failed", 1, RefusedError("cancelled by the analyst"), None))
    assert dash.wait(0) and dash.status == "failed" and "cancelled by the analyst" in dash._notes.value
