"""``%room query ... --estimate`` parses to the same keywords as the query, flagged for ``room.estimate_query``."""

from __future__ import annotations

from fedjax_room.jupyter import args


def test_estimate_is_a_flag_of_the_query_magic_with_the_same_keywords():
    line = "query histogram pixel_3 bins=0,4,8,16 epsilon=1"
    plain, estimate = args.parse_line(line), args.parse_line(line + " --estimate")
    assert isinstance(estimate, args.QueryArgs) and estimate.estimate is True and plain.estimate is False
    assert estimate.queries == plain.queries
    cell = args.parse_query_cell("query epsilon=0.5 --estimate", "count_by_label\ncount\n")
    assert isinstance(cell, args.QueryArgs) and cell.estimate is True and len(cell.queries) == 2


def test_the_magic_shows_the_estimate_table_and_runs_no_query(ip, fake_room, monkeypatch):
    from IPython.utils.capture import capture_output

    from fedjax_room.analyst.results import EstimateReport
    from fedjax_room.jupyter.display import Table

    calls = []
    row = {"site": "site-a", "status": "answered", "accept": False, "reason": "query_kind", "epsilon_planned": 1.0}

    def estimate_query(**keywords):
        calls.append(keywords)
        return EstimateReport.from_list([row])

    def query(**keywords):
        raise AssertionError("an estimate must not run the query")

    monkeypatch.setattr(fake_room, "estimate_query", estimate_query, raising=False)
    monkeypatch.setattr(fake_room, "query", query, raising=False)
    with capture_output():
        result = ip.run_cell("%room query count_by_label epsilon=1 --estimate")
    assert result.success, result.error_in_exec
    assert calls == [{"kind": "count_by_label", "epsilon": 1}]
    assert isinstance(result.result, Table) and "query_kind" in result.result._repr_html_()
