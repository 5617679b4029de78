"""Secure aggregation over real processes on loopback: policy refusal, distributed DP, what the coordinator keeps."""

from __future__ import annotations

import json
import math

import pytest

from fedjax_room.models import logistic
from fedjax_room.sim.demo import start_room

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
FAST = {"local_steps": 10, "batch_size": 32, "learning_rate": 1.0}


def test_secure_room_with_distributed_dp(tmp_path):
    policy = {"epsilon_cap": 20.0, "min_sites": 1}
    policies = {"site-a": {**policy, "require_secure_aggregation": True}}
    with start_room(sites=3, dataset="digits", state_dir=tmp_path, policy=policy, policies=policies) as er:
        client = er.connect()
        try:
            plain = client.train(SPEC, rounds=1, target_epsilon=3.0, secure_aggregation=False, **FAST)
            plain.wait(120)
            assert [(r.site, r.reason) for r in plain.refusals] == [("site-a", "secure_aggregation")]
            run = client.train(
                SPEC,
                rounds=2,
                target_epsilon=3.0,
                secure_aggregation=True,
                site_noise_multiplier=0.7,
                site_clip_norm=1.0,
                **FAST,
            )
            run.wait(180)
            assert run.status == "finished", run.error
            assert run.refusals == [] and run.history[-1].sites == ("site-a", "site-b", "site-c")
            for name in er.site_names:
                p = run.privacy[name]
                assert 0 < p.epsilon <= 3.0  # sample level, within the run's target
                assert p.site_epsilon is not None and 0 < p.site_epsilon < math.inf  # site level
                assert (er.site_dir(name) / "state" / "site_ledger.json").exists()
        finally:
            client.close()
        records = [json.loads(x) for x in (er.coordinator_dir / "audit.jsonl").read_text().splitlines()]
        secure_rounds = [
            r for r in records if r.get("kind") == "aggregate_applied" and '"secure": true' in json.dumps(r)
        ]
        assert len(secure_rounds) == 2
