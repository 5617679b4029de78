"""The live run dashboard: an ipywidgets box whose Python object is the model.

:class:`RunDashboard` holds a run's state as validated traitlets — status, rounds done, the DP-noised
loss and accuracy per round, each site's epsilon and cap, site status, refusals — and re-renders its
child widgets whenever one changes. It never trains or computes anything itself: :meth:`update` takes
one ``RoundResult`` (or a dict with the same fields) and :meth:`finish` the run's end state.

:meth:`RunDashboard.attach` wires it to a live ``Run``: it replays ``run.history``, subscribes to the
run's per-round results (delivered on the run's background thread, so the kernel stays free), and
starts one daemon thread that waits for the run to end and records its final status, refusals and
privacy report. Updates are serialised with a lock, so results may arrive from any thread.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets as widgets
import traitlets

from fedjax_room.analyst.views import format_value, records
from fedjax_room.jupyter.chart import svg_line_chart

__all__ = ["RUN_STATUSES", "SITE_STATUSES", "RunDashboard", "field"]

RUN_STATUSES = ("pending", "running", "finished", "failed")
SITE_STATUSES = ("waiting", "active", "dropped", "refused", "flagged", "excluded", "awaiting approval")

_STATUS_COLOURS = {"pending": "#888", "running": "#1f77b4", "finished": "#2ca02c", "failed": "#d62728"}
_SITE_COLOURS = {
    "waiting": "#888",
    "active": "#2ca02c",
    "dropped": "#ff9f0e",
    "refused": "#d62728",
    "flagged": "#9467bd",  # the anomaly detector flagged its update this round
    "excluded": "#8c564b",  # left out of the aggregate: its trust fell below exclude_below
    "awaiting approval": "#1f77b4",  # the site's data owner has not approved the model yet
}


def field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]`` (RoundResult dataclasses and plain dicts alike)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, int):  # a count, not names
        return []
    return [str(v) for v in value]


class RunDashboard(widgets.VBox):
    """Live view of one federated run: progress, loss/accuracy chart, per-site epsilon gauges, refusals."""

    run_id = traitlets.Unicode("")
    status = traitlets.Enum(RUN_STATUSES, default_value="pending")
    rounds_total = traitlets.Int(0)
    rounds_done = traitlets.Int(0)
    losses = traitlets.List(traitlets.Float(allow_none=True))
    accuracies = traitlets.List(traitlets.Float(allow_none=True))
    epsilon = traitlets.Dict(value_trait=traitlets.Float(), key_trait=traitlets.Unicode())
    epsilon_cap = traitlets.Dict(value_trait=traitlets.Float(), key_trait=traitlets.Unicode())
    target_epsilon = traitlets.Float(None, allow_none=True)
    site_status = traitlets.Dict(value_trait=traitlets.Enum(SITE_STATUSES), key_trait=traitlets.Unicode())
    refusals = traitlets.List(traitlets.Dict())
    error = traitlets.Unicode("")

    def __init__(
        self,
        *,
        run_id: str = "",
        rounds: int = 0,
        sites: Iterable[str] = (),
        caps: Mapping[str, float] | None = None,
        target_epsilon: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._lock = threading.RLock()
        self._rendering = False
        self._header = widgets.HTML()
        self._progress = widgets.IntProgress(value=0, min=0, max=1, description="rounds", bar_style="info")
        self._progress_label = widgets.Label("")
        self._chart = widgets.HTML()
        self._gauges = widgets.VBox()
        self._gauge_widgets: dict[str, tuple[widgets.FloatProgress, widgets.Label, widgets.HTML]] = {}
        self._notes = widgets.HTML()
        self._watcher: threading.Thread | None = None
        self._seen_rounds: set[int] = set()
        super().__init__(
            children=[
                self._header,
                widgets.HBox([self._progress, self._progress_label]),
                self._chart,
                self._gauges,
                self._notes,
            ],
            **kwargs,
        )
        with self.hold_trait_notifications():
            self.run_id = run_id
            self.rounds_total = int(rounds)
            self.target_epsilon = target_epsilon
            self.epsilon_cap = {str(k): float(v) for k, v in (caps or {}).items()}
            self.site_status = {str(s): "waiting" for s in sites}
        self._render_all()

    # ---- validation -------------------------------------------------------------------------
    @traitlets.validate("rounds_total", "rounds_done")
    def _non_negative(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise traitlets.TraitError(f"{proposal['trait'].name} must be >= 0, got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("epsilon", "epsilon_cap")
    def _valid_epsilons(self, proposal: Any) -> dict[str, float]:
        for site, value in proposal["value"].items():
            if not value >= 0:  # also rejects NaN
                raise traitlets.TraitError(f"epsilon for site {site!r} must be a non-negative number, got {value}")
        return proposal["value"]

    @traitlets.validate("target_epsilon")
    def _valid_target(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is not None and not value > 0:
            raise traitlets.TraitError(f"target_epsilon must be positive, got {value}")
        return value

    # ---- feeding it ---------------------------------------------------------------------------
    def update(self, result: Any) -> None:
        """Record one round's result (a ``RoundResult`` or a dict with its fields); safe from any thread."""
        number = field(result, "round")
        if number is None or isinstance(number, bool):
            return  # not a round result (another kind of event): nothing to show
        number = int(number)
        if number < 1:
            raise traitlets.TraitError(f"round numbers start at 1, got {number}")
        with self._lock, self.hold_trait_notifications():
            self._seen_rounds.add(number)
            losses, accuracies = list(self.losses), list(self.accuracies)
            while len(losses) < number:
                losses.append(None)
                accuracies.append(None)
            losses[number - 1] = _finite_or_none(field(result, "loss"))
            accuracies[number - 1] = _finite_or_none(field(result, "accuracy"))
            self.losses, self.accuracies = losses, accuracies
            self.rounds_done = max(self.rounds_done, number)
            if self.rounds_done > self.rounds_total:
                self.rounds_total = self.rounds_done
            eps = dict(self.epsilon)
            for site, value in (field(result, "epsilon") or {}).items():
                number_eps = _finite_or_none(value)
                if number_eps is not None:
                    eps[str(site)] = max(number_eps, 0.0)
            self.epsilon = eps
            statuses = dict(self.site_status)
            for site in _names(field(result, "sites")):
                statuses[site] = "active"
            for site in _names(field(result, "dropped")):
                statuses[site] = "dropped"
            defence = field(result, "defence") or {}
            if isinstance(defence, dict):
                for site in _names(list(defence.get("flagged") or {})):
                    statuses[site] = "flagged"
                for site in _names(defence.get("excluded") or ()):
                    statuses[site] = "excluded"
            self.site_status = statuses
            if self.status == "pending":
                self.status = "running"

    def finish(
        self,
        status: str = "finished",
        *,
        error: str = "",
        refusals: Any = None,
        privacy: Any = None,
    ) -> None:
        """Record the run's end: final status, error message, refusals and (optionally) its privacy report."""
        with self._lock, self.hold_trait_notifications():
            if refusals is not None:
                self.set_refusals(refusals)
            if privacy is not None:
                self.set_privacy(privacy)
            self.error = str(error or "")
            self.status = status if status in RUN_STATUSES else "failed"

    def set_refusals(self, refusals: Any) -> None:
        """Show these refusals (``Refusal(site, reason, message)`` records) and mark those sites refused."""
        rows = [
            {
                "site": str(r.get("site", "")),
                "reason": str(r.get("reason", "")),
                "message": str(r.get("message", "")),
            }
            for r in records(refusals)
        ]
        with self._lock, self.hold_trait_notifications():
            self.refusals = rows
            statuses = dict(self.site_status)
            for row in rows:
                if row["site"]:
                    statuses[row["site"]] = "refused"
            self.site_status = statuses

    def set_privacy(self, report: Any) -> None:
        """Take each site's epsilon (and cap, where given) from a privacy report or budget report."""
        with self._lock, self.hold_trait_notifications():
            eps, caps = dict(self.epsilon), dict(self.epsilon_cap)
            for row in records(report):
                site = row.get("site") or row.get("name")
                if not site:
                    continue
                spent = _finite_or_none(row.get("epsilon", row.get("epsilon_spent")))
                cap = _finite_or_none(row.get("cap", row.get("epsilon_cap")))
                if spent is not None:
                    eps[str(site)] = max(spent, 0.0)
                if cap is not None and cap >= 0:
                    caps[str(site)] = cap
            self.epsilon, self.epsilon_cap = eps, caps

    def attach(self, run: Any) -> RunDashboard:
        """Follow a live ``Run``: replay its history, subscribe to new rounds, record how it ends."""
        self.run_id = str(field(run, "id", "") or self.run_id)
        for result in list(field(run, "history", None) or []):
            self.update(result)
        subscribe = getattr(run, "subscribe", None)
        if callable(subscribe):
            subscribe(self._on_event)
        if field(run, "status", None) == "running" and self.status == "pending":
            self.status = "running"
        self._watcher = threading.Thread(target=self._watch, args=(run,), name=f"dashboard-{self.run_id}", daemon=True)
        self._watcher.start()
        return self

    def _on_event(self, event: Any) -> None:
        try:
            self.update(event)
        except Exception as exc:  # a bad record must not kill the run's thread
            self.error = f"dashboard could not show a round: {exc}"

    def _show_waiting(self, run: Any) -> None:
        """Mark the sites whose data owner has not approved the model yet (``run.waiting``)."""
        waiting = field(run, "waiting", None)
        if not isinstance(waiting, list | tuple):
            return
        with self._lock:
            statuses = dict(self.site_status)
            for site in waiting:
                statuses[str(site)] = "awaiting approval"
            for site, state in list(statuses.items()):
                if state == "awaiting approval" and site not in waiting:
                    statuses[site] = "waiting"
            if statuses != self.site_status:
                self.site_status = statuses

    def _watch(self, run: Any) -> None:
        error = ""
        try:
            while True:  # wake every second to show who is waiting for approval
                self._show_waiting(run)
                try:
                    run.wait(timeout=1.0)
                except TimeoutError:
                    continue
                if field(run, "status", "finished") in ("finished", "failed"):
                    break
        except Exception as exc:  # the run failed; its error is the dashboard's message
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        try:
            for result in list(field(run, "history", None) or []):
                if int(field(result, "round", 0) or 0) not in self._seen_rounds:
                    self.update(result)
            run_error = field(run, "error", None)
            message = str(getattr(run_error, "message", None) or run_error or error or "")
            status = field(run, "status", "finished")
            if message:
                status = "failed"
            elif status not in ("finished", "failed"):
                status = "finished"
            self.finish(
                status,
                error=message,
                refusals=field(run, "refusals", None),
                privacy=field(run, "privacy", None),
            )
        except Exception as exc:
            self.finish("failed", error=f"dashboard lost the run: {exc}")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the watcher thread has recorded the run's end; True if it has."""
        if self._watcher is None:
            return self.status in ("finished", "failed")
        self._watcher.join(timeout)
        return not self._watcher.is_alive()

    # ---- rendering ----------------------------------------------------------------------------
    @traitlets.observe(
        "run_id",
        "status",
        "rounds_total",
        "rounds_done",
        "losses",
        "accuracies",
        "epsilon",
        "epsilon_cap",
        "target_epsilon",
        "site_status",
        "refusals",
        "error",
    )
    def _on_change(self, change: Any) -> None:
        if getattr(self, "_chart", None) is None:
            return  # still constructing
        name = change["name"]
        with self._lock:
            if name in ("run_id", "status", "error"):
                self._render_header()
                self._render_notes()
            if name in ("rounds_total", "rounds_done", "status"):
                self._render_progress()
            if name in ("losses", "accuracies", "rounds_total"):
                self._render_chart()
            if name in ("epsilon", "epsilon_cap", "target_epsilon", "site_status"):
                self._render_gauges()
            if name == "refusals":
                self._render_notes()

    def _render_all(self) -> None:
        self._render_header()
        self._render_progress()
        self._render_chart()
        self._render_gauges()
        self._render_notes()

    def _render_header(self) -> None:
        colour = _STATUS_COLOURS[self.status]
        title = f"Run {self.run_id}" if self.run_id else "Run"
        self._header.value = (
            f"<b>{html.escape(title)}</b> "
            f'<span style="color:#fff;background:{colour};border-radius:3px;padding:1px 6px">'
            f"{html.escape(self.status)}</span>"
        )

    def _render_progress(self) -> None:
        total = max(self.rounds_total, self.rounds_done, 1)
        self._progress.max = total
        self._progress.value = min(self.rounds_done, total)
        self._progress.bar_style = {"finished": "success", "failed": "danger"}.get(self.status, "info")
        self._progress_label.value = f"{self.rounds_done} / {self.rounds_total or '?'}"

    def _render_chart(self) -> None:
        size = {"width": 300, "height": 170, "x_count": self.rounds_total}
        loss = svg_line_chart({"loss": list(self.losses)}, title="loss (DP-noised)", **size)
        accuracy = list(self.accuracies)
        acc = svg_line_chart({"accuracy": accuracy}, title="accuracy (DP-noised)", y_min=0, y_max=1, **size)
        self._chart.value = f'<div style="display:flex;gap:8px;flex-wrap:wrap">{loss}{acc}</div>'

    def cap_for(self, site: str) -> float | None:
        """The epsilon a site's gauge is drawn against: its cap if known, else the run's target."""
        cap = self.epsilon_cap.get(site)
        return cap if cap is not None and cap > 0 else self.target_epsilon

    def _render_gauges(self) -> None:
        sites = list(dict.fromkeys([*self.site_status, *self.epsilon, *self.epsilon_cap]))
        if list(self._gauge_widgets) != sites:
            self._gauge_widgets = {}
            rows = []
            for site in sites:
                bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description=site[:20])
                label, badge = widgets.Label(""), widgets.HTML("")
                self._gauge_widgets[site] = (bar, label, badge)
                rows.append(widgets.HBox([bar, label, badge]))
            self._gauges.children = tuple(rows)
        for site, (bar, label, badge) in self._gauge_widgets.items():
            spent = self.epsilon.get(site, 0.0)
            cap = self.cap_for(site)
            bar.max = float(cap) if cap else max(spent, 1.0)
            bar.value = min(spent, bar.max)
            frac = spent / cap if cap else 0.0
            bar.bar_style = "success" if frac < 0.8 else "warning" if frac < 1.0 else "danger"
            label.value = f"ε {format_value(spent)} / {format_value(cap) if cap else '?'}"
            state = self.site_status.get(site, "waiting")
            badge.value = f'<span style="color:{_SITE_COLOURS[state]}">● {html.escape(state)}</span>'

    def _render_notes(self) -> None:
        parts = []
        if self.error:
            parts.append(f'<div style="color:#d62728"><b>error:</b> {html.escape(self.error)}</div>')
        for r in self.refusals:
            parts.append(
                f'<div style="color:#d62728">refused by <b>{html.escape(r.get("site", ""))}</b> '
                f"({html.escape(r.get('reason', ''))}): {html.escape(r.get('message', ''))}</div>"
            )
        self._notes.value = "".join(parts)

    # ---- static views -------------------------------------------------------------------------
    def to_html(self) -> str:
        """A static HTML snapshot (for exports and logs): header, progress, charts, per-site epsilon."""
        from fedjax_room.analyst.views import epsilon_bar_html

        rows = "".join(
            f"<tr><td>{html.escape(site)}</td><td>{html.escape(self.site_status.get(site, 'waiting'))}</td>"
            f"<td>{epsilon_bar_html(self.epsilon.get(site, 0.0), self.cap_for(site))}</td></tr>"
            for site in self._gauge_widgets
        )
        return (
            f"<div>{self._header.value} — round {self.rounds_done} / {self.rounds_total or '?'}"
            f"{self._chart.value}<table>{rows}</table>{self._notes.value}</div>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle = dict(bundle)
            bundle["text/html"] = self.to_html()
        return bundle
