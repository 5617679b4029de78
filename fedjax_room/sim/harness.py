"""An in-process federated simulation: sites, attacks, a defence and a server optimiser, without sockets.

:func:`run_simulation` takes a :class:`SimSpec` and runs its rounds the way the
room does, with every party in one process:

1. a built-in dataset is split into train and a central test split; the train
   split is partitioned over ``num_sites`` sites (:func:`fedjax_room.data.partition`;
   IID splits are first trimmed to a multiple of ``num_sites`` so every site has
   the same size and the local step compiles once);
2. the malicious sites (``malicious``) poison their data once if the attack has
   a data part (label flipping);
3. per round, each site runs :class:`~fedjax_room.local.LocalTrainer`
   (DP-SGD; ``noise_multiplier=0`` trains without noise, still with per-example
   clipping) from the global model; its update is ``local - global``; a malicious
   site then applies the attack's update part (sign flip, boost, noise);
4. the coordinator's defence (:class:`~fedjax_room.robust.RobustAggregation`:
   flags, trust, exclusion, the aggregator) combines the updates, and the server
   optimiser applies the aggregate;
5. the global model is evaluated on the central test split.

The result records accuracy and loss per round and, per round, which sites
were flagged, excluded and selected. Trainers and evaluation are cached per
model and DP settings, so a second run in the same process does not compile
again. Everything is deterministic in ``seed``.

By default the detector flags but does not exclude (``exclude_below=None``) so
that aggregators are compared on their own; pass an :class:`AnomalyConfig`
with ``exclude_below`` to let trust exclude sites.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fedjax_room.data import Dataset, load_builtin, partition
from fedjax_room.errors import ConfigError
from fedjax_room.local import LocalTrainer, evaluate
from fedjax_room.models import ModelSpec, init_params, mlp
from fedjax_room.robust.anomaly import AnomalyConfig
from fedjax_room.robust.attacks import get_attack
from fedjax_room.robust.defence import RobustAggregation
from fedjax_room.robust.server import server_optimizer

__all__ = ["RoundRecord", "SimResult", "SimSpec", "run_simulation", "site_name"]

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
      clip_norm, noise_multiplier: per-example clipping and noise (0 = no noise).
      aggregator, aggregator_options: the rule (``fedjax_room.robust.AGGREGATORS``).
      server_optimizer, server_learning_rate: ``fedavg`` / ``fedadam`` / ``fedyogi``.
      attack, attack_options: an attack name (``fedjax_room.robust.ATTACKS``) or ``None``.
      malicious: the indices of the attacking sites.
      anomaly: the detector and trust settings (``None``: no detection).
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
    noise_multiplier: float = 0.0
    aggregator: str = "fedavg"
    aggregator_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    attack: str | None = None
    attack_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    malicious: tuple[int, ...] = ()
    anomaly: AnomalyConfig | None = _FLAG_ONLY
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
        spec["anomaly"] = None if self.spec.anomaly is None else self.spec.anomaly._asdict()
        return {
            "spec": spec,
            "malicious": list(self.malicious),
            "initial_accuracy": self.initial_accuracy,
            "final_accuracy": self.final_accuracy,
            "detection_rate": self.detection_rate,
            "false_flag_rate": self.false_flag_rate,
            "seconds": self.seconds,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
        }


# ---------------------------------------------------------------------- caches (one compile per setting)

_TRAINERS: dict[tuple[Any, ...], LocalTrainer] = {}


def _trainer(model: ModelSpec, spec: SimSpec) -> LocalTrainer:
    key = (model.to_json(), spec.clip_norm, spec.noise_multiplier, spec.batch_size, spec.learning_rate)
    trainer = _TRAINERS.get(key)
    if trainer is None:
        if len(_TRAINERS) >= 16:
            _TRAINERS.pop(next(iter(_TRAINERS)))
        trainer = LocalTrainer(
            model,
            clip_norm=spec.clip_norm,
            noise_multiplier=spec.noise_multiplier,
            batch_size=spec.batch_size,
            learning_rate=spec.learning_rate,
        )
        _TRAINERS[key] = trainer
    return trainer


@jax.jit
def _delta(local: Any, global_: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, b: a - b, local, global_)


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


def run_simulation(spec: SimSpec, *, progress: bool = False) -> SimResult:
    """Run ``spec.rounds`` federated rounds in process; see the module docstring for the steps.

    ``progress`` prints one line per round to stderr.
    """
    _check(spec)
    started = time.perf_counter()
    _, test, sites = _data(spec)
    schema = sites[0].schema
    model = (
        ModelSpec.from_dict(spec.model)
        if spec.model is not None
        else mlp(schema.feature_shape, schema.num_classes, hidden=tuple(spec.hidden))
    )
    trainer = _trainer(model, spec)
    names = [site_name(i) for i in range(spec.num_sites)]
    malicious = tuple(sorted(spec.malicious))
    attack = get_attack(spec.attack, **dict(spec.attack_options)) if spec.attack is not None else None
    root = jax.random.key(spec.seed)
    if attack is not None and attack.data is not None:
        sites = list(sites)
        for i in malicious:
            sites[i] = attack.data(sites[i], None, jax.random.fold_in(root, 1_000_000 + i))

    params = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(init_params(model, jax.random.fold_in(root, 0))))
    tx = server_optimizer(spec.server_optimizer, spec.server_learning_rate)
    opt_state = tx.init(params)
    defence = RobustAggregation(spec.aggregator, anomaly=spec.anomaly, **dict(spec.aggregator_options))
    dstate = defence.init(names)
    index = {n: i for i, n in enumerate(names)}
    initial = evaluate(model, params, test).accuracy

    records: list[RoundRecord] = []
    for r in range(1, spec.rounds + 1):
        t0 = time.perf_counter()
        updates: dict[str, tuple[Any, float]] = {}
        for i, data in enumerate(sites):
            seed = (spec.seed * 1_000_003 + r) * 1_009 + i
            local, _ = trainer.train(params, data, spec.local_steps, seed=seed)
            delta = _delta(local, params)
            if attack is not None and attack.update is not None and i in malicious:
                delta = attack.update(delta, params, jax.random.fold_in(jax.random.fold_in(root, r), i))
            updates[names[i]] = (delta, float(len(data)))
        agg, dstate, report = defence.apply(updates, dstate)
        params, opt_state = tx.update(agg, opt_state, params)
        ev = evaluate(model, params, test)
        records.append(
            RoundRecord(
                round=r,
                accuracy=ev.accuracy,
                loss=ev.loss,
                flagged=tuple(sorted(index[s] for s in report.flagged)),
                excluded=tuple(sorted(index[s] for s in report.excluded)),
                selected=tuple(sorted(index[s] for s in report.selected)),
                norms=tuple(float(report.scores[n]["norm"] or 0.0) for n in names),
                seconds=time.perf_counter() - t0,
            )
        )
        if progress:
            import sys

            rec = records[-1]
            print(
                f"round {r}: accuracy {rec.accuracy:.3f} loss {rec.loss:.3f} flagged {list(rec.flagged)} "
                f"excluded {list(rec.excluded)} ({rec.seconds:.2f}s)",
                file=sys.stderr,
            )
    return SimResult(
        spec=spec,
        malicious=malicious,
        initial_accuracy=initial,
        rounds=tuple(records),
        seconds=time.perf_counter() - started,
        params=params,
    )
