"""Distributed noise through the real round engine: under secure aggregation the sites' noise shares add up to
the plan's noise once (central DP-SGD on the union), not once per site, and each site still pays the plan."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.data import load_builtin, partition
from fedjax_room.local import clipped_sum
from fedjax_room.models import spec_from_schema
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import flatten_update
from fedjax_room.sim.loopback import LoopbackRoom, SiteSetup

pytestmark = pytest.mark.slow


def _room(tmp_path, sites=3):
    full = load_builtin("digits", seed=0)
    train, test = full.split(0.2, seed=0)
    parts = partition(train.subset(np.arange(len(train) - len(train) % sites)), sites, seed=0)
    chunks = np.array_split(np.arange(len(test)), sites)
    setups = {
        f"site-{i}": SiteSetup(
            parts[i], test.subset(chunks[i]), {"epsilon_cap": 10.0, "declared_train_records": len(parts[i])}
        )
        for i in range(sites)
    }
    return LoopbackRoom(tmp_path, setups, seed=0), parts, spec_from_schema(full.schema, "logistic")


@pytest.mark.parametrize("distributed", [True, False])
def test_the_released_step_carries_the_plans_noise_once(tmp_path, distributed):
    room, parts, spec = _room(tmp_path)
    config = RunConfig.from_dict(
        {
            "rounds": 1,
            "noise_multiplier": 2.0,
            "learning_rate": 1.0,
            "server_optimizer": "fedavg",
            "server_learning_rate": 1.0,
            "model_average": 0.0,
            "eval_every": None,
            "distributed_noise": distributed,
            "batch_size": 4096,  # every record every step in both modes
        }
    )
    try:
        result = room.train(spec, config)
    finally:
        room.close()
    assert result.status == "finished", result.error
    p0 = result.initial_params
    weights = sum(len(p) for p in parts)  # the declared sizes are the plans' weights
    exact = sum(flatten_update(clipped_sum(spec, p0, p, clip_norm=config.clip_norm, chunk=512)) for p in parts)
    released = flatten_update(result.params) - flatten_update(p0)
    noise = released - (-config.learning_rate * exact / weights)
    per_site = config.clip_norm * 2.0 / len(parts[0])  # one site's DP-SGD noise on its own mean update
    if distributed:
        # the sum carries sigma * C exactly once over the union: each site's own share (1/3 of the noise) and the
        # pairwise terms, which cancel when all three are in the sum (before them: sqrt(k / t) = sqrt(3 / 2) times
        # more, shares of 1/t each at SecAgg threshold t = 2 of 3)
        once = config.learning_rate * 2.0 * config.clip_norm / weights
        assert np.std(noise) == pytest.approx(once, rel=0.1)
        assert np.std(noise) < 0.8 * per_site / np.sqrt(len(parts))
    else:
        assert np.std(noise) == pytest.approx(per_site / np.sqrt(len(parts)), rel=0.15)
    for site in result.privacy.values():  # each site pays one full-batch Gaussian step of the plan either way
        assert site["epsilon"] == pytest.approx(result.privacy["site-0"]["epsilon"])
