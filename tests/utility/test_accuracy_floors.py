"""Accuracy floors at epsilon 3 per site with the defaults a user gets (RunConfig's), on the room's round engine.

Each test runs one room (fedjax_room.sim.LoopbackRoom: the real coordinator and site machines, each site's privacy
plan, ledger, DP-SGD and noised evaluation) with ``RunConfig()``'s training defaults — what ``fedjax-room demo``,
``room.train``, ``%%room train`` and the sidebar's Run send — and scores the final global model on a central test
split no site held. The split is ``benchmarks/utility.py``'s; the floors are a little under what that benchmark
measured for the same seed (benchmarks/README.md, "utility.py"), so a change that makes the defaults worse fails
here. The Flower + Opacus comparison lives only in the benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.data import load_builtin, partition
from fedjax_room.local import evaluate
from fedjax_room.models import spec_from_schema
from fedjax_room.protocol.config import RunConfig
from fedjax_room.sim import LoopbackRoom, SiteSetup

pytestmark = pytest.mark.slow


def _room_accuracy(tmp_path, dataset: str, sites: int, alpha: float | None, family: str, seed: int, **model) -> tuple:
    full = load_builtin(dataset, seed=seed)
    train, test = full.split(0.2, seed=seed)
    if alpha is None:
        train = train.subset(np.arange(len(train) - len(train) % sites))
    parts = partition(train, sites, alpha=alpha, seed=seed)
    chunks = np.array_split(np.arange(len(test)), sites)
    setups = {f"site-{i:02d}": SiteSetup(parts[i], test.subset(chunks[i]), {"epsilon_cap": 10.0}) for i in range(sites)}
    spec = spec_from_schema(test.schema, family, **model)
    config = RunConfig(seed=seed)  # every training default as a user gets it; target epsilon 3, delta 1e-5
    assert config.target_epsilon == 3.0 and config.delta == 1e-5
    room = LoopbackRoom(tmp_path, setups, seed=seed)
    try:
        result = room.train(spec, config)
    finally:
        room.close()
    assert result.status == "finished", result.error
    spent = max(p["epsilon"] for p in result.privacy.values())
    return evaluate(spec, result.params, test).accuracy, spent


def test_digits_three_iid_sites_at_epsilon_3(tmp_path):
    accuracy, spent = _room_accuracy(tmp_path, "digits", 3, None, "logistic", seed=0)
    assert spent <= 3.0 + 1e-6
    assert accuracy >= DIGITS_FLOOR, f"digits accuracy {accuracy:.3f} under the floor {DIGITS_FLOOR}"


def test_mnist_5k_five_dirichlet_sites_at_epsilon_3(tmp_path):
    accuracy, spent = _room_accuracy(tmp_path, "mnist", 5, 0.5, "mlp", seed=0, hidden=(64,))
    assert spent <= 3.0 + 1e-6
    assert accuracy >= MNIST_FLOOR, f"MNIST-5k accuracy {accuracy:.3f} under the floor {MNIST_FLOOR}"


#: benchmarks/utility.py measured 0.897 (digits) and 0.879 (MNIST-5k) for seed 0 at these defaults (distributed
#: noise, 60 rounds; 0.880 and 0.829 before it); the floors leave a margin for platform differences in float
#: rounding (which change every later noise draw's effect)
DIGITS_FLOOR = 0.88
MNIST_FLOOR = 0.85
