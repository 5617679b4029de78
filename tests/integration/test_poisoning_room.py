"""Poisoning in a real room: 1 of 4 site processes boosts its update (``python -m fedjax_room.sim.attacker``).

FedAvg degrades while median and trimmed mean keep the model accurate; the attacker is flagged in the
round results and in the coordinator's (verified) audit log as ``defence_report`` records.
"""

from __future__ import annotations

import pytest

from fedjax_room.audit import verify_log
from fedjax_room.local import evaluate
from fedjax_room.models import logistic
from fedjax_room.sim.demo import start_room

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
SETTINGS = {
    "rounds": 3,
    "local_steps": 20,
    "batch_size": 64,
    "learning_rate": 2.0,
    "server_optimizer": "fedavg",  # plain FedAvg (the default FedAdam's normalised step would damp the 10x boost)
    "server_learning_rate": 1.0,
    "clip_norm": 1.0,  # this recipe's, of several local steps (RunConfig's defaults are for one full-batch step)
    "model_average": 0.0,
    "target_epsilon": 8.0,
    "round_timeout": 60.0,
    "secure_aggregation": False,  # fedavg too: every update is scored (secure aggregation is on by default)
}


def test_one_booster_breaks_fedavg_not_median(tmp_path):
    policy = {"epsilon_cap": 100.0, "min_sites": 1}
    with start_room(sites=4, dataset="digits", state_dir=tmp_path, policy=policy, attacks={"site-a": "boost"}) as er:
        room = er.connect()
        try:
            test = er.central_test()
            acc, runs = {}, {}
            for agg in ("fedavg", "median", "trimmed_mean"):
                run = room.train(SPEC, aggregator=agg, seed=1, **SETTINGS).wait(120)
                assert run.status == "finished", run.error
                acc[agg] = evaluate(SPEC, run.params, test).accuracy
                runs[agg] = run
            assert acc["median"] > 0.8, acc
            assert acc["trimmed_mean"] > 0.8, acc
            assert acc["fedavg"] < acc["median"] - 0.15, acc
            for run in runs.values():
                for r in run.history:
                    assert r.defence is not None
                    assert r.flagged == ("site-a",), (run.config["aggregator"], r.round, r.defence["flagged"])
                    assert r.trust["site-a"] < r.trust["site-b"]
            assert {d["name"] for d in runs["median"].defences if d["active"]} >= {
                "robust_aggregation",
                "anomaly_detection",
            }
            assert not next(d for d in runs["fedavg"].defences if d["name"] == "robust_aggregation")["active"]
            records = verify_log(er.coordinator_dir / "audit.jsonl")
            reports = [r for r in records if r["kind"] == "defence_report"]
            assert len(reports) == 9
            assert all(list(r["fields"]["flagged"]) == ["site-a"] for r in reports)
            assert {r["fields"]["aggregator"] for r in reports} == {"fedavg", "median", "trimmed_mean"}
        finally:
            room.close()
