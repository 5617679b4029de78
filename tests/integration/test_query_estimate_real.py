"""``room.estimate_query`` against the demo room (real coordinator and site processes over websockets).

What the analyst relies on: the estimate spends nothing (the budget does not move), its ``ledger_after`` is each
site's ledger after the real query, and a query it says a site refuses is refused by that site for the same reason.
"""

from __future__ import annotations

import pytest

from fedjax_room.analyst.results import EstimateReport

pytestmark = pytest.mark.slow


def test_the_estimate_spends_nothing_and_predicts_the_real_query(tmp_path):
    from fedjax_room.sim.demo import start_room

    queries = {"allowed": ["count", "count_by_label"], "max_epsilon": 3.0, "epsilon_share": 1.0}
    policies = {"site-b": {"epsilon_cap": 100.0, "queries": {**queries, "allowed": ["count"]}}}
    policy = {"epsilon_cap": 100.0, "queries": queries}
    with start_room(sites=2, dataset="digits", state_dir=tmp_path, policy=policy, policies=policies) as room:
        with room.connect() as client:
            client.query("count", epsilon=1.0)  # a ledger to compose onto
            spent = {s: b.epsilon_spent for s, b in client.budget().sites.items()}
            report = client.estimate_query("count_by_label", epsilon=0.5)
            assert isinstance(report, EstimateReport) and list(report) == ["site-a", "site-b"]
            assert {s: b.epsilon_spent for s, b in client.budget().sites.items()} == spent  # nothing spent
            a, b = report["site-a"], report["site-b"]
            assert a.accept and a.epsilon_planned == 0.5 and a.ledger_epsilon == pytest.approx(spent["site-a"])
            assert not b.accept and b.reason == "query_kind" and b.option == "kind"
            result = client.query("count_by_label", epsilon=0.5)
            assert result.refused["site-b"]["reason"] == b.reason
            after = client.budget().sites
            assert after["site-a"].epsilon_spent == pytest.approx(a.ledger_after, rel=1e-9)
            assert after["site-b"].epsilon_spent == pytest.approx(spent["site-b"])
