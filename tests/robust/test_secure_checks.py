"""Aggregate-level checks for secure aggregation, site clipping, and the plain statement of active defences."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.robust import (
    AggregateCheckConfig,
    active_defences,
    check_aggregate,
    check_held_out_loss,
    check_secure_compatible,
    clip_update,
    describe_defences,
    init_aggregate_checks,
)


def test_clip_update_bounds_the_norm() -> None:
    update = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    clipped, norm = clip_update(update, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    same, _ = clip_update(update, 10.0)
    np.testing.assert_allclose(same["b"], [4.0])
    with pytest.raises(ConfigError):
        clip_update(update, 0)


def test_aggregate_bound_and_norm_jump() -> None:
    state = init_aggregate_checks()
    ok, state = check_aggregate({"w": np.full(4, 0.25, np.float32)}, state, site_clip_norm=1.0)
    assert ok.ok and ok.norm == pytest.approx(0.5) and ok.norm_ratio is None
    # A sum of clipped updates divided by the count cannot exceed the clip bound.
    bad, state = check_aggregate({"w": np.full(4, 1.0, np.float32)}, state, site_clip_norm=1.0)
    assert not bad.ok and "did not clip" in bad.reasons[0] and "4.0x" in bad.reasons[1]
    assert state.prev_norm == pytest.approx(0.5)  # the reference does not move on a failure
    loose, state = check_aggregate({"w": np.full(4, 0.7, np.float32)}, state, config=AggregateCheckConfig(3.0))
    assert loose.ok and loose.norm_ratio == pytest.approx(2.8)
    nan, _ = check_aggregate({"w": np.array([np.nan], np.float32)}, state)
    assert not nan.ok


def test_held_out_loss_check() -> None:
    state = init_aggregate_checks()
    first, state = check_held_out_loss(1.0, state)
    assert first.ok and first.loss_change is None
    fine, state = check_held_out_loss(1.2, state)
    assert fine.ok and fine.loss_change == pytest.approx(0.2)
    worse, state = check_held_out_loss(2.0, state)
    assert not worse.ok and "rose from 1.2 to 2" in worse.reasons[0]
    assert state.prev_loss == pytest.approx(1.2)


def test_robust_rules_cannot_run_under_secure_aggregation() -> None:
    check_secure_compatible(True, "fedavg")
    check_secure_compatible(False, "median")
    with pytest.raises(ConfigError, match="only their sum"):
        check_secure_compatible(True, "trimmed_mean")
    with pytest.raises(ConfigError, match="unknown aggregator"):
        check_secure_compatible(False, "nope")


def test_active_defences_says_plainly_what_runs() -> None:
    on = {s.name: s for s in active_defences(secure_aggregation=True, aggregator="median", site_clip_norm=1.0)}
    assert not on["robust_aggregation"].active and "only the sum" in on["robust_aggregation"].detail
    assert not on["anomaly_detection"].active and not on["trust_exclusion"].active
    assert on["site_clipping"].active and on["aggregate_norm_check"].active and on["held_out_loss_check"].active
    off = {s.name: s for s in active_defences(secure_aggregation=False, aggregator="median", exclude_below=0.5)}
    assert off["robust_aggregation"].active and off["anomaly_detection"].active and off["trust_exclusion"].active
    assert not off["site_clipping"].active
    plain = {s.name: s for s in active_defences(secure_aggregation=False, aggregator="fedavg")}
    assert not plain["robust_aggregation"].active
    text = describe_defences(active_defences(secure_aggregation=True, aggregator="fedavg"))
    assert text.splitlines()[0].startswith("[off] robust_aggregation")
