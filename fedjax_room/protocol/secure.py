"""Secure aggregation in the room: the SecAgg library (:mod:`fedjax_room.secagg`) carried over the room's frames.

With ``secure_aggregation=True`` a train phase runs one SecAgg round among the run's accepted sites:

* The coordinator maps site names to SecAgg ids deterministically (sorted names -> 1, 2, ...; :func:`site_ids`),
  builds a :class:`~fedjax_room.secagg.SecAggConfig` (``round_id = "<run>/<round>"``, the sites' enrolled Ed25519
  keys, ``min_clients`` at least the run's ``min_sites``) and sends each site a ``secagg_setup`` frame before the
  ``round_start``. The SecAgg messages travel wrapped in ``secagg`` frames (``body`` = ``to_dict()``).
* Each site checks the config, signs with its identity key, trains as usual, commits its ledger, then encodes its
  update (:func:`make_encoder`) and gives it to its :class:`~fedjax_room.secagg.SecAggClient`; the ``update``
  frame it sends carries only the accounting (an empty ``payload``).
* The coordinator's :class:`SecureRound` feeds the frames to a :class:`~fedjax_room.secagg.SecAggServer` (one
  ``round_timeout`` per stage; a site whose connection closes is dropped), holds only masked vectors and their
  running sum, and when the round is done decodes the unmasked sum into the round's aggregate.

Aggregation under secure aggregation:

* without distributed DP, the weighted FedAvg mean: the coordinator sends each site ``fraction = w_i / sum_j w_j``
  over the roster (``w`` = the coarse example counts of the plans, public anyway); the site encodes
  ``fraction * update`` with a :class:`~fedjax_room.secagg.FixedPointCodec` (each coordinate clipped to
  ``secagg_range``); the coordinator divides the decoded sum by the survivors' fractions. ``aggregator="mean"``
  sends ``fraction = 1``.
* with distributed noise (``distributed_noise``, the default under secure aggregation), central DP-SGD: each site
  sends the sum of its records' clipped gradients with its share of the DP-SGD noise
  (:class:`~fedjax_room.secagg.record_noise.RecordNoise`, a ``2**64`` ring, ``fraction = 1``); the coordinator
  divides the decoded sum by the survivors' public sizes (the plans' weights) and takes the step ``-learning_rate``
  times that: the round's delta, which the server optimiser applies.
* with distributed DP (``site_noise_multiplier``), DP-FedAvg with equal weights: each site clips its whole update
  to ``site_clip_norm`` and adds its Skellam share (:class:`~fedjax_room.secagg.ddp.SkellamMechanism`,
  ``min_sites`` = the SecAgg ``min_clients``, so every released sum carries noise ``sigma * S``); the coordinator
  divides the decoded sum by the number of survivors (an unweighted mean of clipped updates).

Evaluation under secure aggregation: each scheduled eval phase is its own small SecAgg session
(``round_id = "<run>/<round>/eval"``, ``phase = "eval"`` on its ``secagg_setup`` and ``secagg`` frames, a
vector of :data:`~fedjax_room.protocol.evaluation.EVAL_LENGTH` integers modulo ``2**64``): each site masks its
noised evaluation vector carrying its share of the noise (:mod:`fedjax_room.protocol.evaluation`), its
``metrics`` frame carries only the accounting, and the coordinator unmasks only the sum.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError, FedRoomError, ProtocolError, RoundError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import Tree, digest, flatten_tree, pack_tree, unflatten_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.runs import RunDriver
from fedjax_room.secagg.messages import MaskedInput

__all__ = [
    "SecureDriver",
    "SecureEval",
    "SecureRelease",
    "SecureRound",
    "SecureTrain",
    "flatten_update",
    "make_encoder",
    "site_ids",
    "unflatten_like",
]

log = logging.getLogger("fedjax_room.coordinator")


@dataclasses.dataclass(frozen=True)
class SecureTrain:
    """(site) A train job under secure aggregation: the ``round_start`` and the ``secagg_setup`` that preceded it."""

    start: m.RoundStart
    setup: m.SecAggSetup

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def round(self) -> int:
        return self.start.round


@dataclasses.dataclass(frozen=True)
class SecureEval(SecureTrain):
    """(site) An eval job under secure aggregation: the eval ``round_start`` and its ``secagg_setup``."""


@dataclasses.dataclass(frozen=True)
class SecureRelease:
    """(site) What a secure job releases: the accounting ``update`` (no payload) or ``metrics`` (no counts), and
    the ring vector to mask."""

    update: m.Update | m.Metrics
    vector: np.ndarray
    #: added to the vector just before masking (``SecAggClient.set_input``'s ``extra``): a distributed-noise
    #: round's pairwise noise terms (secagg/record_noise.py)
    extra: Callable[[frozenset[int], Mapping[int, bytes]], np.ndarray] | None = None

    @property
    def phase(self) -> str:
        return "eval" if isinstance(self.update, m.Metrics) else "train"


def site_ids(names: Iterable[str]) -> dict[str, int]:
    """SecAgg ids for site names: sorted names numbered from 1 (Shamir x-coordinates must be nonzero)."""
    return {name: i + 1 for i, name in enumerate(sorted(set(names)))}


def make_encoder(config: RunConfig, secagg: Any, noise_multiplier: float = 0.0, *, share: bool = True) -> Any:
    """The encoder both sides derive from the run config and the round's ``SecAggConfig``.

    With ``distributed_noise`` a :class:`~fedjax_room.secagg.record_noise.RecordNoise` (``noise_multiplier``: the
    site plan's; the coordinator, which only decodes, passes none; ``share``: whether the site adds only its share
    of the noise), with site-level distributed DP a :class:`~fedjax_room.secagg.ddp.SkellamMechanism`, else a
    :class:`~fedjax_room.secagg.FixedPointCodec`; all have ``encode`` and ``decode``.
    """
    from fedjax_room.secagg import FixedPointCodec
    from fedjax_room.secagg.ddp import SkellamMechanism
    from fedjax_room.secagg.record_noise import RecordNoise

    if config.distributed_noise:
        return RecordNoise(
            clip_norm=config.clip_norm,
            noise_multiplier=noise_multiplier,
            dimension=secagg.vector_length,
            max_sites=secagg.n,
            min_sites=secagg.min_clients,
            share=share,
            full_graph=secagg.full_graph,
        )
    if config.site_noise_multiplier is not None:
        return SkellamMechanism(
            clip_norm=config.site_clip_norm,
            noise_multiplier=config.site_noise_multiplier,
            dimension=secagg.vector_length,
            max_sites=secagg.n,
            min_sites=secagg.min_clients,
            modulus_bits=secagg.modulus_bits,
        )
    return FixedPointCodec(clip=config.secagg_range, max_summands=secagg.n, modulus_bits=secagg.modulus_bits)


def flatten_update(tree: Mapping[str, Any]) -> np.ndarray:
    """A parameter tree as one float64 vector (leaves in sorted path order, each raveled)."""
    flat = flatten_tree(tree)
    return np.concatenate([np.asarray(flat[k], np.float64).reshape(-1) for k in sorted(flat)])


def unflatten_like(vector: np.ndarray, reference: Mapping[str, Any]) -> Tree:
    """Inverse of :func:`flatten_update` with the shapes of ``reference`` (float32 leaves)."""
    ref = flatten_tree(reference)
    out, at = {}, 0
    for k in sorted(ref):
        shape = np.shape(ref[k])
        size = int(np.prod(shape))
        out[k] = np.asarray(vector[at : at + size], np.float32).reshape(shape)
        at += size
    if at != len(vector):
        raise ProtocolError(f"the aggregate has {len(vector)} values; the model has {at}")
    return unflatten_tree(out)


def param_count(reference: Mapping[str, Any]) -> int:
    return sum(int(np.size(v)) for v in flatten_tree(reference).values())


class SecureRound:
    """The coordinator's side of one secure train phase (sans-I/O, like the rest of the machine)."""

    def __init__(
        self,
        *,
        run_id: str,
        round: int,
        config: RunConfig,
        roster: Mapping[str, bytes],
        weights: Mapping[str, float],
        reference: Mapping[str, Any],
        min_sites: int,
        now: float,
        phase: str = "train",
    ) -> None:
        from fedjax_room.protocol import evaluation as ev
        from fedjax_room.secagg import SecAggConfig, SecAggServer
        from fedjax_room.secagg.masking import default_neighbours

        self.run_id, self.round, self.config, self.phase = run_id, round, config, phase
        self.ids = site_ids(roster)
        self.names = {i: n for n, i in self.ids.items()}
        n = len(self.ids)
        default_t = n // 2 + 1
        k = default_neighbours(n)  # SecAgg+ once a random k-regular graph is smaller than the full one (~16+ sites)
        evaluating = phase == "eval"
        distributed = config.distributed_noise and not evaluating
        self.secagg = SecAggConfig(
            f"{run_id}/{round}/eval" if evaluating else f"{run_id}/{round}",
            {self.ids[name]: bytes(roster[name]) for name in roster},
            vector_length=ev.EVAL_LENGTH if evaluating else param_count(reference),
            modulus_bits=ev.EVAL_MODULUS_BITS if evaluating else 64 if config.distributed_noise else 32,
            # distributed noise: each share is 1/t of the noise and k survivors carry k/t of it, so t is n - 1 (one
            # dropout tolerated, still a majority) rather than a bare majority: less surplus noise on the model
            min_clients=min(n, max(default_t, min_sites, 2, n - 1 if distributed else 0)),
            neighbours=k if k < n - 1 else None,
        )
        self.weights = {name: max(1.0, float(weights.get(name, 1.0))) for name in roster}
        if (
            evaluating
            or config.distributed_noise
            or config.site_noise_multiplier is not None
            or config.aggregator == "mean"
        ):
            self.fractions = {name: 1.0 for name in roster}
        else:
            total = sum(self.weights.values())
            self.fractions = {name: w / total for name, w in self.weights.items()}
        self.encoder = None if evaluating else make_encoder(config, self.secagg)
        self.server = SecAggServer(self.secagg, stage_timeout=config.round_timeout, now=now)
        self.reference = reference
        self.dropped: set[str] = set()

    def can_join(self, name: str) -> bool:
        """Whether site ``name`` may still (re)join: key advertisement is open and it has not dropped out."""
        return name in self.ids and name not in self.dropped and self.server.state.value == "advertise"

    def setup(self, name: str) -> m.SecAggSetup:
        return m.SecAggSetup(
            run_id=self.run_id,
            round=self.round,
            config=self.secagg.to_dict(),
            id=self.ids[name],
            fraction=self.fractions[name],
            phase=self.phase,
        )

    def _wrap(self, envelopes: list[Any]) -> list[tuple[str, m.SecAgg]]:
        return [
            (
                self.names[e.recipient],
                m.SecAgg(run_id=self.run_id, round=self.round, body=e.message.to_dict(), phase=self.phase),
            )
            for e in envelopes
        ]

    def receive(self, name: str, body: dict[str, Any], now: float) -> list[tuple[str, m.SecAgg]]:
        """One SecAgg message from site ``name``; raises a ``FedRoomError`` for a bad one (the round goes on)."""
        from fedjax_room.secagg import message_from_dict

        msg = message_from_dict(body)
        if getattr(msg, "sender", None) != self.ids.get(name):
            raise ProtocolError(f"site {name} sent a secagg message in another site's name")
        return self._wrap(self.server.receive(msg, now))

    def drop(self, name: str, now: float) -> list[tuple[str, m.SecAgg]]:
        if name not in self.ids:
            return []
        self.dropped.add(name)
        return self._wrap(self.server.drop(self.ids[name], now))

    def tick(self, now: float) -> list[tuple[str, m.SecAgg]]:
        return self._wrap(self.server.tick(now))

    @property
    def deadline(self) -> float:
        d = self.server.deadline
        return math.inf if d is None else d

    @property
    def state(self) -> str:
        return self.server.state.value

    def eval_sum(self) -> tuple[np.ndarray, list[str]]:
        """(eval session) The unmasked sum of the survivors' evaluation vectors, as signed integers, and their
        names (raises the round's error if it aborted)."""
        from fedjax_room.protocol.evaluation import ring_to_signed

        total = self.server.result()
        survivors = sorted(self.names[i] for i in self.server.survivors)
        return ring_to_signed(np.asarray(total)), survivors

    def aggregate(self) -> tuple[Tree, list[str]]:
        """The decoded mean over the survivors and their names (raises the round's error if it aborted)."""
        assert self.encoder is not None
        total = self.server.result()
        survivors = sorted(self.names[i] for i in self.server.survivors)
        decoded = np.asarray(self.encoder.decode(total), np.float64)
        if self.config.distributed_noise:  # the noised sum of clipped gradients: one central DP-SGD step
            count = sum(self.weights[s] for s in survivors)  # the survivors' public sizes (the plans' weights)
            return unflatten_like(-self.config.learning_rate * decoded / count, self.reference), survivors
        denom = sum(self.fractions[s] for s in survivors)
        return unflatten_like(decoded / denom, self.reference), survivors


