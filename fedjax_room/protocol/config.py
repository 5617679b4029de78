"""The run configuration an analyst asks for: validated plain data, shared by all three parties.

:class:`RunConfig` is what travels in ``StartRun`` and ``RunOffer`` next to the model spec. It keeps
privacy settings (``target_epsilon`` or ``noise_multiplier``, ``delta``, ``clip_norm``) apart from
performance settings (``batch_size``, ``local_steps``, learning rates). Exactly one of
``target_epsilon`` and ``noise_multiplier`` is set: with a target, each site calibrates its own noise
so that the whole run (training and evaluation releases) stays within it; with a fixed noise
multiplier, each site spends what that costs on its data and refuses a round that would pass its cap.

Each field of :class:`RunConfig` is the one declaration of a run option (type, default, bounds, help);
:func:`run_options` / :func:`options_schema` are its machine-readable form, which every surface is generated
from (:mod:`fedjax_room.protocol.options`). The bounds are :class:`~fedjax_room.protocol.limits.RunLimits`
(re-exported here); :func:`check_run_request` checks a whole ``start_run`` request against them.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from typing import Any

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.limits import DEFAULT_LIMITS, RunLimits, checkpoint_bytes_estimate
from fedjax_room.robust.names import AGGREGATORS, SECURE_AGGREGATORS, SERVER_OPTIMIZERS

__all__ = [
    "AGGREGATORS",
    "DEFAULT_LIMITS",
    "LOCAL_OPTIMIZERS",
    "OPTIONS_SCHEMA_VERSION",
    "OPTION_GROUPS",
    "SECURE_AGGREGATORS",
    "SERVER_OPTIMIZERS",
    "STORED_BEFORE",
    "OptionSpec",
    "RunConfig",
    "RunLimits",
    "check_run_request",
    "distributed_by_default",
    "checkpoint_bytes_estimate",
    "options_schema",
    "protections",
    "run_option",
    "run_options",
    "secure_by_default",
]

#: Local optimisers a site may run after the DP noise (``fedjax_room.local.trainer.OPTIMIZERS``; kept here
#: without importing JAX): plain SGD, or heavy-ball momentum 0.9.
LOCAL_OPTIMIZERS = ("sgd", "momentum")
#: The groups a run option belongs to, in the order a form shows them.
OPTION_GROUPS = ("privacy", "training", "aggregation", "room")
#: Version of :func:`options_schema`'s JSON shape (bumped when a key changes meaning).
OPTIONS_SCHEMA_VERSION = 1

_KINDS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_PY_TYPES: dict[str, type] = {kind: py for py, kind in _KINDS.items()}


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One run option as every surface shows it: :func:`run_options` lists them, :meth:`to_dict` is its JSON.

    ``type`` is ``"int" | "float" | "bool" | "str"``; ``nullable`` says ``None`` is a value ("off" or "not
    set"); ``minimum``/``maximum`` are the bounds (``exclusive_minimum``: the value must be above ``minimum``),
    ``choices`` the allowed strings. ``basic`` marks the few options a short form shows up front.
    """

    name: str
    type: str
    default: Any
    help: str
    group: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    basic: bool = False

    @property
    def python_type(self) -> builtins.type:
        """``int``, ``float``, ``bool`` or ``str``."""
        return _PY_TYPES[self.type]

    @property
    def flag(self) -> str:
        """The command-line flag: ``--target-epsilon`` for ``target_epsilon``."""
        return "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        """``[1, 1000]``, ``(0, 10]``; empty without bounds."""
        if self.minimum is None and self.maximum is None:
            return ""
        lo = "-inf" if self.minimum is None else _number_text(self.minimum)
        hi = "inf" if self.maximum is None else _number_text(self.maximum)
        return f"{'(' if self.exclusive_minimum else '['}{lo}, {hi}]"

    def check(self, value: Any) -> Any:
        """``value`` validated (ints and floats normalised); raises :class:`ConfigError` saying what to change."""
        name = self.name
        if value is None and self.nullable:
            return None
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            return value
        if self.type == "str":
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(self.choices or ())}")
            return value
        if self.type == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            lo = -math.inf if self.minimum is None else self.minimum
            hi = math.inf if self.maximum is None else self.maximum
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(
                    f"{name} must be an integer in [{self.minimum}, {self.maximum}] (this room's bounds), got {value!r}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        number = float(value)
        if self.exclusive_minimum and self.minimum == 0 and number <= 0:
            raise ConfigError(f"{name} must be positive, got {number:g}")
        low = self.minimum is not None and (number <= self.minimum if self.exclusive_minimum else number < self.minimum)
        if low or (self.maximum is not None and number > self.maximum):
            raise ConfigError(f"{name} = {number:g} is outside this room's bounds {self.bounds_text()}")
        return number

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the shape documented in docs/protocol.md, "Run options")."""
        out = dataclasses.asdict(self)
        out["choices"] = list(self.choices) if self.choices is not None else None
        return out


