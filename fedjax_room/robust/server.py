"""The server optimiser: how the room moves the global model along a round's aggregate. The one definition.

A round is *aggregate -> server optimiser*. The aggregate (any rule of :mod:`fedjax_room.robust.aggregators`,
or the secure-aggregation sum) is a *pseudo-gradient*: the direction the model should move, a mean of
``local_params - global_params``. A :class:`ServerOptimizer` is a pair of pure functions, optax style::

    opt = server_optimizer("fedadam", learning_rate=0.01)
    state = opt.init(params)                          # {"count": 0, "m": zeros, "v": zeros}
    params, state = opt.update(delta, state, params)  # one round

* ``"fedavg"``: ``params + learning_rate * delta`` (1.0 is plain FedAvg); state ``{"count"}``.
* ``"fedadam"``: Adam on the gradient ``-delta`` **with bias correction**, exactly ``optax.adam(lr, b1, b2,
  eps=tau)``: ``m = b1 m + (1-b1) delta``, ``v = b2 v + (1-b2) delta^2``, ``params += lr * m_hat /
  (sqrt(v_hat) + tau)`` where ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)`` and ``t`` is the new
  ``count``. ``tau`` (the adaptivity of Reddi et al., 2021, "Adaptive Federated Optimization") is outside the
  square root, as in optax and Flower.
* ``"fedyogi"``: the same with Yogi's second moment ``v = v - (1-b2) delta^2 sign(v - delta^2)``, exactly
  ``optax.yogi(lr, b1, b2, eps=tau)`` but with both moments starting at zero, as in Flower and as the room's
  states always did (optax's ``scale_by_yogi(initial_accumulator_value=0)``; ``optax.yogi`` starts them at 1e-6).

Why this definition: it is the one optax and Flower implement (and docs/robustness.md documents), and it moves
the model by what ``learning_rate`` says. Without bias correction (the room's FedAdam before issue 15) a constant
aggregate's step is ``lr * (1 - b1^t) / sqrt(1 - b2^t)``: ``lr`` in round 1, 1.35 ``lr`` in round 2, up to 2.13
``lr`` in round 13, and back near ``lr`` only after ~300 rounds, so a learning rate tuned in a short run meant
something else in a long one.

Everything is numpy float32 and elementwise, leaves visited in sorted path order: no JAX, so the coordinator's
step is cheap and bit-reproducible, and a run replayed from a checkpoint gives bit-identical models. States are
plain trees (``count`` an int64 scalar), checkpointed with :func:`fedjax_room.protocol.codec.pack_tree`.
**Checkpoints written before bias correction** (same ``count`` / ``m`` / ``v`` tree: the moments were always
zero-initialised EMAs) load unchanged; their next step corrects at the stored ``count``
(``tests/robust/test_server.py::test_an_old_checkpoint_resumes_with_bias_correction_at_its_count``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError, StateError
from fedjax_room.robust.names import SERVER_OPTIMIZERS
from fedjax_room.tree import Tree, flatten_tree, unflatten_tree

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer", "averaged", "room_optimizer", "server_optimizer", "training_params"]


@dataclasses.dataclass(frozen=True)
class ServerOptimizer:
    """``init(params) -> state`` and ``update(delta, state, params) -> (new_params, new_state)``; pure, numpy."""

    init: Callable[[Tree], Tree]
    update: Callable[[Tree, Tree, Tree], tuple[Tree, Tree]]


def _map(fn: Callable[..., np.ndarray], *trees: Mapping[str, Any]) -> Tree:
    flats = [flatten_tree(t) for t in trees]
    paths = sorted(flats[0])
    for flat in flats[1:]:
        if sorted(flat) != paths:
            raise StateError("the server optimiser's trees do not match the model (missing or extra leaves)")
    return unflatten_tree({p: fn(*(np.asarray(f[p]) for f in flats)) for p in paths})


def _count(state: Mapping[str, Any]) -> int:
    try:  # a 0-d array, or the 1-element array a checkpoint's codec gives back
        raw = np.asarray(state["count"])
        if raw.size != 1 or not np.issubdtype(raw.dtype, np.integer):
            raise ValueError
        count = int(raw.reshape(()))
    except (KeyError, TypeError, ValueError):
        raise StateError("the server optimiser state has no integer count") from None
    if count < 0:
        raise StateError(f"the server optimiser state has a negative count {count}")
    return count


def _positive(value: Any, what: str, *, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    if below_one and value >= 1:
        raise ConfigError(f"{what} must be below 1, got {value!r}")
    return float(value)


def server_optimizer(
    name: str, learning_rate: float = 1.0, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3
) -> ServerOptimizer:
    """The server optimiser ``name`` (one of :data:`SERVER_OPTIMIZERS`); see the module docstring.

    ``b1``, ``b2`` and ``tau`` are used by ``fedadam`` and ``fedyogi`` only. Raises
    :class:`~fedjax_room.errors.ConfigError` for an unknown name or a non-positive learning rate.
    """
    lr = np.float32(_positive(learning_rate, "server learning_rate"))
    if name == "fedavg":

        def init_avg(params: Tree) -> Tree:
            return {"count": np.zeros((), np.int64)}

        def update_avg(delta: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
            new = _map(lambda p, d: (p + lr * d).astype(np.float32), params, delta)
            return new, {"count": np.asarray(_count(state) + 1, np.int64)}

        return ServerOptimizer(init_avg, update_avg)
    if name not in SERVER_OPTIMIZERS:
        raise ConfigError(f"unknown server optimizer {name!r}; choose one of {', '.join(SERVER_OPTIMIZERS)}")
    f1 = np.float32(_positive(b1, "b1", below_one=True))
    f2 = np.float32(_positive(b2, "b2", below_one=True))
    ftau = np.float32(_positive(tau, "tau"))
    one = np.float32(1.0)

    def second(v: np.ndarray, d: np.ndarray) -> np.ndarray:
        d2 = d * d
        if name == "fedadam":
            return (f2 * v + (one - f2) * d2).astype(np.float32)
        return (v - (one - f2) * np.sign(v - d2) * d2).astype(np.float32)  # Yogi

    def init(params: Tree) -> Tree:
        zeros = _map(lambda p: np.zeros(np.shape(p), np.float32), params)
        return {"count": np.zeros((), np.int64), "m": zeros, "v": _map(np.copy, zeros)}

    def update(delta: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        t = _count(state) + 1
        if "m" not in state or "v" not in state:
            raise StateError(f"the {name} state has no moments m and v (was it written by another optimiser?)")
        # the bias corrections in float32, as optax computes them (1 - b**t with t an int32 count)
        c1 = np.float32(one - f1 ** np.float32(t))
        c2 = np.float32(one - f2 ** np.float32(t))
        m = _map(lambda m_, d: (f1 * m_ + (one - f1) * d).astype(np.float32), state["m"], delta)
        v = _map(second, state["v"], delta)

        def step(p: np.ndarray, m_: np.ndarray, v_: np.ndarray) -> np.ndarray:
            return (p + lr * ((m_ / c1) / (np.sqrt(v_ / c2) + ftau))).astype(np.float32)

        new = _map(step, params, m, v)
        return new, {"count": np.asarray(t, np.int64), "m": m, "v": v}

    return ServerOptimizer(init, update)


def averaged(opt: ServerOptimizer, decay: float) -> ServerOptimizer:
    """``opt`` whose *released* model is an average of its iterates (post-processing of the releases: free).

    The global model the room stores, evaluates and releases is the average; the iterate ``opt`` moves is kept in
    the state (``state["raw"]``, with ``opt``'s own state in ``state["inner"]``), and it is what the sites train
    from (:func:`training_params`). After round ``t`` the average is ``a_t = d_t a_{t-1} + (1 - d_t) x_t`` with
    ``d_t = min(decay, (t - 1) / t)``: the plain mean of the iterates for the first ``1 / (1 - decay)`` rounds,
    then an exponential moving average (so the initial model never weighs in). ``decay = 0``: ``opt`` itself.
    """
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
        raise ConfigError(f"the model average's decay must be in [0, 1), got {decay!r}")
    if decay == 0:
        return opt
    d = float(decay)

    def init(params: Tree) -> Tree:
        return {"count": np.zeros((), np.int64), "inner": opt.init(params), "raw": _map(np.copy, params)}

    def update(delta: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        if "inner" not in state or "raw" not in state:
            raise StateError("the averaged server optimiser's state has no inner state and iterate")
        t = _count(state) + 1
        raw, inner = opt.update(delta, state["inner"], state["raw"])
        w = np.float32(min(d, (t - 1) / t))
        avg = _map(lambda a, x: (w * a + (np.float32(1.0) - w) * x).astype(np.float32), params, raw)
        return avg, {"count": np.asarray(t, np.int64), "inner": inner, "raw": raw}

    return ServerOptimizer(init, update)


def training_params(params: Tree, state: Mapping[str, Any]) -> Tree:
    """The model the sites train from: the optimiser's iterate when the released model is an average
    (:func:`averaged`), else ``params`` itself."""
    raw = state.get("raw") if isinstance(state, Mapping) else None
    return raw if raw is not None else params


def room_optimizer(config: Any) -> ServerOptimizer:
    """The server optimiser of a run config: its ``server_optimizer`` at ``server_learning_rate``, averaged with
    ``model_average``."""
    return averaged(server_optimizer(config.server_optimizer, config.server_learning_rate), config.model_average)
