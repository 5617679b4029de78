"""Bounds on every size, count and duration of a run request (:class:`RunLimits`), and checkpoint size estimates.

Every party checks a run request against them before anything is allocated
(:func:`fedjax_room.protocol.config.check_run_request`; docs/protocol.md, "Bounds on a run request").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from fedjax_room.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "RunLimits", "checkpoint_bytes_estimate"]


@dataclasses.dataclass(frozen=True)
class RunLimits:
    """Bounds on every size, count and duration of a run request, checked before anything is allocated.

    The defaults are what every party enforces (:meth:`RunConfig.from_dict` without ``limits``: the
    coordinator, each site, the analyst client). A room's operator may change them for the coordinator
    in ``DIR/limits.toml`` (a ``[run]`` table with these names; see ``docs/protocol.md``); a site keeps
    the defaults (and its own policy on top), so raising a bound here only helps if the sites agree.
    """

    max_params: int = 4_000_000  #: trainable parameters (from the spec, without building the model)
    max_layers: int = 64  #: layers in a spec
    max_activations: int = 16_000_000  #: per-example activations (input and every layer's output, summed)
    max_rounds: int = 1_000
    max_local_steps: int = 10_000
    max_total_steps: int = 100_000  #: rounds * local_steps: the DP-SGD steps each site's accountant composes
    #: rounds * local_steps / noise_multiplier**2 (fixed-noise runs): at noise 0.3 about 11,000 steps, a plan of ~3 s
    max_accountant_cost: float = 1.2e5
    max_batch_size: int = 4096
    max_learning_rate: float = 10.0
    max_server_learning_rate: float = 10.0
    min_clip_norm: float = 1e-6
    max_clip_norm: float = 1e4  #: clip_norm, site_clip_norm and secagg_range
    min_noise_multiplier: float = 0.3  #: noise_multiplier and site_noise_multiplier
    max_noise_multiplier: float = 1e4
    min_target_epsilon: float = 0.01
    max_target_epsilon: float = 50.0  #: above it a site's calibrated noise (and its accounting) gets tiny (slow)
    min_delta: float = 1e-12
    max_delta: float = 0.1
    min_round_timeout: float = 0.1
    max_round_timeout: float = 3600.0  #: seconds; a silent site holds a round at most this long
    max_min_sites: int = 1_000

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunLimits:
        """Validated limits from plain data (e.g. the ``[run]`` table of ``limits.toml``); unknown keys refused."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"run limits must be a table, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        extra = set(data) - set(fields)
        if extra:
            raise ConfigError(f"unknown run limits {sorted(extra)}; known: {sorted(fields)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            kind: type[int] | type[float] = int if isinstance(fields[key].default, int) else float
            ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(float(value))
            if not ok or value <= 0 or (kind is int and not float(value).is_integer()):
                raise ConfigError(f"run limit {key} must be a positive {kind.__name__}, got {value!r}")
            values[key] = kind(value)
        limits = cls(**values)
        for lo, hi in (
            ("min_clip_norm", "max_clip_norm"),
            ("min_noise_multiplier", "max_noise_multiplier"),
            ("min_target_epsilon", "max_target_epsilon"),
            ("min_delta", "max_delta"),
            ("min_round_timeout", "max_round_timeout"),
        ):
            if getattr(limits, lo) > getattr(limits, hi):
                raise ConfigError(f"run limit {lo} is above {hi}")
        if limits.max_delta >= 1:
            raise ConfigError("run limit max_delta must be below 1")
        return limits

    def to_dict(self) -> dict[str, Any]:
        """Plain data (documented in docs/protocol.md)."""
        return dataclasses.asdict(self)


DEFAULT_LIMITS = RunLimits()


#: Bytes of optimiser state per parameter byte that each server optimiser keeps in a checkpoint.
_OPT_STATE_FACTOR = {"fedavg": 0, "fedadam": 2, "fedyogi": 2}
#: Per-leaf msgpack overhead of an encoded array (dtype, shape, key), generously.
_LEAF_OVERHEAD = 256


def checkpoint_bytes_estimate(
    param_count: int, leaves: int, server_optimizer: str, *, averaged: bool = False
) -> tuple[int, int]:
    """``(params_bytes, checkpoint_bytes)``: an upper estimate of the float32 parameter payload (what a
    ``round_start`` carries) and of the whole checkpoint (parameters + server optimiser state, with one more copy
    of the model when the released model is an average of the iterates, ``averaged``)."""
    params_bytes = 4 * param_count + _LEAF_OVERHEAD * (leaves + 1)
    factor = _OPT_STATE_FACTOR.get(server_optimizer, 2) + (1 if averaged else 0)
    return params_bytes, params_bytes * (1 + factor) + 1024
