"""What the analyst API returns: small frozen records of DP-protected quantities only.

Sites are described by schema and a coarse count; runs by their rounds' DP-noised metrics and each
site's privacy spend; budgets by epsilon against caps. No record of any site's data, no per-site
update and no un-noised metric is ever in here (a test checks every public call).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

from fedjax_room.analyst.views import budget_html, estimate_html, privacy_html, sites_html

__all__ = [
    "BudgetReport",
    "EstimateReport",
    "FinalMetrics",
    "PrivacyReport",
    "Refusal",
    "RoundResult",
    "RunSummary",
    "SiteBudget",
    "SiteEstimate",
    "SiteInfo",
    "SiteList",
    "SitePrivacy",
]


def _float(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """A site as the analyst may see it: name, schema, a coarse record count, status and policy summary."""

    name: str
    schema: dict[str, Any]
    record_count: str
    status: str
    policy: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteInfo:
        return cls(
            name=str(d["name"]),
            schema=dict(d.get("schema") or {}),
            record_count=str(d.get("record_count", "")),
            status=str(d.get("status", "")),
            policy=dict(d.get("policy") or {}),
        )


class SiteList(list[SiteInfo]):
    """What ``room.sites()`` returns: a plain list of :class:`SiteInfo` that renders as a table in Jupyter."""

    def _repr_html_(self) -> str:
        return sites_html(list(self))


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One line per run."""

    id: str
    spec_hash: str
    status: str
    rounds_done: int
    rounds: int
    #: sites whose data owner has not approved the model yet ("waiting for approval by <site>")
    waiting: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSummary:
        return cls(
            id=str(d["id"]),
            spec_hash=str(d.get("spec_hash", "")),
            status=str(d.get("status", "")),
            rounds_done=int(d.get("rounds_done", 0)),
            rounds=int(d.get("rounds", 0)),
            waiting=tuple(str(s) for s in d.get("waiting") or ()),
        )


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One finished round: who contributed, who was dropped, DP-noised loss/accuracy, epsilon per site so far.

    ``accuracy`` and ``loss`` are the room's DP release on the union of the evaluated sites' held-out sets (summed
    across sites before anyone sees them, ``protocol/evaluation.py``), post-processed: accuracy in [0, 1], loss
    >= 0, None for a round off the evaluation schedule (``evaluated`` False) or too few records to show.
    ``accuracy_std`` / ``loss_std`` are their noise scale: the standard deviation the DP noise gives them.
    """

    round: int
    sites: tuple[str, ...]
    dropped: tuple[str, ...]
    loss: float | None
    accuracy: float | None
    epsilon: dict[str, float]
    #: what the poisoning defence did this round (``RoundDefence.to_dict()``: aggregator, flagged {site: reasons},
    #: excluded, selected, rejected, trust, scores); None when the coordinator saw no individual update
    defence: dict[str, Any] | None = None
    #: whether this round's model was evaluated (on the run's ``eval_every`` schedule; the last round always is)
    evaluated: bool = True
    #: standard deviation of the released accuracy / loss from the DP noise (None: nothing released)
    accuracy_std: float | None = None
    loss_std: float | None = None
    #: the sites whose held-out sets the release covers
    eval_sites: tuple[str, ...] = ()

    @property
    def flagged(self) -> tuple[str, ...]:
        """Sites whose update the anomaly detector flagged this round."""
        return tuple(sorted((self.defence or {}).get("flagged") or {}))

    @property
    def excluded(self) -> tuple[str, ...]:
        """Sites left out of the aggregate because their trust fell below the run's ``exclude_below``."""
        return tuple((self.defence or {}).get("excluded") or ())

    @property
    def trust(self) -> dict[str, float]:
        """Each site's trust after this round (1: never flagged)."""
        return dict((self.defence or {}).get("trust") or {})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundResult:
        loss, acc = _figure(d.get("loss"), 0.0, None), _figure(d.get("accuracy"), 0.0, 1.0)
        defence = d.get("defence")
        return cls(
            round=int(d["round"]),
            sites=tuple(d.get("sites") or ()),
            dropped=tuple(d.get("dropped") or ()),
            loss=loss,
            accuracy=acc,
            epsilon={str(k): float(v) for k, v in (d.get("epsilon") or {}).items()},
            defence=dict(defence) if isinstance(defence, Mapping) else None,
            evaluated=bool(d.get("evaluated", loss is not None or acc is not None)),
            accuracy_std=_figure(d.get("accuracy_std"), 0.0, None) if acc is not None else None,
            loss_std=_figure(d.get("loss_std"), 0.0, None) if loss is not None else None,
            eval_sites=tuple(str(s) for s in d.get("eval_sites") or ()),
        )


