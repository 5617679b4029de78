"""A tiny synthetic site for agent tests."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema
from fedjax_room.sim.attacker import AttackingAgent
from fedjax_room.site.agent import SiteAgent
from fedjax_room.site.policy import Policy

SCHEMA = Schema(features=("a", "b", "c", "d"), feature_shape=(4,), label="y", classes=(0, 1))
SPEC = {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return Dataset(x, y, SCHEMA)


class Factory:
    SPEC = SPEC

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.train = make_data(200, 1)
        self.heldout = make_data(60, 2)

    def agent(self, name="site-a", state=None, attack=None, **policy):
        # the sizes are declared public by default (no DP count in the ledger); pass
        # declared_train_records=None, declared_heldout_records=None for a site that counts them under DP
        policy = {"declared_train_records": len(self.train), "declared_heldout_records": len(self.heldout), **policy}
        kwargs = {} if attack is None else {"attack": attack}  # a simulated attacker (fedjax_room.sim.attacker)
        return (SiteAgent if attack is None else AttackingAgent)(
            **kwargs,
            name=name,
            train=self.train,
            heldout=self.heldout,
            policy=Policy(**policy),
            state_dir=state or self.tmp_path / name,
        )


@pytest.fixture
def factory(tmp_path):
    return Factory(tmp_path)
