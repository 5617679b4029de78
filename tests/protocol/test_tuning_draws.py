"""The coordinator draws a tuning session's number of trials and each trial's options (protocol/tuning.py), not the
analyst: the session starts exactly the drawn number of trials, each with a fresh random id that is hidden until the
best is published, and the audit log holds a commitment to the number, not the number."""

from __future__ import annotations

import hashlib
import random

import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.tuning import TRIAL_PREFIX, TuneSessions, draw_config, space_to_wire

from .conftest import FixedRandom

SPACE = space_to_wire({"learning_rate": (0.01, 1.0), "local_steps": (2, 5), "clip_norm": [0.5, 1.0]})


def _session(u: float = 0.5):
    tunes = TuneSessions(FixedRandom(u))
    tunes.load_hidden([], [])
    return tunes, tunes.start("ana", {}, SPACE, 4, 1.0, "accuracy", {"rounds": 1}, now=0.0)


def test_the_session_starts_the_drawn_number_of_trials_and_publishes_the_best():
    tunes, s = _session()  # P(K<=2) = 0.4375, P(K<=3) = 0.578: three trials
    started = []
    while (nxt := tunes.next_trial(s)) is not None:
        run_id, drawn = nxt
        started.append(run_id)
        config = RunConfig.from_dict(s.trial_config(drawn))  # a valid run, declared to the sites as a trial
        assert (config.tune_session, config.tune_trials, config.tune_shape) == (s.id, 4, 1.0)
        tunes.trial_over(s, run_id, {0: 0.7, 1: 0.9, 2: None}[len(started) - 1])
    assert len(started) == 3 and len(set(started)) == 3 and all(r.startswith(TRIAL_PREFIX) for r in started)
    assert tunes.hidden == set(started) and s.view()["run_id"] is None  # nothing shown while it runs
    assert "count" not in s.view() and set(s.view()) >= {"status", "trials", "shape", "metric"}
    assert tunes.publish(s) == started[1]
    assert tunes.hidden == {started[0], started[2]}
    view = s.view()
    assert view["status"] == "finished" and view["run_id"] == started[1] and view["value"] == 0.9
    assert view["config"] == s.drawn[started[1]]


def test_the_commitment_hides_the_number():
    tunes, s = _session()
    commitment, nonce = tunes.commitment(s)
    assert commitment == hashlib.sha256(f"{s.id}:3:{nonce}".encode()).hexdigest()
    assert all(commitment != hashlib.sha256(f"{s.id}:{k}:".encode()).hexdigest() for k in range(1, 100))


def test_a_session_with_no_released_metric_fails_and_another_analyst_cannot_read_it():
    tunes, s = _session(0.1)  # one trial
    run_id, _ = tunes.next_trial(s)
    tunes.trial_over(s, run_id, None)
    assert tunes.next_trial(s) is None and tunes.publish(s) is None
    assert s.view()["status"] == "failed" and s.error["reason"] == "tune_failed" and run_id in tunes.hidden
    with pytest.raises(ConfigError, match="no tuning session"):
        tunes.owned("eve", s.id)
    assert tunes.owned("ana", s.id) is s


def test_trials_are_drawn_independently_from_the_space_and_stored_trials_stay_hidden():
    rng = random.Random(2)
    drawn = [draw_config(SPACE, rng) for _ in range(200)]
    assert all(0.01 <= c["learning_rate"] <= 1.0 and c["local_steps"] in range(2, 6) for c in drawn)
    assert {c["clip_norm"] for c in drawn} == {0.5, 1.0} and {c["local_steps"] for c in drawn} == {2, 3, 4, 5}
    small = sum(c["learning_rate"] < 0.1 for c in drawn)  # log-uniform: half the draws under 0.1
    assert 70 < small < 130

    class _Run:
        def __init__(self, run_id, config):
            self.id, self.config = run_id, config

    tunes = TuneSessions()
    tunes.load_hidden(
        [_Run("trial-a", {"tune_session": 3}), _Run("trial-b", {"tune_session": 3}), _Run("run-1", {})], ["trial-b"]
    )
    assert tunes.hidden == {"trial-a"}  # read again after a restart: what was not published stays hidden


@pytest.mark.parametrize(
    ("space", "match"),
    [({"tune_trials": [2, 3]}, "not run options"), ({"learning_rate": "fast"}, "list of values"), ({}, "give a space")],
)
def test_a_bad_space_is_refused(space, match):
    with pytest.raises(ConfigError, match=match):
        space_to_wire(space)
