"""The query plots (fedjax_room.jupyter.query_plots): error bars at the stated interval, a site-by-label heatmap.

A unit test of one piece: the result is a stand-in with QueryResult's shape (the real one is exercised on
a demo room in test_query_real.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedjax_room.jupyter.query_plots import plot_query, svg_bars, svg_heatmap


@dataclass
class Result:
    kind: str
    total: np.ndarray
    labels: list[str]
    noise_std: np.ndarray
    per_site: dict[str, np.ndarray] = field(default_factory=dict)
    feature: str | None = None
    epsilon: float = 1.0

    def ci(self, level: float = 0.95):
        z = {0.95: 1.959964, 0.5: 0.674490}[level]
        return self.total - z * self.noise_std, self.total + z * self.noise_std

    def site_ci(self, site: str, level: float = 0.95):
        return self.per_site[site] - 2.0, self.per_site[site] + 2.0


def _errorbars(svg: str) -> list[tuple[float, float]]:
    """The (y top, y bottom) pixel span of each error bar's vertical line."""
    spans = re.findall(r'<g class="fjr-q-errorbar"[^>]*><line x1="[^"]+" x2="[^"]+" y1="([^"]+)" y2="([^"]+)"/>', svg)
    return [tuple(sorted((float(a), float(b)))) for a, b in spans]


def test_count_by_label_has_a_bar_and_an_error_bar_per_label_and_a_site_by_label_heatmap():
    result = Result(
        kind="count_by_label",
        total=np.array([120.0, 30.0]),
        labels=["benign", "malignant"],
        noise_std=np.array([4.0, 4.0]),
        per_site={"site-a": np.array([100.0, 5.0]), "site-b": np.array([20.0, 25.0])},
    )
    plot = plot_query(result)
    assert list(plot.charts) == ["total", "per_site"]
    total = plot.charts["total"]
    assert total.count('class="fjr-q-bar"') == 2 and len(_errorbars(total)) == 2
    heat = plot.charts["per_site"]
    assert heat.count('class="fjr-q-cell"') == 4  # 2 sites x 2 labels, each value written in
    for text in ("site-a", "site-b", "benign", "malignant", ">100<", ">25<"):
        assert text in heat
    html = plot._repr_html_()
    assert "95% confidence interval" in html and html.count("<svg") == 2


def test_a_wider_interval_draws_a_longer_error_bar():
    result = Result(kind="count", total=np.array([50.0]), labels=["count"], noise_std=np.array([5.0]))
    (narrow,) = _errorbars(plot_query(result, level=0.5).charts["total"])
    (wide,) = _errorbars(plot_query(result, level=0.95).charts["total"])
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])


def test_under_secure_aggregation_only_the_total_is_drawn():
    result = Result(kind="histogram", total=np.arange(32.0), labels=[f"b{i}" for i in range(32)], noise_std=np.ones(32))
    plot = plot_query(result)
    assert list(plot.charts) == ["total"]
    assert plot.charts["total"].count('class="fjr-q-bar"') == 32 and len(_errorbars(plot.charts["total"])) == 32


def test_a_mean_is_points_not_bars_and_one_value_per_site_is_bars_per_site():
    result = Result(
        kind="mean",
        total=np.array([41.5]),
        labels=["age"],
        noise_std=np.array([0.8]),
        per_site={"north": np.array([40.0]), "south": np.array([43.0])},
        feature="age",
    )
    plot = plot_query(result)
    assert 'class="fjr-q-point"' in plot.charts["total"] and 'class="fjr-q-bar"' not in plot.charts["total"]
    assert plot.charts["per_site"].count('class="fjr-q-point"') == 2 and "north" in plot.charts["per_site"]
    assert len(_errorbars(plot.charts["per_site"])) == 2  # each site's own interval (site_ci)


def test_labels_are_escaped_and_non_finite_values_are_left_out():
    svg = svg_bars(["<script>", "b"], [float("nan"), 2.0], lo=[None, 1.0], hi=[None, float("inf")])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count('class="fjr-q-bar"') == 1 and _errorbars(svg) == []  # an interval to infinity is not drawn
    heat = svg_heatmap(["<b>"], ["x"], [[float("nan")]])
    assert "<b>" not in heat and "—" in heat
    with pytest.raises(ValueError):
        svg_bars(["a"], [1.0, 2.0])
    with pytest.raises(ValueError):
        plot_query(Result(kind="count", total=np.ones(1), labels=["n"], noise_std=np.ones(1)), level=1.5)


def test_a_released_query_result_plots_with_its_own_intervals():
    """The analyst's QueryResult, built from what a room sends back: the total's and each site's interval."""
    from fedjax_room.analyst.queries import QueryResult, parse_query
    from fedjax_room.protocol.query_spec import QuerySpec

    spec = QuerySpec.from_dict(parse_query("count_by_label epsilon=0.5"))
    result = QueryResult(
        {
            "query": spec.to_dict(),
            "classes": ["0", "1"],
            "sites": ["a", "b"],
            "total": [30, 70],
            "per_site": {"a": [10, 40], "b": [20, 30]},
        }
    )
    plot = plot_query(result)
    lo, hi = result.ci(0.95)
    (first, _) = _errorbars(plot.charts["total"])
    assert first[1] - first[0] > 0 and (lo < result.total).all() and (result.total < hi).all()
    assert "per_site" in plot.charts and ">40<" in plot.charts["per_site"]


def test_a_histogram_is_labelled_by_its_declared_edges():
    from fedjax_room.analyst.queries import QueryResult, parse_query
    from fedjax_room.protocol.query_spec import QuerySpec

    edges = ",".join(f"{x:g}" for x in np.linspace(0, 1, 33))
    spec = QuerySpec.from_dict(parse_query(f"histogram pixel_3_4 bins={edges} epsilon=1 secure"))
    result = QueryResult({"query": spec.to_dict(), "classes": ["0", "1"], "secure": True, "total": [10] * 32})
    svg = plot_query(result).charts["total"]
    ticks = re.findall(r'text-anchor="middle">([^<]*)</text>', svg)
    assert {"0", "0.5", "1"} <= set(ticks) and not any(t.startswith("[") for t in ticks)  # edges, not intervals
    assert svg.count('class="fjr-q-bar"') == 32
