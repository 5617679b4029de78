"""The live run dashboard: an ipywidgets box whose Python object is the model.

:class:`RunDashboard` holds a run's state as validated traitlets — status, rounds done, the DP-noised
loss and accuracy per round, each site's epsilon and cap, site status, refusals — and re-renders its
child widgets whenever one changes. It never trains or computes anything itself: :meth:`update` takes
one ``RoundResult`` (or a dict with the same fields) and :meth:`finish` the run's end state.

:meth:`RunDashboard.attach` wires it to a live ``Run``: it subscribes to the run's typed events
(:mod:`fedjax_room.analyst.events`: round, defence, refusal, waiting, status) with ``replay=True``, so the
rounds so far arrive first and none is lost or shown twice in between; no thread of its own and no
polling. ``attach`` returns once the replay has been applied (it ends with the run's status), so the
widget is up to date when the cell that shows it ends. Later events arrive on the analyst client's
callback thread, not the kernel's: every change is made under the dashboard's lock, and ipywidgets sends
the resulting comm messages through the kernel's IOPub channel (thread-safe). The final ``status`` event
records how the run ended (status, error, refusals, privacy report).
"""

from __future__ import annotations

import dataclasses
import html
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets as widgets
import traitlets

from fedjax_room.analyst.views import format_value, records
from fedjax_room.jupyter.chart import svg_line_chart

__all__ = ["RUN_STATUSES", "SITE_STATUSES", "RunDashboard", "field"]

RUN_STATUSES = ("pending", "running", "finished", "failed")
SITE_STATUSES = ("waiting", "active", "dropped", "refused", "flagged", "excluded", "awaiting approval")

