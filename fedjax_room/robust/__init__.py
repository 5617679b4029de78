"""Poisoning defence: robust aggregators, anomaly flags and trust, aggregate checks under secure aggregation, attacks.

* :mod:`.aggregators` -- ``get_aggregator(name, **options)``: ``fedavg``, ``mean``, ``median``,
  ``trimmed_mean``, ``krum``, ``multi_krum``, ``norm_bound`` behind one ``init`` / ``aggregate`` contract.
* :mod:`.server` -- ``server_optimizer("fedavg" | "fedadam" | "fedyogi", lr)`` and ``apply_aggregate``.
* :mod:`.anomaly` -- norm z-score, cosine to the robust centre, ``flag``, per-site trust.
* :mod:`.defence` -- ``RobustAggregation``: one round of flag -> trust -> exclude -> aggregate, by site name.
* :mod:`.secure_checks` -- what remains with secure aggregation; ``active_defences``.
* :mod:`.attacks` -- sign flip, boosted update, label flipping, Gaussian noise.
* :mod:`.tree` -- stacking per-site updates.

See docs/robustness.md.
"""

from fedjax_room.robust.aggregators import (
    AGGREGATORS,
    AggregateInfo,
    Aggregator,
    AggregatorState,
    coordinate_median,
    get_aggregator,
    krum,
    multi_krum,
    norm_bound,
    trimmed_mean,
    weighted_mean,
)
from fedjax_room.robust.anomaly import (
    AnomalyConfig,
    AnomalyScores,
    Flags,
    TrustState,
    flag,
    init_trust,
    score_updates,
    trust_excluded,
    update_trust,
)
from fedjax_room.robust.attacks import ATTACKS, Attack, choose_malicious, get_attack
from fedjax_room.robust.defence import RobustAggregation, RoundDefence
from fedjax_room.robust.secure_checks import (
    SECURE_AGGREGATORS,
    AggregateCheck,
    AggregateCheckConfig,
    AggregateCheckState,
    DefenceStatus,
    active_defences,
    check_aggregate,
    check_held_out_loss,
    check_secure_compatible,
    clip_update,
    describe_defences,
    init_aggregate_checks,
)
from fedjax_room.robust.server import SERVER_OPTIMIZERS, apply_aggregate, server_optimizer
from fedjax_room.robust.tree import stack_updates, unstack_updates

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "SECURE_AGGREGATORS",
    "SERVER_OPTIMIZERS",
    "AggregateCheck",
    "AggregateCheckConfig",
    "AggregateCheckState",
    "AggregateInfo",
    "Aggregator",
    "AggregatorState",
    "AnomalyConfig",
    "AnomalyScores",
    "Attack",
    "DefenceStatus",
    "Flags",
    "RobustAggregation",
    "RoundDefence",
    "TrustState",
    "active_defences",
    "apply_aggregate",
    "check_aggregate",
    "check_held_out_loss",
    "check_secure_compatible",
    "choose_malicious",
    "clip_update",
    "coordinate_median",
    "describe_defences",
    "flag",
    "get_aggregator",
    "get_attack",
    "init_aggregate_checks",
    "init_trust",
    "krum",
    "multi_krum",
    "norm_bound",
    "score_updates",
    "server_optimizer",
    "stack_updates",
    "trimmed_mean",
    "trust_excluded",
    "unstack_updates",
    "update_trust",
    "weighted_mean",
]
