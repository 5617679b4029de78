"""Poisoning on digits: 2 of 10 sites boosting, FedAvg collapses, robust rules hold, the detector finds them.

Each simulation is a room run (fedjax_room.sim runs the room's round engine, LoopbackRoom): the sites train
with DP-SGD at the room's smallest noise multiplier (0.3, clip 10, expected batch 32 — the room never trains
without noise; before issue 15 these tests ran noise-free, which only the old separate simulation loop could).
The noise is drawn from each site's secret, fixed by the seed, so a seed still gives one outcome. The attack is
the boosted label flip (``boost``: train on ``y -> 9 - y``, send 10x the update) from sites 0 and 1.
A small MLP (one hidden layer of 32), 10 rounds of 10 local steps: a few seconds a run after one compilation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.robust import AnomalyConfig
from fedjax_room.sim import SimSpec, run_simulation

pytestmark = pytest.mark.slow

BASE = SimSpec(
    dataset="digits", num_sites=10, rounds=10, learning_rate=0.3, noise_multiplier=0.3, batch_size=32, seed=0
)
ATTACKED = BASE.replace(attack="boost", malicious=(0, 1))


@pytest.fixture(scope="module")
def clean():
    return run_simulation(BASE)


@pytest.fixture(scope="module")
def attacked():
    aggregators = ("fedavg", "median", "trimmed_mean", "multi_krum")
    return {agg: run_simulation(ATTACKED.replace(aggregator=agg)) for agg in aggregators}


def test_clean_run_learns(clean) -> None:
    assert clean.final_accuracy > 0.88
    assert clean.final_accuracy > clean.initial_accuracy + 0.5
    assert clean.false_flag_rate <= 0.05
    json.dumps(clean.to_dict())


def test_fedavg_collapses_under_two_boosting_sites(clean, attacked) -> None:
    assert attacked["fedavg"].final_accuracy < 0.4
    assert attacked["fedavg"].final_accuracy < clean.final_accuracy - 0.4


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "multi_krum"])
def test_robust_rules_stay_within_three_points_of_the_clean_run(clean, attacked, aggregator) -> None:
    result = attacked[aggregator]
    assert result.final_accuracy >= clean.final_accuracy - 0.03, (aggregator, result.accuracy, clean.accuracy)


def test_multi_krum_leaves_out_the_attackers(attacked) -> None:
    for record in attacked["multi_krum"].rounds:
        assert not {0, 1} & set(record.selected)


def test_detector_flags_attackers_in_90_percent_of_rounds_with_few_false_flags(attacked) -> None:
    for aggregator, result in attacked.items():
        assert result.detection_rate >= 0.9, aggregator
        assert result.false_flag_rate <= 0.05, aggregator
        per_round = np.mean([set(result.malicious) <= set(r.flagged) for r in result.rounds])
        assert per_round >= 0.9, aggregator


def test_trust_exclusion_rescues_fedavg(clean) -> None:
    guarded = run_simulation(ATTACKED.replace(anomaly=AnomalyConfig(exclude_below=0.5)))
    assert all(set(r.excluded) == {0, 1} for r in guarded.rounds[1:])
    assert guarded.final_accuracy >= clean.final_accuracy - 0.05


def test_robust_aggregation_composes_with_fedadam() -> None:
    result = run_simulation(
        ATTACKED.replace(aggregator="trimmed_mean", server_optimizer="fedadam", server_learning_rate=0.05, rounds=8)
    )
    assert result.final_accuracy > 0.8


def test_spec_is_checked() -> None:
    with pytest.raises(ConfigError, match="attack is None"):
        run_simulation(BASE.replace(malicious=(0,)))
    with pytest.raises(ConfigError, match="distinct site indices"):
        run_simulation(ATTACKED.replace(malicious=(0, 10)))
    with pytest.raises(ConfigError, match="noise_multiplier"):  # the room never trains without DP noise
        run_simulation(BASE.replace(noise_multiplier=0.0))
    with pytest.raises(ConfigError, match="exclude_below"):  # the room's detector thresholds are its own
        run_simulation(BASE.replace(anomaly=AnomalyConfig(norm_z=2.0, exclude_below=None)))


def test_results_are_the_rooms_privacy_included(clean) -> None:
    """Every site spent the same (equal sizes) finite epsilon, reported by the room, and the run id is the room's."""
    eps = {site: p["epsilon"] for site, p in clean.privacy.items()}
    assert len(eps) == 10 and all(0 < e < float("inf") for e in eps.values())
    assert len(set(eps.values())) == 1 and clean.run_id
