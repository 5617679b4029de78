"""Issue 16: the final model's DP-released held-out accuracy, with its noise scale, on the analyst's Run and in the
dashboard (live and in its static snapshot); released figures are clamped and never NaN on the way in."""

from __future__ import annotations

from fedjax_room.analyst.results import FinalMetrics, RoundResult
from fedjax_room.jupyter.dashboard import RunDashboard


def _row(rnd, accuracy=None, std=None, evaluated=True, **extra):
    return {
        "round": rnd,
        "sites": ["a", "b", "c"],
        "dropped": [],
        "loss": None if accuracy is None else 0.41,
        "accuracy": accuracy,
        "accuracy_std": std,
        "loss_std": None if accuracy is None else 0.12,
        "evaluated": evaluated,
        "eval_sites": ["a", "b", "c"] if evaluated else [],
        "epsilon": {"a": 0.5 * rnd},
        **extra,
    }


def test_round_results_carry_the_noise_scale_and_the_final_metrics_come_from_the_last_evaluated_round():
    history = [
        RoundResult.from_dict(_row(1, evaluated=False)),
        RoundResult.from_dict(_row(2, 0.81, 0.021)),
        RoundResult.from_dict(_row(3, evaluated=False)),
        RoundResult.from_dict(_row(4, 0.874, 0.019)),
    ]
    assert [r.evaluated for r in history] == [False, True, False, True]
    assert history[1].accuracy_std == 0.021 and history[0].accuracy is None and history[0].accuracy_std is None
    final = FinalMetrics.of(history)
    assert final is not None and (final.round, final.accuracy, final.accuracy_std) == (4, 0.874, 0.019)
    assert final.sites == ("a", "b", "c")
    assert final.text() == ("held-out accuracy 0.874 ± 0.019 (DP, the union of 3 sites' held-out sets, round 4)")
    assert FinalMetrics.of(history[:1]) is None  # nothing evaluated yet
    # whatever a coordinator sends, what the analyst holds is a figure in range or None, never NaN
    odd = RoundResult.from_dict(_row(5, float("nan"), float("inf")) | {"loss": -3.0})
    assert odd.accuracy is None and odd.accuracy_std is None and odd.loss == 0.0
    assert RoundResult.from_dict(_row(6, 1.7, 0.02)).accuracy == 1.0


def test_the_dashboard_shows_the_final_models_released_accuracy_with_its_noise_scale():
    dash = RunDashboard(run_id="run-1", rounds=4, sites=["a", "b", "c"])
    dash.update(_row(1, evaluated=False))
    assert dash.final_text() == "" and "held-out accuracy" not in dash._chart.value
    dash.update(_row(2, 0.81, 0.021))
    assert dash.final_text().startswith("latest evaluated model (round 2): held-out accuracy 0.810 ± 0.021")
    dash.update(_row(3, evaluated=False))
    dash.update(_row(4, 0.874, 0.019))
    dash.finish("finished")
    text = dash.final_text()
    assert text.startswith("final model (round 4): held-out accuracy 0.874 ± 0.019, loss 0.410 ± 0.120")
    assert "union of 3 sites' held-out sets" in text
    assert "held-out accuracy 0.874 ± 0.019" in dash._chart.value  # under the charts, live
    assert "held-out accuracy 0.874 ± 0.019" in dash.to_html()  # and in the static snapshot
    assert dash.accuracies == [None, 0.81, None, 0.874]
