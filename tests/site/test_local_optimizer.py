"""The run option added in one place (RunConfig.local_optimizer) reaches the site's trainer and costs no privacy."""

from __future__ import annotations

import numpy as np

from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree
from fedjax_room.protocol.config import RunConfig

SPEC = {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}


def _zeros():
    return {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.zeros((4, 2), np.float32)}}


def test_local_optimizer_reaches_the_site_trainer_and_costs_no_privacy(factory):
    spent = {}
    for name in ("sgd", "momentum"):
        agent = factory.agent(name=f"site-{name}", epsilon_cap=5.0)
        config = RunConfig.from_dict(
            {"rounds": 2, "target_epsilon": 1.0, "local_steps": 3, "local_optimizer": name, "secure_aggregation": False}
        )
        accept = agent.handle("offer", m.RunOffer(run_id="run-1", spec=SPEC, config=config.to_dict()))
        assert isinstance(accept, m.RunAccept)
        start = m.RoundStart(run_id="run-1", round=1, phase="train", params=pack_tree(_zeros()), cohort=3, timeout=30.0)
        update = agent.handle("train", start)
        assert isinstance(update, m.Update), update
        assert agent._trainers["run-1"].optimizer == name
        spent[name] = (accept.plan["epsilon_planned"], update.epsilon)
    assert spent["momentum"] == spent["sgd"]  # momentum after the noise is post-processing