@dataclasses.dataclass(frozen=True)
class _Decl:
    """How a :class:`RunConfig` field is checked and shown; bounds are numbers or :class:`RunLimits` names."""

    help: str
    group: str
    lo: float | str | None = None
    hi: float | str | None = None
    above: bool = False  # the lower bound is exclusive
    choices: tuple[str, ...] | None = None
    basic: bool = False


def _opt(
    default: Any,
    help: str,
    group: str,
    *,
    lo: float | str | None = None,
    hi: float | str | None = None,
    above: bool = False,
    choices: tuple[str, ...] | None = None,
    basic: bool = False,
) -> Any:
    """A :class:`RunConfig` field with its declaration (help, group, bounds, choices) as metadata."""
    decl = _Decl(help=help, group=group, lo=lo, hi=hi, above=above, choices=choices, basic=basic)
    return dataclasses.field(default=default, metadata={"option": decl})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything about a run except the model spec. Build with :meth:`from_dict` (validated).

    Each field is declared once, here, with its type, default, bounds (numbers or :class:`RunLimits` names)
    and help text; :func:`run_options` reads them, and ``Room.train``, the ``%%room train`` magic, the launch
    form, the sidebar (``GET /fedjax-room/options``) and the CLI are generated from that list. Adding an
    option here adds it everywhere (the site or coordinator still has to use it).
    """

    # The training defaults are tuned for epsilon 3 per site (benchmarks/utility.py, benchmarks/README.md): one
    # full-batch step per round with the noise added once across the sites (distributed_noise), a small clip norm
    # (every gradient is clipped: normalised-gradient DP-GD) with a large step (learning_rate x server_learning_rate
    # = 80), and the released model a moving average of the iterates (model_average).
    rounds: int = _opt(60, "federated rounds", "training", lo=1, hi="max_rounds", basic=True)
    target_epsilon: float | None = _opt(
        3.0,
        "epsilon each site may spend on the whole run (training and evaluation); each site calibrates its own "
        "noise to it. Give noise_multiplier instead for fixed noise",
        "privacy",
        lo="min_target_epsilon",
        hi="max_target_epsilon",
        basic=True,
    )
    noise_multiplier: float | None = _opt(
        None,
        "fixed DP-SGD noise multiplier instead of a target epsilon (each site spends what it costs on its data)",
        "privacy",
        lo="min_noise_multiplier",
        hi="max_noise_multiplier",
    )
    delta: float = _opt(
        1e-5, "DP delta (keep it below 1/number of examples)", "privacy", lo="min_delta", hi="max_delta", basic=True
    )
    clip_norm: float = _opt(
        0.1, "per-example gradient clip norm", "privacy", lo="min_clip_norm", hi="max_clip_norm", basic=True
    )
    batch_size: int = _opt(
        512,
        "expected local batch size (Poisson sampling at rate batch_size / records; a site with fewer records "
        "uses all of them every step)",
        "training",
        lo=1,
        hi="max_batch_size",
    )
    local_steps: int = _opt(1, "local DP-SGD steps per round", "training", lo=1, hi="max_local_steps")
    learning_rate: float = _opt(10.0, "local learning rate", "training", lo=0.0, hi="max_learning_rate", above=True)
    aggregator: str = _opt(
        "fedavg",
        "how the coordinator combines updates: fedavg, mean, or a robust rule (median, trimmed_mean, krum, "
        "multi_krum, norm_bound)",
        "aggregation",
        choices=AGGREGATORS,
        basic=True,
    )
    server_optimizer: str = _opt(
        "fedavg", "server optimiser applied to the aggregate", "aggregation", choices=SERVER_OPTIMIZERS
    )
    server_learning_rate: float = _opt(
        8.0, "server learning rate", "aggregation", lo=0.0, hi="max_server_learning_rate", above=True
    )
    #: the released model is an average of the server optimiser's iterates (robust/server.py ``averaged``)
    model_average: float = _opt(
        0.9,
        "the global model the room evaluates and releases is a moving average of the server optimiser's models "
        "with this decay (post-processing: no privacy cost; it averages the noise out); 0: the last model",
        "aggregation",
        lo=0.0,
        hi=0.999,
    )
    #: on by default wherever the run allows it: left unset, it resolves (in from_dict) to on unless the aggregator
    #: or exclude_below needs each site's update; given True with such a run it is a ConfigError
    secure_aggregation: bool = _opt(
        True,
        "mask the updates so the coordinator sees only their sum (fedavg or mean only); left unset it is on "
        "unless a robust aggregator or exclude_below needs each site's update",
        "aggregation",
        basic=True,
    )
    #: record-level DP-SGD noise added once across the sites (secagg/record_noise.py): left unset, it resolves (in
    #: from_dict) to on wherever the run allows it; given True with a run that does not, it is a ConfigError
    distributed_noise: bool = _opt(
        True,
        "with secure aggregation, each site adds only its share of the DP-SGD noise so the sum carries it once "
        "(central DP-SGD's noise on the mean); each round is then one full-batch step per site. Left unset it is "
        "on with secure aggregation, local_steps 1 and no site_noise_multiplier",
        "privacy",
    )
    min_sites: int | None = _opt(
        None, "fewest sites a round may close with; unset: the room's own minimum", "room", lo=1, hi="max_min_sites"
    )
    round_timeout: float = _opt(
        60.0, "seconds a round waits for silent sites", "room", lo="min_round_timeout", hi="max_round_timeout"
    )
    seed: int = _opt(0, "random seed (initial model, sampling, noise)", "room", lo=0, hi=2**63 - 1)
    #: the evaluation schedule (protocol/evaluation.py): every eval_every rounds and after the last round
    eval_every: int | None = _opt(
        None,
        "evaluate the global model every N rounds and after the last round (evaluation takes at most 10% of "
        "the run's epsilon, split over the evaluations: fewer are more precise); unset: halfway and after the last",
        "privacy",
        lo=1,
        hi="max_rounds",
    )
    #: leave out of the aggregate a site whose trust (anomaly flags over rounds) falls below this; None: flag only
    exclude_below: float | None = _opt(
        None,
        "leave out sites whose trust (anomaly flags over rounds) falls below this; unset: only flag them "
        "(not with secure aggregation)",
        "aggregation",
        lo=0.0,
        hi=1.0,
        above=True,
    )
    #: distributed DP (needs secure_aggregation): each site clips its whole update to ``site_clip_norm`` and adds its
    #: share of Skellam noise so the unmasked sum carries ``site_noise_multiplier * site_clip_norm``; None: off
    site_noise_multiplier: float | None = _opt(
        None,
        "distributed DP for site-level privacy (needs secure_aggregation): the unmasked sum carries noise "
        "site_noise_multiplier * site_clip_norm; unset: off",
        "privacy",
        lo="min_noise_multiplier",
        hi="max_noise_multiplier",
    )
    site_clip_norm: float = _opt(
        1.0,
        "with site_noise_multiplier: each site's whole update is clipped to this norm",
        "privacy",
        lo="min_clip_norm",
        hi="max_clip_norm",
    )
    #: secure aggregation without distributed DP: each coordinate of a site's (weighted) update is clipped to
    #: [-secagg_range, secagg_range] before fixed-point encoding
    secagg_range: float = _opt(
        1.0,
        "with secure aggregation: each coordinate of a site's update is clipped to [-secagg_range, secagg_range] "
        "before fixed-point encoding",
        "aggregation",
        lo="min_clip_norm",
        hi="max_clip_norm",
    )

    local_optimizer: str = _opt(
        "sgd",
        "each site's local optimiser on the noised gradients: sgd, or heavy-ball momentum (0.9); post-processing, "
        "so it costs no privacy",
        "training",
        choices=LOCAL_OPTIMIZERS,
    )
    #: hyperparameter tuning (``room.tune``): the session this run is one trial of, declared to every site, the
    #: mean of the session's random number of trials and the shape of its distribution (the coordinator draws the
    #: number; each site bounds it and accounts the session at its first trial: docs/privacy.md, "Hyperparameter
    #: tuning")
    tune_session: int | None = _opt(
        None,
        "set by room.tune: the tuning session this run is a trial of; unset: not a trial",
        "privacy",
        lo=1,
        hi=2**63 - 1,
    )
    tune_trials: int | None = _opt(
        None,
        "set by room.tune: the mean number of trials of its tuning session (the coordinator draws the number)",
        "privacy",
        lo=2,
        hi=64,
    )
    tune_shape: float | None = _opt(
        None,
        "set by room.tune: the shape of the truncated negative binomial distribution of its tuning session's number "
        "of trials (1, the default: geometric; 0: logarithmic)",
        "privacy",
        lo=0,
        hi=16,
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | RunConfig, *, limits: RunLimits | None = None) -> RunConfig:
        """Validate plain data into a config within ``limits`` (default :class:`RunLimits`); raise
        :class:`ConfigError` saying what to change.

        A key left out takes its default, except that ``noise_multiplier`` given without ``target_epsilon``
        switches the default target off (exactly one of the two is set).
        """
        lim = limits or DEFAULT_LIMITS
        if isinstance(data, RunConfig):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a map, got {type(data).__name__}")
        options = run_options(lim)
        extra = set(data) - {o.name for o in options}
        if extra:
            raise ConfigError(f"unknown run settings {sorted(extra)}; known: {sorted(o.name for o in options)}")
        given = dict(data)
        if given.get("noise_multiplier") is not None and "target_epsilon" not in given:
            given["target_epsilon"] = None  # the default target gives way to a fixed noise multiplier
        if given.get("secure_aggregation") is None:  # not given: on wherever the run allows it
            given["secure_aggregation"] = secure_by_default(given)
        if given.get("distributed_noise") is None:  # not given: on wherever the run allows it
            given["distributed_noise"] = distributed_by_default(given)
        v = {o.name: o.check(given.get(o.name, o.default)) for o in options}
        _check_together(v, lim)
        return cls(**v)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any], *, limits: RunLimits | None = None) -> RunConfig:
        """A config stored by a run (coordinator store, a site's accepted runs): as :meth:`from_dict`, except that
        an option added after the run was stored takes the value the run ran with (:data:`STORED_BEFORE`), not
        today's default: a run resumed across an upgrade goes on as it started."""
        return cls.from_dict({**STORED_BEFORE, **data}, limits=limits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes``."""
        return RunConfig.from_dict({**self.to_dict(), **changes})


def secure_by_default(options: Mapping[str, Any]) -> bool:
    """What an unset ``secure_aggregation`` resolves to for these (given) options: on, unless the aggregator is a
    robust rule or ``exclude_below`` is set (both need each site's update, which masking hides)."""
    aggregator = options.get("aggregator")
    return (aggregator is None or aggregator in SECURE_AGGREGATORS) and options.get("exclude_below") is None


#: What a stored config without these options ran with (they were added later: distributed noise and the model
#: average in issue 16's second session)
STORED_BEFORE: dict[str, Any] = {"distributed_noise": False, "model_average": 0.0}


def distributed_by_default(options: Mapping[str, Any]) -> bool:
    """What an unset ``distributed_noise`` resolves to for these (given, ``secure_aggregation`` resolved) options:
    on with secure aggregation, one local step and no site-level distributed DP (``site_noise_multiplier``)."""
    return (
        bool(options.get("secure_aggregation", True))
        and options.get("local_steps", 1) == 1
        and options.get("site_noise_multiplier") is None
    )


def protections(config: RunConfig | Mapping[str, Any]) -> list[str]:
    """Which protections a run has, one short phrase each, in a fixed order (every surface shows these):
    secure aggregation or not, the DP guarantee (target or fixed noise; distributed DP), the aggregator when it
    is robust, and anomaly detection / trust exclusion only when the coordinator sees each update. An empty
    mapping (a run whose config is not known yet) has none listed."""
    c = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    if not c:
        return []
    secure = bool(c["secure_aggregation"] if c.get("secure_aggregation") is not None else secure_by_default(c))
    out = [
        "secure aggregation (the coordinator sees only the sum)"
        if secure
        else "no secure aggregation (the coordinator sees each update)"
    ]
    delta = c.get("delta", 1e-5)
    if c.get("target_epsilon") is not None:
        out.append(f"DP-SGD: epsilon <= {c['target_epsilon']:g} per site at delta {delta:g}")
    elif c.get("noise_multiplier") is not None:
        out.append(f"DP-SGD: noise multiplier {c['noise_multiplier']:g} at delta {delta:g}")
    if secure and c.get("distributed_noise", distributed_by_default({**c, "secure_aggregation": secure})):
        out.append("DP-SGD noise added once across the sites (each adds its share)")
    if c.get("site_noise_multiplier") is not None:
        out.append(f"distributed DP: site noise multiplier {c['site_noise_multiplier']:g}")
    aggregator = c.get("aggregator", "fedavg")
    if aggregator not in SECURE_AGGREGATORS:
        out.append(f"robust aggregator {aggregator}")
    if not secure:
        out.append("anomaly detection on every update")
        if c.get("exclude_below") is not None:
            out.append(f"sites below trust {c['exclude_below']:g} excluded")
    return out


def _check_together(v: Mapping[str, Any], lim: RunLimits) -> None:
    """The rules between options (each option's own bounds are already checked)."""
    target, noise, secure, aggregator = (
        v["target_epsilon"],
        v["noise_multiplier"],
        v["secure_aggregation"],
        v["aggregator"],
    )
    if (target is None) == (noise is None):
        raise ConfigError(
            "give exactly one of target_epsilon (each site calibrates its noise) and noise_multiplier "
            "(fixed noise); set the other to None"
        )
    # the cost bounds: the accountant's work grows with these
    steps = v["rounds"] * v["local_steps"]
    if steps > lim.max_total_steps:
        raise ConfigError(
            f"rounds * local_steps = {steps} DP-SGD steps is over this room's bound of "
            f"{lim.max_total_steps}; use fewer rounds or local steps"
        )
    if noise is not None and steps / noise**2 > lim.max_accountant_cost:
        raise ConfigError(
            f"rounds * local_steps / noise_multiplier^2 = {steps / noise**2:.3g} is over this "
            f"room's bound of {lim.max_accountant_cost:g} (accounting work and privacy loss both grow with it); "
            "raise noise_multiplier or use fewer steps"
        )
    if secure and aggregator not in SECURE_AGGREGATORS:  # mirrors robust.check_secure_compatible
        raise ConfigError(
            f"aggregator {aggregator!r} needs each site's update, but secure aggregation shows the coordinator "
            f"only their sum; use {' or '.join(SECURE_AGGREGATORS)} (each site clips its own update), or turn "
            "secure aggregation off"
        )
    if v["exclude_below"] is not None and secure:
        raise ConfigError(
            "exclude_below needs per-site anomaly flags, but secure aggregation hides each site's update; "
            "leave exclude_below unset or turn secure aggregation off"
        )
    if (v["tune_session"] is None) != (v["tune_trials"] is None):
        raise ConfigError("give tune_session and tune_trials together (room.tune sets both), or neither")
    if v["tune_shape"] is not None and v["tune_session"] is None:
        raise ConfigError("tune_shape is for a trial of a tuning session (room.tune sets it)")
    if v["distributed_noise"] and not distributed_by_default(v):
        raise ConfigError(
            "distributed_noise needs secure_aggregation=True (the coordinator must see only the sum), local_steps=1 "
            "(one full-batch step per round) and no site_noise_multiplier; set distributed_noise=False"
        )
    if v["site_noise_multiplier"] is not None and not secure:
        raise ConfigError(
            "site_noise_multiplier (distributed DP) needs secure_aggregation=True: without it the coordinator "
            "would see each site's less-noised update"
        )


def _kind(hint: Any) -> tuple[str, bool]:
    """``("float", True)`` for ``float | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    nullable = len(args) < len(typing.get_args(hint))
    base = args[0] if nullable and len(args) == 1 else hint
    return _KINDS[base], nullable


_HINTS = typing.get_type_hints(RunConfig)


@functools.lru_cache(maxsize=16)
def run_options(limits: RunLimits | None = None) -> tuple[OptionSpec, ...]:
    """Every run option, in :class:`RunConfig`'s field order, with its bounds under ``limits`` (default
    :class:`RunLimits`): what ``Room.train``, the magics, the launch form, REST, the sidebar and the CLI offer."""
    lim = limits or DEFAULT_LIMITS
    out = []
    for f in dataclasses.fields(RunConfig):
        decl: _Decl = f.metadata["option"]
        kind, nullable = _kind(_HINTS[f.name])
        lo, hi = (getattr(lim, b) if isinstance(b, str) else b for b in (decl.lo, decl.hi))
        out.append(
            OptionSpec(
                name=f.name,
                type=kind,
                default=f.default,
                help=decl.help,
                group=decl.group,
                nullable=nullable,
                minimum=lo,
                maximum=hi,
                exclusive_minimum=decl.above,
                choices=decl.choices,
                basic=decl.basic,
            )
        )
    return tuple(out)


def run_option(name: str) -> OptionSpec:
    """One run option by name (default limits); :class:`ConfigError` if there is none."""
    for option in run_options():
        if option.name == name:
            return option
    raise ConfigError(f"unknown run option {name!r}; known: {', '.join(o.name for o in run_options())}")


def options_schema(limits: RunLimits | None = None) -> dict[str, Any]:
    """The run options as JSON (``GET /fedjax-room/options`` serves it; docs/protocol.md, "Run options")::

        {"version": 1, "groups": ["privacy", ...], "one_of": [["target_epsilon", "noise_multiplier"]],
         "options": [{"name", "type", "default", "help", "group", "nullable", "minimum", "maximum",
                      "exclusive_minimum", "choices", "basic"}, ...]}

    ``one_of``: exactly one option of each list is set (not null); giving ``noise_multiplier`` alone
    switches the default ``target_epsilon`` off.
    """
    return {
        "version": OPTIONS_SCHEMA_VERSION,
        "groups": list(OPTION_GROUPS),
        "one_of": [["target_epsilon", "noise_multiplier"]],
        "options": [o.to_dict() for o in run_options(limits)],
    }


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
    params_bytes, checkpoint_bytes = checkpoint_bytes_estimate(
        count, leaves, run.server_optimizer, averaged=run.model_average > 0
    )
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
