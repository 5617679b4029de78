"""Anomaly scores and flags on hand-made updates, the trust EMA, and RobustAggregation's round of defence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.robust import (
    AnomalyConfig,
    RobustAggregation,
    flag,
    init_trust,
    score_updates,
    trust_excluded,
    update_trust,
)


def _honest(n: int = 8, dim: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    return (direction + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def test_flags_boosted_and_sign_flipped_updates_with_reasons() -> None:
    x = _honest()
    x[0] *= 10.0  # boosted
    x[1] *= -1.0  # sign flipped
    flags = flag(x)
    np.testing.assert_array_equal(flags.flagged, [True, True] + [False] * 6)
    assert any("norm" in r for r in flags.reasons[0])
    assert any("cosine" in r for r in flags.reasons[1])
    assert flags.reasons[2] == ()
    assert flags.scores.norm_z[0] > 3.5 and flags.scores.cosine_z[1] < -3.5


def test_no_false_flags_when_honest_norms_are_nearly_equal() -> None:
    x = _honest(n=10)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3] *= 1.05  # tiny differences must not become huge z-scores (scale floor)
    assert not flag(x).flagged.any()


def test_absent_sites_are_not_scored() -> None:
    x = _honest(n=5)
    x[4] = 1e4
    scores = score_updates(x, [1, 1, 1, 1, 0])
    assert np.isnan(scores.norm_z[4])
    flags = flag(x, [1, 1, 1, 1, 0])
    assert not flags.flagged.any()


def test_min_cosine_floor() -> None:
    x = _honest(n=6)
    x[0] = -0.1 * x[0]
    flags = flag(x, config=AnomalyConfig(min_cosine=0.0, cosine_z=100.0, norm_z=100.0))
    assert flags.flagged[0] and "below 0" in flags.reasons[0][0]


def test_config_is_validated() -> None:
    for bad in (
        AnomalyConfig(norm_z=0),
        AnomalyConfig(trust_decay=1.0),
        AnomalyConfig(exclude_below=1.5),
        AnomalyConfig(min_cosine=2.0),
    ):
        with pytest.raises(ConfigError):
            bad.validated()


def test_trust_ema_excludes_after_two_flags_and_recovers() -> None:
    state = init_trust(3)
    flagged = np.array([True, False, False])
    state = update_trust(state, flagged)
    assert float(state.trust[0]) == pytest.approx(0.7)
    assert not bool(trust_excluded(state, 0.5)[0])
    state = update_trust(state, flagged, present=[True, False, True])  # site 1 absent: unchanged
    assert float(state.trust[0]) == pytest.approx(0.49)
    assert float(state.trust[1]) == pytest.approx(1.0) and int(state.rounds[1]) == 1
    assert np.asarray(trust_excluded(state, 0.5)).tolist() == [True, False, False]
    assert not np.asarray(trust_excluded(state, None)).any()
    state = update_trust(state, np.zeros(3, bool))
    assert float(state.trust[0]) == pytest.approx(0.643)
    assert int(state.flags[0]) == 2


def _round(x: np.ndarray, names: list[str]) -> dict:
    return {n: ({"w": x[i]}, 10.0 + i) for i, n in enumerate(names)}


def test_robust_aggregation_flags_then_excludes_a_persistent_attacker() -> None:
    names = [f"site-{i}" for i in range(8)]
    defence = RobustAggregation("fedavg", anomaly=AnomalyConfig(exclude_below=0.5))
    state = defence.init(names)
    reports = []
    for r in range(3):
        x = _honest(seed=r)
        x[0] *= 20.0
        delta, state, report = defence.apply(_round(x, names), state)
        reports.append(report)
    assert [list(r.flagged) for r in reports] == [["site-0"]] * 3
    assert reports[0].excluded == () and reports[1].excluded == ("site-0",)
    assert "site-0" not in reports[2].selected
    # With site-0 excluded, FedAvg is the weighted mean of the others.
    w = 10.0 + np.arange(1, 8)
    np.testing.assert_allclose(delta["w"], (w[:, None] * x[1:]).sum(0) / w.sum(), rtol=1e-5)
    assert state["flags"]["site-0"] == 3 and state["round"] == 3
    doc = reports[2].to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["scores"]["site-0"]["norm_z"] > 3.5
    assert doc["trust"]["site-0"] < 0.5


def test_robust_aggregation_reports_what_the_rule_rejected_and_new_sites_start_trusted() -> None:
    names = [f"s{i}" for i in range(10)]
    defence = RobustAggregation("multi_krum", anomaly=None, f=2)
    state = defence.init(names[:9])
    x = _honest(n=10, seed=4)
    x[:2] = -5.0
    _, state, report = defence.apply(_round(x, names), state)
    assert set(report.rejected) == {"s0", "s1"} and report.flagged == {}
    assert report.trust["s9"] == 1.0


def test_robust_aggregation_refuses_when_nobody_is_trusted() -> None:
    defence = RobustAggregation("median", anomaly=AnomalyConfig(exclude_below=0.5))
    x = _honest(n=4)
    state = {"round": 0, "trust": {f"s{i}": 0.1 for i in range(4)}}
    with pytest.raises(RoundError, match="trust below"):
        defence.apply(_round(x, [f"s{i}" for i in range(4)]), state)
    with pytest.raises(RoundError):
        defence.apply({}, state)
    with pytest.raises(ConfigError):
        RobustAggregation("average")
