"""The names of the room's aggregation rules and server optimisers, declared once (no JAX: run options read them).

:mod:`fedjax_room.robust.aggregators`, :mod:`~fedjax_room.robust.secure_checks`,
:mod:`~fedjax_room.robust.server` and :mod:`fedjax_room.protocol.config` all take them from here.
"""

from __future__ import annotations

__all__ = ["AGGREGATORS", "SECURE_AGGREGATORS", "SERVER_OPTIMIZERS"]

#: Every aggregation rule of :func:`fedjax_room.robust.aggregators.get_aggregator`.
AGGREGATORS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
#: The rules that still work on a sum, i.e. with secure aggregation (each site clips its own update).
SECURE_AGGREGATORS = ("fedavg", "mean")
#: Every server optimiser of :func:`fedjax_room.robust.server.server_optimizer`.
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")
