"""The coordinator draws a tuning session's number of trials (protocol/tuning.py), not the analyst: a forged count
is refused, the trial after the drawn number is refused, a session is its first trial's (analyst, mean, shape)."""

from __future__ import annotations

import hashlib
import random

import pytest

from fedjax_room.errors import ConfigError, RefusedError
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.tuning import TuneDraws

TRIAL = {"rounds": 1, "tune_session": 11, "tune_trials": 4, "tune_shape": 1.0}


class _Fixed(random.Random):
    """A generator whose uniform draw is ``u`` (geometric of mean 4: u = 0.5 draws 3 trials)."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def test_the_coordinator_draws_the_number_and_refuses_the_trial_after_it():
    audit: list[tuple[str, dict]] = []
    draws = TuneDraws(_Fixed(0.5))  # P(K<=2) = 0.4375, P(K<=3) = 0.578: three trials
    config = RunConfig.from_dict(TRIAL)
    for _ in range(3):
        draws.start_trial("ana", config, [], lambda kind, **f: audit.append((kind, f)))
    with pytest.raises(RefusedError) as info:
        draws.start_trial("ana", config, [], lambda kind, **f: audit.append((kind, f)))
    assert info.value.reason == "tune_done"
    ((kind, fields),) = audit  # drawn once, audited once: a commitment, not the number
    assert kind == "tune_session_drawn" and fields["mean"] == 4.0 and fields["shape"] == 1.0
    assert "count" not in fields and len(fields["commitment"]) == 64
    assert all(fields["commitment"] != hashlib.sha256(f"11:{k}:".encode()).hexdigest() for k in range(1, 100))


def test_an_analyst_cannot_pick_the_number_of_trials():
    with pytest.raises(ConfigError, match="unknown run settings"):  # no run option carries a count
        RunConfig.from_dict({**TRIAL, "tune_count": 100})
    draws = TuneDraws(_Fixed(0.1))  # one trial
    draws.start_trial("ana", RunConfig.from_dict(TRIAL), [], lambda *a, **f: None)
    for forged in ({"tune_trials": 64}, {"tune_shape": 0.0}):  # a larger mean or a heavier tail, mid-session
        with pytest.raises(RefusedError) as info:
            draws.start_trial("ana", RunConfig.from_dict({**TRIAL, **forged}), [], lambda *a, **f: None)
        assert info.value.reason == "tune_trials"
    with pytest.raises(RefusedError) as info:  # another analyst adding trials to the session
        draws.start_trial("eve", RunConfig.from_dict(TRIAL), [], lambda *a, **f: None)
    assert info.value.reason == "tune_trials"
    with pytest.raises(RefusedError) as info:
        draws.start_trial("ana", RunConfig.from_dict(TRIAL), [], lambda *a, **f: None)
    assert info.value.reason == "tune_done"


def test_a_session_begun_before_a_coordinator_restart_is_not_drawn_again():
    class _Run:
        config = {"tune_session": 11}

    with pytest.raises(RefusedError) as info:
        TuneDraws().start_trial("ana", RunConfig.from_dict(TRIAL), [_Run()], lambda *a, **f: None)
    assert info.value.reason == "tune_trials"


def test_a_run_outside_tuning_is_not_counted():
    audit: list = []
    TuneDraws().start_trial("ana", RunConfig.from_dict({"rounds": 1}), [], lambda *a, **f: audit.append(a))
    assert audit == []
