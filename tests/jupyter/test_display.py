import dataclasses

import pytest

from fedjax_room.analyst.views import (
    audit_html,
    budget_html,
    epsilon_bar_html,
    format_value,
    html_table,
    privacy_html,
    records,
    refusals_html,
    rounds_html,
    run_html,
    runs_html,
    sites_html,
    text_table,
)
from fedjax_room.jupyter.chart import svg_line_chart
from fedjax_room.jupyter.display import Table

EVIL = '<script>alert("x")</script>'


def test_records_normalises_the_shapes_the_api_returns(fakes):
    site = fakes.SiteBudget("a", 1.0, 1e-5, 3.0, 2.0)
    assert records(None) == []
    assert records([site]) == [dataclasses.asdict(site)]
    assert records(fakes.BudgetReport(sites={site.site: site})) == [dataclasses.asdict(site)]
    assert records({"a": {"epsilon": 1.0}, "b": {"epsilon": 2.0}}) == [
        {"site": "a", "epsilon": 1.0},
        {"site": "b", "epsilon": 2.0},
    ]
    assert records({"sites": {"a": {"epsilon": 1.0}}}) == [{"site": "a", "epsilon": 1.0}]
    assert records({"run_id": "r", "epsilon": 2.0}) == [{"run_id": "r", "epsilon": 2.0}]

    class WithToDict:
        def to_dict(self):
            return {"sites": [{"site": "z", "epsilon": 0.1}]}

    assert records(WithToDict()) == [{"site": "z", "epsilon": 0.1}]


def test_everything_is_escaped(fakes):
    schema = {"feature_shape": [8, 8, 1], "label": EVIL, "classes": [EVIL]}
    site = fakes.SiteInfo(EVIL, schema, EVIL, EVIL, {EVIL: EVIL})
    outputs = [
        sites_html([site]),
        runs_html([fakes.RunSummary(EVIL, EVIL, EVIL, 1, 2)]),
        budget_html({EVIL: {"epsilon_spent": 1.0, "epsilon_cap": 2.0}}),
        privacy_html([{"site": EVIL, "epsilon": 1.0, "cap": 2.0, "delta": 1e-5}]),
        audit_html([{"index": 0, "kind": EVIL, "note": EVIL}]),
        refusals_html([fakes.Refusal(EVIL, EVIL, EVIL)]),
        rounds_html([fakes.RoundResult(1, [EVIL], [], 1.0, 0.5, {EVIL: 1.0})]),
        html_table([{EVIL: EVIL}], caption=EVIL),
        svg_line_chart({EVIL: [1.0, 2.0]}, title=EVIL, x_label=EVIL),
    ]
    for out in outputs:
        assert "<script>" not in out and "&lt;script&gt;" in out


def test_sites_table(fakes):
    html = sites_html(
        [
            fakes.SiteInfo(
                "h1", {"features": ["a", "b"], "label": "y", "classes": [0, 1]}, "~500", "online", {"epsilon_cap": 5.0}
            )
        ]
    )
    assert "x: 8" not in html and "x: 2 features" in html and "label: y" in html and "epsilon_cap=5" in html
    assert "Sites (1)" in html and "no sites enrolled" in sites_html([])


def test_budget_and_privacy_bars(fakes):
    html = budget_html(fakes.BudgetReport({"a": fakes.SiteBudget("a", 2.5, 1e-5, 3.0, 0.5)}))
    assert "2.5 / 3 (83%)" in html and "#ff9f0e" in html and "0.5" in html
    html = privacy_html({"sites": {"a": {"epsilon": 1.0, "cap": 4.0, "delta": 1e-5}}})
    assert "1 / 4 (25%)" in html and "3" in html  # remaining computed when absent
    assert "#d62728" in epsilon_bar_html(5.0, 4.0) and epsilon_bar_html(1.0, None) == "1 / —"


def test_runs_and_audit(fakes):
    html = runs_html([fakes.RunSummary("run-1", "f" * 64, "running", 2, 5)])
    assert "2 / 5" in html and "f" * 12 in html and "f" * 13 not in html
    html = audit_html([{"index": 3, "kind": "run_requested", "run_id": "r", "hash": "h" * 64, "signature": "s" * 80}])
    assert "run_requested" in html and "h" * 64 not in html and "s" * 80 not in html and "&quot;run_id&quot;" in html
    assert ">index<" in html and ">3<" in html
    # the analyst's tail has no chain index (hidden tuning trials would show as gaps): no blank index column
    tail = audit_html([{"kind": "run_requested", "time": 1.0, "writer": "coordinator", "fields": {"run_id": "r"}}])
    assert "run_requested" in tail and ">index<" not in tail and ">kind<" in tail
    text = Table([{"kind": "run_requested", "writer": "coordinator"}], "audit").to_text()
    assert "run_requested" in text and "index" not in text


def test_format_value_and_text_table():
    assert format_value(None) == "—" and format_value(True) == "yes" and format_value(1e-5) == "1e-05"
    assert format_value(3.14159) == "3.142" and format_value(float("inf")) == "∞" and format_value([1, 2]) == "1, 2"
    text = text_table([{"site": "a", "eps": 1.0}, {"site": "bb", "eps": 2.5}])
    assert text.splitlines() == ["site  eps", "----  ---", "a     1", "bb    2.5"]
    assert "(none)" in text_table([], ["site"])


def test_table_is_the_list_and_renders(fakes):
    sites = [fakes.SiteInfo("a", {}, "1", "online", {})]
    table = Table(sites, "sites")
    assert table == sites and table[0].name == "a"
    assert "<table" in table._repr_html_() and table.to_text().splitlines()[:2] == [
        "Sites (1)",
        "name  status  record_count  schema  policy",
    ]
    with pytest.raises(ValueError):
        Table([], "nope")


def test_chart_shapes():
    svg = svg_line_chart({"loss": [3.0, None, 2.0, 1.0], "acc": []}, title="t", y_min=0, y_max=4)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 1 and svg.count("<polyline") == 1  # the gap splits the line
    assert "waiting" in svg_line_chart({"loss": []})
    assert "<polyline" in svg_line_chart({"flat": [1.0, 1.0, 1.0]})  # constant series still draws
    with pytest.raises(ValueError):
        svg_line_chart({}, width=10)
    partial = svg_line_chart({"loss": [3.0, 2.0]}, x_count=6)
    assert ">6</text>" in partial  # the x axis already runs to the last round


def test_run_html(fakes):
    room = fakes.FakeRoom()
    run = room.train("spec", rounds=2)
    run.emit(fakes.RoundResult(1, ["alpha"], [], 1.5, 0.6, {"alpha": 1.0}))
    run.refusals = [fakes.Refusal("beta", "epsilon_cap", "too much")]
    run.rounds_done = 1
    run.finish("failed", error=EVIL)
    html = run_html(run)
    assert "Run run-1" in html and "failed" in html and "round 1 / 2" in html
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "Rounds" in html and "Privacy report" in html and "too much" in html