class SecureDriver(RunDriver):
    """The coordinator's secure train phases: a :class:`~fedjax_room.protocol.runs.RunDriver` whose train phase is
    one SecAgg round (:class:`SecureRound`)."""

    def _secure_open(self, now: float) -> None:
        """Start the SecAgg round of the active run's train or eval phase (called by ``_open_phase``)."""
        a = self._active
        assert a is not None
        roster = {}
        for name in sorted(a.accepted):
            ident = self.store.identity(name)
            if ident is not None and not ident.revoked:
                roster[name] = ident.public_key
        weights = {name: float(a.accepted[name].get("weight", 1)) for name in roster}
        a.secure = None
        try:
            a.secure = SecureRound(
                run_id=a.id,
                round=a.round,
                config=a.config,
                roster=roster,
                weights=weights,
                reference=a.params,
                min_sites=a.min_sites,
                now=now,
                phase=a.phase,
            )
        except ConfigError as exc:
            self._fail(now, RoundError(f"round {a.round} of {a.id}: cannot set up secure aggregation: {exc.message}"))
            return
        a.deadline = a.secure.deadline
        for name in sorted(roster):
            cid = self._site_conns.get(name)
            if cid is not None and self._conns[cid].reported:
                self._send(cid, a.secure.setup(name))

    def _secure_deliver(self, out: list[tuple[str, m.SecAgg]], now: float) -> None:
        for name, msg in out:
            cid = self._site_conns.get(name)
            if cid is not None:
                self._send(cid, msg)
        a = self._active
        if a is not None and a.secure is not None:
            a.deadline = a.secure.deadline
            if a.secure.state in ("done", "aborted"):
                self._secure_close(now)

    def _on_secagg(self, c: Conn, msg: m.SecAgg, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or a.phase != msg.phase or a.round != msg.round or a.secure is None:
            self._stale(c, msg.run_id, f"secagg for round {msg.round}")
            return
        try:
            out = a.secure.receive(c.name, msg.body, now)
        except FedRoomError as exc:  # a bad SecAgg message: refused, the round goes on without it
            log.warning("secagg message from %s refused: %s: %s", c.name, exc.code, exc.message)
            self._send(c.id, m.Error.of(exc, run_id=msg.run_id))
            return
        if msg.body.get("t") == MaskedInput.type:  # accepted (signature checked): what the sum now holds
            self.audit.append(
                "masked_input_received",
                run_id=a.id,
                round=a.round,
                site=c.name,
                phase=a.phase,  # a round has a train and (when scheduled) an eval session
                digest=digest(msg.body["data"]),
            )
        self._secure_deliver(out, now)

    def _secure_dropped(self, name: str, now: float) -> None:
        """A site's connection closed during a secure train or eval phase: it is a dropout of the SecAgg round."""
        a = self._active
        if a is not None and a.phase in ("train", "eval") and getattr(a, "secure", None) is not None:
            self._secure_deliver(a.secure.drop(name, now), now)

    def _secure_tick(self, now: float) -> None:
        a = self._active
        assert a is not None and a.secure is not None
        self._secure_deliver(a.secure.tick(now), now)

    def _secure_eval_close(self, now: float, sec: SecureRound) -> None:
        """The eval SecAgg session is over: publish the unmasked sum (post-processed); an aborted session
        publishes nothing for this round (its releases are spent, nothing is shown) and the run goes on."""
        a = self._active
        assert a is not None
        try:
            total, survivors = sec.eval_sum()
        except FedRoomError as exc:
            log.warning("round %d of %s: the evaluation's secure sum aborted: %s", a.round, a.id, exc.message)
            self._publish_eval(now, None, [], secure_min_clients=sec.secagg.min_clients)
            return
        self._publish_eval(now, total, survivors, secure_min_clients=sec.secagg.min_clients)

    def _secure_close(self, now: float) -> None:
        """The SecAgg round is over: apply the decoded aggregate, or fail the run if it aborted."""
        from fedjax_room.robust.server import room_optimizer

        a = self._active
        assert a is not None and a.secure is not None
        sec, a.secure = a.secure, None
        if sec.phase == "eval":
            self._secure_eval_close(now, sec)
            return
        try:
            delta, survivors = sec.aggregate()
        except FedRoomError as exc:
            self._fail(
                now,
                RoundError(f"round {a.round} of {a.id}: secure aggregation aborted, nothing released: {exc.message}"),
            )
            return
        dropped = sorted(s for s in a.accepted if s not in survivors)
        if dropped:
            log.warning("round %d of %s closes without %s (secure aggregation dropouts)", a.round, a.id, dropped)
        self._secure_defence(a, delta, survivors)  # the aggregate check (runs.py)
        opt = room_optimizer(a.config)
        params, opt_state = opt.update(delta, a.opt_state, a.params)
        model_digest = self.store.commit_round(
            a.id, a.round, params=params, opt_state=opt_state, sites=survivors, dropped=dropped
        )
        self.audit.append(
            "aggregate_applied",
            run_id=a.id,
            round=a.round,
            sites=survivors,
            model_digest=model_digest,
            secure=True,
            stages={k: [sec.names[i] for i in v] for k, v in sec.server.participants.items()},
        )
        a.params, a.opt_state, a.params_bytes = params, opt_state, pack_tree(params)
        self._after_round(now)
