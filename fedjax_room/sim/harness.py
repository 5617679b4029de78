"""A federated simulation *is* a room run: :func:`run_simulation` drives the room's own round engine.

:func:`run_simulation` takes a :class:`SimSpec` and runs it through :class:`~fedjax_room.sim.loopback.LoopbackRoom`
— the real coordinator machine (store, FedAvg or the robust defence, the one server optimiser, secure aggregation
when ``secure_aggregation``), real site agents (policy, ledger, DP-SGD, DP-noised evaluation, accounting) and
simulated attackers (:class:`~fedjax_room.sim.attacker.AttackingAgent`) — so its global models, privacy spend and
defence reports are what the room would produce for the same seeds (``tests/sim/test_loopback.py``):

1. a built-in dataset is split into train and a central test split; the train split is partitioned over
   ``num_sites`` sites (:func:`fedjax_room.data.partition`; IID splits are first trimmed to a multiple of
   ``num_sites`` so every site has the same size and the local step compiles once); each site's held-out data
   (for the room's noised evaluation) is its share of the test split;
2. the malicious sites (``malicious``) are :class:`~fedjax_room.sim.attacker.AttackingAgent`s playing ``attack``
   (their data each round, their update before it is encoded);
3. the analyst asks for one run with the spec's options (a :class:`~fedjax_room.protocol.config.RunConfig`:
   ``noise_multiplier`` is fixed DP-SGD noise, within the room's bounds — the room never trains without noise);
4. after the run, each round's global model (from the room's checkpoints) is evaluated on the central test split
   (post-processing, outside the room).

The result records accuracy and loss per round, which sites were flagged, excluded and selected (the room's
defence reports), and what each site spent (``privacy``). Everything is deterministic in ``seed`` (it fixes the
data split, the partition, every site's secret hence all its noise, and the run seed).

By default the detector flags but does not exclude (``exclude_below=None``) so that aggregators are compared on
their own; pass ``anomaly=AnomalyConfig(exclude_below=...)`` to let trust exclude sites. The room's detector
thresholds are fixed (the defaults of :class:`~fedjax_room.robust.AnomalyConfig`), as are its aggregator options
(``trimmed_mean`` trims ``max(0.2, 1/n)``); a spec asking for others is refused.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedjax_room.data import Dataset, load_builtin, partition
from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.local import evaluate
from fedjax_room.models import ModelSpec
from fedjax_room.models.from_schema import spec_from_schema
from fedjax_room.robust.anomaly import AnomalyConfig

__all__ = ["RoundRecord", "SimResult", "SimSpec", "run_simulation", "sim_config", "site_name"]

_FLAG_ONLY = AnomalyConfig(exclude_below=None)


def site_name(index: int) -> str:
    """The name the simulation gives site ``index``: ``site-00``, ``site-01``, ..."""
    return f"site-{index:02d}"


@dataclasses.dataclass(frozen=True)
class SimSpec:
    """Everything one simulated run needs (all fields JSON-able but ``anomaly``).

    Attributes:
      dataset: a built-in dataset name (``fedjax_room.data.BUILTIN_DATASETS``).
      num_sites: how many sites share the train split.
      alpha: ``None`` for IID, else the Dirichlet label-skew parameter.
      rounds: federated rounds.
      hidden: hidden widths of the MLP (ignored when ``model`` is given).
      model: a model spec dict to use instead of the MLP.
      local_steps, batch_size, learning_rate: each site's DP-SGD per round.
      clip_norm, noise_multiplier: per-example clipping and the DP-SGD noise multiplier (within the room's
        bounds, at least 0.3: the room never trains without noise).
      aggregator: the rule (``fedjax_room.robust.AGGREGATORS``); the room picks its options.
      server_optimizer, server_learning_rate: ``fedavg`` / ``fedadam`` / ``fedyogi``.
      attack, attack_options: an attack name (``fedjax_room.robust.ATTACKS``) or ``None``.
      malicious: the indices of the attacking sites.
      anomaly: the detector and trust settings; only ``exclude_below`` may differ from the room's defaults.
      secure_aggregation: mask the updates (then only ``fedavg`` / ``mean``, and no per-site defence).
      epsilon_cap: each site's policy cap (high by default: a simulation measures, it does not budget).
      test_fraction: size of the central test split.
      seed: fixes data split, partition, initial model, sampling and noise.
    """

    dataset: str = "digits"
    num_sites: int = 10
    alpha: float | None = None
    rounds: int = 10
    hidden: tuple[int, ...] = (32,)
    model: Mapping[str, Any] | None = None
    local_steps: int = 10
    batch_size: int = 16
    learning_rate: float = 0.1
    clip_norm: float = 10.0
    noise_multiplier: float = 0.3
    aggregator: str = "fedavg"
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    #: the released model a moving average of the iterates (RunConfig's model_average); off: the last iterate
    model_average: float = 0.0
    attack: str | None = None
    attack_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    malicious: tuple[int, ...] = ()
    anomaly: AnomalyConfig = _FLAG_ONLY
    secure_aggregation: bool = False
    epsilon_cap: float = 1e9
    test_fraction: float = 0.2
    seed: int = 0

    def replace(self, **changes: Any) -> SimSpec:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One round: test accuracy and loss of the new global model; flagged / excluded / selected site indices.

    ``norms`` is each site's update norm (as sent, after any attack), by site index.
    """

    round: int
    accuracy: float
    loss: float
    flagged: tuple[int, ...]
    excluded: tuple[int, ...]
    selected: tuple[int, ...]
    norms: tuple[float, ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class SimResult:
    """A finished simulation: the spec, the malicious sites, the initial accuracy and every round."""

    spec: SimSpec
    malicious: tuple[int, ...]
    initial_accuracy: float
    rounds: tuple[RoundRecord, ...]
    seconds: float
    params: Any = dataclasses.field(repr=False, default=None)
    #: what each site spent on the run, as the room reports it (``epsilon``, ``delta``, ``site_epsilon``, ...)
    privacy: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the room's run id and its (DP-noised) per-round metrics, for comparison with the central evaluation
    run_id: str = ""

    @property
    def accuracy(self) -> list[float]:
        """Test accuracy after each round."""
        return [r.accuracy for r in self.rounds]

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.rounds[-1].accuracy if self.rounds else self.initial_accuracy

    @property
    def detection_rate(self) -> float:
        """Fraction of (round, malicious site) pairs that were flagged (NaN without attackers)."""
        if not self.malicious or not self.rounds:
            return float("nan")
        hits = sum(len(set(r.flagged) & set(self.malicious)) for r in self.rounds)
        return hits / (len(self.malicious) * len(self.rounds))

    @property
    def false_flag_rate(self) -> float:
        """Fraction of (round, honest site) pairs that were flagged."""
        honest = self.spec.num_sites - len(self.malicious)
        if honest <= 0 or not self.rounds:
            return float("nan")
        hits = sum(len(set(r.flagged) - set(self.malicious)) for r in self.rounds)
        return hits / (honest * len(self.rounds))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no params)."""
        spec = dataclasses.asdict(self.spec)
        spec["anomaly"] = self.spec.anomaly._asdict()
        return {
            "spec": spec,
            "malicious": list(self.malicious),
            "initial_accuracy": self.initial_accuracy,
            "final_accuracy": self.final_accuracy,
            "detection_rate": self.detection_rate,
            "false_flag_rate": self.false_flag_rate,
            "seconds": self.seconds,
            "privacy": self.privacy,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
        }


# ---------------------------------------------------------------------- data (one split per setting)

_DATA: dict[tuple[Any, ...], tuple[Dataset, Dataset, list[Dataset]]] = {}


def _data(spec: SimSpec) -> tuple[Dataset, Dataset, list[Dataset]]:
    key = (spec.dataset, spec.test_fraction, spec.num_sites, spec.alpha, spec.seed)
    if key not in _DATA:
        full = load_builtin(spec.dataset, seed=spec.seed)
        train, test = full.split(spec.test_fraction, seed=spec.seed)
        if spec.alpha is None:
            train = train.subset(np.arange(len(train) - len(train) % spec.num_sites))
        sites = partition(train, spec.num_sites, alpha=spec.alpha, seed=spec.seed)
        if len(_DATA) >= 8:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = (train, test, sites)
    return _DATA[key]


def _check(spec: SimSpec) -> None:
    if not isinstance(spec, SimSpec):
        raise ConfigError(f"expected a SimSpec, got {type(spec).__name__}")
    for field in ("num_sites", "rounds", "local_steps"):
        value = getattr(spec, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"SimSpec.{field} must be a positive integer, got {value!r}")
    bad = [i for i in spec.malicious if not isinstance(i, int) or not 0 <= i < spec.num_sites]
    if bad or len(set(spec.malicious)) != len(spec.malicious):
        raise ConfigError(
            f"SimSpec.malicious must be distinct site indices in [0, {spec.num_sites}), got {spec.malicious}"
        )
    if spec.malicious and spec.attack is None:
        raise ConfigError("SimSpec.malicious names sites but attack is None; choose an attack (see robust.ATTACKS)")
    if not isinstance(spec.anomaly, AnomalyConfig) or spec.anomaly._replace(exclude_below=None) != _FLAG_ONLY:
        raise ConfigError(
            "SimSpec.anomaly: the room runs its detector with the default thresholds; only exclude_below may be "
            "set (AnomalyConfig(exclude_below=...))"
        )


def sim_config(spec: SimSpec) -> dict[str, Any]:
    """The room run options (:class:`~fedjax_room.protocol.config.RunConfig` as a dict) ``spec`` asks for."""
    from fedjax_room.protocol.config import RunConfig

    return RunConfig.from_dict(
        {
            "rounds": spec.rounds,
            "target_epsilon": None,
            "noise_multiplier": spec.noise_multiplier,
            "clip_norm": spec.clip_norm,
            "batch_size": spec.batch_size,
            "local_steps": spec.local_steps,
            "learning_rate": spec.learning_rate,
            "aggregator": spec.aggregator,
            "server_optimizer": spec.server_optimizer,
            "server_learning_rate": spec.server_learning_rate,
            "model_average": spec.model_average,
            "secure_aggregation": spec.secure_aggregation,
            "exclude_below": spec.anomaly.exclude_below,
            "seed": spec.seed,
        }
    ).to_dict()


def _model(spec: SimSpec, sites: list[Dataset]) -> ModelSpec:
    schema = sites[0].schema
    if spec.model is not None:
        return ModelSpec.from_dict(dict(spec.model))
    return spec_from_schema(schema, "mlp", hidden=tuple(spec.hidden))


def run_simulation(spec: SimSpec, *, progress: bool = False, workdir: str | None = None) -> SimResult:
    """Run ``spec`` as one room run in process; see the module docstring for the steps.

    ``progress`` prints one line per round to stderr. The room's state lives in a temporary directory (under
    ``workdir`` if given) that is removed afterwards. Raises :class:`~fedjax_room.errors.ConfigError` for options
    the room refuses, :class:`~fedjax_room.errors.RoundError` when the run does not finish.
    """
    from fedjax_room.robust.attacks import get_attack
    from fedjax_room.sim.attacker import attacking_factory
    from fedjax_room.sim.loopback import LoopbackRoom, SiteSetup

    _check(spec)
    started = time.perf_counter()
    _, test, sites = _data(spec)
    model = _model(spec, sites)
    config = sim_config(spec)
    names = [site_name(i) for i in range(spec.num_sites)]
    malicious = tuple(sorted(spec.malicious))
    factory = None
    if spec.attack is not None:
        get_attack(spec.attack, **dict(spec.attack_options))  # a typed error now, not in the room
        factory = attacking_factory(spec.attack, dict(spec.attack_options))
    chunks = np.array_split(np.arange(len(test)), spec.num_sites)
    policy = {"epsilon_cap": float(spec.epsilon_cap)}
    setups = {
        names[i]: SiteSetup(sites[i], test.subset(chunks[i]), policy, factory if i in malicious else None)
        for i in range(spec.num_sites)
    }
    with tempfile.TemporaryDirectory(prefix="fedjax-sim-", dir=workdir) as tmp:
        room = LoopbackRoom(tmp, setups, seed=spec.seed)
        try:
            run = room.train(model, config)
        finally:
            room.close()
    if run.status != "finished":
        message = (run.error or {}).get("message", run.status)
        raise RoundError(f"the simulated run did not finish: {message}")
    index = {n: i for i, n in enumerate(names)}
    initial = evaluate(model, run.initial_params, test).accuracy
    records: list[RoundRecord] = []
    for r in run.rounds:
        ev = evaluate(model, r.params, test)
        defence = r.defence or {}
        scores = defence.get("scores") or {}
        records.append(
            RoundRecord(
                round=r.round,
                accuracy=ev.accuracy,
                loss=ev.loss,
                flagged=tuple(sorted(index[s] for s in defence.get("flagged", {}))),
                excluded=tuple(sorted(index[s] for s in defence.get("excluded", []))),
                selected=tuple(sorted(index[s] for s in defence.get("selected", r.sites))),
                norms=tuple(float((scores.get(n) or {}).get("norm") or 0.0) for n in names),
                seconds=r.seconds,
            )
        )
        if progress:
            import sys

            rec = records[-1]
            print(
                f"round {rec.round}: accuracy {rec.accuracy:.3f} loss {rec.loss:.3f} flagged {list(rec.flagged)} "
                f"excluded {list(rec.excluded)} ({rec.seconds:.2f}s)",
                file=sys.stderr,
            )
    return SimResult(
        spec=spec,
        malicious=malicious,
        initial_accuracy=initial,
        rounds=tuple(records),
        seconds=time.perf_counter() - started,
        params=run.params,
        privacy=run.privacy,
        run_id=run.run_id,
    )
