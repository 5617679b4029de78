"""A site's policy: what work the data owner allows on this dataset, read from TOML.

Example ``policy.toml``::

    epsilon_cap = 5.0            # total epsilon this dataset may ever spend (all runs)
    delta_cap = 1e-5             # the delta it is accounted at; runs may ask for a smaller one
    site_epsilon_cap = 8.0       # optional: cap on the site-level epsilon of distributed-DP runs (all runs)
    min_sites = 2                # never contribute to a round with fewer sites than this
    allowed_families = ["logistic", "mlp", "cnn", "scatter"]
    max_params = 1_000_000
    allowed_aggregators = ["fedavg", "mean"]
    require_secure_aggregation = false
    noise_shares = true          # with distributed noise, add only this site's share (false: all of the noise)
    approval = "auto"            # or "manual": a spec not in approved_models waits in the site's inbox
    approved_models = []         # spec hashes this site runs without asking (ModelSpec.hash)
    declared_train_records = 4000   # optional, with the next: the PUBLIC sizes the site plans with
    declared_heldout_records = 1000 # (else it releases one DP count of its sizes at first start)
    tuning_selection = "private" # or "compose": how a room.tune session is accounted (below)

    [queries]                    # DP exploration queries (fedjax_room.site.queries); left out: none answered
    allowed = ["count", "count_by_label", "histogram", "mean", "sum", "quantiles", "missing"]
    min_epsilon = 0.01           # the smallest epsilon one query may ask for (below it the answer is noise)
    max_epsilon = 1.0            # the largest epsilon one query may spend
    epsilon_share = 0.2          # the share of epsilon_cap all queries together may spend
    require_secure = false       # answer only secure (summed under secure aggregation) queries
    max_bins = 256               # most bins / keys / values one answer may hold

A policy holds only what the data owner allows; an unknown key (e.g. the ``[simulation]`` table of older demo
policies) is refused. Simulated attacker sites are not a policy setting: they are a separate agent
(:mod:`fedjax_room.sim.attacker`), outside the trusted site package.

:meth:`Policy.check` raises :class:`~fedjax_room.errors.PolicyViolation` with a ``reason`` code
(``model_family``, ``max_params``, ``aggregator``, ``secure_aggregation``, ``delta_cap``,
``min_sites``, ``schema``) and a message saying what would be accepted. The budget check
(``epsilon_cap``, and ``site_epsilon_cap`` for the site-level ledger of distributed-DP runs; no
cap when it is left out) needs the ledgers and lives in :mod:`fedjax_room.site.agent`.

``tuning_selection`` says how this site accounts a tuning session (``room.tune``; docs/privacy.md, "Hyperparameter
tuning"): ``"private"`` (the default) charges the session once with Papernot & Steinke's private-selection bound
for releasing only its best trial, which holds only if nobody outside the coordinator sees the other trials or
their number: the coordinator runs the trials itself and shows the analyst only the best (protocol/tuning.py), and
it is trusted to do so and to draw the number of trials at random; ``"compose"`` composes every trial's releases,
a guarantee that holds against everyone, the coordinator included (a room whose sites disagree runs no session).

``declared_train_records`` / ``declared_heldout_records`` (both or neither) are sizes the data owner
declares public. The site's sampling rate, noise, FedAvg weight and published record count come from
them (:mod:`fedjax_room.site.public_size`), never from the exact sizes; a declared held-out size also
caps how many held-out records are evaluated. Without them the site releases one DP count of its
sizes, accounted in its ledger, at first start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedjax_room.errors import PolicyError, PolicyViolation
from fedjax_room.models import FAMILY_LAYERS, ModelSpec
from fedjax_room.protocol.config import AGGREGATORS, RunConfig

__all__ = ["Policy", "QueryPolicy"]

#: The query kinds a ``[queries]`` table may allow (fedjax_room.protocol.query_spec.KINDS).
QUERY_KINDS = ("count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing")


def _toml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


@dataclasses.dataclass(frozen=True)
class QueryPolicy:
    """The ``[queries]`` table: which DP exploration queries this site answers, and how much they may spend.

    The defaults answer nothing (``allowed = []``): a data owner opts in."""

    allowed: tuple[str, ...] = ()
    min_epsilon: float = 0.01
    max_epsilon: float = 1.0
    epsilon_share: float = 0.2
    require_secure: bool = False
    max_bins: int = 256

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "policy") -> QueryPolicy:
        """Validate the ``[queries]`` table; :class:`PolicyError` names the bad key."""
        where = f"{where} [queries]"
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: must be a table of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known
        if extra:
            raise PolicyError(f"{where}: unknown settings {sorted(extra)}; known: {sorted(known)}")
        d = {**{f.name: _default(f) for f in dataclasses.fields(cls)}, **data}
        allowed = d["allowed"]
        if (
            isinstance(allowed, str)
            or not isinstance(allowed, list | tuple)
            or not all(isinstance(x, str) for x in allowed)
        ):
            raise PolicyError(f"{where}: allowed must be a list of query kinds, got {allowed!r}")
        bad = [x for x in allowed if x not in QUERY_KINDS]
        if bad:
            raise PolicyError(f"{where}: allowed has unknown kinds {bad}; choose from {list(QUERY_KINDS)}")

        def positive(key: str) -> float:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise PolicyError(f"{where}: {key} must be a positive number, got {v!r}")
            return float(v)

        lo, hi, share = positive("min_epsilon"), positive("max_epsilon"), positive("epsilon_share")
        if lo > hi:
            raise PolicyError(f"{where}: min_epsilon {lo:g} is above max_epsilon {hi:g}")
        if share > 1:
            raise PolicyError(f"{where}: epsilon_share is a share of epsilon_cap, at most 1; got {share:g}")
        if not isinstance(d["require_secure"], bool):
            raise PolicyError(f"{where}: require_secure must be true or false")
        bins = d["max_bins"]
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 1024:
            raise PolicyError(f"{where}: max_bins must be an integer from 1 to 1024, got {bins!r}")
        return cls(
            allowed=tuple(dict.fromkeys(allowed)),
            min_epsilon=lo,
            max_epsilon=hi,
            epsilon_share=share,
            require_secure=d["require_secure"],
            max_bins=bins,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["allowed"] = list(self.allowed)
        return d


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (its factory's, for a mutable default)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"Policy.{f.name} has no default")


@dataclasses.dataclass(frozen=True)
class Policy:
    """A validated site policy (see the module docstring for the TOML form)."""

    epsilon_cap: float = 5.0
    delta_cap: float = 1e-5
    min_sites: int = 1
    allowed_families: tuple[str, ...] = ("logistic", "mlp", "cnn", "scatter")
    max_params: int = 1_000_000
    allowed_aggregators: tuple[str, ...] = AGGREGATORS
    require_secure_aggregation: bool = False
    approval: str = "auto"
    approved_models: tuple[str, ...] = ()
    #: cap on the site-level (whole-dataset) epsilon that distributed-DP runs compose; None: no cap
    site_epsilon_cap: float | None = None
    #: public training size the site plans with (sampling rate, noise, weight); None: a DP count at first start
    declared_train_records: int | None = None
    #: public held-out size (with declared_train_records): the most held-out records evaluated
    declared_heldout_records: int | None = None
    #: how a tuning session (room.tune) is accounted: "private" (one private-selection charge for the best trial,
    #: trusting the coordinator to show no other trial) or "compose" (every trial)
    tuning_selection: str = "private"
    #: with distributed noise (docs/privacy.md, "Distributed noise"): add only this site's share of the DP-SGD noise,
    #: counting on the other sites in the sum for theirs (True), or all of it, so its guarantee rests on its own
    #: noise alone (False)
    noise_shares: bool = True
    #: the ``[queries]`` table: DP exploration queries this site answers (none by default)
    queries: QueryPolicy = dataclasses.field(default_factory=QueryPolicy)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "policy") -> Policy:
        """Validate plain data; raise :class:`PolicyError` naming the bad key."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: a policy must be a table of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known
        if extra:
            raise PolicyError(f"{where}: unknown settings {sorted(extra)}; known: {sorted(known)}")
        defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
        d = {**defaults, **data}

        def number(key: str) -> float:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise PolicyError(f"{where}: {key} must be a positive number, got {v!r}")
            return float(v)

        def integer(key: str) -> int:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PolicyError(f"{where}: {key} must be a positive integer, got {v!r}")
            return v

        def names(key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
            v = d[key]
            if isinstance(v, str) or not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                raise PolicyError(f"{where}: {key} must be a list of names, got {v!r}")
            bad = [x for x in v if x not in allowed]
            if bad:
                raise PolicyError(f"{where}: {key} has unknown names {bad}; choose from {list(allowed)}")
            return tuple(v)

        def count(key: str, least: int) -> int | None:
            v = d[key]
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= 2**31 - 1:
                raise PolicyError(f"{where}: {key} must be an integer from {least} to 2**31 - 1, got {v!r}")
            return v

        declared_train = count("declared_train_records", 1)
        declared_heldout = count("declared_heldout_records", 0)
        if (declared_train is None) != (declared_heldout is None):
            raise PolicyError(
                f"{where}: declare both declared_train_records and declared_heldout_records, or neither "
                "(then the site releases a DP count of its sizes at first start)"
            )
        delta = number("delta_cap")
        if delta >= 1:
            raise PolicyError(f"{where}: delta_cap must be below 1 (typically below 1/number of records)")
        secure = d["require_secure_aggregation"]
        if not isinstance(secure, bool):
            raise PolicyError(f"{where}: require_secure_aggregation must be true or false")
        if not isinstance(d["noise_shares"], bool):
            raise PolicyError(f"{where}: noise_shares must be true or false")
        if d["tuning_selection"] not in ("private", "compose"):
            raise PolicyError(
                f'{where}: tuning_selection must be "private" or "compose", got {d["tuning_selection"]!r}'
            )
        if d["approval"] not in ("auto", "manual"):
            raise PolicyError(f'{where}: approval must be "auto" or "manual", got {d["approval"]!r}')
        approved = d["approved_models"]
        if (
            isinstance(approved, str)
            or not isinstance(approved, list | tuple)
            or not all(isinstance(x, str) and len(x) == 64 and set(x) <= set("0123456789abcdef") for x in approved)
        ):
            raise PolicyError(f"{where}: approved_models must list spec hashes (64 hex digits), got {approved!r}")
        return cls(
            approval=d["approval"],
            tuning_selection=d["tuning_selection"],
            noise_shares=d["noise_shares"],
            approved_models=tuple(approved),
            epsilon_cap=number("epsilon_cap"),
            site_epsilon_cap=None if d["site_epsilon_cap"] is None else number("site_epsilon_cap"),
            delta_cap=delta,
            min_sites=integer("min_sites"),
            allowed_families=names("allowed_families", tuple(FAMILY_LAYERS)),
            max_params=integer("max_params"),
            allowed_aggregators=names("allowed_aggregators", AGGREGATORS),
            require_secure_aggregation=secure,
            declared_train_records=declared_train,
            declared_heldout_records=declared_heldout,
            queries=d["queries"]
            if isinstance(d["queries"], QueryPolicy)
            else QueryPolicy.from_dict(d["queries"], where=where),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read and validate a policy TOML file."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise PolicyError(f"policy file {path} does not exist; write one (see fedjax_room.site.policy)") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data (also the summary a site shares with the room)."""
        d = dataclasses.asdict(self)
        d["allowed_families"] = list(self.allowed_families)
        d["allowed_aggregators"] = list(self.allowed_aggregators)
        d["approved_models"] = list(self.approved_models)
        d["queries"] = self.queries.to_dict()
        return d

    def to_toml(self) -> str:
        """TOML text for this policy."""
        lines = []
        tables = []
        for key, value in self.to_dict().items():
            if value is None:  # TOML has no null: an unset optional setting is left out
                continue
            if isinstance(value, dict):  # a table ([queries]) goes after the top-level settings
                tables.append(f"\n[{key}]")
                tables += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
                continue
            lines.append(
                f"{key} = {json.dumps(value)}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}"
            )
        return "\n".join(lines + tables) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this policy as TOML."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml())
        return path

    @property
    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of this policy (audited as ``policy_loaded``)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check(self, spec: ModelSpec, config: RunConfig, *, party: str = "") -> None:
        """Raise :class:`PolicyViolation` if this run is not allowed (the budget is checked elsewhere)."""

        def refuse(reason: str, message: str) -> None:
            raise PolicyViolation(f"{party or 'site'}: {message}", party=party, reason=reason)

        if spec.family not in self.allowed_families:
            refuse(
                "model_family",
                f"model family {spec.family!r} is not allowed here; allowed: {', '.join(self.allowed_families)}",
            )
        count = spec.param_count()
        if count > self.max_params:
            refuse("max_params", f"the model has {count} parameters, more than this site allows ({self.max_params})")
        if config.aggregator not in self.allowed_aggregators:
            refuse(
                "aggregator",
                f"aggregator {config.aggregator!r} is not allowed here; allowed: {', '.join(self.allowed_aggregators)}",
            )
        if self.require_secure_aggregation and not config.secure_aggregation:
            refuse(
                "secure_aggregation",
                "this site only joins runs with secure aggregation (secure_aggregation=True)",
            )
        if config.delta > self.delta_cap:
            refuse("delta_cap", f"delta {config.delta:g} is above this site's cap {self.delta_cap:g}; ask for less")
        if config.min_sites is not None and config.min_sites < self.min_sites:
            refuse(
                "min_sites",
                f"min_sites={config.min_sites} is below this site's minimum cohort of {self.min_sites}; "
                f"ask for min_sites >= {self.min_sites} (or leave it unset)",
            )
