"""The data owner's agent: policy and budget checks, local DP training, noised evaluation, idempotent releases.

:class:`SiteAgent` does the work a :class:`~fedjax_room.protocol.site.SiteMachine` asks for, on a
single worker thread (so ledger writes are serialised and the websocket stays alive):

* ``offer`` — check the policy (:meth:`~fedjax_room.site.policy.Policy.check`), the schema, plan the
  noise for this site's data size (:func:`~fedjax_room.site.plan.make_plan`) and check that the
  planned run fits under the cap; answer ``run_accept`` with the plan or a typed ``run_refuse``.
* ``train`` — DP-SGD for ``local_steps`` steps from the global model
  (:class:`fedjax_room.local.LocalTrainer`), then **commit the event to the ledger (fsynced) before
  the update leaves**; a round that would pass the cap is refused (``epsilon_cap``).
* ``eval`` — evaluate the global model on the local held-out split and release only
  Gaussian-noised (count, correct, clipped loss sum), accounted like training.

Each release is keyed ``run/round/phase``, and only rounds ``1..rounds`` of an accepted plan exist. A release is
computed, **stored** (``STATE/releases``), then its cost is committed to the ledger together with the stored
release's digest, and only then sent. Asked again (a coordinator restarted, a replay, a site that crashed after
its commit), the agent answers exactly the stored release, whatever parameters come with the request, and spends
nothing; a committed release whose stored copy is lost is refused, never recomputed (that would reuse its noise
on other parameters). Seeds come from HMAC(secret, run id, run seed, round, phase), the secret living in
``STATE/secret``: nobody without the secret can reproduce the noise. Everything a data-dependent computation
could reveal by failing is paid for first (an update that cannot be encoded is sent as zeros; any other failure
spends the round and refuses). Nothing un-noised — rows, per-example values, raw losses — is ever returned.

State directory layout::

    STATE/secret            32 random bytes (mode 0600)
    STATE/ledger.json       the privacy ledger (fedjax_room.site.ledger)
    STATE/runs/<run>.json   accepted runs: spec, config, plan (fedjax_room.site.runs)
    STATE/releases/         the stored releases (fedjax_room.site.releases)
    STATE/audit.jsonl       the site's audit log

The agent orchestrates; each rule lives in its own module: :mod:`.policy` and :mod:`.approval` (what the data
owner allows), :mod:`.plan` (the noise for this site's size), :mod:`.public_size`, :mod:`.spending` (budget
checks and commits over :mod:`.ledger`), :mod:`.runs` (accepted runs), :mod:`.releases` (stored releases),
:mod:`.secret` (the seeds), :mod:`.evaluate` (the noised evaluation) and :mod:`.secure` (an update as a SecAgg
ring vector).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_room.data import Dataset
from fedjax_room.errors import (
    FedRoomError,
    PolicyViolation,
    ProtocolError,
    RefusedError,
    StateError,
)
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import Tree, digest, pack_tree, unpack_tree, update_digest
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureEval, SecureRelease, SecureTrain
from fedjax_room.site.approval import Inbox, await_approval
from fedjax_room.site.estimate import check_offer, estimate_answer
from fedjax_room.site.evaluate import metrics_frame, metrics_message, noised_vector, ring_vector
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import Plan
from fedjax_room.site.policy import Policy
from fedjax_room.site.public_size import resolve_public_size
from fedjax_room.site.releases import ReleaseStore
from fedjax_room.site.runs import AcceptedRuns
from fedjax_room.site.secret import derive_seed, load_secret
from fedjax_room.site.secure import pairwise_noise, secure_vector, site_event
from fedjax_room.site.spending import Spending

__all__ = ["SiteAgent"]

log = logging.getLogger("fedjax_room.site")


class SiteAgent:
    """One site's agent. ``train`` and ``heldout`` never leave this object."""

    def __init__(
        self,
        *,
        name: str,
        train: Dataset,
        heldout: Dataset,
        policy: Policy,
        state_dir: str | os.PathLike[str],
        audit: Any = None,
        train_delay: float = 0.0,
    ) -> None:
        self.name = name
        self._train = train
        self._heldout = heldout
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._secret = load_secret(self.state_dir)
        self.ledger = Ledger.open(
            self.state_dir / "ledger.json", epsilon_cap=policy.epsilon_cap, delta=policy.delta_cap
        )
        # the PUBLIC sizes every plan, weight and published count comes from (declared, or one DP count charged to
        # the ledger at first start); at most heldout_bound held-out records are evaluated (site.public_size)
        self.public_size = resolve_public_size(
            self.state_dir,
            self.ledger,
            n_train=len(train),
            n_heldout=len(heldout),
            declared_train=policy.declared_train_records,
            declared_heldout=policy.declared_heldout_records,
            seed=self._seed("@size", 0, 0, "count"),  # secret, from the site's secret like all its noise
        )
        if len(self._heldout) > self.public_size.heldout_bound:
            self._heldout = self._heldout.subset(np.arange(self.public_size.heldout_bound))
        # site-level (whole-site) events of distributed-DP runs: a separate neighbouring relation, so a separate
        # accountant, reported next to the sample-level ledger and capped by the policy's site_epsilon_cap (if set)
        site_cap = math.inf if policy.site_epsilon_cap is None else policy.site_epsilon_cap
        self.site_ledger = Ledger.open(  # integer-order RDP: the certified bound of Skellam noise (secagg.ddp)
            self.state_dir / "site_ledger.json", epsilon_cap=site_cap, delta=policy.delta_cap, kind="rdp_integer"
        )
        self.audit = audit
        self.spending = Spending(
            name,
            self.ledger,
            self.site_ledger,
            heldout_bound=self.public_size.heldout_bound,
            audit=self._audit,
            tuning_selection=policy.tuning_selection,  # how a tuning session is accounted (site/spending.py)
        )
        self.runs = AcceptedRuns(self.state_dir, name)
        self.releases = ReleaseStore(self.state_dir, name)
        self.train_delay = train_delay
        self._trainers: dict[str, Any] = {}
        self._references: dict[str, Tree] = {}
        #: sends a frame to the coordinator from a job (set by the runner): ``run_waiting`` while approval waits
        self.notify: Callable[[m.Message], None] | None = None
        self.stopping = threading.Event()  # set when the agent shuts down: a wait for approval gives up
        self.approval_poll = 0.5
        self._audit("policy_loaded", policy_digest=self.policy.digest, policy=self.policy.to_dict())
        from fedjax_room.site.queries import QueryAnswerer

        self.queries = QueryAnswerer(  # DP exploration queries over all of this site's records, same ledger
            name=name,
            datasets=[self._train, heldout],  # every record, the held-out ones past the evaluation's bound too
            policy=policy,
            ledger=self.ledger,
            releases=self.releases,
            audit=self._audit,
            on_commit=lambda: setattr(self.spending, "summary", self.ledger.summary()),
        )

    # ------------------------------------------------------------------ helpers

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(kind, **fields)

    def status(self) -> m.SiteStatus:
        """The ``site_status`` frame: schema, coarse count, policy and ledger summaries (no rows)."""
        return m.SiteStatus(
            schema=self._train.schema.to_dict(),
            record_count=self.public_size.record_count(),  # from the public sizes, never the exact ones
            policy=self.policy.to_dict(),
            ledger=dict(self.spending.summary),
        )

    def _seed(self, run_id: str, seed: int, round: int, phase: str) -> int:
        return derive_seed(self._secret, run_id, seed, round, phase)

    def _load_run(self, run_id: str) -> tuple[ModelSpec, RunConfig, Plan]:
        return self.runs.load(run_id)

    def _reference(self, spec: ModelSpec) -> Tree:
        ref = self._references.get(spec.hash)
        if ref is None:
            import jax

            from fedjax_room.models import init_params

            ref = jax.tree.map(np.asarray, dict(init_params(spec, jax.random.PRNGKey(0))))
            self._references[spec.hash] = ref
        return ref

    def _global_params(self, msg: m.RoundStart, spec: ModelSpec) -> Tree:
        from fedjax_room.robust.aggregate import check_update

        return check_update(unpack_tree(msg.params), self._reference(spec))

    # ------------------------------------------------------------------ dispatch

    def handle(self, kind: str, msg: m.Message) -> m.Message | None:
        """Run one job (``offer`` / ``train`` / ``eval`` / ``end``); any failure becomes a typed refusal."""
        run_id = getattr(msg, "run_id", "")
        rnd = getattr(msg, "round", None) if kind != "offer" else None
        try:
            if kind == "offer":
                if not isinstance(msg, m.RunOffer):
                    raise ProtocolError(f"an offer job carries a run offer, not {type(msg).__name__}")
                return self.offer(msg)
            if kind == "train":
                return self.train(msg)
            if kind == "eval":
                if not isinstance(msg, m.RoundStart | SecureEval):
                    raise ProtocolError(f"an eval job carries a round start, not {type(msg).__name__}")
                return self.evaluate(msg)
            if kind == "estimate":  # nothing spent, nothing stored (site/estimate.py)
                if not isinstance(msg, m.EstimateOffer):
                    raise ProtocolError(f"an estimate job carries an estimate offer, not {type(msg).__name__}")
                return self.estimate(msg)
            if kind == "query":  # a DP exploration query (site/queries.py): it answers or refuses itself
                return self.queries.answer(msg)  # type: ignore[return-value]
            if kind == "end":
                self._trainers.pop(run_id, None)
                return None
            raise ProtocolError(f"unknown job {kind!r}")
        except FedRoomError as exc:
            log.warning("%s refuses %s %s round %s: %s", self.name, kind, run_id, rnd, exc.message)
            return m.RunRefuse(run_id=run_id, round=rnd, error=exc.to_dict())
        except Exception as exc:  # a bug or a broken environment: refuse, say so, keep the agent alive
            log.exception("%s failed on %s %s", self.name, kind, run_id)
            err = RefusedError(f"{self.name} failed: {type(exc).__name__}: {exc}", party=self.name, reason="site_error")
            return m.RunRefuse(run_id=run_id, round=rnd, error=err.to_dict())

    # ------------------------------------------------------------------ offer

    def offer(self, msg: m.RunOffer) -> m.RunAccept | m.RunRefuse:
        """Check a run against the policy and the ledger; accept with a plan or refuse with a reason."""
        spec = ModelSpec.from_dict(msg.spec)
        config = RunConfig.from_dict(msg.config)
        accepted = self.runs.accepted_plan(msg.run_id, spec, config)
        if accepted is not None:
            return m.RunAccept(run_id=msg.run_id, plan=accepted.public())
        try:
            # the same checks an estimate runs (site/estimate.py), then the budget and the data owner's approval
            plan = check_offer(self.name, self.policy, self._train.schema, self.public_size.train, spec, config)
            self.spending.check_run(plan, config, run_id=msg.run_id)
            self._await_approval(msg.run_id, spec)
            self.spending.admit(msg.run_id, plan, config)  # a tuning trial: its session's record (and one charge)
        except PolicyViolation as exc:
            self._audit("run_refused", run_id=msg.run_id, spec_hash=spec.hash, reason=exc.reason)
            raise
        self._audit("run_approved", run_id=msg.run_id, spec_hash=spec.hash, reason="", plan=plan.public())
        self.runs.accept(msg.run_id, spec, config, plan)
        return m.RunAccept(run_id=msg.run_id, plan=plan.public())

    def estimate(self, msg: m.EstimateOffer) -> m.EstimateAnswer:
        """What this site would plan for a run and whether it would accept it now; spends and writes nothing."""
        return estimate_answer(
            msg,
            name=self.name,
            policy=self.policy,
            schema=self._train.schema,
            public_size=self.public_size.train,
            spending=self.spending,
            inbox=Inbox(self.state_dir),
        )

    def _await_approval(self, run_id: str, spec: ModelSpec) -> None:
        """The data owner's approval of ``spec`` (:func:`~fedjax_room.site.approval.await_approval`)."""
        await_approval(
            Inbox(self.state_dir),
            self.policy,
            spec,
            run_id,
            name=self.name,
            audit=self._audit,
            notify=self.notify,
            stopping=self.stopping,
            poll=self.approval_poll,
        )

    # ------------------------------------------------------------------ train

    def train(self, msg: Any) -> Any:
        """One round of local DP training; the ledger is committed before the update is returned.

        ``msg`` is a ``RoundStart``, or a :class:`~fedjax_room.protocol.secure.SecureTrain` under secure
        aggregation, which returns a :class:`~fedjax_room.protocol.secure.SecureRelease` (the encoded vector to mask
        and an ``update`` with an empty payload).

        Order: checks that do not read the data (round in the plan, cohort, parameters, budget); then the
        data-dependent work (training, encoding; an update that cannot be encoded becomes zeros, any failure is paid
        for); the release is stored; its cost is committed with the release's digest; only then does it leave. A
        committed round asked again returns exactly the stored release (or is refused), never a recomputation.
        """
        secure: SecureTrain | None = None
        if isinstance(msg, SecureTrain):
            secure, msg = msg, msg.start
        key = f"{msg.run_id}/{msg.round}/train"
        spec, config, plan = self._load_run(msg.run_id)
        if config.secure_aggregation and secure is None:
            log.warning(
                "%s: round %s of secure run %s came without its secagg_setup; not answering",
                self.name,
                msg.round,
                msg.run_id,
            )
            return None
        plan.check_round(msg.round, run_id=msg.run_id, party=self.name, phase="train")
        record = self.ledger.released(key)
        if record is not None:
            return self._train_again(key, msg, record, config, plan, secure)
        if msg.cohort < self.policy.min_sites:
            raise PolicyViolation(
                f"{self.name}: round {msg.round} has {msg.cohort} sites, fewer than this site's minimum "
                f"{self.policy.min_sites}",
                party=self.name,
                reason="min_sites",
            )
        params = self._global_params(msg, spec)
        if secure is not None and config.site_noise_multiplier is not None:
            # before anything is spent
            self.spending.precheck_site(key, site_event(config, secure), f"round {msg.round}", msg.round, spec)
        event = plan.train_event()
        self.spending.precheck(key, event, msg.round, spec)
        started = time.perf_counter()
        try:
            payload, vector = self._compute_update(msg, spec, config, plan, params, secure)
        except Exception:
            self.spending.pay_failed(key, event, msg.round, "train", config, spec)
        payload_digest = digest(payload)
        release = self.releases.store(msg.run_id, msg.round, "train", {"payload": payload}, vector)
        if self.train_delay:
            time.sleep(self.train_delay)
        run_eps, total = self.spending.commit(
            key,
            event,
            {"round": msg.round, "phase": "train", "digest": payload_digest, "release": release},
            config,
            spec,
        )
        out = self._train_frame(msg, payload, vector, run_eps, total, config, plan, secure, key)
        self._audit(
            "update_released",
            run_id=msg.run_id,
            round=msg.round,
            **update_digest(out.update if isinstance(out, SecureRelease) else out),  # payload, or secure: accounting
            epsilon=run_eps,
            delta=config.delta,
            ledger_epsilon=total,
        )
        log.info(
            "%s released update %s (%.1fs, run epsilon %.3f, ledger %.3f)",
            self.name,
            key,
            time.perf_counter() - started,
            run_eps,
            total,
        )
        return out

    def _train_again(
        self, key: str, msg: m.RoundStart, record: dict[str, Any], config: RunConfig, plan: Plan, secure: Any
    ) -> Any:
        """A committed round asked again: exactly the release stored before its commit, or a refusal."""
        if "release" not in record and not record.get("failed"):  # committed by an older agent: its stored frame
            again = self.releases.legacy_frame(msg.run_id, msg.round, "train")
            ring = self.releases.ring_path(msg.run_id, msg.round)
            if again is not None and secure is None:
                return again
            if isinstance(again, m.Update) and ring.exists():
                return SecureRelease(again, np.load(ring, allow_pickle=False))
            raise StateError(f"{self.name}: release {key} was committed but never stored; refusing to recompute it")
        content, vector = self.releases.stored(key, record, msg.round, "train")
        payload = bytes(content["payload"])
        if (secure is None) != (vector is None):
            raise StateError(f"{self.name}: release {key} was stored for the other kind of round; refusing it")
        run_eps, total = record["epsilon"], record["ledger_epsilon"]
        return self._train_frame(msg, payload, vector, run_eps, total, config, plan, secure, key)

    def _train_frame(
        self,
        msg: m.RoundStart,
        payload: bytes,
        vector: Any,
        run_eps: float,
        total: float,
        config: RunConfig,
        plan: Plan,
        secure: SecureTrain | None,
        key: str,
    ) -> Any:
        site_eps = None
        if secure is not None and config.site_noise_multiplier is not None:
            site_eps = self.spending.commit_site(key, site_event(config, secure), msg.round, "train", config)
        update = m.Update(
            run_id=msg.run_id,
            round=msg.round,
            weight=plan.weight,
            payload=payload,
            epsilon=run_eps,
            ledger_epsilon=total,
            delta=config.delta,
            site_epsilon=site_eps,
        )
        if secure is not None:
            extra = None
            if config.distributed_noise:  # the pairwise noise terms, added by the SecAgg client before masking
                noise_seed = self._seed(msg.run_id, config.seed, msg.round, "site-noise")
                share = self.policy.noise_shares
                extra = pairwise_noise(config, secure, noise_seed, plan.noise_multiplier, share=share)
            return SecureRelease(update, vector, extra)
        return update

    def _compute_update(
        self, msg: m.RoundStart, spec: ModelSpec, config: RunConfig, plan: Plan, params: Tree, secure: Any
    ) -> tuple[bytes, np.ndarray | None]:
        """Train and encode (the data-dependent part): ``(payload, ring vector or None)``.

        A delta that is not finite (the trainer overflowed, e.g. under a huge learning rate or crafted parameters)
        is replaced by zeros: a fixed, data-independent update, released and paid for like any other. Every step's
        noisy gradient is already private, so which of the two is sent is post-processing.
        """
        import jax

        if secure is not None and config.distributed_noise:
            return b"", self._distributed_vector(msg, spec, config, plan, params, secure)
        trainer = self._trainers.get(msg.run_id)
        if trainer is None:
            from fedjax_room.local import LocalTrainer

            trainer = LocalTrainer(
                spec,
                clip_norm=config.clip_norm,
                noise_multiplier=plan.noise_multiplier,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                optimizer=config.local_optimizer,
                public_size=plan.public_size or None,  # q and the normaliser from the plan's public size, not N
            )
            self._trainers[msg.run_id] = trainer
        seed = self._seed(msg.run_id, config.seed, msg.round, "train")
        train_data = self._local_data(self._train, params, seed)
        new_params, _stats = trainer.train(params, train_data, plan.local_steps, seed)
        with np.errstate(over="ignore", invalid="ignore"):
            delta = jax.tree.map(
                lambda new, old: (np.asarray(new, np.float32) - old).astype(np.float32), new_params, params
            )
        delta = self._outgoing(delta, params, seed)
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(delta)):
            log.warning("%s: round %s's update is not finite; releasing zeros (still paid for)", self.name, msg.round)
            delta = jax.tree.map(np.zeros_like, delta)
        if secure is not None:  # the update leaves only masked, in secagg frames
            noise_seed = self._seed(msg.run_id, config.seed, msg.round, "site-noise")
            return b"", secure_vector(delta, config, secure, noise_seed)
        return pack_tree(dict(delta)), None

    def _distributed_vector(
        self, msg: m.RoundStart, spec: ModelSpec, config: RunConfig, plan: Plan, params: Tree, secure: SecureTrain
    ) -> np.ndarray:
        """A distributed-noise round (:mod:`fedjax_room.secagg.record_noise`): the sum of every record's clipped
        gradient, with this site's share of the plan's noise added in the ring. Through the attacker seam it passes
        as the update it amounts to (``-learning_rate * sum / weight``). A sum that is not finite is replaced by
        zeros (released and paid for like any other, as in :meth:`_compute_update`)."""
        import jax

        from fedjax_room.local import clipped_sum

        seed = self._seed(msg.run_id, config.seed, msg.round, "train")
        data = self._local_data(self._train, params, seed)
        total = clipped_sum(spec, params, data, clip_norm=config.clip_norm, chunk=config.batch_size)
        scale = config.learning_rate / max(1, plan.weight)
        with np.errstate(over="ignore", invalid="ignore"):
            step = jax.tree.map(lambda g: (-scale * g).astype(np.float32), total)
            total = jax.tree.map(lambda d: np.asarray(d, np.float64) / -scale, self._outgoing(step, params, seed))
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(total)):
            log.warning(
                "%s: round %s's gradient sum is not finite; releasing zeros (still paid for)", self.name, msg.round
            )
            total = jax.tree.map(np.zeros_like, total)
        noise_seed = self._seed(msg.run_id, config.seed, msg.round, "site-noise")
        return secure_vector(total, config, secure, noise_seed, plan.noise_multiplier, share=self.policy.noise_shares)

    # the seam a simulated attacker (fedjax_room.sim.attacker.AttackingAgent) overrides; identity here
    def _local_data(self, data: Dataset, params: Tree, seed: int) -> Dataset:
        """The records a round trains on (``seed``: the round's secret training seed): this site's own."""
        return data

    def _outgoing(self, delta: Tree, params: Tree, seed: int) -> Tree:
        """The update a round releases (before the finite check, encoding and masking): the trained delta."""
        return delta

    def evaluate(self, msg: m.RoundStart | SecureEval) -> Any:
        """Noised evaluation counts of the global model on the held-out split, stored and accounted before release.

        Only the rounds on the plan's evaluation schedule are evaluated. In a secure run the job must come with its
        eval SecAgg session (:class:`~fedjax_room.protocol.secure.SecureEval`): the noised vector, carrying only
        this site's share of the noise, leaves only masked in that session (a
        :class:`~fedjax_room.protocol.secure.SecureRelease`), and a plain ``round_start`` for it is not answered.
        A committed evaluation asked again returns exactly the stored counts (whatever parameters come with it), or
        is refused; it is never recomputed with the same noise.
        """
        secure: SecureEval | None = None
        if isinstance(msg, SecureEval):
            secure, msg = msg, msg.start
        key = f"{msg.run_id}/{msg.round}/eval"
        spec, config, plan = self._load_run(msg.run_id)
        if config.secure_aggregation and secure is None:
            log.warning(
                "%s: the evaluation of round %s of secure run %s came without its secagg_setup; not answering",
                self.name,
                msg.round,
                msg.run_id,
            )
            return None
        plan.check_round(msg.round, run_id=msg.run_id, party=self.name, phase="eval")
        if secure is None:
            min_clients = 1
        else:
            from fedjax_room.secagg import SecAggConfig

            min_clients = SecAggConfig.from_dict(secure.setup.config).min_clients  # checked by the site machine
        record = self.ledger.released(key)
        if record is not None:
            if "release" not in record and not record.get("failed"):  # committed by an older agent
                again = self.releases.legacy_frame(msg.run_id, msg.round, "eval")
                if isinstance(again, m.Metrics | m.RunRefuse) and secure is None:
                    return again
                raise StateError(f"{self.name}: release {key} was committed but never stored; refusing to recompute it")
            content, _ = self.releases.stored(key, record, msg.round, "eval")
            # committed now if a crash came before
            site_eps = self.spending.commit_site_eval(key, config, plan, msg.round)
            eps, total = record["epsilon"], record["ledger_epsilon"]
            return self._eval_frame(msg, content, eps, total, config, site_eps, secure, min_clients)
        params = self._global_params(msg, spec)
        event = plan.eval_event()
        self.spending.precheck(key, event, msg.round, spec)
        if config.site_noise_multiplier is not None:  # distributed-DP runs: the site-level cap too
            level_event = self.spending.site_eval_event(plan)
            self.spending.precheck_site(key, level_event, f"evaluating round {msg.round}", msg.round, spec)
        try:
            vector = self._compute_metrics(msg, spec, config, plan, params, secure is not None, min_clients)
        except Exception:
            self.spending.commit_site_eval(key, config, plan, msg.round)
            self.spending.pay_failed(key, event, msg.round, "eval", config, spec)
        content = {"vector": vector, "secure": secure is not None, "min_clients": min_clients}
        release = self.releases.store(msg.run_id, msg.round, "eval", content, None)
        record = {"round": msg.round, "phase": "eval", "release": release}
        run_eps, total = self.spending.commit(key, event, record, config, spec)
        # distributed-DP runs: the site-level ledger too
        site_eps = self.spending.commit_site_eval(key, config, plan, msg.round)
        out = self._eval_frame(msg, content, run_eps, total, config, site_eps, secure, min_clients)
        self._audit("metrics_released", run_id=msg.run_id, round=msg.round, epsilon=run_eps, ledger_epsilon=total)
        return out

    def _eval_frame(
        self,
        msg: m.RoundStart,
        content: dict[str, Any],
        run_eps: float,
        total: float,
        config: RunConfig,
        site_eps: float | None,
        secure: SecureEval | None,
        min_clients: int,
    ) -> Any:
        """The frame of a stored evaluation: plain ``metrics``, or under secure aggregation the accounting-only
        ``metrics`` and the masked-to-be vector. A vector noised for a sum of ``k`` sites goes into no session that
        may release a sum of fewer, and a plain one never into a session (nor a secure one in the clear)."""
        if "vector" not in content:  # stored by an older agent: the noised floats [count, correct, loss_sum]
            if secure is not None:
                raise StateError(f"{self.name}: evaluation {msg.run_id}/{msg.round} was stored for a plain round")
            count, correct, loss_sum = (float(v) for v in content["metrics"])
            return metrics_frame(msg, (count, correct, loss_sum), run_eps, total, config.delta, site_eps)
        vector = [int(v) for v in content["vector"]]
        if bool(content.get("secure")) != (secure is not None) or min_clients < int(content.get("min_clients", 1)):
            raise StateError(
                f"{self.name}: evaluation {msg.run_id}/{msg.round} was noised for a sum of at least "
                f"{content.get('min_clients', 1)} sites; refusing to release it into this session (fewer, or the "
                "other kind of round)"
            )
        if secure is None:
            return metrics_message(msg, vector, run_eps, total, config.delta, site_eps)
        frame = metrics_message(msg, None, run_eps, total, config.delta, site_eps)
        return SecureRelease(frame, ring_vector(vector))

    def _compute_metrics(
        self,
        msg: m.RoundStart,
        spec: ModelSpec,
        config: RunConfig,
        plan: Plan,
        params: Tree,
        secure: bool = False,
        min_clients: int = 1,
    ) -> list[int]:
        """The integer evaluation vector on the held-out split plus this site's Skellam noise (:mod:`.evaluate`):
        all of it in a plain run, its share under secure aggregation (``min_clients``: the fewest sites any
        released sum holds)."""
        from fedjax_room.protocol.evaluation import share_variance

        seed = self._seed(msg.run_id, config.seed, msg.round, "eval")
        floor = plan.eval_noise_floor or plan.eval_noise_multiplier
        variance = share_variance(plan.eval_noise_multiplier, floor, secure=secure, min_clients=min_clients)
        return noised_vector(spec, params, self._heldout, seed=seed, variance=variance)

    # used by tests and the CLI
    def describe(self) -> dict[str, Any]:
        """What the operator sees: name, sizes, ledger summary (this stays on the site)."""
        return {"name": self.name, "train": len(self._train), "heldout": len(self._heldout), **self.spending.summary}
