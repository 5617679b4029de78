"""How the analyst's results render: pure functions from plain data to HTML (and text) strings.

Each ``*_html`` function takes what the analyst API returns — a list of dataclasses or dicts, a mapping
``{site: record}``, or an object with ``to_dict()`` — and returns an HTML string with every value
escaped, so a site name or a policy field can never inject markup. They are what the analyst types
(:mod:`.results`, :class:`~fedjax_room.analyst.run.Run`) use as ``_repr_html_``, what ``%room
sites|runs|budget|audit`` show (through :class:`fedjax_room.jupyter.display.Table`), and what renders in
static HTML exports. No notebook machinery is needed: they work in any Python process.

:func:`records` is the one normaliser all of them share; :func:`text_table` is the plain-text twin
used for ``text/plain`` output (papermill logs, terminals); :data:`VIEWS` names each table view.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard

__all__ = [
    "VIEWS",
    "View",
    "audit_html",
    "budget_html",
    "estimate_html",
    "epsilon_bar_html",
    "format_value",
    "html_table",
    "privacy_html",
    "records",
    "refusals_html",
    "rounds_html",
    "run_html",
    "runs_html",
    "sites_html",
    "text_table",
    "view_text",
]

_STYLE = (
    "<style>.fjr-table{border-collapse:collapse;font-size:12px;margin:4px 0}"
    ".fjr-table th,.fjr-table td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
    ".fjr-table th{background:#f4f4f4}.fjr-table caption{text-align:left;font-weight:bold;padding:2px 0}"
    ".fjr-num{text-align:right!important;font-variant-numeric:tabular-nums}</style>"
)


def _record(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    if hasattr(item, "_asdict"):
        return dict(item._asdict())
    if hasattr(item, "to_dict") and callable(item.to_dict):
        data = item.to_dict()
        if isinstance(data, Mapping):
            return dict(data)
    if hasattr(item, "__dict__"):
        return {k: v for k, v in vars(item).items() if not k.startswith("_")}
    return {"value": item}


def _is_record_like(value: Any) -> bool:
    return isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def records(data: Any, *, key: str = "site") -> list[dict[str, Any]]:
    """Normalise what an analyst call returns into a list of flat dicts.

    Accepts ``None``; a list/tuple of dataclasses, named tuples, dicts or plain objects; a mapping
    ``{name: record}`` (the name goes under ``key``); a dataclass or object with ``to_dict()`` whose
    ``sites`` field holds either of those; or a single record (one row).
    """
    if data is None:
        return []
    if not isinstance(data, Mapping | list | tuple):
        if dataclasses.is_dataclass(data) and not isinstance(data, type):
            data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        elif hasattr(data, "to_dict") and callable(data.to_dict):
            data = data.to_dict()
        elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
            data = list(data)
        else:
            data = _record(data)
    if isinstance(data, Mapping):
        inner = data.get("sites")
        if (
            isinstance(inner, Mapping | list | tuple)
            and inner
            and all(_is_record_like(v) for v in (inner.values() if isinstance(inner, Mapping) else inner))
        ):
            return records(inner, key=key)
        if data and all(_is_record_like(v) for v in data.values()):
            return [{key: name, **_record(value)} for name, value in data.items()]
        return [dict(data)]
    return [_record(item) for item in data]


def format_value(value: Any) -> str:
    """A short human string for one cell (floats to 4 significant digits, ``None`` as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(format_value(v) for v in value)
    if hasattr(value, "tolist"):  # numpy scalars and small arrays
        return format_value(value.tolist())
    return str(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    caption: str = "",
    cell_html: Mapping[str, Callable[[Mapping[str, Any]], str]] | None = None,
    empty: str = "nothing to show",
) -> str:
    """An escaped HTML table. ``cell_html`` maps a column to a function returning *trusted* cell HTML."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    headers = headers or {}
    cell_html = cell_html or {}
    out = [_STYLE, '<table class="fjr-table">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>")
    out.extend(f"<th>{html.escape(headers.get(c, c.replace('_', ' ')))}</th>" for c in cols)
    out.append("</tr></thead><tbody>")
    if not rows:
        out.append(f'<tr><td colspan="{max(len(cols), 1)}"><i>{html.escape(empty)}</i></td></tr>')
    for row in rows:
        out.append("<tr>")
        for c in cols:
            if c in cell_html:
                out.append(f"<td>{cell_html[c](row)}</td>")
            else:
                value = row.get(c)
                cls = ' class="fjr-num"' if _is_number(value) else ""
                out.append(f"<td{cls}>{html.escape(format_value(value))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, caption: str = "") -> str:
    """The plain-text twin of :func:`html_table` (fixed-width columns)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    cells = [[format_value(row.get(c)) for c in cols] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = [caption] if caption else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def epsilon_bar_html(spent: float | None, cap: float | None, *, width: int = 120) -> str:
    """A small inline bar: epsilon spent against the cap, green under 80%, amber under 100%, red past it."""
    if not _is_number(spent) or not _is_number(cap) or not cap or cap <= 0 or math.isinf(cap):
        return html.escape(f"{format_value(spent)} / {format_value(cap)}")
    frac = max(0.0, float(spent) / float(cap))
    colour = "#2ca02c" if frac < 0.8 else "#ff9f0e" if frac < 1.0 else "#d62728"
    fill = min(frac, 1.0) * width
    label = html.escape(f"{format_value(float(spent))} / {format_value(float(cap))} ({frac:.0%})")
    return (
        f'<div title="{label}" style="display:inline-block;width:{width}px;height:10px;background:#eee;'
        f'border-radius:3px;vertical-align:middle"><div style="width:{fill:.1f}px;height:10px;'
        f'background:{colour};border-radius:3px"></div></div> <span>{label}</span>'
    )


def _first(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def _schema_summary(schema: Any) -> str:
    if not isinstance(schema, Mapping):
        return format_value(schema)
    parts = []
    shape = schema.get("feature_shape")
    features = schema.get("features")
    if shape:
        parts.append(f"x: {'×'.join(str(s) for s in shape)}")
    elif features:
        parts.append(f"x: {len(features)} features")
    if schema.get("label"):
        parts.append(f"label: {schema['label']}")
    classes = schema.get("classes")
    if classes:
        shown = ", ".join(str(c) for c in list(classes)[:6]) + (", …" if len(classes) > 6 else "")
        parts.append(f"classes: {shown}")
    return "; ".join(parts) if parts else format_value(dict(schema))


def _site_rows(sites: Any) -> list[dict[str, Any]]:
    rows = records(sites, key="name")
    for row in rows:
        row["schema"] = _schema_summary(row.get("schema"))
    return rows


def _run_rows(runs: Any) -> list[dict[str, Any]]:
    rows = records(runs, key="id")
    for row in rows:
        if isinstance(row.get("spec_hash"), str):
            row["spec_hash"] = row["spec_hash"][:12]
        row["progress"] = f"{format_value(row.get('rounds_done'))} / {format_value(row.get('rounds'))}"
        waiting = row.get("waiting")
        if waiting and isinstance(waiting, list | tuple):  # approval = "manual" at these sites
            row["status"] = f"{row.get('status', '')}: waiting for approval by {', '.join(map(str, waiting))}"
    return rows


def _budget_rows(report: Any) -> list[dict[str, Any]]:
    rows = records(report)
    for row in rows:
        row["epsilon"] = _first(row, "epsilon_spent", "epsilon", "spent")
        row["cap"] = _first(row, "epsilon_cap", "cap")
        runs = row.get("runs")
        if isinstance(runs, Mapping):  # a site's per-run epsilons (budget reports)
            row["runs"] = len(runs)
            row["sum of runs"] = float(sum(float(v) for v in runs.values())) if runs else None
        if row.get("remaining") is None and _is_number(row["epsilon"]) and _is_number(row["cap"]):
            row["remaining"] = max(0.0, float(row["cap"]) - float(row["epsilon"]))
    return rows


def _budget_notes(report: Any) -> list[str]:
    """Per site with two runs or more: the composed epsilon against the sum of the runs' epsilons."""
    notes = getattr(report, "notes", None)
    return list(notes) if isinstance(notes, list | tuple) else []


def _estimate_rows(report: Any) -> list[dict[str, Any]]:
    rows = records(report)
    for row in rows:
        status = row.get("status")
        if status != "answered":
            row["verdict"] = str(status or "")
        elif row.get("accept"):
            row["verdict"] = "accepts" + (" after approval" if row.get("approval") == "waits" else "")
            if row.get("cut_short"):  # fixed noise: it stops at the round that would pass its cap
                row["verdict"] += ", stops at its cap"
        else:
            row["verdict"] = f"refuses ({row.get('reason') or 'refused'})"
        row["planned"] = row.get("epsilon_planned")
        row["after"] = row.get("ledger_after")
        row["change"] = row.get("option") or ""
    return rows


def _estimate_notes(report: Any) -> list[str]:
    out = [e.explain() for e in getattr(report, "refusing", [])]
    problem = report.problem() if callable(getattr(report, "problem", None)) else ""
    if problem:
        out.append("the run cannot start as it is: room.train would refuse it at once")
    return out


def _round_rows(history: Any) -> list[dict[str, Any]]:
    rows = records(history)
    for row in rows:
        eps = row.get("epsilon")
        if isinstance(eps, Mapping) and eps:
            row["max ε"] = max(float(v) for v in eps.values())
        if row.get("accuracy") is not None and row.get("accuracy_std") is not None:  # the release's noise scale
            row["± (1 sd)"] = row["accuracy_std"]
        defence = row.get("defence")
        if isinstance(defence, Mapping):  # poisoning defence: flagged (and excluded) sites
            flagged = sorted(defence.get("flagged") or {})
            excluded = list(defence.get("excluded") or ())
            row["flagged"] = ", ".join(flagged + [f"{s} (excluded)" for s in excluded if s not in flagged])
    return rows


#: Audit keys shown in their own columns or never shown (chain hashes, signatures, format version).
_AUDIT_HIDDEN = frozenset(
    {"index", "seq", "kind", "time", "ts", "timestamp", "writer", "prev", "prev_hash", "hash", "sig", "signature", "v"}
)


def _audit_rows(entries: Any) -> list[dict[str, Any]]:
    rows = records(entries)
    for row in rows:
        row.setdefault("index", _first(row, "seq", "i"))
        row.setdefault("time", _first(row, "ts", "timestamp"))
        inner = row.get("fields")
        fields = dict(inner) if isinstance(inner, Mapping) else {k: v for k, v in row.items() if k not in _AUDIT_HIDDEN}
        row["fields"] = json.dumps(fields, sort_keys=True, default=str)
    return rows


def _spent_cell(row: Mapping[str, Any]) -> str:
    return epsilon_bar_html(row.get("epsilon"), row.get("cap"))


@dataclasses.dataclass(frozen=True)
class View:
    """One table view: how to turn data into rows, which columns, caption and empty text."""

    rows: Callable[[Any], list[dict[str, Any]]]
    columns: tuple[str, ...]
    caption: str
    empty: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cell_html: Mapping[str, Callable[[Mapping[str, Any]], str]] = dataclasses.field(default_factory=dict)
    #: lines shown under the table (e.g. the budget's composition note)
    notes: Callable[[Any], list[str]] | None = None
    #: columns left out when no row has a value for them, rather than shown blank
    optional: frozenset[str] = frozenset()

    def _notes(self, data: Any) -> list[str]:
        return [str(n) for n in (self.notes(data) if self.notes is not None else []) if n]

    def _columns(self, rows: list[dict[str, Any]]) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.optional or any(row.get(c) is not None for row in rows))

    def html(self, data: Any) -> str:
        rows = self.rows(data)
        caption = self.caption.format(n=len(rows))
        table = html_table(
            rows, self._columns(rows), headers=self.headers, caption=caption, cell_html=self.cell_html, empty=self.empty
        )
        notes = "".join(f'<div class="fjr-note"><i>{html.escape(n)}</i></div>' for n in self._notes(data))
        return table + notes

    def text(self, data: Any) -> str:
        rows = self.rows(data)
        table = text_table(rows, self._columns(rows), caption=self.caption.format(n=len(rows)))
        notes = self._notes(data)
        return table + ("\n" + "\n".join(notes) if notes else "")


_EPS_HEADERS = {"delta": "δ", "cap": "ε cap", "remaining": "ε remaining"}
VIEWS: dict[str, View] = {
    "sites": View(
        _site_rows,
        ("name", "status", "record_count", "schema", "policy"),
        "Sites ({n})",
        "no sites enrolled",
        headers={"record_count": "records"},
    ),
    "runs": View(_run_rows, ("id", "status", "progress", "spec_hash"), "Runs ({n})", "no runs"),
    "budget": View(
        _budget_rows,
        ("site", "epsilon", "delta", "cap", "remaining", "runs", "sum of runs"),
        "Privacy budget",
        "no site has spent any budget",
        headers={"epsilon": "ε spent (composed) / cap", "sum of runs": "Σ ε of its runs", **_EPS_HEADERS},
        cell_html={"epsilon": _spent_cell},
        notes=_budget_notes,
    ),
    "estimate": View(
        _estimate_rows,
        ("site", "verdict", "planned", "ledger_epsilon", "after", "cap", "remaining", "change"),
        "Estimate (nothing spent)",
        "no site to ask",
        headers={
            "planned": "run ε planned",
            "ledger_epsilon": "ledger ε now",
            "after": "ledger ε after",
            "change": "option to change",
            **_EPS_HEADERS,
        },
        notes=_estimate_notes,
    ),
    "privacy": View(
        _budget_rows,
        ("site", "epsilon", "delta", "cap", "remaining"),
        "Privacy report",
        "no privacy spent yet",
        headers={"epsilon": "ε / cap", **_EPS_HEADERS},
        cell_html={"epsilon": _spent_cell},
    ),
    "rounds": View(
        _round_rows,
        ("round", "sites", "dropped", "flagged", "loss", "accuracy", "± (1 sd)", "max ε"),
        "Rounds",
        "no round finished yet",
    ),
    "refusals": View(records, ("site", "reason", "message"), "Refusals", "no refusals"),
    # the analyst's tail has no chain index (the coordinator leaves out hidden tuning trials' records, whose
    # indices would show where they were): its index column is left out, not shown blank
    "audit": View(
        _audit_rows,
        ("index", "time", "writer", "kind", "fields"),
        "Audit log (last {n})",
        "no audit records",
        optional=frozenset({"index"}),
    ),
}


def sites_html(sites: Any) -> str:
    """The enrolled sites: name, status, coarse record count, schema summary and policy."""
    return VIEWS["sites"].html(sites)


def runs_html(runs: Any) -> str:
    """The room's runs: id, status, rounds done of rounds, spec hash (shortened)."""
    return VIEWS["runs"].html(runs)


def budget_html(report: Any) -> str:
    """Privacy spent per site (epsilon against the site's cap, delta, what remains)."""
    return VIEWS["budget"].html(report)


def estimate_html(report: Any) -> str:
    """``room.estimate``: per site its verdict, planned epsilon, ledger now and after, cap, what to change."""
    return VIEWS["estimate"].html(report)


def privacy_html(report: Any) -> str:
    """A run's privacy report: each site's epsilon for this run against its cap, and delta."""
    return VIEWS["privacy"].html(report)


def rounds_html(history: Any) -> str:
    """Per-round results: round, sites that contributed, dropped sites, DP-noised loss and accuracy."""
    return VIEWS["rounds"].html(history)


def refusals_html(refusals: Any) -> str:
    """Sites that refused a run, with the rule (reason) and their message."""
    return VIEWS["refusals"].html(refusals)


def audit_html(entries: Any) -> str:
    """Coordinator audit records: index, time, writer, kind and the record's fields (hashes, signatures hidden)."""
    return VIEWS["audit"].html(entries)


def run_html(run: Any) -> str:
    """A static view of a run: id, status, rounds, the per-round table, privacy report, refusals, error.

    Reads only the documented ``Run`` attributes (``id``, ``status``, ``rounds_done``, ``config``,
    ``history``, ``privacy``, ``refusals``, ``error``); a dict with those keys works too.
    """

    def get(name: str, default: Any = None) -> Any:
        return run.get(name, default) if isinstance(run, Mapping) else getattr(run, name, default)

    config = get("config") or {}
    total = config.get("rounds") if isinstance(config, Mapping) else None
    status = str(get("status", ""))
    colour = {"finished": "#2ca02c", "failed": "#d62728", "running": "#1f77b4"}.get(status, "#888")
    parts = [
        f"<div><b>Run {html.escape(str(get('id', '')))}</b> "
        f'<span style="color:#fff;background:{colour};border-radius:3px;padding:1px 6px">{html.escape(status)}</span>'
        f" — round {html.escape(format_value(get('rounds_done')))} / {html.escape(format_value(total))}</div>"
    ]
    if isinstance(config, Mapping) and config:
        from fedjax_room.protocol.config import protections

        shown = " · ".join(html.escape(p) for p in protections(config))
        parts.append(f'<div style="color:#555">protections: {shown}</div>')
    waiting = get("waiting") or []
    if waiting and isinstance(waiting, list | tuple):
        parts.append(f"<div><i>waiting for approval by {html.escape(', '.join(map(str, waiting)))}</i></div>")
    error = get("error")
    if error:
        message = getattr(error, "message", None) or str(error)
        parts.append(f'<div style="color:#d62728"><b>error:</b> {html.escape(message)}</div>')
    parts.append(rounds_html(get("history") or []))
    parts.append(privacy_html(get("privacy")))
    if get("refusals"):
        parts.append(refusals_html(get("refusals")))
    return "".join(parts)


def view_text(view: str, data: Any) -> str:
    """The plain-text twin of ``<view>_html`` (``view`` is a key of :data:`VIEWS`)."""
    return VIEWS[view].text(data)
