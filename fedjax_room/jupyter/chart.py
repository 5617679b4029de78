"""A small inline SVG line chart (no plotting dependency), for the run dashboard and static exports.

:func:`svg_line_chart` takes plain numbers and returns an ``<svg>`` string that renders in any
notebook front end, in nbconvert's HTML export and on GitHub. Every label is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import TypeGuard

__all__ = ["PALETTE", "svg_line_chart"]

#: Line colours, in series order (colour-blind friendly).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def svg_line_chart(
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str = "",
    x_label: str = "round",
    width: int = 320,
    height: int = 180,
    y_min: float | None = None,
    y_max: float | None = None,
    x_start: int = 1,
    x_count: int = 0,
) -> str:
    """Render named series (one value per x step; ``None`` or NaN leaves a gap) as an SVG string.

    ``y_min``/``y_max`` fix the y range (e.g. 0..1 for accuracy); otherwise it is fitted to the data.
    x values are ``x_start, x_start + 1, ...``; ``x_count`` reserves room for that many steps (e.g. the
    run's total rounds) so a line grows across the chart as rounds arrive.
    """
    if width < 80 or height < 60:
        raise ValueError("the chart needs at least 80x60 pixels")
    left, right, top, bottom = 44, 10, 22 if title else 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [float(v) for ys in series.values() for v in ys if _finite(v)]
    n = max([len(ys) for ys in series.values()] + [x_count])
    lo = y_min if y_min is not None else (min(values) if values else 0.0)
    hi = y_max if y_max is not None else (max(values) if values else 1.0)
    if hi <= lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    elif y_min is None and y_max is None:  # fitted: keep the line off the frame
        pad = (hi - lo) * 0.06
        lo, hi = lo - pad, hi + pad

    def sx(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def sy(v: float) -> float:
        v = min(max(v, lo), hi)
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title or "chart")}" '
        'style="font-family:sans-serif;font-size:10px">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    if title:
        parts.append(
            f'<text x="{width / 2:.1f}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>'
        )
    for frac in (0.0, 0.5, 1.0):
        value = lo + (hi - lo) * frac
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{html.escape(_tick(value))}</text>')
    if n:
        ticks = sorted({0, n - 1, (n - 1) // 2})
        for i in ticks:
            parts.append(f'<text x="{sx(i):.1f}" y="{top + plot_h + 12}" text-anchor="middle">{x_start + i}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#666">'
        f"{html.escape(x_label)}</text>"
    )
    legend_x = left + 6
    for k, (name, ys) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(ys):
            if _finite(v):
                segment.append(f"{sx(i):.1f},{sy(float(v)):.1f}")
            elif segment:
                segments.append(segment)
                segment = []
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{" ".join(seg)}"/>')
        if len(series) > 1 or not title:
            ly = top + 12 + 12 * k
            parts.append(f'<line x1="{legend_x}" x2="{legend_x + 12}" y1="{ly - 3}" y2="{ly - 3}" stroke="{colour}"/>')
            parts.append(f'<text x="{legend_x + 16}" y="{ly}">{html.escape(str(name))}</text>')
    if not values:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" fill="#999">'
            "waiting for the first round…</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
