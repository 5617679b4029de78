"""What ``room.budget()`` and ``room.estimate()`` show: the composed epsilon against the sum of the runs, and a
refusal that names the site, its planned and remaining epsilon and the option to change (no room needed)."""

from __future__ import annotations

import pytest

from fedjax_room.analyst.results import BudgetReport, EstimateReport
from fedjax_room.analyst.views import view_text
from fedjax_room.errors import ConfigError

ROWS = [
    {
        "site": "site-a",
        "epsilon_spent": 9.76,
        "delta": 1e-5,
        "epsilon_cap": 10.0,
        "remaining": 0.24,
        "runs": [{"run_id": "run-1", "epsilon": 1.991}, {"run_id": "run-2", "epsilon": 8.965}],
    },
    {"site": "site-b", "epsilon_spent": 1.0, "delta": 1e-5, "epsilon_cap": 10.0, "remaining": 9.0, "runs": []},
]


def test_the_budget_says_composition_is_tighter_than_the_sum_with_both_numbers():
    report = BudgetReport.from_list(ROWS)
    a = report["site-a"]
    assert a.runs == {"run-1": 1.991, "run-2": 8.965} and a.sum_of_runs == pytest.approx(10.956)
    (note,) = report.notes  # site-b has no two runs: no note
    assert "10.96" in note and "9.76" in note and "tighter than the sum" in note and note.startswith("site-a")
    text = view_text("budget", report)
    assert "sum of runs" in text and "10.96" in text and note in text
    assert "Σ ε of its runs" in report._repr_html_()
    assert note in report._repr_html_()


EST = [
    {
        "site": "site-a",
        "status": "answered",
        "accept": True,
        "epsilon_planned": 2.99,
        "ledger_epsilon": 1.0,
        "ledger_after": 3.5,
        "epsilon_cap": 10.0,
        "remaining": 9.0,
        "min_sites": 2,
    },
    {
        "site": "site-b",
        "status": "answered",
        "accept": False,
        "epsilon_planned": 2.99,
        "ledger_epsilon": 9.24,
        "ledger_after": 10.4,
        "epsilon_cap": 10.0,
        "remaining": 0.76,
        "reason": "epsilon_cap",
        "option": "target_epsilon",
        "message": "site-b: this run would take its ledger past its cap",
    },
]


def test_an_estimate_names_the_refusing_site_its_planned_and_remaining_epsilon_and_the_option():
    report = EstimateReport.from_list(EST)
    assert report.accepting == ["site-a"] and [e.site for e in report.refusing] == ["site-b"]
    assert report.needed == 2 and not report.can_start  # site-a's own minimum is 2 sites
    line = report["site-b"].explain()
    assert line.startswith("site-b would refuse (epsilon_cap)")
    assert "2.99" in line and "0.76" in line and "change target_epsilon" in line
    assert line in report.problem()
    text = view_text("estimate", report)
    assert "refuses (epsilon_cap)" in text and "accepts" in text and "room.train would refuse it" in text


def test_a_run_another_site_can_carry_or_an_unknown_site_might_is_not_refused_up_front():
    one = EstimateReport.from_list([{**EST[0], "min_sites": 1}, EST[1]])
    assert one.can_start and one.problem() == ""  # site-a alone is enough
    silent = EstimateReport.from_list([EST[0], EST[1], {"site": "site-c", "status": "no_answer", "accept": False}])
    assert silent.can_start  # site-c may still accept: only the room can tell


def draw_configs(space, trials, *, seed):
    """``trials`` option sets drawn from ``space`` as the coordinator draws a session's trials."""
    import random

    from fedjax_room.protocol.tuning import draw_config, space_to_wire

    rng, wire = random.Random(seed), space_to_wire(space)
    return [draw_config(wire, rng) for _ in range(trials)]


def test_tuning_draws_every_trial_independently_from_lists_and_within_ranges():
    """Private selection assumes independent, identically distributed trials: a list is drawn from with replacement
    (so a space of 4 points gives 40 trials), each value about equally often."""
    grid = draw_configs({"learning_rate": [0.1, 0.3], "clip_norm": [0.5, 1.0]}, 400, seed=1)
    points = [tuple(sorted(c.items())) for c in grid]
    assert len(set(points)) == 4 and all(60 < points.count(p) < 140 for p in set(points))
    drawn = draw_configs({"learning_rate": (0.01, 1.0), "local_steps": (2, 5)}, 8, seed=2)
    assert all(0.01 <= c["learning_rate"] <= 1.0 and c["local_steps"] in range(2, 6) for c in drawn)
    assert draw_configs({"learning_rate": (0.01, 1.0)}, 4, seed=3) == draw_configs(
        {"learning_rate": (0.01, 1.0)}, 4, seed=3
    )
    with pytest.raises(ConfigError, match="not run options"):
        draw_configs({"tune_trials": [2, 3]}, 2, seed=0)


def test_the_run_dashboard_shows_the_budgets_composition_line():
    from fedjax_room.jupyter.dashboard import RunDashboard

    dashboard = RunDashboard(run_id="run-2", rounds=1)
    report = BudgetReport.from_list(ROWS)
    dashboard.set_budget(report)
    assert dashboard.epsilon_cap == {"site-a": 10.0, "site-b": 10.0}
    assert report.notes[0].replace("'", "&#x27;") in dashboard.to_html()


def test_a_refused_tuning_session_shows_its_private_selection_charge():
    row = {
        "site": "site-b",
        "status": "answered",
        "accept": False,
        "reason": "epsilon_cap",
        "option": "target_epsilon",
        "epsilon_planned": 0.99,
        "remaining": 1.5,
        "epsilon_cap": 1.5,
        "ledger_after": 2.41,
        "tune_epsilon": 2.41,
        "tune_delta": 5.3e-6,
        "tune_k_max": 60,
    }
    b = EstimateReport.from_list([row])["site-b"]
    assert b.tune_epsilon == 2.41 and b.tune_k_max == 60
    line = b.explain()
    assert "private-selection charge, epsilon 2.41 for the whole session" in line and "1.5 remaining" in line
