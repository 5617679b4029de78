"""Issue 16, "metrics an analyst can read": at the defaults (the demo's digits recipe, 3 sites, epsilon 3, secure
aggregation), the accuracy the room releases for each evaluated round is within +-0.03 (one standard deviation, over
seeds) of the true accuracy of that round's global model on the union of the sites' held-out sets, which this test
computes directly from the room's checkpoints. The noise scale the room states is honest too."""

from __future__ import annotations

import math

import pytest

from fedjax_room.data import load_builtin, partition
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.evaluation import eval_rounds
from fedjax_room.sim import LoopbackRoom
from fedjax_room.sim.demo import DEMO_POLICY, DEMO_RECIPES, _spec_for
from fedjax_room.site.evaluate import eval_fn

pytestmark = pytest.mark.slow

SEEDS = tuple(range(8))  # 16 evaluated rounds: the RMS error is known to about +-0.004


def _demo_room(tmp_path, seed):
    """The demo's digits room (sim/demo.py start_room): the same split, partition and site policies."""
    full = load_builtin("digits", seed=seed)
    pool, _ = full.split(0.2, seed=seed)
    sites, held = {}, []
    for i, part in enumerate(partition(pool, 3, seed=seed)):
        train, heldout = part.split(0.2, seed=seed)
        sites[f"site-{'abc'[i]}"] = (train, heldout, {**DEMO_POLICY, "min_sites": 2})
        held.append(heldout)
    return LoopbackRoom(tmp_path, sites, seed=seed), held


def _true_accuracy(spec, params, held):
    fn = eval_fn(spec.to_json())
    correct = sum(int(fn(params, h.x, h.y)[1]) for h in held)
    return correct / sum(len(h) for h in held)


def test_released_accuracy_is_within_three_points_of_the_truth_at_the_defaults(tmp_path):
    recipe = DEMO_RECIPES["digits"]
    errors, stds = [], []
    for seed in SEEDS:
        room, held = _demo_room(tmp_path / f"seed-{seed}", seed)
        spec = ModelSpec.from_dict(_spec_for(held[0], recipe).to_dict())  # the demo's model
        config = {**recipe["train"], "seed": seed, "secure_aggregation": True}
        schedule = eval_rounds(RunConfig.from_dict(config).rounds, RunConfig.from_dict(config).eval_every)
        run = room.train(spec.to_dict(), config)
        assert run.status == "finished", run.error
        history = {h["round"]: h for h in run.snapshot["history"]}
        for r in run.rounds:
            shown = history[r.round]
            if r.round not in schedule:  # off the schedule: nothing released, nothing shown
                assert shown["accuracy"] is None and shown["evaluated"] is False
                continue
            assert 0.0 <= shown["accuracy"] <= 1.0 and shown["loss"] >= 0.0
            truth = _true_accuracy(spec, r.params, held)
            errors.append(shown["accuracy"] - truth)
            stds.append(shown["accuracy_std"])
            assert abs(errors[-1]) <= 4 * stds[-1], (seed, r.round, shown, truth)  # the stated noise is honest
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    z = math.sqrt(sum((e / s) ** 2 for e, s in zip(errors, stds, strict=True)) / len(errors))
    assert len(errors) == 2 * len(SEEDS)
    print(
        f"released accuracy: RMS error {rms:.4f} over {len(errors)} rounds; stated std {min(stds):.4f}-"
        f"{max(stds):.4f}; RMS of error/std {z:.2f}"
    )
    assert rms <= 0.03, (rms, errors)
    assert max(stds) <= 0.03, stds  # the noise scale the room states: one standard deviation under 3 points
    assert 0.5 <= z <= 1.5, (z, errors, stds)  # and it is the real one (neither hidden nor inflated)
