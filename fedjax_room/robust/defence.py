"""One round of poisoning defence as the coordinator runs it: flag, update trust, exclude, aggregate.

This is the room-facing wrapper over :mod:`~fedjax_room.robust.anomaly` and
:mod:`~fedjax_room.robust.aggregators`, keyed by *site names* so that sites may
drop out or join between rounds::

    defence = RobustAggregation("trimmed_mean", anomaly=AnomalyConfig(exclude_below=0.5), beta=0.2)
    state = defence.init(["hospital-a", "hospital-b", ...])
    delta, state, report = defence.apply({site: (delta_tree, num_examples), ...}, state)
    audit.append("defence", run_id=..., round=..., **report.to_dict())

Per round: every received update is scored and flagged (:func:`anomaly.flag`),
each site's trust is updated, sites whose trust is now below
``anomaly.exclude_below`` get weight 0 (left out, still scored, so trust can
recover), and the aggregator combines the rest. ``delta`` comes back as a tree
of float32 numpy arrays with the structure of the updates; it is the
pseudo-gradient for the server optimiser (:mod:`~fedjax_room.robust.server`).

The state is a plain JSON-able dict (``round``, per-site ``trust`` / ``rounds`` /
``flags``), checkpointed with the run. The report (:class:`RoundDefence`) is
JSON-able too (NaN scores become ``None``). Only for runs *without* secure
aggregation: with it, see :mod:`~fedjax_room.robust.secure_checks`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.robust.aggregators import get_aggregator
from fedjax_room.robust.anomaly import AnomalyConfig, flag
from fedjax_room.robust.tree import stack_updates

__all__ = ["RobustAggregation", "RoundDefence"]

_DEFAULT = AnomalyConfig()


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class RoundDefence:
    """What the defence did in one round (all site lists sorted).

    Attributes:
      round: the round number (1-based, counted by the defence state).
      aggregator: the rule's name.
      sites: every site whose update was received and scored.
      flagged: ``{site: reasons}`` for each flagged site.
      excluded: sites left out because their trust is below the threshold.
      selected: sites whose update entered the aggregate.
      rejected: sites the rule itself left out (Krum, multi-Krum).
      trust: ``{site: trust}`` after this round.
      scores: ``{site: {"norm", "norm_z", "cosine", "cosine_z", "rule_score", "kept"}}`` (None for NaN).
    """

    round: int
    aggregator: str
    sites: tuple[str, ...]
    flagged: dict[str, tuple[str, ...]]
    excluded: tuple[str, ...]
    selected: tuple[str, ...]
    rejected: tuple[str, ...]
    trust: dict[str, float]
    scores: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for the audit log, run results and widgets)."""
        return {
            "round": self.round,
            "aggregator": self.aggregator,
            "sites": list(self.sites),
            "flagged": {s: list(r) for s, r in self.flagged.items()},
            "excluded": list(self.excluded),
            "selected": list(self.selected),
            "rejected": list(self.rejected),
            "trust": dict(self.trust),
            "scores": {s: dict(v) for s, v in self.scores.items()},
        }


class RobustAggregation:
    """Anomaly flags, trust and a robust aggregator for the room, keyed by site name.

    Args:
      aggregator: a name from :data:`fedjax_room.robust.aggregators.AGGREGATORS`.
      anomaly: detector thresholds and trust rule; ``None`` turns detection (and
        exclusion) off.
      **options: the aggregator's options (``beta=``, ``f=``, ``m=``, ``factor=``, ``max_norm=``).
    """

    def __init__(self, aggregator: str = "fedavg", *, anomaly: AnomalyConfig | None = _DEFAULT, **options: Any):
        self.aggregator = get_aggregator(aggregator, **options)
        self.name = aggregator
        if anomaly is not None and not isinstance(anomaly, AnomalyConfig):
            raise ConfigError("anomaly must be an AnomalyConfig or None")
        self.anomaly = None if anomaly is None else anomaly.validated()

    def init(self, sites: Iterable[str] = ()) -> dict[str, Any]:
        """A fresh state; ``sites`` (optional) are listed with full trust from the start."""
        sites = sorted(sites)
        return {
            "round": 0,
            "trust": {s: 1.0 for s in sites},
            "rounds": {s: 0 for s in sites},
            "flags": {s: 0 for s in sites},
        }

    def apply(
        self, updates: Mapping[str, tuple[Any, float]], state: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any], RoundDefence]:
        """Defend and aggregate one round of ``{site: (update_tree, weight)}``.

        Returns ``(delta, new_state, report)``. Raises :class:`RoundError` when no
        update is left to aggregate (none received, or every sender distrusted).
        """
        if not updates:
            raise RoundError("no updates to aggregate")
        sites = tuple(sorted(updates))
        stacked, _ = stack_updates({s: updates[s][0] for s in sites})
        weights = np.array([float(updates[s][1]) for s in sites], np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise RoundError("every update needs a positive, finite weight (its example count)")
        trust = dict(state.get("trust", {}))
        rounds = dict(state.get("rounds", {}))
        flags = dict(state.get("flags", {}))
        round_no = int(state.get("round", 0)) + 1

        flagged: dict[str, tuple[str, ...]] = {}
        site_scores: dict[str, dict[str, float | None]] = {s: {} for s in sites}
        excluded: list[str] = []
        if self.anomaly is not None:
            result = flag(stacked, weights, self.anomaly, sites=sites)
            decay = self.anomaly.trust_decay
            for i, s in enumerate(sites):
                hit = bool(result.flagged[i])
                if hit:
                    flagged[s] = result.reasons[i]
                trust[s] = decay * float(trust.get(s, 1.0)) + (1 - decay) * (0.0 if hit else 1.0)
                rounds[s] = int(rounds.get(s, 0)) + 1
                flags[s] = int(flags.get(s, 0)) + int(hit)
                site_scores[s].update(
                    norm=_num(result.scores.norms[i]),
                    norm_z=_num(result.scores.norm_z[i]),
                    cosine=_num(result.scores.cosine[i]),
                    cosine_z=_num(result.scores.cosine_z[i]),
                )
            if self.anomaly.exclude_below is not None:
                excluded = [s for s in sites if trust[s] < self.anomaly.exclude_below]
        agg_weights = np.where(np.isin(np.array(sites), excluded), 0.0, weights)
        if not np.any(agg_weights > 0):
            raise RoundError(
                f"round {round_no}: every site that sent an update ({', '.join(sites)}) has trust below "
                f"{self.anomaly.exclude_below if self.anomaly else 0:g}; nothing is left to aggregate"
            )
        delta, _, info = self.aggregator.aggregate(stacked, agg_weights)
        delta = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(delta))
        info = jax.device_get(info)
        selected = tuple(s for i, s in enumerate(sites) if bool(info.selected[i]))
        rejected = tuple(s for i, s in enumerate(sites) if not info.selected[i] and s not in excluded)
        for i, s in enumerate(sites):
            site_scores[s].update(rule_score=_num(info.scores[i]), kept=_num(info.kept[i]))
            site_scores[s].setdefault("norm", _num(info.norms[i]))
        new_state = {"round": round_no, "trust": trust, "rounds": rounds, "flags": flags}
        report = RoundDefence(
            round=round_no,
            aggregator=self.name,
            sites=sites,
            flagged=flagged,
            excluded=tuple(excluded),
            selected=selected,
            rejected=rejected,
            trust={s: round(trust.get(s, 1.0), 6) for s in sites},
            scores=site_scores,
        )
        return delta, new_state, report