def _figure(value: Any, lo: float, hi: float | None) -> float | None:
    """A released figure as a float in ``[lo, hi]``; None for anything else (never NaN or inf on a screen)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(min(max(float(value), lo), hi if hi is not None else math.inf))


@dataclasses.dataclass(frozen=True)
class FinalMetrics:
    """The final model's DP-released accuracy and loss on the union of the sites' held-out sets, with their noise
    scale (standard deviation), and the round and sites they come from (``Run.final_metrics``)."""

    round: int
    accuracy: float | None
    accuracy_std: float | None
    loss: float | None
    loss_std: float | None
    sites: tuple[str, ...]

    def text(self) -> str:
        """One line, e.g. ``"held-out accuracy 0.887 ± 0.024 (DP, 3 sites' held-out sets, round 5)"``."""
        if self.accuracy is None:
            return f"held-out accuracy: not released (round {self.round})"
        std = f" ± {self.accuracy_std:.3f}" if self.accuracy_std is not None else ""
        return (
            f"held-out accuracy {self.accuracy:.3f}{std} (DP, the union of {len(self.sites)} sites' held-out sets, "
            f"round {self.round})"
        )

    @classmethod
    def of(cls, history: list[RoundResult]) -> FinalMetrics | None:
        """From a run's history: its last evaluated round (None before one is)."""
        done = [r for r in history if r.evaluated and r.accuracy is not None]
        if not done:
            return None
        r = done[-1]
        return cls(r.round, r.accuracy, r.accuracy_std, r.loss, r.loss_std, r.eval_sites)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A site said no: ``reason`` is the rule (e.g. ``epsilon_cap``), ``round`` None for the whole run."""

    site: str
    reason: str
    message: str
    round: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Refusal:
        rnd = d.get("round")
        return cls(
            site=str(d.get("site", "")),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            round=None if rnd is None else int(rnd),
        )


@dataclasses.dataclass(frozen=True)
class SitePrivacy:
    """A site's spend in one run: ``epsilon`` at ``delta``, its ``cap`` and what ``remaining`` of its ledger."""

    site: str
    epsilon: float
    delta: float
    cap: float
    remaining: float
    #: site-level (whole-site) epsilon at ``delta`` with distributed DP (``site_noise_multiplier``); None without
    site_epsilon: float | None = None


