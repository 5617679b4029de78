"""Differential privacy for the site trainer: DP-SGD as optax pieces, and its accounting.

The public API, importable from here like optax's::

    from fedjax_room import dp
    grad_fn = dp.clipped_grad(loss_fn, clip_norm=1.0)
    tx = dp.dpsgd(0.1, clip_norm=1.0, noise_multiplier=1.1, expected_batch_size=64.0, key=key)
    eps = dp.epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=1000, delta=1e-5)

* :mod:`.clipping` -- :func:`clipped_grad`, :func:`per_example_grads` (``vmap`` or the fast Gram path).
* :mod:`.noise` -- :func:`gaussian_noise`, the Gaussian mechanism as an optax transformation.
* :mod:`.optimizer` -- :func:`dpsgd` and :func:`make_dp_train_step`, the jitted private step.
* :mod:`.sampling` -- :func:`poisson_sample` and the batch-size bounds of Poisson sampling.
* :mod:`.accounting` -- :class:`Accountant`, :func:`dpsgd_event`, :func:`epsilon`, :func:`calibrate_noise`.
* :mod:`.float_bounds` and :mod:`.fast_clipping` are the clipping machinery (certified float32 bounds,
  ghost norms); their names stay in those modules.

The names are resolved on first use (PEP 562): ``import fedjax_room.dp.accounting`` (the site ledger, the
``privacy`` command) does not import JAX and Flax, which only the clipping and optimiser modules need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedjax_room._lazy import lazy_names

if TYPE_CHECKING:
    from fedjax_room.dp.accounting import (
        ACCOUNTANTS,
        EVENT_TYPES,
        INTEGER_RDP_ORDERS,
        PLD_VALUE_DISCRETIZATION,
        RDP_ORDERS,
        Accountant,
        calibrate_noise,
        dpsgd_event,
        epsilon,
        event_from_dict,
        event_to_dict,
    )
    from fedjax_room.dp.clipping import METHODS, ClippedGradFn, clipped_grad, per_example_grads
    from fedjax_room.dp.noise import GaussianNoiseState, gaussian_noise, standard_normal_like
    from fedjax_room.dp.optimizer import DPTrainStep, dpsgd, make_dp_train_step
    from fedjax_room.dp.sampling import binomial_tail, max_batch_size_for, overflow_probability, poisson_sample

# name -> the submodule that defines it (each is in that module's own __all__; tests/dp/test_public_api.py).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "ACCOUNTANTS",
            "EVENT_TYPES",
            "INTEGER_RDP_ORDERS",
            "PLD_VALUE_DISCRETIZATION",
            "RDP_ORDERS",
            "Accountant",
            "calibrate_noise",
            "dpsgd_event",
            "epsilon",
            "event_from_dict",
            "event_to_dict",
        ],
        "accounting",
    ),
    **dict.fromkeys(["METHODS", "ClippedGradFn", "clipped_grad", "per_example_grads"], "clipping"),
    **dict.fromkeys(["GaussianNoiseState", "gaussian_noise", "standard_normal_like"], "noise"),
    **dict.fromkeys(["DPTrainStep", "dpsgd", "make_dp_train_step"], "optimizer"),
    **dict.fromkeys(["binomial_tail", "max_batch_size_for", "overflow_probability", "poisson_sample"], "sampling"),
}

__all__ = [
    "ACCOUNTANTS",
    "EVENT_TYPES",
    "INTEGER_RDP_ORDERS",
    "METHODS",
    "PLD_VALUE_DISCRETIZATION",
    "RDP_ORDERS",
    "Accountant",
    "ClippedGradFn",
    "DPTrainStep",
    "GaussianNoiseState",
    "binomial_tail",
    "calibrate_noise",
    "clipped_grad",
    "dpsgd",
    "dpsgd_event",
    "epsilon",
    "event_from_dict",
    "event_to_dict",
    "gaussian_noise",
    "make_dp_train_step",
    "max_batch_size_for",
    "overflow_probability",
    "per_example_grads",
    "poisson_sample",
    "standard_normal_like",
]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
