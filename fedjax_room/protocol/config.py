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

__all__ = [
    "AGGREGATORS",
    "SECURE_AGGREGATORS",
    "SERVER_OPTIMIZERS",
    "RunConfig",
    "RunLimits",
    "check_run_request",
    "checkpoint_bytes_estimate",
]

#: Aggregators the coordinator implements (``fedjax_room.robust.AGGREGATORS``; kept here without importing JAX):
#: example-weighted mean (FedAvg), plain mean, and the robust rules.
AGGREGATORS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
#: The aggregators that still work on a sum, i.e. with secure aggregation (``robust.SECURE_AGGREGATORS``).
SECURE_AGGREGATORS = ("fedavg", "mean")
#: Server optimisers applied to the aggregated update.
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")


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
            kind = type(fields[key].default)
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


def _num(
    data: Mapping[str, Any],
    key: str,
    default: Any,
    *,
    positive: bool = True,
    allow_none: bool = False,
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
        raise ConfigError(f"{key} = {value:g} is outside this room's bounds {bounds}")
    return value


def _int(data: Mapping[str, Any], key: str, default: Any, *, lo: int, hi: int, allow_none: bool = False) -> Any:
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}] (this room's bounds), got {value!r}")
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
    def from_dict(cls, data: Mapping[str, Any] | RunConfig, *, limits: RunLimits | None = None) -> RunConfig:
        """Validate plain data into a config within ``limits`` (default :class:`RunLimits`); raise
        :class:`ConfigError` saying what to change."""
        lim = limits or DEFAULT_LIMITS
        if isinstance(data, RunConfig):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a map, got {type(data).__name__}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        extra = set(data) - set(fields)
        if extra:
            raise ConfigError(f"unknown run settings {sorted(extra)}; known: {sorted(fields)}")
        target = _num(
            data,
            "target_epsilon",
            fields["target_epsilon"],
            allow_none=True,
            lo=lim.min_target_epsilon,
            hi=lim.max_target_epsilon,
        )
        noise = _num(
            data,
            "noise_multiplier",
            fields["noise_multiplier"],
            allow_none=True,
            lo=lim.min_noise_multiplier,
            hi=lim.max_noise_multiplier,
        )
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
        delta = _num(data, "delta", fields["delta"], lo=lim.min_delta, hi=lim.max_delta)
        # the cost bounds first: the accountant's work grows with these (checked before anything else is built)
        rounds = _int(data, "rounds", fields["rounds"], lo=1, hi=lim.max_rounds)
        local_steps = _int(data, "local_steps", fields["local_steps"], lo=1, hi=lim.max_local_steps)
        if rounds * local_steps > lim.max_total_steps:
            raise ConfigError(
                f"rounds * local_steps = {rounds * local_steps} DP-SGD steps is over this room's bound of "
                f"{lim.max_total_steps}; use fewer rounds or local steps"
            )
        if noise is not None and rounds * local_steps / noise**2 > lim.max_accountant_cost:
            raise ConfigError(
                f"rounds * local_steps / noise_multiplier^2 = {rounds * local_steps / noise**2:.3g} is over this "
                f"room's bound of {lim.max_accountant_cost:g} (accounting work and privacy loss both grow with it); "
                "raise noise_multiplier or use fewer steps"
            )
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
        site_noise = _num(
            data,
            "site_noise_multiplier",
            None,
            allow_none=True,
            lo=lim.min_noise_multiplier,
            hi=lim.max_noise_multiplier,
        )
        if site_noise is not None and not secure:
            raise ConfigError(
                "site_noise_multiplier (distributed DP) needs secure_aggregation=True: without it the coordinator "
                "would see each site's less-noised update"
            )
        clip = {"lo": lim.min_clip_norm, "hi": lim.max_clip_norm}
        return cls(
            rounds=rounds,
            target_epsilon=target,
            noise_multiplier=noise,
            delta=delta,
            clip_norm=_num(data, "clip_norm", fields["clip_norm"], **clip),
            batch_size=_int(data, "batch_size", fields["batch_size"], lo=1, hi=lim.max_batch_size),
            local_steps=local_steps,
            learning_rate=_num(data, "learning_rate", fields["learning_rate"], lo=0.0, hi=lim.max_learning_rate),
            aggregator=aggregator,
            server_optimizer=server_optimizer,
            server_learning_rate=_num(
                data, "server_learning_rate", fields["server_learning_rate"], lo=0.0, hi=lim.max_server_learning_rate
            ),
            secure_aggregation=secure,
            min_sites=_int(data, "min_sites", None, lo=1, hi=lim.max_min_sites, allow_none=True),
            round_timeout=_num(
                data, "round_timeout", fields["round_timeout"], lo=lim.min_round_timeout, hi=lim.max_round_timeout
            ),
            seed=_int(data, "seed", fields["seed"], lo=0, hi=2**63 - 1),
            exclude_below=exclude_below,
            site_noise_multiplier=site_noise,
            site_clip_norm=_num(data, "site_clip_norm", fields["site_clip_norm"], **clip),
            secagg_range=_num(data, "secagg_range", fields["secagg_range"], **clip),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes``."""
        return RunConfig.from_dict({**self.to_dict(), **changes})


#: Bytes of optimiser state per parameter byte that each server optimiser keeps in a checkpoint.
_OPT_STATE_FACTOR = {"fedavg": 0, "fedadam": 2, "fedyogi": 2}
#: Per-leaf msgpack overhead of an encoded array (dtype, shape, key), generously.
_LEAF_OVERHEAD = 256


def checkpoint_bytes_estimate(param_count: int, leaves: int, server_optimizer: str) -> tuple[int, int]:
    """``(params_bytes, checkpoint_bytes)``: an upper estimate of the float32 parameter payload (what a
    ``round_start`` carries) and of the whole checkpoint (parameters + server optimiser state)."""
    params_bytes = 4 * param_count + _LEAF_OVERHEAD * (leaves + 1)
    factor = _OPT_STATE_FACTOR.get(server_optimizer, 2)
    return params_bytes, params_bytes * (1 + factor) + 1024


def check_run_request(
    spec: Any,
    config: Any,
    *,
    limits: RunLimits | None = None,
    max_frame: int,
    max_checkpoint: int,
) -> tuple[Any, RunConfig]:
    """Validate a ``start_run`` request's spec and config against ``limits`` with cost estimates first.

    Nothing is built: the layer count, parameter count and activation size come from the spec alone
    (:meth:`~fedjax_room.models.spec.ModelSpec.param_count`), the accountant's work from the config, and
    the checkpoint size from both, checked against ``max_frame`` (a ``round_start`` must fit in one
    frame) and ``max_checkpoint`` (the store's reader limit: a model the room cannot checkpoint and read
    back is refused here). Returns ``(ModelSpec, RunConfig)``; raises :class:`ConfigError` (or
    :class:`~fedjax_room.errors.ModelSpecError`) saying which bound.
    """
    from fedjax_room.errors import ModelSpecError
    from fedjax_room.models.spec import ModelSpec

    lim = limits or DEFAULT_LIMITS
    if isinstance(spec, Mapping):
        layers = spec.get("layers")
        if isinstance(layers, list | tuple) and len(layers) > lim.max_layers:
            raise ModelSpecError(f"a spec of {len(layers)} layers is over this room's bound of {lim.max_layers}")
    model = ModelSpec.from_dict(spec)
    if len(model.layers) > lim.max_layers:
        raise ModelSpecError(f"a spec of {len(model.layers)} layers is over this room's bound of {lim.max_layers}")
    count = model.param_count()
    if count > lim.max_params:
        raise ModelSpecError(
            f"the model has {count:,} parameters, over this room's bound of {lim.max_params:,}; use a smaller model"
        )
    activations = math.prod(model.input_shape) + sum(math.prod(s) for s in model.output_shapes())
    if activations > lim.max_activations:
        raise ModelSpecError(
            f"the model has {activations:,} activations per example, over this room's bound of "
            f"{lim.max_activations:,}; use a smaller input or fewer features"
        )
    run = RunConfig.from_dict(config, limits=lim)
    leaves = 2 * sum(1 for layer in model.layers if layer["type"] in ("dense", "conv"))
    params_bytes, checkpoint_bytes = checkpoint_bytes_estimate(count, leaves, run.server_optimizer)
    if params_bytes > max_frame - 64 * 1024:
        raise ModelSpecError(
            f"the model's parameters take about {params_bytes:,} bytes, more than fit in one frame "
            f"({max_frame:,} bytes); use a smaller model"
        )
    if checkpoint_bytes > max_checkpoint:
        raise ModelSpecError(
            f"a checkpoint of this model with {run.server_optimizer} takes about {checkpoint_bytes:,} bytes, over "
            f"the room's checkpoint limit of {max_checkpoint:,} bytes; use a smaller model or server_optimizer fedavg"
        )
    return model, run
