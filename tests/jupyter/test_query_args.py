"""``%room query`` / ``%%room query`` parsing (fedjax_room.jupyter.args): the query grammar is the analyst's."""

from __future__ import annotations

import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.jupyter import args


def test_the_line_form_is_parse_query_plus_the_magics_own_flags():
    parsed = args.parse_line("query histogram pixel_3 bins=0,4,8,16 epsilon=1 --as hist --no-plot")
    assert isinstance(parsed, args.QueryArgs)
    assert parsed.queries == ({"kind": "histogram", "feature": "pixel_3", "bins": [0, 4, 8, 16], "epsilon": 1},)
    assert parsed.var == "hist" and parsed.plot is False
    parsed = args.parse_line("query mean age bounds=0,100 epsilon=1 by=sex keys=0,1 sites=site-a,site-b secure")
    assert parsed.queries[0] == {
        "kind": "mean",
        "feature": "age",
        "bounds": [0, 100],
        "epsilon": 1,
        "by": "sex",
        "keys": [0, 1],
        "sites": ["site-a", "site-b"],
        "secure": True,
    }
    assert parsed.var == "query" and parsed.plot is True
    assert isinstance(args.parse_line("query --help"), args.HelpArgs)
    assert "count_by_label" in args.help_text("query") and "query" in args.help_text()


def test_a_cell_holds_one_query_per_line_and_its_line_sets_defaults():
    parsed = args.parse_query_cell(
        "query epsilon=0.5 secure --as explore",
        "count_by_label\n# a comment\n\nhistogram x3 bins=0,8,16 epsilon=2  # its own epsilon\n",
    )
    assert isinstance(parsed, args.QueryArgs) and parsed.var == "explore"
    assert parsed.queries == (
        {"kind": "count_by_label", "epsilon": 0.5, "secure": True},
        {"kind": "histogram", "feature": "x3", "bins": [0, 8, 16], "epsilon": 2, "secure": True},
    )


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [
        ("query", "", "needs a query"),
        ("query drop_table epsilon=1", "", "unknown query kind"),
        ("query count epsilon=one", "", "must be a number"),
        ("query histogram x bins=a,b epsilon=1", "", "must be numbers"),
        ("query count epsilon=1 --force", "", "unknown option '--force'"),
        ("query count epsilon=1 --as 1x", "", "Python variable name"),
        ("query count 'unclosed", "", "cannot parse"),
    ],
)
def test_bad_line_queries_are_one_typed_line(line, body, message):
    with pytest.raises(ConfigError) as info:
        args.parse_line(line)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_cells_are_one_typed_line_naming_the_line():
    with pytest.raises(ConfigError, match="line 2"):
        args.parse_query_cell("query epsilon=1", "count\nmean\tage bounds=0,x\n")
    with pytest.raises(ConfigError, match="not 'age'"):
        args.parse_query_cell("query age epsilon=1", "count\n")
    with pytest.raises(ConfigError, match="at most"):
        args.parse_query_cell("query epsilon=1", "count\n" * (args.MAX_CELL_QUERIES + 1))
    with pytest.raises(ConfigError, match="one query per line"):
        args.parse_query_cell("query epsilon=1", "# nothing\n")
