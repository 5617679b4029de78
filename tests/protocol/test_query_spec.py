"""The query spec: declared bins, bounds and keys are required and bounded; finishing and intervals are honest."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.analyst.queries import QueryResult, parse_query
from fedjax_room.errors import ConfigError
from fedjax_room.protocol.query_spec import (
    FIXED_UNITS,
    MAX_BINS,
    MAX_KEYS,
    QUANTILE_GRID,
    QuerySpec,
    dlaplace_variance,
    finish,
    layout,
)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ({"kind": "histogram", "feature": "x", "epsilon": 1}, "bins"),
        ({"kind": "mean", "feature": "x", "epsilon": 1}, "bounds"),
        ({"kind": "sum", "feature": "x", "epsilon": 1}, "bounds"),
        ({"kind": "quantiles", "feature": "x", "epsilon": 1}, "bounds"),
        ({"kind": "count", "epsilon": 1, "by": "sex"}, "keys"),
        ({"kind": "count", "epsilon": 1, "keys": [0, 1]}, "by"),
        ({"kind": "count"}, "epsilon"),
        ({"kind": "count", "epsilon": 0}, "epsilon"),
        ({"kind": "count", "epsilon": float("nan")}, "epsilon"),
        ({"kind": "count", "epsilon": 1e9}, "largest"),
        ({"kind": "histogram", "feature": "x", "bins": [0, 0], "epsilon": 1}, "increasing"),
        ({"kind": "histogram", "feature": "x", "bins": list(range(MAX_BINS + 3)), "epsilon": 1}, "at most"),
        ({"kind": "count", "epsilon": 1, "by": "k", "keys": list(range(MAX_KEYS + 1))}, "at most"),
        ({"kind": "mean", "feature": "x", "bounds": [5, 1], "epsilon": 1}, "low < high"),
        ({"kind": "quantiles", "feature": "x", "bounds": [0, 1], "quantiles": [1.5], "epsilon": 1}, r"\[0, 1\]"),
        ({"kind": "select", "epsilon": 1}, "kind"),
        ({"kind": "count", "epsilon": 1, "rows": True}, "unknown"),
        ({"kind": "count_by_label", "epsilon": 1, "by": "sex", "keys": [0]}, "by="),
    ],
)
def test_undeclared_or_unbounded_queries_are_refused(query, match):
    with pytest.raises(ConfigError, match=match):
        QuerySpec.from_dict(query)


def test_a_spec_round_trips_and_its_layout_is_bounded():
    spec = QuerySpec.from_dict(
        {"kind": "mean", "feature": "age", "bounds": [0, 100], "epsilon": 1, "by": "sex", "keys": [0, 1]}
    )
    assert QuerySpec.from_dict(spec.to_dict()) == spec
    blocks = layout(spec, classes=2)
    assert [(b.name, b.size, b.sensitivity, b.epsilon) for b in blocks] == [
        ("sum", 2, FIXED_UNITS, 0.5),
        ("count", 2, 1, 0.5),
    ]
    quant = QuerySpec.from_dict({"kind": "quantiles", "feature": "age", "bounds": [0, 100], "epsilon": 2})
    assert layout(quant, classes=2)[0].size == QUANTILE_GRID and quant.quantiles == (0.25, 0.5, 0.75)


def test_parse_query_reads_the_one_line_form():
    assert parse_query("count_by_label epsilon=0.5") == {"kind": "count_by_label", "epsilon": 0.5}
    assert parse_query("count by label epsilon=1") == {"kind": "count_by_label", "epsilon": 1}
    assert parse_query("histogram pixel_3 bins=0,4,8,16 epsilon=1") == {
        "kind": "histogram",
        "feature": "pixel_3",
        "bins": [0, 4, 8, 16],
        "epsilon": 1,
    }
    assert parse_query("mean age bounds=0,100 epsilon=1 by=sex keys=0,1 sites=site-a,site-b secure") == {
        "kind": "mean",
        "feature": "age",
        "bounds": [0, 100],
        "epsilon": 1,
        "by": "sex",
        "keys": [0, 1],
        "sites": ["site-a", "site-b"],
        "secure": True,
    }
    for bad, match in [
        ("", "kind"),
        ("drop table", "unknown query kind"),
        ("count epsilon=1 stray", "name=value"),
        ("count epsilon=a", "number"),
        ("count rows=1 epsilon=1", "unknown query setting"),
        ("histogram x bins=a,b epsilon=1", "numbers"),
        ("count epsilon=1 epsilon=2", "twice"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_query(bad)


def test_finish_reads_sums_means_and_quantiles_back():
    mean = QuerySpec.from_dict({"kind": "mean", "feature": "a", "bounds": [0, 10], "epsilon": 1})
    scale = mean.fixed_scale  # units per unit of the offset from the middle (5)
    # 100 records of value 7: offsets 2 each
    assert finish(mean, [200 * scale, 100], classes=1)[0] == pytest.approx(7.0)
    total = QuerySpec.from_dict({"kind": "sum", "feature": "a", "bounds": [-4, 8], "epsilon": 1})
    assert finish(total, [10 * total.fixed_scale], classes=1)[0] == pytest.approx(10.0)
    quant = QuerySpec.from_dict(
        {"kind": "quantiles", "feature": "a", "bounds": [0, 128], "quantiles": [0.5], "epsilon": 1}
    )
    counts = np.ones(QUANTILE_GRID)
    assert finish(quant, counts, classes=1)[0] == pytest.approx(64.0)


def test_discrete_laplace_variance_matches_samples():
    rng = np.random.default_rng(0)
    t = np.exp(-1 / 3.0)
    samples = rng.geometric(1 - t, 200_000) - rng.geometric(1 - t, 200_000)
    assert samples.var() == pytest.approx(float(dlaplace_variance(3.0)), rel=0.03)


def _result(spec: QuerySpec, total, shares=1.0, per_site=None):
    return QueryResult(
        {
            "query": spec.to_dict(),
            "total": list(total),
            "per_site": per_site or {},
            "noise_shares": shares,
            "sites": ["a"],
            "classes": ["0", "1"],
        }
    )


def test_count_intervals_cover_the_truth_at_their_level():
    spec = QuerySpec.from_dict({"kind": "count", "epsilon": 0.5})
    rng = np.random.default_rng(1)
    t = np.exp(-0.5)
    hits = 0
    for _ in range(2000):
        noise = sum(rng.geometric(1 - t) - rng.geometric(1 - t) for _ in range(3))
        lo, hi = _result(spec, [1000 + noise], shares=3).ci(0.9)
        hits += int(lo[0] <= 1000 <= hi[0])
    assert hits / 2000 >= 0.88


def test_query_result_views():
    spec = QuerySpec.from_dict({"kind": "count_by_label", "epsilon": 1})
    result = _result(spec, [10, 20], shares=2, per_site={"a": [4, 9], "b": [6, 11]})
    assert result.labels == ["0", "1"] and result.total.tolist() == [10, 20]
    assert result.per_site["b"].tolist() == [6, 11]
    assert np.all(result.noise_std > 0)
    assert [r["label"] for r in result.to_table()] == ["0", "1"]
    d = result.to_dict()
    assert d["kind"] == "count_by_label" and len(d["ci95"]) == 2 and d["per_site"]["a"] == [4.0, 9.0]
    html = result._repr_html_()
    assert "95% CI" in html and "<td><b>10</b></td>" in html
    with pytest.raises(ConfigError, match="wrong length"):
        _result(spec, [1, 2, 3])


def test_quantile_intervals_cover_discrete_data():
    spec = QuerySpec.from_dict(
        {"kind": "quantiles", "feature": "a", "bounds": [0, 16], "quantiles": [0.25, 0.5, 0.9], "epsilon": 1}
    )
    rng = np.random.default_rng(2)
    values = np.minimum(rng.geometric(0.2, 1800) - 1, 16).astype(float)  # integers, many zeros, a pile at 16
    truth = np.quantile(values, spec.quantiles)
    edges = np.linspace(0, 16, QUANTILE_GRID + 1)
    counts = np.bincount(
        np.clip(np.searchsorted(edges, values, side="right") - 1, 0, QUANTILE_GRID - 1), minlength=QUANTILE_GRID
    )
    t = np.exp(-1.0)
    hits = 0
    for _ in range(300):
        noise = sum(rng.geometric(1 - t, QUANTILE_GRID) - rng.geometric(1 - t, QUANTILE_GRID) for _ in range(3))
        result = _result(spec, counts + noise, shares=3)
        lo, hi = result.ci(0.95)
        assert np.all(lo <= result.total) and np.all(result.total <= hi)
        hits += int(np.sum((lo <= truth) & (truth <= hi)))
    assert hits / 900 >= 0.9


@pytest.mark.parametrize(("scale", "shares"), [(1.0, 1.0), (1.0, 3.0), (2.0, 1.5), (0.5, 2.0)])
def test_count_intervals_are_the_exact_smallest_ones(scale, shares):
    from fedjax_room.protocol.query_spec import _exact_halfwidth

    rng = np.random.default_rng(4)
    p = 1 - np.exp(-1 / scale)
    noise = rng.negative_binomial(shares, p, 400_000) - rng.negative_binomial(shares, p, 400_000)
    h = _exact_halfwidth(scale, shares, 0.95)
    assert np.mean(np.abs(noise) <= h) >= 0.948  # at least the level (up to sampling)
    assert np.mean(np.abs(noise) <= h - 1) < 0.95  # and the smallest integer that is
