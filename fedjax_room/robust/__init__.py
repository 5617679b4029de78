"""Poisoning defence: robust aggregators, anomaly flags and trust, aggregate checks under secure aggregation, attacks.

* :mod:`.aggregators` -- ``get_aggregator(name, **options)``: ``fedavg``, ``mean``, ``median``,
  ``trimmed_mean``, ``krum``, ``multi_krum``, ``norm_bound`` behind one ``init`` / ``aggregate`` contract.
* :mod:`.server` -- ``server_optimizer("fedavg" | "fedadam" | "fedyogi", lr)``: the room's one server optimiser
  (numpy, bias-corrected Adam / Yogi as optax defines them).
* :mod:`.aggregate` -- ``aggregate`` (FedAvg over ``{site: (delta, weight)}``), ``check_update``.
* :mod:`.anomaly` -- norm z-score, cosine to the robust centre, ``flag``, per-site trust.
* :mod:`.defence` -- ``RobustAggregation``: one round of flag -> trust -> exclude -> aggregate, by site name.
* :mod:`.secure_checks` -- what remains with secure aggregation; ``active_defences``.
* :mod:`.attacks` -- sign flip, boosted update, label flipping, Gaussian noise.
* :mod:`.tree` -- stacking per-site updates.

See docs/robustness.md. Names are imported on first use: the server optimiser and ``check_update`` are numpy
only, so the coordinator's plain and secure FedAvg rounds never import JAX for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedjax_room._lazy import lazy_names

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from fedjax_room.robust.aggregate import FEDAVG_KINDS, aggregate, check_update, tree_digest_order
    from fedjax_room.robust.aggregators import (
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
    from fedjax_room.robust.names import AGGREGATORS, SECURE_AGGREGATORS, SERVER_OPTIMIZERS
    from fedjax_room.robust.secure_checks import (
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
    from fedjax_room.robust.server import ServerOptimizer, server_optimizer
    from fedjax_room.robust.tree import stack_updates, unstack_updates

#: where each public name lives
_WHERE = {
    "AGGREGATORS": "names",
    "AggregateInfo": "aggregators",
    "Aggregator": "aggregators",
    "AggregatorState": "aggregators",
    "coordinate_median": "aggregators",
    "get_aggregator": "aggregators",
    "krum": "aggregators",
    "multi_krum": "aggregators",
    "norm_bound": "aggregators",
    "trimmed_mean": "aggregators",
    "weighted_mean": "aggregators",
    "AnomalyConfig": "anomaly",
    "AnomalyScores": "anomaly",
    "Flags": "anomaly",
    "TrustState": "anomaly",
    "flag": "anomaly",
    "init_trust": "anomaly",
    "score_updates": "anomaly",
    "trust_excluded": "anomaly",
    "update_trust": "anomaly",
    "ATTACKS": "attacks",
    "Attack": "attacks",
    "choose_malicious": "attacks",
    "get_attack": "attacks",
    "RobustAggregation": "defence",
    "RoundDefence": "defence",
    "SECURE_AGGREGATORS": "names",
    "AggregateCheck": "secure_checks",
    "AggregateCheckConfig": "secure_checks",
    "AggregateCheckState": "secure_checks",
    "DefenceStatus": "secure_checks",
    "active_defences": "secure_checks",
    "check_aggregate": "secure_checks",
    "check_held_out_loss": "secure_checks",
    "check_secure_compatible": "secure_checks",
    "clip_update": "secure_checks",
    "describe_defences": "secure_checks",
    "init_aggregate_checks": "secure_checks",
    "SERVER_OPTIMIZERS": "names",
    "ServerOptimizer": "server",
    "server_optimizer": "server",
    "stack_updates": "tree",
    "unstack_updates": "tree",
    "FEDAVG_KINDS": "aggregate",
    "aggregate": "aggregate",
    "check_update": "aggregate",
    "tree_digest_order": "aggregate",
}

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
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
    "FEDAVG_KINDS",
    "Flags",
    "RobustAggregation",
    "RoundDefence",
    "SECURE_AGGREGATORS",
    "SERVER_OPTIMIZERS",
    "ServerOptimizer",
    "TrustState",
    "active_defences",
    "aggregate",
    "check_aggregate",
    "check_held_out_loss",
    "check_secure_compatible",
    "check_update",
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
    "tree_digest_order",
    "trimmed_mean",
    "trust_excluded",
    "unstack_updates",
    "update_trust",
    "weighted_mean",
]


__getattr__, __dir__ = lazy_names(__name__, _WHERE)
