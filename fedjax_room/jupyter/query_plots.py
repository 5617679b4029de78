"""Plots of a DP query's result (``room.query``, ``%room query``): bars with confidence intervals, a heatmap.

:func:`plot_query` takes a :class:`~fedjax_room.analyst.queries.QueryResult` (or anything of its shape:
``kind``, ``feature``, ``epsilon``, ``labels``, ``total``, ``per_site``, ``noise_std``, ``ci(level)``) and
returns a :class:`QueryPlot`: inline SVG strings (no plotting dependency, like :mod:`.chart`) that render in
any notebook front end, in nbconvert's HTML export and on GitHub.

* the released total per label as bars (a histogram's bins side by side; a mean's or quantile's as points),
  each with its confidence interval as an error bar (the interval the result itself states, ``ci(level)``);
* where the sites answered one by one (not under secure aggregation), the per-site values: a heatmap of
  site by label (count by label: the label skew between sites at a glance), or bars per site when there is
  a single value per site.

Every label is escaped; a value that is not finite is left out (never drawn as a bar to infinity).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedjax_room.jupyter.chart import PALETTE

__all__ = ["QueryPlot", "svg_bars", "svg_heatmap", "plot_query"]

#: Kinds drawn as points with error bars (a location, not an amount): a bar from zero would mislead.
POINT_KINDS = frozenset({"mean", "quantiles"})


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.4g}"


def _short(text: str, limit: int = 14) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _title(width: int, y: int, title: str) -> str:
    return f'<text x="{width / 2:.1f}" y="{y}" text-anchor="middle" font-size="12">{html.escape(title)}</text>'


def svg_bars(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    lo: Sequence[float | None] | None = None,
    hi: Sequence[float | None] | None = None,
    title: str = "",
    y_label: str = "",
    points: bool = False,
    contiguous: bool = False,
    edges: Sequence[float] | None = None,
    colour: str = PALETTE[0],
    width: int = 0,
    height: int = 220,
) -> str:
    """Bars (or points) with optional error bars ``lo..hi``, one per label, as an SVG string.

    ``contiguous`` draws the bars edge to edge (a histogram's bins; ``edges``, one more than the labels, are
    then written at the bars' borders instead of the labels under them); ``points`` draws a dot per label
    instead of a bar from zero (a mean, a quantile). ``None`` or NaN leaves a label empty.
    """
    n = len(labels)
    if len(values) != n or (lo is not None and len(lo) != n) or (hi is not None and len(hi) != n):
        raise ValueError("labels, values and the interval must have the same length")
    width = width or max(240, min(900, 60 + 28 * n))
    left, right, top, bottom = 52, 10, 22 if title else 10, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    vals = [_num(v) for v in values]
    los = [_num(v) for v in lo] if lo is not None else [None] * n
    his = [_num(v) for v in hi] if hi is not None else [None] * n
    seen = [v for v in [*vals, *los, *his] if v is not None]
    y_lo = min(seen) if seen else 0.0
    y_hi = max(seen) if seen else 1.0
    if not points:
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
    if y_hi <= y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    else:
        pad = (y_hi - y_lo) * 0.06
        y_hi += pad
        if points or y_lo < 0:
            y_lo -= pad

    def sy(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, y_lo), y_hi) - y_lo) / (y_hi - y_lo))

    slot = plot_w / max(n, 1)
    bar_w = slot if contiguous else slot * 0.7
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title or "chart")}" '
        'class="fjr-query-chart" style="font-family:sans-serif;font-size:10px">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    if title:
        parts.append(_title(width, 14, title))
    for frac in (0.0, 0.5, 1.0):
        value = y_lo + (y_hi - y_lo) * frac
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{html.escape(_tick(value))}</text>')
    if y_lo < 0 < y_hi:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#999"/>')
    if edges is not None and len(edges) != n + 1:
        raise ValueError("a histogram has one more edge than bins")
    ticks = [_tick(float(e)) for e in edges] if edges is not None else [_short(str(label)) for label in labels]
    widest = 6 * max((len(t) for t in ticks), default=1) + 8  # px, at 10px sans-serif
    every = max(1, math.ceil(len(ticks) * widest / max(plot_w, 1)))  # thin the x labels so they do not overlap
    for i, label in enumerate(labels):
        cx = left + slot * (i + 0.5)
        value = vals[i]
        if value is not None:
            if points:
                parts.append(
                    f'<circle class="fjr-q-point" cx="{cx:.1f}" cy="{sy(value):.1f}" r="3.5" fill="{colour}">'
                    f"<title>{html.escape(str(label))}: {html.escape(_tick(value))}</title></circle>"
                )
            else:
                y0, y1 = sorted((sy(0.0), sy(value)))
                parts.append(
                    f'<rect class="fjr-q-bar" x="{cx - bar_w / 2:.1f}" y="{y0:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                    f'height="{max(y1 - y0, 0.5):.1f}" fill="{colour}" fill-opacity="0.75">'
                    f"<title>{html.escape(str(label))}: {html.escape(_tick(value))}</title></rect>"
                )
        if los[i] is not None and his[i] is not None:
            ya, yb = sy(float(los[i])), sy(float(his[i]))  # type: ignore[arg-type]
            cap = min(6.0, bar_w / 3)
            parts.append(
                f'<g class="fjr-q-errorbar" stroke="#222" stroke-width="1.2">'
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{ya:.1f}" y2="{yb:.1f}"/>'
                f'<line x1="{cx - cap:.1f}" x2="{cx + cap:.1f}" y1="{ya:.1f}" y2="{ya:.1f}"/>'
                f'<line x1="{cx - cap:.1f}" x2="{cx + cap:.1f}" y1="{yb:.1f}" y2="{yb:.1f}"/></g>'
            )
        if edges is None and i % every == 0:
            parts.append(
                f'<text x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="middle">{html.escape(ticks[i])}</text>'
            )
    if edges is not None:
        for j, tick in enumerate(ticks):
            if j % every == 0 or j == len(ticks) - 1:
                x = left + slot * j
                parts.append(
                    f'<text x="{x:.1f}" y="{top + plot_h + 12}" text-anchor="middle">{html.escape(tick)}</text>'
                )
    if y_label:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#666">'
            f"{html.escape(y_label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    *,
    title: str = "",
    fmt: str = "{:.0f}",
    cell: int = 34,
) -> str:
    """A heatmap of ``matrix[row][column]`` (e.g. site by label), each cell with its value written in."""
    if len(matrix) != len(rows) or any(len(r) != len(columns) for r in matrix):
        raise ValueError("the matrix must have one row per row label and one value per column label")
    left, top = 70, (34 if title else 18)
    cell_w = max(cell, min(60, 9 * max((len(_short(str(c), 8)) for c in columns), default=1)))
    width, height = left + cell_w * len(columns) + 10, top + cell * len(rows) + 10
    vals = [[_num(v) for v in r] for r in matrix]
    finite = [v for r in vals for v in r if v is not None]
    v_lo, v_hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (v_hi - v_lo) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title or "heatmap")}" '
        'class="fjr-query-heatmap" style="font-family:sans-serif;font-size:10px">'
    ]
    if title:
        parts.append(_title(width, 13, title))
    for j, column in enumerate(columns):
        x = left + cell_w * (j + 0.5)
        short = html.escape(_short(str(column), 8))
        parts.append(f'<text x="{x:.1f}" y="{top - 4}" text-anchor="middle">{short}</text>')
    for i, row in enumerate(rows):
        y = top + cell * i
        parts.append(
            f'<text x="{left - 4}" y="{y + cell / 2 + 3:.1f}" text-anchor="end">{html.escape(_short(str(row)))}</text>'
        )
        for j, value in enumerate(vals[i]):
            x = left + cell_w * j
            if value is None:
                fill, text, ink = "#f4f4f4", "—", "#999"
            else:
                t = (value - v_lo) / span
                # white -> the palette's blue
                r, g, b = (int(255 + (c - 255) * t) for c in (31, 119, 180))
                fill, text, ink = f"rgb({r},{g},{b})", fmt.format(value), "#fff" if t > 0.55 else "#222"
            parts.append(
                f'<rect class="fjr-q-cell" x="{x}" y="{y}" width="{cell_w - 1}" height="{cell - 1}" fill="{fill}">'
                f"<title>{html.escape(str(row))} · {html.escape(str(columns[j]))}: {html.escape(text)}</title></rect>"
            )
            parts.append(
                f'<text x="{x + cell_w / 2:.1f}" y="{y + cell / 2 + 3:.1f}" text-anchor="middle" fill="{ink}">'
                f"{html.escape(text)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


class QueryPlot:
    """The plots of one query result: ``charts`` maps a name (``total``, ``per_site``) to an SVG string.

    Displays itself in a notebook (``_repr_html_``); ``svgs`` is the list in display order.
    """

    def __init__(self, charts: Mapping[str, str], caption: str = "") -> None:
        self.charts = dict(charts)
        self.caption = caption

    @property
    def svgs(self) -> list[str]:
        return list(self.charts.values())

    def _repr_html_(self) -> str:
        head = f'<div class="fjr-query-caption" style="font-size:12px">{html.escape(self.caption)}</div>'
        body = "".join(f'<div style="display:inline-block;vertical-align:top;margin:2px">{s}</div>' for s in self.svgs)
        return f'<div class="fjr-query-plot">{head if self.caption else ""}{body}</div>'

    def __repr__(self) -> str:
        return f"QueryPlot({', '.join(self.charts)})"


def _flat(value: Any) -> list[float | None]:
    arr = np.asarray(value, dtype=float).reshape(-1)
    return [_num(v) for v in arr]


def _labels(result: Any, n: int) -> list[str]:
    labels = [str(label) for label in (getattr(result, "labels", None) or [])]
    return labels if len(labels) == n else [str(i) for i in range(n)]


def _describe(result: Any, level: float) -> str:
    kind = str(getattr(result, "kind", "query"))
    feature = getattr(result, "feature", None)
    what = f"{kind}({feature})" if feature else kind
    eps = _num(getattr(result, "epsilon", None))
    secure = bool(getattr(result, "secure", False))
    parts = [what]
    if eps is not None:
        parts.append(f"ε = {eps:g}")
    parts.append(f"error bars: {level:.0%} confidence interval")
    if secure:
        parts.append("secure aggregation (total only)")
    return " · ".join(parts)


def plot_query(result: Any, *, level: float = 0.95) -> QueryPlot:
    """The plots of a query result: its total with error bars, and the per-site values where there are some."""
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    kind = str(getattr(result, "kind", ""))
    total = np.asarray(result.total, dtype=float)
    charts: dict[str, str] = {}
    lo, hi = result.ci(level)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    feature = getattr(result, "feature", None)
    title = f"{kind}({feature})" if feature else kind
    if total.ndim <= 1:
        values = _flat(total)
        labels = _labels(result, len(values))
        charts["total"] = svg_bars(
            labels,
            values,
            lo=_flat(lo),
            hi=_flat(hi),
            title=f"{title}: all sites",
            points=kind in POINT_KINDS,
            contiguous=kind == "histogram",
            edges=_edges(result, len(values)),
        )
    else:  # a group-by over a vector query: one row per key
        rows = [str(k) for k in (getattr(result, "keys", None) or range(total.shape[0]))]
        flat = total.reshape(total.shape[0], -1)
        columns = [str(i) for i in range(flat.shape[1])]
        charts["total"] = svg_heatmap(rows[: flat.shape[0]], columns, flat.tolist(), title=f"{title}: all sites")
    per_site: Mapping[str, Any] = getattr(result, "per_site", None) or {}
    if per_site:
        sites = list(per_site)
        matrix = [_flat(per_site[s]) for s in sites]
        width = max(len(r) for r in matrix)
        if width > 1 and all(len(r) == width for r in matrix):
            integral = kind in ("count", "count_by_label", "histogram", "missing")
            charts["per_site"] = svg_heatmap(
                sites,
                _labels(result, width),
                matrix,
                title=f"{title}: per site",
                fmt="{:.0f}" if integral else "{:.3g}",
            )
        elif width == 1:
            values = [r[0] for r in matrix]
            intervals = [_site_interval(result, s, level) for s in sites]
            charts["per_site"] = svg_bars(
                sites,
                values,
                lo=[i[0] for i in intervals],
                hi=[i[1] for i in intervals],
                title=f"{title}: per site",
                points=kind in POINT_KINDS,
                colour=PALETTE[2],
            )
    return QueryPlot(charts, caption=_describe(result, level))


def _edges(result: Any, n: int) -> list[float] | None:
    """A histogram's declared bin edges (``result.spec.bins``), if it has ``n + 1`` of them."""
    if getattr(result, "kind", "") != "histogram":
        return None
    bins = getattr(getattr(result, "spec", None), "bins", None)
    if bins is None or len(bins) != n + 1:
        return None
    return [float(b) for b in bins]


def _site_interval(result: Any, site: str, level: float) -> tuple[float | None, float | None]:
    """One site's own interval (``result.site_ci``), or none where the result cannot say."""
    site_ci = getattr(result, "site_ci", None)
    if not callable(site_ci):
        return None, None
    try:
        lo, hi = site_ci(site, level)
    except Exception:  # no per-site interval for this result: draw the value alone
        return None, None
    return _flat(lo)[0], _flat(hi)[0]
