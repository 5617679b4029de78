"""The run configuration an analyst asks for: validated plain data, shared by all three parties.

:class:`RunConfig` is what travels in ``StartRun`` and ``RunOffer`` next to the model spec. It keeps
privacy settings (``target_epsilon`` or ``noise_multiplier``, ``delta``, ``clip_norm``) apart from
performance settings (``batch_size``, ``local_steps``, learning rates). Exactly one of
``target_epsilon`` and ``noise_multiplier`` is set: with a target, each site calibrates its own noise
so that the whole run (training and evaluation releases) stays within it; with a fixed noise
multiplier, each site spends what that costs on its data and refuses a round that would pass its cap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from fedjax_room.errors import ConfigError

__all__ = ["AGGREGATORS", "SECURE_AGGREGATORS", "SERVER_OPTIMIZERS", "RunConfig"]

#: Aggregators the coordinator implements (``fedjax_room.robust.AGGREGATORS``; kept here without importing JAX):
#: example-weighted mean (FedAvg), plain mean, and the robust rules.
AGGREGATORS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
#: The aggregators that still work on a sum, i.e. with secure aggregation (``robust.SECURE_AGGREGATORS``).
SECURE_AGGREGATORS = ("fedavg", "mean")
#: Server optimisers applied to the aggregated update.
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")

_MAX_ROUNDS = 10_000
_MAX_STEPS = 100_000


def _num(data: Mapping[str, Any], key: str, default: Any, *, positive: bool = True, allow_none: bool = False) -> Any:
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")
    return value


def _int(data: Mapping[str, Any], key: str, default: Any, *, lo: int, hi: int, allow_none: bool = False) -> Any:
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything about a run except the model spec. Build with :meth:`from_dict` (validated)."""

    rounds: int = 5
    target_epsilon: float | None = 3.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    clip_norm: float = 1.0
    batch_size: int = 32
    local_steps: int = 10
    learning_rate: float = 0.1
    aggregator: str = "fedavg"
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    secure_aggregation: bool = False
    min_sites: int | None = None
    round_timeout: float = 60.0
    seed: int = 0
    #: leave out of the aggregate a site whose trust (anomaly flags over rounds) falls below this; None: flag only
    exclude_below: float | None = None
    #: distributed DP (needs secure_aggregation): each site clips its whole update to ``site_clip_norm`` and adds its
    #: share of Skellam noise so the unmasked sum carries ``site_noise_multiplier * site_clip_norm``; None: off
    site_noise_multiplier: float | None = None
    site_clip_norm: float = 1.0
    #: secure aggregation without distributed DP: each coordinate of a site's (weighted) update is clipped to
    #: [-secagg_range, secagg_range] before fixed-point encoding
    secagg_range: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | RunConfig) -> RunConfig:
        """Validate plain data into a config; raise :class:`ConfigError` saying what to change."""
        if isinstance(data, RunConfig):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a map, got {type(data).__name__}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        extra = set(data) - set(fields)
        if extra:
            raise ConfigError(f"unknown run settings {sorted(extra)}; known: {sorted(fields)}")
        target = _num(data, "target_epsilon", fields["target_epsilon"], allow_none=True)
        noise = _num(data, "noise_multiplier", fields["noise_multiplier"], allow_none=True)
        if "noise_multiplier" in data and data["noise_multiplier"] is not None and "target_epsilon" not in data:
            target = None
        if (target is None) == (noise is None):
            raise ConfigError(
                "give exactly one of target_epsilon (each site calibrates its noise) and noise_multiplier "
                "(fixed noise); set the other to None"
            )
        delta = _num(data, "delta", fields["delta"])
        if not delta < 1:
            raise ConfigError(f"delta must be in (0, 1), typically below 1/num_examples, got {delta}")
        aggregator = data.get("aggregator", fields["aggregator"])
        if aggregator not in AGGREGATORS:
            raise ConfigError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
        server_optimizer = data.get("server_optimizer", fields["server_optimizer"])
        if server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(
                f"unknown server_optimizer {server_optimizer!r}; choose one of {', '.join(SERVER_OPTIMIZERS)}"
            )
        secure = data.get("secure_aggregation", False)
        if not isinstance(secure, bool):
            raise ConfigError(f"secure_aggregation must be true or false, got {secure!r}")
        if secure and aggregator not in SECURE_AGGREGATORS:  # mirrors robust.check_secure_compatible
            raise ConfigError(
                f"aggregator {aggregator!r} needs each site's update, but secure aggregation shows the coordinator "
                f"only their sum; use {' or '.join(SECURE_AGGREGATORS)} (each site clips its own update), or turn "
                "secure aggregation off"
            )
        exclude_below = _num(data, "exclude_below", None, allow_none=True)
        if exclude_below is not None and not 0 < exclude_below <= 1:
            raise ConfigError(f"exclude_below (a trust threshold) must be in (0, 1] or None, got {exclude_below:g}")
        if exclude_below is not None and secure:
            raise ConfigError(
                "exclude_below needs per-site anomaly flags, but secure aggregation hides each site's update; "
                "leave exclude_below unset or turn secure aggregation off"
            )
        site_noise = _num(data, "site_noise_multiplier", None, allow_none=True)
        if site_noise is not None and not secure:
            raise ConfigError(
                "site_noise_multiplier (distributed DP) needs secure_aggregation=True: without it the coordinator "
                "would see each site's less-noised update"
            )
        return cls(
            rounds=_int(data, "rounds", fields["rounds"], lo=1, hi=_MAX_ROUNDS),
            target_epsilon=target,
            noise_multiplier=noise,
            delta=delta,
            clip_norm=_num(data, "clip_norm", fields["clip_norm"]),
            batch_size=_int(data, "batch_size", fields["batch_size"], lo=1, hi=1 << 20),
            local_steps=_int(data, "local_steps", fields["local_steps"], lo=1, hi=_MAX_STEPS),
            learning_rate=_num(data, "learning_rate", fields["learning_rate"]),
            aggregator=aggregator,
            server_optimizer=server_optimizer,
            server_learning_rate=_num(data, "server_learning_rate", fields["server_learning_rate"]),
            secure_aggregation=secure,
            min_sites=_int(data, "min_sites", None, lo=1, hi=10_000, allow_none=True),
            round_timeout=_num(data, "round_timeout", fields["round_timeout"]),
            seed=_int(data, "seed", fields["seed"], lo=0, hi=2**63 - 1),
            exclude_below=exclude_below,
            site_noise_multiplier=site_noise,
            site_clip_norm=_num(data, "site_clip_norm", fields["site_clip_norm"]),
            secagg_range=_num(data, "secagg_range", fields["secagg_range"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes``."""
        return RunConfig.from_dict({**self.to_dict(), **changes})
