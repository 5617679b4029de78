"""A site's part of a secure-aggregation round: its update as a ring vector, and what that costs at site level.

Under secure aggregation the update leaves the site only masked, inside SecAgg frames: :func:`secure_vector`
encodes it in fixed point (scaled by the site's FedAvg fraction), or, with distributed noise (the default), its sum of
clipped gradients plus its share of the DP-SGD noise (:mod:`fedjax_room.secagg.record_noise`), or, with distributed DP
(``site_noise_multiplier``), clipped to ``site_clip_norm`` plus this site's share of the Skellam noise, seeded
from the site secret. :func:`site_event` is the site-level DP event one such release costs (composed into the
site-level ledger, :mod:`fedjax_room.site.spending`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureTrain, flatten_update, make_encoder
from fedjax_room.secagg import SecAggConfig

__all__ = ["pairwise_noise", "secure_vector", "site_event"]


def secure_vector(
    delta: Any,
    config: RunConfig,
    secure: SecureTrain,
    noise_seed: int,
    noise_multiplier: float = 0.0,
    *,
    share: bool = True,
) -> np.ndarray:
    """The update ``delta`` as a SecAgg ring vector (``noise_seed``: the round's secret site-noise seed). With
    ``distributed_noise``, ``delta`` is the site's sum of clipped gradients, ``noise_multiplier`` its plan's and
    ``share`` whether it adds only its share of the noise (its policy's ``noise_shares``)."""
    encoder = make_encoder(config, SecAggConfig.from_dict(secure.setup.config), noise_multiplier, share=share)
    flat = flatten_update(dict(delta))
    if config.distributed_noise:
        return encoder.encode(flat, np.random.default_rng([noise_seed, 13]))
    if config.site_noise_multiplier is not None:
        return encoder.encode(flat, np.random.default_rng([noise_seed, 11]))
    return encoder.encode(secure.setup.fraction * flat)


def pairwise_noise(
    config: RunConfig, secure: SecureTrain, noise_seed: int, noise_multiplier: float, *, share: bool = True
) -> Callable[[frozenset[int], Mapping[int, bytes]], np.ndarray] | None:
    """A distributed-noise round's pairwise noise terms, for the SecAgg client to add just before masking
    (``SecAggClient.set_input``'s ``extra``; :meth:`~fedjax_room.secagg.record_noise.RecordNoise.pairwise_terms`),
    or None when the round's shares are not pairwise (no distributed noise, ``share`` off, or a threshold under
    ``n - 1``). Its independent draws come from ``noise_seed`` (the round's secret site-noise seed)."""
    if not config.distributed_noise:
        return None
    secagg = SecAggConfig.from_dict(secure.setup.config)
    encoder = make_encoder(config, secagg, noise_multiplier, share=share)
    if not encoder.pairwise:
        return None
    me, roster, context = int(secure.setup.id), tuple(secagg.clients), secagg.digest
    rng = np.random.default_rng([noise_seed, 17])

    def terms(alive: frozenset[int], secrets: Mapping[int, bytes]) -> np.ndarray:
        return np.asarray(encoder.pairwise_terms(me, roster, alive, secrets, context, rng))

    return terms


def site_event(config: RunConfig, secure: SecureTrain) -> Any:
    """The site-level DP event of one distributed-DP release in this secure round."""
    return make_encoder(config, SecAggConfig.from_dict(secure.setup.config)).dp_event(1)
