"""``Room.train`` takes exactly RunConfig's options, with RunConfig's defaults (generated, so it cannot drift)."""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest

from fedjax_room.analyst.client import Room
from fedjax_room.errors import ConfigError
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig, run_options

SPEC = logistic([4], 2)


def _room() -> tuple[Room, list[m.StartRun]]:
    """A Room whose connection is replaced by a recorder of the StartRun it would send (no coordinator)."""
    sent: list[m.StartRun] = []
    room = Room.__new__(Room)

    def ask(build, *, resend=True):
        msg = build(1)
        if isinstance(msg, m.EstimateRun):  # train asks the sites' estimate first: no site here, nothing refused
            return types.SimpleNamespace(sites=[])
        sent.append(msg)
        return types.SimpleNamespace(run_id="run-1")

    room._ask = ask  # type: ignore[method-assign]
    room.run = lambda run_id: run_id  # type: ignore[method-assign]
    return room, sent


def test_room_train_signature_is_runconfig():
    params = inspect.signature(Room.train).parameters
    keywords = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == {f.name: f.default for f in dataclasses.fields(RunConfig)}
    assert list(keywords) == [o.name for o in run_options()]
    for option in run_options():  # help(Room.train) documents each one
        assert f"{option.name} (" in Room.train.__doc__


def test_room_train_sends_runconfig_defaults_and_every_option():
    room, sent = _room()
    assert room.train(SPEC) == "run-1"
    assert sent[-1].config == RunConfig().to_dict()
    changed = {"secagg_range": 2.5, "site_clip_norm": 0.5, "exclude_below": 0.4, "seed": 9}
    room.train(SPEC, **changed)
    assert {k: sent[-1].config[k] for k in changed} == changed


def test_explicit_target_epsilon_3_is_kept_not_taken_for_the_default():
    room, sent = _room()
    room.train(SPEC, target_epsilon=3.0)
    assert sent[-1].config["target_epsilon"] == 3.0 and sent[-1].config["noise_multiplier"] is None
    room.train(SPEC, noise_multiplier=1.0)  # not given: the default target gives way
    assert sent[-1].config["target_epsilon"] is None and sent[-1].config["noise_multiplier"] == 1.0
    with pytest.raises(ConfigError, match="exactly one"):  # given: both kept, so the mistake is reported
        room.train(SPEC, target_epsilon=3.0, noise_multiplier=1.0)
    assert len(sent) == 2


def test_room_train_refuses_unknown_or_out_of_bounds_options():
    room, sent = _room()
    with pytest.raises(ConfigError, match="unknown run settings"):
        room.train(SPEC, rounds_=3)
    with pytest.raises(ConfigError, match="rounds"):
        room.train(SPEC, rounds=0)
    assert sent == []
