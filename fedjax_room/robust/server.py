"""Server optimisers that apply an aggregate (a pseudo-gradient) to the global model.

A round is *preprocess -> aggregate -> server optimiser*. Any aggregator in
:mod:`fedjax_room.robust.aggregators` returns the direction the model should
move (a mean of ``local_params - global_params``); the server optimiser treats
its negation as a gradient (Reddi et al., 2021, "Adaptive Federated
Optimization")::

    tx = server_optimizer("fedadam", learning_rate=0.01)
    opt_state = tx.init(params)
    params, opt_state = apply_aggregate(tx, params, delta, opt_state)

``"fedavg"`` is SGD with learning rate ``learning_rate`` (1.0 reproduces plain
FedAvg, ``params + delta``); ``"fedadam"`` and ``"fedyogi"`` are
``optax.adam`` / ``optax.yogi`` with ``eps = tau`` (the adaptivity, default
1e-3 as in the paper). Robust aggregation and adaptive server optimisers
compose: robustness bounds what enters the pseudo-gradient, the optimiser
decides how far to move along it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

from fedjax_room.errors import ConfigError

__all__ = ["SERVER_OPTIMIZERS", "apply_aggregate", "server_optimizer"]

#: Every server optimiser :func:`server_optimizer` knows.
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")


def server_optimizer(
    name: str, learning_rate: float = 1.0, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3
) -> optax.GradientTransformation:
    """The optax transformation for server optimiser ``name`` (one of :data:`SERVER_OPTIMIZERS`).

    Feed it the *negative* aggregate (see :func:`apply_aggregate`). ``b1``, ``b2``
    and ``tau`` (the epsilon) are used by ``fedadam`` and ``fedyogi`` only.
    """
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not math.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ConfigError(f"server learning_rate must be a positive number, got {learning_rate!r}")
    lr = float(learning_rate)
    if name == "fedavg":
        return optax.sgd(lr)
    if name == "fedadam":
        return optax.adam(lr, b1=b1, b2=b2, eps=tau)
    if name == "fedyogi":
        return optax.yogi(lr, b1=b1, b2=b2, eps=tau)
    raise ConfigError(f"unknown server optimizer {name!r}; choose one of {', '.join(SERVER_OPTIMIZERS)}")


def apply_aggregate(
    tx: optax.GradientTransformation, params: Any, aggregate: Any, opt_state: optax.OptState
) -> tuple[Any, optax.OptState]:
    """Move ``params`` along ``aggregate`` with ``tx``: ``-aggregate`` is the gradient it sees.

    Returns ``(new_params, new_opt_state)``. Pure; safe under ``jax.jit``.
    """
    grads = jax.tree_util.tree_map(lambda d: -d, aggregate)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