#: Seconds :meth:`RunDashboard.attach` waits for the run's replayed events (the rounds so far, its status).
REPLAY_WAIT = 10.0

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
    #: the last evaluated round's DP-released held-out accuracy and loss with their noise scale (issue 16):
    #: {"round", "accuracy", "accuracy_std", "loss", "loss_std", "sites"}; empty before one is evaluated
    final_metrics = traitlets.Dict()
    epsilon = traitlets.Dict(value_trait=traitlets.Float(), key_trait=traitlets.Unicode())
    epsilon_cap = traitlets.Dict(value_trait=traitlets.Float(), key_trait=traitlets.Unicode())
    target_epsilon = traitlets.Float(None, allow_none=True)
    site_status = traitlets.Dict(value_trait=traitlets.Enum(SITE_STATUSES), key_trait=traitlets.Unicode())
    refusals = traitlets.List(traitlets.Dict())
    error = traitlets.Unicode("")
    #: which protections the run has (fedjax_room.protocol.config.protections of its config), shown in the header
    protections = traitlets.List(traitlets.Unicode())
    #: the room's budget lines (``BudgetReport.notes``: composed epsilon against the sum of each site's runs)
    budget_notes = traitlets.List(traitlets.Unicode())

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
        self._run: Any = None
        self._ended = threading.Event()
        self._caught_up = threading.Event()
        self._unsubscribe: Any = None
        self._displays: list[tuple[str, dict[str, Any]]] = []  # (display_id, the request that displayed it)
        self._phase = ""  # where the round in progress stands ("round 1: 2/3 sites updated"), "" between rounds
        self._waiting_for: list[str] = []  # sites whose data owner has not approved the model yet
        self._since = time.monotonic()  # when the current wait (a round, an approval) began: the ticking clock
        self._clock_stop = threading.Event()
        self._unsubscribe_progress: Any = None
        self._clock: threading.Thread | None = None  # ticks the progress label while the run goes on (no polling)
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
            losses: list[float | None] = list(self.losses)
            accuracies: list[float | None] = list(self.accuracies)
            while len(losses) < number:
                losses.append(None)
                accuracies.append(None)
            losses[number - 1] = _finite_or_none(field(result, "loss"))
            accuracies[number - 1] = _finite_or_none(field(result, "accuracy"))
            self.losses, self.accuracies = losses, accuracies  # type: ignore[assignment]  # traitlets types Float as int
            if accuracies[number - 1] is not None and number >= int(self.final_metrics.get("round", 0)):
                self.final_metrics = {
                    "round": number,
                    "accuracy": accuracies[number - 1],
                    "accuracy_std": _finite_or_none(field(result, "accuracy_std")),
                    "loss": losses[number - 1],
                    "loss_std": _finite_or_none(field(result, "loss_std")),
                    "sites": len(_names(field(result, "eval_sites"))),
                }
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
        if self.status in ("finished", "failed") and self._run is None:  # fed by hand; an attached run: _end
            self.publish_snapshot()

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

    def set_budget(self, report: Any) -> None:
        """Take each site's cap and the budget's composition lines from ``room.budget()``."""
        caps = {}
        for row in records(report):
            site, cap = row.get("site") or row.get("name"), _finite_or_none(row.get("epsilon_cap", row.get("cap")))
            if site and cap is not None and cap > 0:
                caps[str(site)] = cap
        notes = getattr(report, "notes", None)
        with self._lock, self.hold_trait_notifications():
            self.epsilon_cap = {**self.epsilon_cap, **caps}
            self.budget_notes = [str(n) for n in notes] if isinstance(notes, list | tuple) else []

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
        """Follow a live ``Run``: its events so far, then each as it comes (``run.subscribe(..., replay=True)``)."""
        self.run_id = str(field(run, "id", "") or self.run_id)
        config = field(run, "config")
        if isinstance(config, Mapping) and config:
            from fedjax_room.protocol.config import protections

            self.protections = protections(config)
        self._run = run
        self._ended.clear()
        self._caught_up.clear()
        self._unsubscribe = run.subscribe(self._on_event, replay=True)
        try:  # inside a round: sites answered so far (a run of an older client may not offer them)
            self._unsubscribe_progress = run.subscribe(self._on_progress, kinds={"progress"})
        except Exception:
            self._unsubscribe_progress = None
        self._start_clock()
        if not threading.current_thread().name.startswith("fedjax-room-callbacks"):
            # the replay ends with the run's status: wait for it, so the widget shows the run as it is now
            # when the cell that displays it ends, not only after the frontend has drawn a first state
            self._caught_up.wait(REPLAY_WAIT)
        return self

    def _start_clock(self) -> None:
        """Tick the progress label once a second while the run goes on (the wait is visible, not frozen)."""
        self._clock_stop.clear()

        def tick() -> None:
            while not self._clock_stop.wait(1.0):
                if self.status in ("finished", "failed"):
                    return
                with self._lock:
                    self._render_progress()

        self._clock = threading.Thread(target=tick, name="fedjax-room-dashboard-clock", daemon=True)
        self._clock.start()

    def _on_progress(self, event: Any) -> None:
        """A ``progress`` event: a phase of the round opened or one more site answered."""
        try:
            with self._lock:
                if field(event, "phase") == "train" and field(event, "answered") == 0:
                    self._since = time.monotonic()  # a new round: its clock starts
                text = event.text() if callable(getattr(event, "text", None)) else ""
                self._phase = str(text)
                self._render_progress()
        except Exception as exc:  # a bad record must not kill the client's callback thread
            self.error = f"dashboard could not show progress: {exc}"

    def close(self) -> None:
        """Stop following the run and close the widget."""
        self._clock_stop.set()
        for stop in (self._unsubscribe, self._unsubscribe_progress):
            if callable(stop):
                stop()
        super().close()

    def _on_event(self, event: Any) -> None:
        """One typed run event (or, from an older caller, a bare round result)."""
        try:
            kind = field(event, "kind")
            if kind == "round":
                with self._lock:
                    if field(event.result, "round", 0) > self.rounds_done:
                        self._phase, self._since = "", time.monotonic()  # the next round's wait starts now
                self.update(event.result)
                if event.privacy is not None:
                    self.set_privacy(event.privacy)
            elif kind == "defence":
                self._show_defence(event.flagged, event.excluded)
            elif kind == "refusal":
                self.set_refusals([*self.refusals, dataclasses.asdict(event.refusal)])
            elif kind == "waiting":
                self._show_waiting(event.waiting)
            elif kind == "status":
                self._caught_up.set()
                if event.done:
                    self._end(event)
                elif event.status == "running" and self.status == "pending":
                    self.status = "running"
            else:
                self.update(event)
        except Exception as exc:  # a bad record must not kill the client's callback thread
            self.error = f"dashboard could not show an event: {exc}"
            self._caught_up.set()

    def _show_defence(self, flagged: Iterable[str], excluded: Iterable[str]) -> None:
        with self._lock:
            statuses = dict(self.site_status)
            statuses.update({str(s): "flagged" for s in flagged})
            statuses.update({str(s): "excluded" for s in excluded})
            self.site_status = statuses

    def _show_waiting(self, waiting: Iterable[str]) -> None:
        """Mark the sites whose data owner has not approved the model yet; the others wait no more."""
        names = {str(s) for s in waiting}
        with self._lock:
            if sorted(names) != self._waiting_for:
                self._waiting_for, self._since = sorted(names), time.monotonic()
                self._render_progress()
            statuses = dict(self.site_status)
            for site in names:
                statuses[site] = "awaiting approval"
            for site, state in list(statuses.items()):
                if state == "awaiting approval" and site not in names:
                    statuses[site] = "waiting"
            if statuses != self.site_status:
                self.site_status = statuses

    def _end(self, event: Any) -> None:
        """The run ended: its final status, error, refusals and privacy report."""
        run = self._run
        try:
            error = field(event, "error", None) or field(run, "error", None)
            message = str(getattr(error, "message", None) or error or "")
            status = "failed" if message or event.status == "failed" else "finished"
            self.finish(
                status,
                error=message,
                refusals=field(run, "refusals", None),
                privacy=field(event, "privacy", None) or field(run, "privacy", None),
            )
        except Exception as exc:
            self.finish("failed", error=f"dashboard lost the run: {exc}")
        finally:
            self._clock_stop.set()
            budget = getattr(getattr(self, "room", None), "budget", None)
            if callable(budget):  # the ledgers after this run, with their composition lines
                try:
                    self.set_budget(budget())
                except Exception:  # the run's own figures stand
                    pass
            self._ended.set()
            self.publish_snapshot()  # everything the end brought (budget lines included) is in the static snapshot

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run's end has been recorded; True if it has."""
        if self._run is None:
            return self.status in ("finished", "failed")
        return self._ended.wait(timeout)

    # ---- rendering ----------------------------------------------------------------------------
    @traitlets.observe(
        "run_id",
        "protections",
        "status",
        "rounds_total",
        "rounds_done",
        "losses",
        "accuracies",
        "final_metrics",
        "epsilon",
        "epsilon_cap",
        "target_epsilon",
        "site_status",
        "refusals",
        "error",
        "budget_notes",
    )
    def _on_change(self, change: Any) -> None:
        if getattr(self, "_chart", None) is None:
            return  # still constructing
        name = change["name"]
        with self._lock:
            if name in ("run_id", "protections", "status", "error"):
                self._render_header()
                self._render_notes()
            if name in ("rounds_total", "rounds_done", "status"):
                self._render_progress()
            if name in ("losses", "accuracies", "rounds_total", "final_metrics", "status"):
                self._render_chart()
            if name in ("epsilon", "epsilon_cap", "target_epsilon", "site_status"):
                self._render_gauges()
            if name in ("refusals", "budget_notes"):
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
        if self.protections:
            shown = " · ".join(html.escape(p) for p in self.protections)
            self._header.value += f' <span style="color:#555;font-size:90%">protections: {shown}</span>'

    def _render_progress(self) -> None:
        total = max(self.rounds_total, self.rounds_done, 1)
        self._progress.max = total
        self._progress.value = min(self.rounds_done, total)
        self._progress.bar_style = {"finished": "success", "failed": "danger"}.get(self.status, "info")
        self._progress_label.value = self.progress_text()

    def progress_text(self) -> str:
        """``"1 / 5 · round 2: 2/3 sites updated · 0:12"``: rounds done and, while the run goes on, what it waits
        for (the sites' approval, a phase of the round in progress) and for how long."""
        done = f"{self.rounds_done} / {self.rounds_total or '?'}"
        if self.status in ("finished", "failed"):
            return done
        if self._waiting_for:
            what = f"waiting for approval by {', '.join(self._waiting_for)}"
        elif self._phase:
            what = self._phase
        elif self.rounds_total and self.rounds_done >= self.rounds_total:
            what = "finishing"
        else:
            what = "" if self._run is None else f"round {self.rounds_done + 1}: starting"
            if what and self.rounds_done == 0:
                what = "the sites are checking the run (policy, privacy plan)"
        if not what:
            return done
        seconds = int(time.monotonic() - self._since)
        return f"{done} · {what} · {seconds // 60}:{seconds % 60:02d}"

    def _render_chart(self) -> None:
        size: dict[str, Any] = {"width": 300, "height": 170, "x_count": self.rounds_total}
        loss = svg_line_chart({"loss": list(self.losses)}, title="loss (DP-noised)", **size)
        accuracy = list(self.accuracies)
        acc = svg_line_chart({"accuracy": accuracy}, title="accuracy (DP-noised)", y_min=0, y_max=1, **size)
        self._chart.value = f'<div style="display:flex;gap:8px;flex-wrap:wrap">{loss}{acc}</div>' + self.final_text(
            html_=True
        )

    def final_text(self, *, html_: bool = False) -> str:
        """The final (or, while the run goes on, the latest evaluated) model's DP-released accuracy on the union of
        the sites' held-out sets with its noise scale; "" before any round is evaluated."""
        f = self.final_metrics
        if not f or f.get("accuracy") is None:
            return ""
        std = f" ± {f['accuracy_std']:.3f}" if f.get("accuracy_std") is not None else ""
        loss = f", loss {f['loss']:.3f}" if f.get("loss") is not None else ""
        loss += f" ± {f['loss_std']:.3f}" if f.get("loss") is not None and f.get("loss_std") is not None else ""
        which = "final model" if self.status == "finished" else "latest evaluated model"
        sites = f"{f['sites']} sites'" if f.get("sites") else "the sites'"
        text = (
            f"{which} (round {f['round']}): held-out accuracy {f['accuracy']:.3f}{std}{loss} "
            f"(DP-released on the union of {sites} held-out sets; ± one standard deviation of its noise)"
        )
        return f'<div style="color:#333">{html.escape(text)}</div>' if html_ else text

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
        for note in self.budget_notes:
            parts.append(f'<div style="color:#555"><i>{html.escape(note)}</i></div>')
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

    # ---- the static snapshot a saved notebook keeps --------------------------------------------
    def snapshot_bundle(self) -> dict[str, str]:
        """The dashboard as it is now, without the widget: ``text/html`` (charts as inline SVG) and ``text/plain``."""
        with self._lock:
            total = self.rounds_total or "?"
            text = f"RunDashboard(run {self.run_id or '?'}: {self.status}, {self.rounds_done}/{total} rounds)"
            return {"text/plain": text, "text/html": self.to_html()}

    def _ipython_display_(self) -> None:
        """Show the live widget under a display id, so that :meth:`publish_snapshot` can replace it when the run ends.

        A run that has already ended is shown as its static snapshot at once.
        """
        import uuid

        from IPython.display import display

        with self._lock:
            ended = self.status in ("finished", "failed") and (self._run is None or self._ended.is_set())
            bundle = self.snapshot_bundle() if ended else self._repr_mimebundle_()
            display_id = uuid.uuid4().hex
            if not ended:
                self._displays.append((display_id, _display_parent()))
        display(bundle, raw=True, display_id=display_id)

    def publish_snapshot(self) -> None:
        """Replace every live display of this dashboard by its static snapshot (:meth:`snapshot_bundle`).

        Called when the run ends. The cell's output then holds plain ``text/html`` instead of a widget view,
        so a saved notebook reopened without its kernel (or rendered by nbviewer or GitHub) shows the final
        dashboard, not "Error displaying widget: model not found". The update is sent as a child of the
        request that displayed the dashboard (JupyterLab applies it to that cell) and, when another cell is
        running now, of that request too (nbclient and papermill follow only the running cell; a frontend
        that has no output with that display id ignores it).
        """
        with self._lock:
            displays, self._displays = self._displays, []
            if not displays:
                return
            bundle = self.snapshot_bundle()
        for display_id, parent in displays:
            _update_display(bundle, display_id, parent)


def _display_parent() -> dict[str, Any]:
    """The header of the request being run now (the cell showing the dashboard), {} outside a kernel."""
    from IPython import get_ipython

    pub = getattr(get_ipython(), "display_pub", None)
    header = getattr(pub, "parent_header", None)
    return dict(header) if isinstance(header, Mapping) else {}


def _update_display(bundle: dict[str, str], display_id: str, parent: Mapping[str, Any]) -> None:
    """``update_display`` as a child of ``parent`` (the displaying cell) and of the request running now."""
    from IPython import get_ipython
    from IPython.display import update_display

    try:
        now = _display_parent()
        pub = getattr(get_ipython(), "display_pub", None)
        set_parent = getattr(pub, "set_thread_parent", None)
        if parent and callable(set_parent) and parent.get("msg_id") != now.get("msg_id"):
            token = set_parent(dict(parent))
            try:
                update_display(bundle, raw=True, display_id=display_id)
            finally:
                pub.reset_thread_parent(token)  # type: ignore[union-attr]
        update_display(bundle, raw=True, display_id=display_id)
    except Exception as exc:  # no kernel any more (shut down): nothing to update
        import logging

        logging.getLogger("fedjax_room.jupyter").debug("could not publish the dashboard snapshot: %s", exc)
