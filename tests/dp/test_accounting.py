import json
import math

import dp_accounting as dpa
import pytest

from fedjax_room.dp.accounting import (
    Accountant,
    calibrate_noise,
    dpsgd_event,
    epsilon,
    event_from_dict,
    event_to_dict,
)
from fedjax_room.errors import ConfigError

DELTA = 1e-5


@pytest.mark.parametrize(
    "accountant, q, sigma, steps, expected",
    [
        ("rdp", 0.01, 0.7, 120, 3.2392676),
        ("pld", 0.01, 0.7, 120, 2.4612381),
        ("rdp", 0.0025, 1.3, 6000, 0.7242234),
    ],
)
def test_epsilon_matches_published_values(accountant, q, sigma, steps, expected):
    eps = epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=DELTA, accountant=accountant)
    assert eps == pytest.approx(expected, rel=1e-3)


def test_pld_is_tighter_than_rdp_and_default_is_pld():
    kw = dict(noise_multiplier=1.1, sampling_rate=0.02, steps=300, delta=DELTA)
    assert epsilon(**kw) == epsilon(**kw, accountant="pld") < epsilon(**kw, accountant="rdp")


def test_dpsgd_event_shape():
    event = dpsgd_event(1.3, 0.0025, 6000)
    assert event == dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.0025, dpa.GaussianDpEvent(1.3)), 6000)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("target, q, steps", [(3.0, 0.045, 500), (1.0, 0.01, 1000)])
def test_calibration_meets_target_within_one_percent(accountant, target, q, steps):
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sampling_rate=q, steps=steps, accountant=accountant)
    eps = epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=DELTA, accountant=accountant)
    assert 0.99 * target <= eps <= target


def test_calibration_more_steps_needs_more_noise():
    a = calibrate_noise(target_epsilon=2.0, delta=DELTA, sampling_rate=0.01, steps=100, accountant="rdp")
    b = calibrate_noise(target_epsilon=2.0, delta=DELTA, sampling_rate=0.01, steps=1000, accountant="rdp")
    assert b > a


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampling_rate=0.0),
        dict(sampling_rate=1.5),
        dict(sampling_rate=-0.1),
        dict(noise_multiplier=0.0),
        dict(noise_multiplier=-1.0),
        dict(noise_multiplier=float("nan")),
        dict(delta=0.0),
        dict(delta=1.0),
        dict(delta=2.0),
        dict(steps=-1),
        dict(steps=1.5),
        dict(accountant="moments"),
    ],
)
def test_bad_inputs_raise_config_error(kwargs):
    base = dict(noise_multiplier=1.0, sampling_rate=0.01, steps=10, delta=DELTA)
    base.update(kwargs)
    with pytest.raises(ConfigError):
        epsilon(**base)


def test_bad_calibration_inputs():
    base = dict(target_epsilon=1.0, delta=DELTA, sampling_rate=0.01, steps=10)
    bads = (dict(target_epsilon=0.0), dict(target_epsilon=-1), dict(delta=1.0), dict(sampling_rate=0), {"steps": 0})
    for bad in bads:
        with pytest.raises(ConfigError):
            calibrate_noise(**{**base, **bad})


def test_sampling_rate_one_is_allowed():
    assert epsilon(noise_multiplier=2.0, sampling_rate=1.0, steps=5, delta=DELTA) > 0


EVENTS = [
    dpa.NoOpDpEvent(),
    dpa.NonPrivateDpEvent(),
    dpa.GaussianDpEvent(1.5),
    dpa.LaplaceDpEvent(0.5),
    dpsgd_event(1.1, 0.01, 50),
    dpa.ComposedDpEvent([dpsgd_event(1.1, 0.01, 50), dpa.GaussianDpEvent(3.0), dpa.NoOpDpEvent()]),
    dpa.SampledWithoutReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(1.0)),
    dpa.SampledWithReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(1.0)),
    dpa.RandomizedResponseDpEvent(0.5, 2),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_json_round_trip(event):
    text = json.dumps(event_to_dict(event))
    assert event_from_dict(json.loads(text)) == event


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "pickled"},
        {"noise_multiplier": 1.0},
        "gaussian",
        {"type": "gaussian"},
        {"type": "gaussian", "noise_multiplier": "1"},
        {"type": "self_composed", "count": -1, "event": {"type": "no_op"}},
        {"type": "self_composed", "count": 3},
        {"type": "composed", "events": "no_op"},
    ],
)
def test_malformed_event_dicts_raise(bad):
    with pytest.raises(ConfigError):
        event_from_dict(bad)


def test_unknown_event_type_cannot_be_serialised():
    with pytest.raises(ConfigError, match="supported"):
        event_to_dict(dpa.ZCDpEvent(0.1))


def test_deeply_nested_event_refused():
    d = {"type": "no_op"}
    for _ in range(100):
        d = {"type": "self_composed", "count": 1, "event": d}
    with pytest.raises(ConfigError, match="nested"):
        event_from_dict(d)


@pytest.mark.parametrize("kind", ["pld", "rdp"])
def test_accountant_ledger(kind):
    acc = Accountant(kind)
    assert acc.epsilon(DELTA) == 0.0 and acc.events == []
    acc.compose(dpsgd_event(1.0, 0.01, 100))
    first = acc.epsilon(DELTA)
    assert first == pytest.approx(
        epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=100, delta=DELTA, accountant=kind)
    )
    acc.compose(event_to_dict(dpsgd_event(1.0, 0.01, 100)))  # a dict works too
    assert acc.epsilon(DELTA) > first
    # Two composed halves equal one event of the whole.
    assert acc.epsilon(DELTA) == pytest.approx(
        epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=200, delta=DELTA, accountant=kind), rel=1e-2
    )
    assert len(acc.events) == 2 and len(acc) == 2

    restored = Accountant.from_dict(json.loads(json.dumps(acc.to_dict())))
    assert restored.kind == kind
    assert restored.events == acc.events
    assert restored.epsilon(DELTA) == pytest.approx(acc.epsilon(DELTA))


def test_would_exceed_composes_nothing():
    acc = Accountant()
    acc.compose(dpsgd_event(1.0, 0.01, 100))
    before = acc.epsilon(DELTA)
    big, small = dpsgd_event(0.8, 0.05, 1000), dpsgd_event(5.0, 0.01, 10)
    assert acc.would_exceed(big, epsilon_cap=3.0, delta=DELTA)
    assert not acc.would_exceed(small, epsilon_cap=3.0, delta=DELTA)
    assert acc.would_exceed(dpa.NonPrivateDpEvent(), epsilon_cap=1e9, delta=DELTA)
    assert acc.epsilon(DELTA) == before and len(acc.events) == 1


def test_non_private_release_makes_epsilon_infinite():
    acc = Accountant().compose(dpa.NonPrivateDpEvent())
    assert math.isinf(acc.epsilon(DELTA))


def test_accountant_bad_kind_and_data():
    with pytest.raises(ConfigError):
        Accountant("moments")
    with pytest.raises(ConfigError):
        Accountant.from_dict({"kind": "pld", "events": [{"type": "nope"}]})
    with pytest.raises(ConfigError):
        Accountant.from_dict([1, 2])
    with pytest.raises(ConfigError):
        Accountant().epsilon(0.0)
