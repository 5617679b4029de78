"""RunConfig is the one declaration of every run option: the schema every surface reads is RunConfig itself."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.config import (
    OPTION_GROUPS,
    RunConfig,
    RunLimits,
    options_schema,
    run_option,
    run_options,
)

#: What each option needs beside it to be valid alone (the rules between options).
_WITH = {
    "site_noise_multiplier": {"secure_aggregation": True},
    "noise_multiplier": {"target_epsilon": None},
    "tune_session": {"tune_trials": 2},  # a tuning session is declared with its number of trials
    "tune_trials": {"tune_session": 1},
    "tune_shape": {"tune_session": 1, "tune_trials": 2},
}


def test_schema_lists_every_field_with_its_default_type_and_help():
    schema = json.loads(json.dumps(options_schema(), allow_nan=False))  # plain JSON
    fields = dataclasses.fields(RunConfig)
    assert [o["name"] for o in schema["options"]] == [f.name for f in fields]
    for option, f in zip(schema["options"], fields, strict=True):
        assert option["default"] == f.default
        assert option["type"] in ("int", "float", "bool", "str") and option["help"]
        assert option["group"] in OPTION_GROUPS == tuple(schema["groups"])
        if f.default is not None:
            assert isinstance(f.default, {"int": int, "float": float, "bool": bool, "str": str}[option["type"]])
    assert run_option("aggregator").choices and run_option("min_sites").nullable
    assert schema["one_of"] == [["target_epsilon", "noise_multiplier"]]


@pytest.mark.parametrize("option", [o for o in run_options() if o.maximum is not None], ids=lambda o: o.name)
def test_the_schemas_bounds_are_what_from_dict_enforces(option):
    base = {**_WITH.get(option.name, {}), "rounds": 1, "local_steps": 1}
    if option.name in ("rounds", "local_steps"):
        base.pop(option.name)
    top = option.maximum
    assert getattr(RunConfig.from_dict({**base, option.name: top}), option.name) == top
    over = top + 1 if option.type == "int" else top * 1.01
    with pytest.raises(ConfigError, match=option.name):
        RunConfig.from_dict({**base, option.name: over})
    low = option.minimum
    if option.exclusive_minimum:
        with pytest.raises(ConfigError, match=option.name):
            RunConfig.from_dict({**base, option.name: low})
    else:
        assert getattr(RunConfig.from_dict({**base, option.name: low}), option.name) == low
        under = low - 1 if option.type == "int" else (low * 0.99 if low > 0 else low - 0.01)
        with pytest.raises(ConfigError, match=option.name):
            RunConfig.from_dict({**base, option.name: under})


def test_choices_and_types_are_checked_from_the_declaration():
    for option in run_options():
        wrong = "x" if option.type != "str" else 5
        with pytest.raises(ConfigError, match=option.name):
            RunConfig.from_dict({option.name: wrong, **_WITH.get(option.name, {})})
        if option.choices:
            for choice in option.choices:
                assert getattr(RunConfig.from_dict({option.name: choice}), option.name) == choice


def test_a_rooms_limits_are_the_bounds_it_shows():
    tight = RunLimits(max_rounds=7, min_clip_norm=0.1)
    by_name = {o["name"]: o for o in options_schema(tight)["options"]}
    assert by_name["rounds"]["maximum"] == 7 and by_name["clip_norm"]["minimum"] == 0.1
    with pytest.raises(ConfigError, match="rounds"):
        RunConfig.from_dict({"rounds": 8}, limits=tight)


def test_not_given_is_not_the_default():
    assert RunConfig.from_dict({"noise_multiplier": 1.0}).target_epsilon is None  # the default target gives way
    assert RunConfig.from_dict({"target_epsilon": 3.0}).target_epsilon == 3.0
    with pytest.raises(ConfigError, match="exactly one"):
        RunConfig.from_dict({"target_epsilon": 3.0, "noise_multiplier": 1.0})


def test_local_optimizers_are_the_trainers():
    from fedjax_room.local.trainer import OPTIMIZERS
    from fedjax_room.protocol.config import LOCAL_OPTIMIZERS

    assert LOCAL_OPTIMIZERS == OPTIMIZERS == run_option("local_optimizer").choices


def test_a_run_stored_before_distributed_noise_resumes_as_it_started():
    from fedjax_room.protocol.config import RunConfig

    old = RunConfig.from_dict({}).to_dict()
    for name in ("distributed_noise", "model_average"):  # what a config stored by an older version lacks
        old.pop(name)
    resumed = RunConfig.from_stored(old)
    assert (resumed.distributed_noise, resumed.model_average) == (False, 0.0)
    new = RunConfig.from_dict({})
    assert RunConfig.from_stored(new.to_dict()) == new  # a config stored now is read back unchanged
    assert (new.distributed_noise, new.model_average) == (True, 0.9)
