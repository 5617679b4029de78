"""``%room estimate`` / ``%%room estimate`` and the launch form's live estimate, over a stand-in room whose
``estimate`` answers like the sites do (the real room is in tests/integration/test_estimate_room.py)."""

from __future__ import annotations

import time

from IPython.utils.capture import capture_output

from fedjax_room.analyst.results import EstimateReport
from fedjax_room.errors import PolicyViolation
from fedjax_room.jupyter.display import Table
from fedjax_room.jupyter.launch import LaunchForm
from fedjax_room.models import logistic

SPEC = "family: logistic\ninput_shape: [64]\nnum_classes: 10\nlayers: [{type: dense, features: 10}]\n"
REFUSAL = {
    "site": "beta",
    "status": "answered",
    "accept": False,
    "epsilon_planned": 2.99,
    "ledger_epsilon": 9.24,
    "ledger_after": 10.4,
    "epsilon_cap": 10.0,
    "remaining": 0.76,
    "reason": "epsilon_cap",
    "option": "target_epsilon",
    "message": "beta: over its cap",
}


def _estimating(room):
    asked = []

    def estimate(spec, **options):
        asked.append((spec, options))
        ok = {"site": "alpha", "status": "answered", "accept": True, "epsilon_planned": 2.99, "min_sites": 2}
        return EstimateReport.from_list([ok, REFUSAL])

    room.estimate = estimate
    return asked


def test_the_estimate_magics_show_each_sites_verdict_and_what_to_change(ip, fake_room):
    asked = _estimating(fake_room)
    with capture_output():
        cell = ip.run_cell("%%room estimate --rounds 3 --target-epsilon 3\n" + SPEC)
    table = cell.result
    assert isinstance(table, Table) and asked[-1][1] == {"rounds": 3, "target_epsilon": 3.0}
    text = table.to_text()
    assert "refuses (epsilon_cap)" in text and "beta would refuse (epsilon_cap)" in text and "target_epsilon" in text
    ip.user_ns["model"] = logistic([64], 10)
    with capture_output():
        line = ip.run_cell("%room estimate --spec model --rounds 2")
    assert isinstance(line.result, Table) and asked[-1][1] == {"rounds": 2}
    with capture_output() as cap:
        missing = ip.run_cell("%room estimate --spec nothing")
    assert missing.error_in_exec is not None and "no variable 'nothing'" in cap.stderr


def test_a_refusal_from_train_is_one_line_once(ip, fake_room):
    fake_room.refuse_with = PolicyViolation(
        EstimateReport.from_list([REFUSAL]).problem(), party="beta", reason="epsilon_cap"
    )
    with capture_output() as cap:
        ip.run_cell("%%room train --target-epsilon 3\n" + SPEC)
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].count("beta would refuse (epsilon_cap)") == 1, cap.stderr


def test_the_launch_form_shows_the_estimate_as_its_options_change(fake_room):
    asked = _estimating(fake_room)
    form = LaunchForm(fake_room)
    form.estimate_delay = 0.0
    form.rounds = 7
    for _ in range(200):
        if "refuses (epsilon_cap)" in form.estimate_view.value:
            break
        time.sleep(0.05)
    assert "refuses (epsilon_cap)" in form.estimate_view.value and "change target_epsilon" in form.estimate_view.value
    assert asked[-1][1]["rounds"] == 7
