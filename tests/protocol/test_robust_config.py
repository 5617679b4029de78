"""Run settings for poisoning defence: robust aggregator names, exclude_below, secure aggregation compatibility."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room import robust
from fedjax_room.errors import ConfigError, PolicyError, PolicyViolation
from fedjax_room.models import logistic
from fedjax_room.protocol.config import AGGREGATORS, SECURE_AGGREGATORS, SERVER_OPTIMIZERS, RunConfig
from fedjax_room.robust.server import server_optimizer
from fedjax_room.site.policy import Policy


def test_names_match_the_robust_package():
    assert AGGREGATORS == robust.AGGREGATORS
    assert SECURE_AGGREGATORS == robust.SECURE_AGGREGATORS
    assert set(SERVER_OPTIMIZERS) == set(robust.SERVER_OPTIMIZERS)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_every_robust_name_is_a_run_setting(name):
    assert RunConfig.from_dict({"aggregator": name}).aggregator == name


def test_unknown_aggregator_and_bad_threshold_are_refused():
    with pytest.raises(ConfigError, match="unknown aggregator"):
        RunConfig.from_dict({"aggregator": "geomedian"})
    for bad in (0, 1.5, -0.1, "half", True):
        with pytest.raises(ConfigError):
            RunConfig.from_dict({"exclude_below": bad})
    assert RunConfig.from_dict({"exclude_below": 0.5}).exclude_below == 0.5
    assert RunConfig().exclude_below is None


@pytest.mark.parametrize("name", [a for a in AGGREGATORS if a not in SECURE_AGGREGATORS])
def test_robust_rules_are_refused_with_secure_aggregation(name):
    with pytest.raises(ConfigError, match="secure aggregation shows the coordinator only their sum"):
        RunConfig.from_dict({"aggregator": name, "secure_aggregation": True})
    with pytest.raises(ConfigError):  # the robust package's own check agrees
        robust.check_secure_compatible(True, name)


def test_secure_aggregation_keeps_the_mean_rules_but_not_trust_exclusion():
    for name in SECURE_AGGREGATORS:
        RunConfig.from_dict({"aggregator": name, "secure_aggregation": True})
    with pytest.raises(ConfigError, match="exclude_below"):
        RunConfig.from_dict({"secure_aggregation": True, "exclude_below": 0.5})
    text = robust.describe_defences(robust.active_defences(secure_aggregation=True, aggregator="fedavg"))
    assert "[off] robust_aggregation" in text and "[off] anomaly_detection" in text


def test_policy_refuses_an_aggregator_it_does_not_allow():
    policy = Policy.from_dict({"allowed_aggregators": ["median", "trimmed_mean"]})
    policy.check(logistic([4], 2), RunConfig.from_dict({"aggregator": "median"}))
    with pytest.raises(PolicyViolation) as info:
        policy.check(logistic([4], 2), RunConfig.from_dict({"aggregator": "fedavg"}), party="site-a")
    assert info.value.reason == "aggregator"
    assert "median, trimmed_mean" in info.value.message
    with pytest.raises(PolicyError, match="unknown names"):
        Policy.from_dict({"allowed_aggregators": ["geomedian"]})


def test_a_simulation_table_is_refused_as_an_unknown_key(tmp_path):
    """Attacker sites are sim.attacker agents, not a policy setting: an old [simulation] table is refused."""
    path = tmp_path / "policy.toml"
    path.write_text('epsilon_cap = 5.0\n\n[simulation]\nattack = "boost"\n')
    with pytest.raises(PolicyError, match=r"unknown settings \['simulation'\]"):
        Policy.load(path)
    assert "simulation" not in Policy().to_dict() and not hasattr(Policy(), "attack")


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_server_optimizers_move_along_the_delta(name):
    params = {"w": np.zeros(3, np.float32)}
    delta = {"w": np.array([1.0, -1.0, 0.0], np.float32)}
    opt = server_optimizer(name, 0.1)
    new, _ = opt.update(delta, opt.init(params), params)
    assert new["w"][0] > 0 > new["w"][1] and new["w"][2] == 0
