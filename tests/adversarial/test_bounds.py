"""What a site says about itself is bounded by what it declared (protocol/bounds.py), unit by unit."""

from __future__ import annotations

import math

import pytest

from fedjax_room.protocol.bounds import (
    NOISE_SIGMAS,
    bound_metrics,
    bound_weight,
    declared_size,
    eval_margin,
    weight_problem,
)


@pytest.mark.parametrize(
    ("text", "size"), [("~500", 500), ("500", 500), (" ~ 1200 ", 1200), ("500-1000", 1000), ("", None), ("lots", None)]
)
def test_declared_size(text, size):
    assert declared_size(text) == size


def test_plan_weight_is_bounded_by_the_declared_size():
    assert weight_problem({"weight": 400}, 400) is None
    assert weight_problem({}, 400) is None  # no weight: updates are bounded by the declared size instead
    assert "more than the ~400" in weight_problem({"weight": 10**15}, 400)
    for bad in (0, -1, math.inf, math.nan, True, "400", None):
        assert "positive number" in weight_problem({"weight": bad}, 400)
    assert "declared no size" in weight_problem({"weight": 10}, None)


def test_update_weight_is_clamped_to_the_plan():
    assert bound_weight(1e15, {"weight": 400}) == 400
    assert bound_weight(300, {"weight": 400}) == 300
    assert bound_weight(1e15, {}, 500) == 500
    assert bound_weight(1e15, {}) == 1.0


def test_metrics_are_clamped_to_what_the_declared_size_allows():
    margin = eval_margin({"eval_noise_multiplier": 0.1}, 400)
    assert margin == pytest.approx(NOISE_SIGMAS * 0.1 * math.sqrt(3))
    correct, count, loss = bound_metrics(1e12, 1.0, -1e12, size=400, margin=margin)
    assert count == 1.0 and correct == pytest.approx(1.0 + margin) and loss == pytest.approx(-5.0 * margin)
    correct, count, loss = bound_metrics(1e12, 1e12, 1e12, size=400, margin=margin)
    assert count == pytest.approx(400 + margin) and correct == pytest.approx(count + margin)
    assert loss == pytest.approx(5.0 * (count + margin))
    honest = (251.3, 290.7, 310.2)  # noised values inside the range stay as they are
    assert bound_metrics(*honest, size=400, margin=margin) == honest
    # a rogue claiming huge eval noise gets a margin of at most its declared size
    assert eval_margin({"eval_noise_multiplier": 1e9}, 400) == 400
    assert eval_margin({}, None) == pytest.approx(NOISE_SIGMAS * 10.0 * math.sqrt(3))
