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

from fedjax_room.analyst.views import budget_html, privacy_html, sites_html

__all__ = [
    "BudgetReport",
    "PrivacyReport",
    "Refusal",
    "RoundResult",
    "RunSummary",
    "SiteBudget",
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
    """One finished round: who contributed, who was dropped, DP-noised loss/accuracy, epsilon per site so far."""

    round: int
    sites: tuple[str, ...]
    dropped: tuple[str, ...]
    loss: float | None
    accuracy: float | None
    epsilon: dict[str, float]
    #: what the poisoning defence did this round (``RoundDefence.to_dict()``: aggregator, flagged {site: reasons},
    #: excluded, selected, rejected, trust, scores); None when the coordinator saw no individual update
    defence: dict[str, Any] | None = None

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
        loss, acc = d.get("loss"), d.get("accuracy")
        defence = d.get("defence")
        return cls(
            round=int(d["round"]),
            sites=tuple(d.get("sites") or ()),
            dropped=tuple(d.get("dropped") or ()),
            loss=None if loss is None else float(loss),
            accuracy=None if acc is None else float(acc),
            epsilon={str(k): float(v) for k, v in (d.get("epsilon") or {}).items()},
            defence=dict(defence) if isinstance(defence, Mapping) else None,
        )


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
    """A site's whole ledger: ``epsilon_spent`` (at ``delta``) of ``epsilon_cap``, and ``remaining``."""

    site: str
    epsilon_spent: float
    delta: float
    epsilon_cap: float
    remaining: float


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """Every site's budget; ``report["site-a"].remaining``; iterate for the site names."""

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
            )
            for r in rows
        }
        return cls(sites=dict(sorted(sites.items())))

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