@dataclasses.dataclass(frozen=True)
class PrivacyReport:
    """Per-site privacy of one run; ``report["site-a"].epsilon``; iterate for the site names."""

    run_id: str
    sites: dict[str, SitePrivacy]

    @classmethod
    def from_dict(cls, run_id: str, d: Mapping[str, Any]) -> PrivacyReport:
        sites = {
            str(name): SitePrivacy(
                site=str(name),
                epsilon=_float(v.get("epsilon")),
                delta=_float(v.get("delta")),
                cap=_float(v.get("cap"), math.inf),
                remaining=_float(v.get("remaining")),
                site_epsilon=None if v.get("site_epsilon") is None else _float(v.get("site_epsilon")),
            )
            for name, v in sorted((d or {}).items())
        }
        return cls(run_id=run_id, sites=sites)

    def __getitem__(self, site: str) -> SitePrivacy:
        return self.sites[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def max_epsilon(self) -> float:
        """The largest epsilon any site spent in this run (0 if none)."""
        return max((p.epsilon for p in self.sites.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "sites": {k: dataclasses.asdict(v) for k, v in self.sites.items()}}

    def _repr_html_(self) -> str:
        return privacy_html(self)


@dataclasses.dataclass(frozen=True)
class SiteBudget:
    """A site's whole ledger: ``epsilon_spent`` (composed with PLD, at ``delta``) of ``epsilon_cap``, ``remaining``,
    and ``runs``: each run's own epsilon as the site reported it (at the run's delta)."""

    site: str
    epsilon_spent: float
    delta: float
    epsilon_cap: float
    remaining: float
    runs: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def sum_of_runs(self) -> float:
        """The runs' epsilons added up: what the ledger would hold if composition were addition (it is tighter)."""
        return float(sum(self.runs.values()))

    @property
    def composition_note(self) -> str:
        """One line: the composed epsilon against the sum of the runs' epsilons (empty with fewer than two runs)."""
        if len(self.runs) < 2:
            return ""
        return (
            f"{self.site}: {len(self.runs)} runs of epsilon {' + '.join(f'{e:.3g}' for e in self.runs.values())} "
            f"= {self.sum_of_runs:.4g} added up, but the ledger composes them (PLD accounting) to "
            f"{self.epsilon_spent:.4g} of its cap {self.epsilon_cap:g}: composition is tighter than the sum, and the "
            "composed figure is the one the cap is checked against"
        )


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """Every site's budget; ``report["site-a"].remaining``; iterate for the site names. ``notes``: per site, the
    composed epsilon against the sum of its runs' epsilons."""

    sites: dict[str, SiteBudget]

    @classmethod
    def from_list(cls, rows: list[Mapping[str, Any]]) -> BudgetReport:
        sites = {
            str(r["site"]): SiteBudget(
                site=str(r["site"]),
                epsilon_spent=_float(r.get("epsilon_spent"), 0.0),
                delta=_float(r.get("delta")),
                epsilon_cap=_float(r.get("epsilon_cap"), math.inf),
                remaining=_float(r.get("remaining")),
                runs={
                    str(x.get("run_id")): _float(x.get("epsilon"), 0.0)
                    for x in (r.get("runs") or [])
                    if isinstance(x, Mapping) and x.get("run_id")
                },
            )
            for r in rows
        }
        return cls(sites=dict(sorted(sites.items())))

    @property
    def notes(self) -> list[str]:
        """The composition line of every site with two runs or more."""
        return [b.composition_note for b in self.sites.values() if b.composition_note]

    def __getitem__(self, site: str) -> SiteBudget:
        return self.sites[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"sites": {k: dataclasses.asdict(v) for k, v in self.sites.items()}}

    def _repr_html_(self) -> str:
        return budget_html(self)


@dataclasses.dataclass(frozen=True)
class SiteEstimate:
    """What one site said it would do with a run (``room.estimate``; nothing spent).

    ``status``: ``answered``, ``offline`` (not connected: it would not be offered the run) or ``no_answer``;
    ``accept``: its policy and ledger would take the run now (``approval`` ``"waits"``: after its data owner
    approves the model); ``epsilon_planned``: the run's epsilon it plans (at the run's delta); ``ledger_epsilon``
    / ``ledger_after``: its composed ledger now and after the run (at its own delta); ``remaining``: cap minus
    spent. A refusal has ``reason`` (the rule), ``message`` and ``option`` (what to change). For a trial of a
    tuning session: ``tune_k_max`` (the most trials of it the site takes part in) and, where the site accounts the
    session by private selection, ``tune_epsilon`` / ``tune_delta`` (its one charge for the whole session)."""

    site: str
    status: str
    accept: bool
    epsilon_planned: float | None = None
    ledger_epsilon: float | None = None
    ledger_after: float | None = None
    epsilon_cap: float | None = None
    remaining: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    min_sites: int | None = None
    approval: str = ""
    reason: str = ""
    message: str = ""
    option: str = ""
    #: a fixed-noise run it accepts but would stop at the round that passes its cap (``ledger_after`` > cap)
    cut_short: bool = False
    tune_epsilon: float | None = None
    tune_delta: float | None = None
    tune_k_max: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteEstimate:
        def num(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else _float(v)

        min_sites = d.get("min_sites")
        return cls(
            site=str(d.get("site", "")),
            status=str(d.get("status", "")),
            accept=d.get("accept") is True,
            epsilon_planned=num("epsilon_planned"),
            ledger_epsilon=num("ledger_epsilon"),
            ledger_after=num("ledger_after"),
            epsilon_cap=num("epsilon_cap"),
            remaining=num("remaining"),
            delta=num("delta"),
            noise_multiplier=num("noise_multiplier"),
            min_sites=min_sites if isinstance(min_sites, int) and not isinstance(min_sites, bool) else None,
            approval=str(d.get("approval", "")),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            option=str(d.get("option", "")),
            cut_short=d.get("cut_short") is True,
            tune_epsilon=num("tune_epsilon"),
            tune_delta=num("tune_delta"),
            tune_k_max=d["tune_k_max"] if isinstance(d.get("tune_k_max"), int) else None,
        )

    @property
    def refused(self) -> bool:
        """It answered, and would refuse."""
        return self.status == "answered" and not self.accept

    def explain(self) -> str:
        """One line: why this site would refuse, the planned against the remaining epsilon, what to change."""
        if not self.refused:
            return ""
        detail = self.message.removeprefix(f"{self.site}: ")
        if self.reason == "epsilon_cap" and self.epsilon_planned is not None and self.remaining is not None:
            detail = (
                f"planned epsilon {self.epsilon_planned:.3g} against {self.remaining:.3g} remaining of its cap "
                f"{self.epsilon_cap or 0.0:g}"
            )
            if self.tune_epsilon is not None:
                detail = (
                    f"the tuning session's private-selection charge, epsilon {self.tune_epsilon:.3g} for the whole "
                    f"session (Papernot & Steinke), against {self.remaining:.3g} remaining of its cap "
                    f"{self.epsilon_cap or 0.0:g}"
                )
            if self.ledger_after is not None:
                detail += f" (composed, its ledger would reach {self.ledger_after:.3g})"
        tail = f"; change {self.option}" if self.option else ""
        return f"{self.site} would refuse ({self.reason or 'refused'}): {detail}{tail}"


@dataclasses.dataclass(frozen=True)
class EstimateReport:
    """``room.estimate``: per site what it would plan and whether it would accept the run now (nothing spent);
    ``report["site-a"].epsilon_planned``; iterate for the site names."""

    sites: dict[str, SiteEstimate]
    #: the run's own ``min_sites`` option (None: unset)
    min_sites: int | None = None

    @classmethod
    def from_list(cls, rows: list[Mapping[str, Any]], *, min_sites: int | None = None) -> EstimateReport:
        sites = {str(r.get("site")): SiteEstimate.from_dict(r) for r in rows if isinstance(r, Mapping)}
        return cls(sites=dict(sorted(sites.items())), min_sites=min_sites)

    def __getitem__(self, site: str) -> SiteEstimate:
        return self.sites[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def accepting(self) -> list[str]:
        """The sites that would accept."""
        return [s for s, e in self.sites.items() if e.accept]

    @property
    def refusing(self) -> list[SiteEstimate]:
        """The sites that would refuse, with their reasons."""
        return [e for e in self.sites.values() if e.refused]

    @property
    def needed(self) -> int:
        """How many sites the run needs (the coordinator's rule: the run's min_sites and every accepting site's)."""
        wanted = [self.min_sites or 1] + [e.min_sites or 1 for e in self.sites.values() if e.accept]
        return max(wanted)

    @property
    def can_start(self) -> bool:
        """False only when the estimate knows the run cannot start: fewer sites would accept than it needs even
        if every site that did not answer (offline, silent) took part."""
        unknown = [e for e in self.sites.values() if e.status != "answered"]
        return not self.refusing or len(self.accepting) + len(unknown) >= self.needed

    def problem(self) -> str:
        """Why the run cannot start (one line per refusing site); empty when it can."""
        if self.can_start:
            return ""
        return (
            f"the sites refuse this run: {len(self.accepting)} would accept and it needs {self.needed}. "
            + " | ".join(e.explain() for e in self.refusing)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"sites": {k: dataclasses.asdict(v) for k, v in self.sites.items()}, "min_sites": self.min_sites}

    def _repr_html_(self) -> str:
        return estimate_html(self)
