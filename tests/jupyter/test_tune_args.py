"""``%%room tune``'s options: a search space from ``--search``, the session's own options, and the fixed run
options every trial shares; every mistake one line, before anything reaches the room."""

from __future__ import annotations

import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.jupyter.args import HelpArgs, TuneArgs, help_text, parse_line, parse_tune_line


def test_ranges_values_and_fixed_options():
    parsed = parse_tune_line(
        "tune --trials 4 --search learning_rate=2:10 --search clip_norm=0.05,0.1,0.2 "
        "--search local_optimizer=sgd,momentum --rounds 20 --shape 0.5 --metric loss --as best"
    )
    assert parsed == TuneArgs(
        space={
            "learning_rate": (2, 10),  # a tuple: a range, as room.tune takes it
            "clip_norm": [0.05, 0.1, 0.2],  # a list: values
            "local_optimizer": ["sgd", "momentum"],
        },
        trials=4,
        options={"rounds": 20},  # only what was set: every other option takes RunConfig's default
        shape=0.5,
        metric="loss",
        var="best",
    )
    assert parse_tune_line("--trials 2 --search secure_aggregation=true,false") == TuneArgs(
        space={"secure_aggregation": [True, False]}, trials=2, options={}
    )


@pytest.mark.parametrize(
    "line, match",
    [
        ("--trials 2", "--search"),
        ("--search learning_rate=1:2", "--trials"),
        ("--trials 0 --search learning_rate=1:2", "positive"),
        ("--trials 2 --search learning_rate", "NAME=LO:HI"),
        ("--trials 2 --search =1,2", "NAME=LO:HI"),
        ("--trials 2 --search learning_rate=", "NAME=LO:HI"),
        ("--trials 2 --search rounds=2,3 --search rounds=4,5", "given twice"),
        ("--trials 2 --search rounds=2,3 --rounds 4", "both searched"),
        ("--trials 2 --search rounds=2,3 --metric f1", "metric"),
        ("--trials 2 --search rounds=2,3 --rounds many", "rounds"),
    ],
)
def test_mistakes_are_one_line(line, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_tune_line(line)
    assert "\n" not in str(info.value)


def test_tune_is_a_cell_magic_with_its_own_help():
    with pytest.raises(ConfigError, match="cell magic"):
        parse_line("tune --trials 2 --search rounds=2,3")
    assert parse_tune_line("tune --help") == HelpArgs(topic="tune")
    text = help_text("tune")
    assert text.startswith("usage: %%room tune") and "--search" in text and "model spec" in text
    assert "%%room tune" in help_text()
