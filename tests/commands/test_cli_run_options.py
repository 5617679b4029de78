"""The CLI's run options are RunConfig's: ``fedjax-room demo`` takes every one, ``train-local`` the ones it shares."""

from __future__ import annotations

import argparse
import inspect

import pytest

from fedjax_room.cli import build_parser, main
from fedjax_room.commands.train_local import SHARED_OPTIONS
from fedjax_room.protocol.config import RunConfig, run_options

DEMO_OWN = {"sites", "dataset", "non_iid", "state", "json", "attack", "malicious", "func", "command", "help"}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _tokens_for_defaults(names=None):
    tokens = []
    for o in run_options():
        if names is not None and o.name not in names:
            continue
        if o.type == "bool":
            tokens.append(o.flag if o.default else "--no-" + o.flag[2:])
        else:
            tokens += [o.flag, "none" if o.default is None else str(o.default)]
    return tokens


@pytest.fixture
def demo_calls(monkeypatch):
    from fedjax_room.sim import demo as sim_demo

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return 0

    fake.__signature__ = inspect.signature(sim_demo.run_demo)
    monkeypatch.setattr(sim_demo, "run_demo", fake)
    return calls


def test_demo_accepts_exactly_runconfigs_options_with_its_defaults(demo_calls):
    dests = {a.dest for a in _subparser("demo")._actions} - DEMO_OWN
    assert dests == {o.name for o in run_options()}
    assert main(["demo"]) == 0
    assert demo_calls[-1]["options"] == {} and "rounds" not in demo_calls[-1]  # nothing given: the demo's recipe
    assert main(["demo", *_tokens_for_defaults()]) == 0
    call = demo_calls[-1]
    given = {**call["options"], **{k: v for k, v in call.items() if k in RunConfig().to_dict()}}
    assert given == RunConfig().to_dict() and RunConfig.from_dict(given) == RunConfig()


def test_demo_passes_options_it_never_named_to_room_train(demo_calls):
    assert main(["demo", "--secagg-range", "2", "--site-clip-norm", "0.5", "--noise-multiplier", "2"]) == 0
    call = demo_calls[-1]
    assert call["options"] == {"noise_multiplier": 2.0, "site_clip_norm": 0.5, "secagg_range": 2.0}
    assert call["target_epsilon"] is None  # not given: the default target gives way to the fixed noise
    assert main(["demo", "--no-secure-aggregation", "--exclude-below", "0.5"]) == 0
    assert demo_calls[-1]["secure_aggregation"] is False and demo_calls[-1]["exclude_below"] == 0.5


def test_train_local_shares_runconfigs_flags_bounds_and_help(capsys):
    parser = _subparser("train-local")
    by_dest = {a.dest: a for a in parser._actions}
    for o in run_options():
        if o.name in SHARED_OPTIONS:
            assert o.flag in by_dest[o.name].option_strings and o.help in by_dest[o.name].help
        else:
            assert o.name not in by_dest
    assert "--lr" in by_dest["learning_rate"].option_strings  # the old spelling still works
    ns = parser.parse_args(_tokens_for_defaults(SHARED_OPTIONS))
    assert {k: getattr(ns, k) for k in SHARED_OPTIONS} == {k: getattr(RunConfig(), k) for k in SHARED_OPTIONS}
    with pytest.raises(SystemExit):
        main(["train-local", "--delta", "0.5"])
    assert "delta = 0.5 is outside this room's bounds" in capsys.readouterr().err


def test_demo_malicious_without_an_attack_is_refused_before_any_room_starts(demo_calls, capsys):
    assert main(["demo", "--malicious", "2"]) == 2
    assert demo_calls == []  # refused before the demo (and its processes) started
    assert "--malicious K needs --attack" in capsys.readouterr().err
    assert main(["demo", "--attack", "boost", "--malicious", "2"]) == 0
    assert demo_calls[-1]["attack"] == "boost" and demo_calls[-1]["malicious"] == 2
    assert main(["demo", "--attack", "boost"]) == 0
    assert demo_calls[-1]["malicious"] == 1  # one attacker unless told otherwise
