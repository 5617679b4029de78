"""The coordinator's run driver: offers, train and eval phases, deadlines, aggregation, resume.

The part of :class:`~fedjax_room.protocol.coordinator.CoordinatorMachine` (which inherits it) that moves a run
from ``pending`` through its rounds to ``finished`` or ``failed``; the views an analyst gets of it are
:class:`~fedjax_room.protocol.views.RunViews`. Like the rest of the machine it does no I/O of its own: it sends
frames through ``self._send``, persists through ``self.store`` and records through ``self.audit``. See
``docs/protocol.md`` for the round flow.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, cast

from fedjax_room.errors import FedRoomError, ProtocolError, RefusedError, RoundError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.audit_sink import AuditSink
from fedjax_room.protocol.codec import Tree, pack_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.limits import RunLimits
from fedjax_room.protocol.store import RoomStore, StoredRun
from fedjax_room.protocol.views import RunViews

__all__ = ["RunDriver"]

#: How long an offer stays open once a site says its data owner must approve the model (``run_waiting``).
APPROVAL_TIMEOUT = 3600.0

log = logging.getLogger("fedjax_room.coordinator")


@dataclasses.dataclass
class _Active:
    id: str
    analyst: str
    spec: dict[str, Any]
    config: RunConfig
    phase: str  # offer | train | eval
    round: int
    deadline: float
    params: Tree
    opt_state: Tree
    params_bytes: bytes
    accepted: dict[str, dict[str, Any]]
    invited: set[str] = dataclasses.field(default_factory=set)
    answered: dict[str, Any] = dataclasses.field(default_factory=dict)
    min_sites: int = 1
    checks: Any = None  # robust.secure_checks.AggregateCheckState: the aggregate norm / held-out loss references
    secure: Any = None  # the SecureRound of a secure train phase (fedjax_room.protocol.secure)


class RunDriver(RunViews):
    """Run scheduling: offers, phases, deadlines, aggregation, resume (the machine provides the attributes and
    the hooks declared here: preparing a run's initial model, and the secure train phase of
    :class:`~fedjax_room.protocol.secure.SecureDriver`)."""

    store: RoomStore
    audit: AuditSink
    limits: RunLimits
    background: bool
    _preparing: dict[str, Any]
    _active: _Active | None
    _conns: dict[int, Conn]
    _site_conns: dict[str, int]

    def _prepare(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:  # pragma: no cover
        raise NotImplementedError

    def _prepare_later(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:  # pragma: no cover
        raise NotImplementedError

    def _fail_pending(self, now: float, run_id: str, exc: FedRoomError) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def connected_sites(self) -> list[str]:  # pragma: no cover - provided by the machine
        raise NotImplementedError

    def _secure_open(self, now: float) -> None:  # pragma: no cover - provided by SecureDriver
        raise NotImplementedError

    def _secure_tick(self, now: float) -> None:  # pragma: no cover - provided by SecureDriver
        raise NotImplementedError

    def _stale(self, c: Conn, run_id: str, what: str) -> None:
        log.info("ignored %s from %s for %s (not open)", what, c.name, run_id)
        err = ProtocolError(f"{what} for {run_id} ignored: that run, round or phase is not open (late or unknown)")
        self._send(c.id, m.Error.of(err, run_id=run_id))

    # ================================================================== run driving

    def _activate_next(self, now: float, *, resumed: bool = False) -> None:
        """Offer (or resume) the oldest unfinished run. A run whose stored request no longer passes this room's
        bounds, or whose checkpoint cannot be read, fails (recorded once) and the next one is tried."""
        if self._active is not None:
            return
        for run in self.store.runs():
            if run.status not in ("pending", "running"):
                continue
            if run.id in self._preparing:
                return  # its initial model is still being built (in order: later runs wait)
            try:
                config = RunConfig.from_stored(run.config, limits=self.limits)
                if run.status == "pending" and run.rounds_done == 0 and not self.store.has_checkpoint(run.id, 0):
                    # the coordinator stopped while building the initial model: build it again
                    if self.background:
                        self._prepare_later(run.id, run.spec, config)
                        return
                    self._prepare(run.id, run.spec, config)
                self._activate(run, now, resumed=resumed)
            except FedRoomError as exc:
                self._active = None
                self._fail_pending(now, run.id, exc)
                continue
            return

    def _activate(self, run: StoredRun, now: float, *, resumed: bool = False) -> None:
        config = RunConfig.from_stored(run.config, limits=self.limits)
        params, opt_state, params_bytes = self.store.load_checkpoint(run.id, run.rounds_done)
        a = _Active(
            id=run.id,
            analyst=run.analyst,
            spec=run.spec,
            config=config,
            phase="offer",
            round=run.rounds_done,
            deadline=now + config.round_timeout,
            params=params,
            opt_state=opt_state,
            params_bytes=params_bytes,
            accepted={},
        )
        self._active = a
        if run.status == "pending":
            if resumed:
                # The coordinator restarted during the offer: the sites that had accepted, or were waiting
                # for their data owner, are expected back (a waiting site's offer job still waits and answers
                # when the owner decides, so the offer stays open as it was); nothing closes before the deadline.
                earlier = {s: info["state"] for s, info in self.store.run_sites(run.id).items()}
                a.invited.update(s for s, state in earlier.items() if state in ("accepted", "waiting"))
                if "waiting" in earlier.values():
                    a.deadline = now + APPROVAL_TIMEOUT
            log.info("offering run %s to %s", run.id, self.connected_sites)
            for name in self.connected_sites:
                a.invited.add(name)
                self._send(self._site_conns[name], m.RunOffer(run_id=a.id, spec=a.spec, config=config.to_dict()))
            if not resumed:
                self._maybe_close(now)
            return
        # resuming a running run after a restart
        a.accepted = {
            s: info["plan"] or {} for s, info in self.store.run_sites(run.id).items() if info["state"] == "accepted"
        }
        a.min_sites = self._min_sites(a)
        rounds = self.store.rounds(run.id)
        if rounds and rounds[-1].status == "aggregated":
            log.info("resuming run %s after round %d", run.id, rounds[-1].round)
            a.round = rounds[-1].round
            self._after_round(now)
        elif run.rounds_done >= config.rounds:  # crashed between the last evaluation and finishing
            a.round = run.rounds_done
            self._finish(now, "finished", None)
        else:
            log.info("resuming run %s at round %d", run.id, run.rounds_done + 1)
            self._open_phase("train", run.rounds_done + 1, now)

    def _min_sites(self, a: _Active) -> int:
        wanted = [a.config.min_sites or 1]
        for plan in a.accepted.values():  # plans are checked on arrival (_plan_problem); a bad stored one counts 1
            value = plan.get("min_sites", 1) if isinstance(plan, dict) else 1
            wanted.append(value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1)
        return max(wanted)

    def _round_start(self, a: _Active) -> m.RoundStart:
        """A phase's ``round_start``: an eval phase carries the global model (what is released), a train phase the
        model the sites train from (the optimiser's iterate when the global model is an average)."""
        from fedjax_room.robust.server import training_params

        params = a.params_bytes
        if a.phase == "train":
            raw = training_params(a.params, a.opt_state)
            params = params if raw is a.params else pack_tree(raw)
        return m.RoundStart(
            run_id=a.id,
            round=a.round,
            phase=a.phase,
            params=params,
            cohort=len(a.accepted),
            timeout=a.config.round_timeout,
        )

    def _open_phase(self, phase: str, round: int, now: float) -> None:
        a = self._active
        assert a is not None
        a.phase, a.round, a.answered = phase, round, {}
        a.deadline = now + a.config.round_timeout
        if phase == "train":
            self.audit.append("round_opened", run_id=a.id, round=round, sites=sorted(a.accepted))
        if a.config.secure_aggregation:  # the secagg_setup frames go before the round_start (train and eval)
            self._secure_open(now)
            if self._active is not a:  # could not set it up: the run failed
                return
        frame = self._round_start(a)
        for name in sorted(a.accepted):
            cid = self._site_conns.get(name)
            if cid is not None and self._conns[cid].reported:
                self._send(cid, frame)
        self._progress_event(a.id, a.round, phase, 0, len(a.accepted))

    def _maybe_close(self, now: float) -> None:
        a = self._active
        if a is None:
            return
        if a.phase in ("train", "eval") and a.secure is not None:  # the SecAgg round closes the phase
            return
        waiting = (a.invited if a.phase == "offer" else set(a.accepted)) - set(a.answered)
        if not waiting:
            self._close_phase(now, timed_out=False)

    def _close_phase(self, now: float, *, timed_out: bool) -> None:
        a = self._active
        assert a is not None
        if a.phase == "offer":
            self._close_offer(now)
        elif a.phase == "train":
            self._close_train(now)
        else:
            self._close_eval(now)

    def _close_offer(self, now: float) -> None:
        a = self._active
        assert a is not None
        a.min_sites = self._min_sites(a)
        if len(a.accepted) < a.min_sites:
            refusals = [
                f"{s} ({info['error'].get('reason') or info['error'].get('code')}: {info['error'].get('message')})"
                for s, info in self.store.run_sites(a.id).items()
                if info["state"] == "refused" and info["error"]
            ]
            silent = sorted(a.invited - set(a.answered))
            detail = "; ".join(refusals) or "no refusals"
            if silent:
                detail += f"; no answer from {', '.join(silent)}"
            if not a.invited:
                detail = "no site was connected"
            self._fail(
                now,
                RefusedError(
                    f"run {a.id} cannot start: {len(a.accepted)} site(s) accepted but it needs at least "
                    f"{a.min_sites}. {detail}",
                    party="room",
                    reason="too_few_sites",
                ),
            )
            return
        self.store.set_run_status(a.id, "running")
        log.info("run %s running with %s (min_sites %d)", a.id, sorted(a.accepted), a.min_sites)
        self._status_event(a.id)
        self._open_phase("train", a.round + 1, now)

    def _close_train(self, now: float) -> None:
        from fedjax_room.robust.server import room_optimizer

        a = self._active
        assert a is not None
        if a.secure is not None:  # a stage deadline passed: the SecAgg server closes it
            self._secure_tick(now)
            return
        updates = {s: v for s, v in a.answered.items() if isinstance(v, tuple)}
        dropped = sorted(s for s in a.accepted if s not in a.answered)
        if len(updates) < a.min_sites:
            self._fail(
                now,
                RoundError(
                    f"round {a.round} of {a.id}: {len(updates)} site(s) sent an update before the "
                    f"{a.config.round_timeout:g}s deadline but the run needs at least {a.min_sites}"
                    + (f" (no answer from {', '.join(dropped)})" if dropped else "")
                ),
            )
            return
        if dropped:
            log.warning("round %d of %s closes without %s (deadline)", a.round, a.id, dropped)
        try:
            delta = self._defend(a, updates)
        except FedRoomError as exc:
            self._fail(now, RoundError(f"round {a.round} of {a.id}: {exc.message}"))
            return
        opt = room_optimizer(a.config)
        params, opt_state = opt.update(delta, a.opt_state, a.params)
        model_digest = self.store.commit_round(
            a.id, a.round, params=params, opt_state=opt_state, sites=sorted(updates), dropped=dropped
        )
        self.audit.append(
            "aggregate_applied", run_id=a.id, round=a.round, sites=sorted(updates), model_digest=model_digest
        )
        a.params, a.opt_state, a.params_bytes = params, opt_state, pack_tree(params)
        self._after_round(now)

    def _defend(self, a: _Active, updates: dict[str, tuple[Tree, float]]) -> Tree:
        """Score and flag every update, update trust, exclude distrusted sites, aggregate with the run's rule.

        Audits ``defence_report`` and keeps the report and the trust state (for the round results and a resume).
        """
        from fedjax_room.robust.anomaly import AnomalyConfig
        from fedjax_room.robust.defence import RobustAggregation

        options: dict[str, Any] = {}
        if a.config.aggregator == "trimmed_mean":  # trim at least one value per end when there are 3+ sites
            options["beta"] = min(max(0.2, 1.0 / len(updates)), 0.49)
        anomaly = AnomalyConfig(exclude_below=a.config.exclude_below)
        defence = RobustAggregation(a.config.aggregator, anomaly=anomaly, **options)
        state = self.store.defence_state(a.id, a.round) or defence.init(a.accepted)
        delta, state, report = defence.apply(updates, state)
        record = {**report.to_dict(), "round": a.round, "aggregate_check": self._aggregate_check(a, delta)}
        if report.flagged or report.excluded:
            log.warning(
                "round %d of %s: flagged %s, excluded %s", a.round, a.id, sorted(report.flagged), list(report.excluded)
            )
        self.audit.append("defence_report", run_id=a.id, **record)
        self.store.record_defence(a.id, a.round, record, state)
        return cast(Tree, delta)

    def _aggregate_check(self, a: _Active, delta: Tree) -> dict[str, Any]:
        """The aggregate's norm against the last accepted round's (robust.check_aggregate); a report, not a veto."""
        from fedjax_room.robust.secure_checks import check_aggregate, init_aggregate_checks

        check, a.checks = check_aggregate(delta, a.checks or init_aggregate_checks())
        if not check.ok:
            log.warning("round %d of %s: aggregate check: %s", a.round, a.id, "; ".join(check.reasons))
        return {"ok": check.ok, "reasons": list(check.reasons), "norm": check.norm, "norm_ratio": check.norm_ratio}

    def _secure_defence(self, a: _Active, delta: Tree, sites: list[str]) -> None:
        """What remains of the defence under secure aggregation: the aggregate check, reported like a defence."""
        record = {
            "round": a.round,
            "aggregator": a.config.aggregator,
            "secure": True,
            "sites": sorted(sites),
            "flagged": {},
            "excluded": [],
            "aggregate_check": self._aggregate_check(a, delta),
        }
        self.audit.append("defence_report", run_id=a.id, **record)
        self.store.record_defence(a.id, a.round, record, {})

    def _loss_check(self, a: _Active, loss: float) -> None:
        """The sites' DP-noised held-out loss of the new model against the last accepted one, added to the report."""
        from fedjax_room.robust.secure_checks import check_held_out_loss, init_aggregate_checks

        record = self.store.defences(a.id).get(a.round)
        if record is None:
            return
        check, a.checks = check_held_out_loss(loss, a.checks or init_aggregate_checks())
        if not check.ok:
            log.warning("round %d of %s: held-out loss check: %s", a.round, a.id, "; ".join(check.reasons))
        record["held_out_loss_check"] = {
            "ok": check.ok,
            "reasons": list(check.reasons),
            "loss_change": check.loss_change,
        }
        self.store.record_defence(a.id, a.round, record, self.store.defence_state(a.id, a.round + 1) or {})

    def _after_round(self, now: float) -> None:
        """Round ``a.round`` is aggregated: evaluate it if it is on the run's schedule (protocol/evaluation.py),
        else record it without metrics and go on."""
        from fedjax_room.protocol.evaluation import is_eval_round

        a = self._active
        assert a is not None
        if is_eval_round(a.round, a.config.rounds, a.config.eval_every):
            self._open_phase("eval", a.round, now)
            return
        self._record_round(now, None, [])

    def _close_eval(self, now: float) -> None:
        a = self._active
        assert a is not None
        if a.secure is not None:  # a stage deadline passed: the SecAgg server closes it
            self._secure_tick(now)
            return
        metrics = {s: v for s, v in a.answered.items() if isinstance(v, tuple)}
        if not metrics:
            self._publish_eval(now, None, [])
            return
        # each (correct, count, loss_sum) was bounded on arrival; wrong = count - correct, then only the sum
        correct = sum(v[0] for v in metrics.values())
        count = sum(v[1] for v in metrics.values())
        loss_sum = sum(v[2] for v in metrics.values())
        self._publish_eval(now, (correct, count - correct, loss_sum), sorted(metrics))

    def _publish_eval(self, now: float, total: Any, sites: list[str], *, secure_min_clients: int | None = None) -> None:
        """Publish one evaluation: the sum over ``sites`` (``(correct, wrong, loss_sum)`` in a plain run, the
        unmasked integer vector in a secure one; None: nothing to show), post-processed, with its noise scale
        from the sites' public plans (protocol/evaluation.py). No single site's values are ever published."""
        from fedjax_room.protocol import evaluation as ev

        a = self._active
        assert a is not None
        secure = secure_min_clients is not None
        shown: dict[str, Any] = {}
        if total is not None and sites:
            variances = []
            for name in sites:
                sigma, floor = ev.plan_noise(a.accepted.get(name) or {})
                variances.append(ev.share_variance(sigma, floor, secure=secure, min_clients=secure_min_clients or 1))
            cw_std, loss_std = ev.noise_std(variances)
            correct, wrong, loss_sum = ev.decode_sum(total) if secure else total
            shown = ev.released(correct, wrong, loss_sum, cw_std=cw_std, loss_std=loss_std).to_dict()
        self._record_round(now, shown, sites)

    def _record_round(self, now: float, shown: dict[str, Any] | None, eval_sites: list[str]) -> None:
        """Record round ``a.round`` (its released metrics, or ``shown`` None when it is not evaluated), tell the
        analysts, and go on to the next round or finish."""
        a = self._active
        assert a is not None
        loss = (shown or {}).get("loss")
        accuracy = (shown or {}).get("accuracy")
        if loss is not None:
            self._loss_check(a, loss)
        spend = self.store.run_spend(a.id)
        epsilon = {s: v["epsilon"] for s, v in sorted(spend.items())}
        self.store.record_metrics(
            a.id, a.round, loss=loss, accuracy=accuracy, epsilon=epsilon, eval_sites=sorted(eval_sites)
        )
        if shown is not None:
            self.store.record_eval(a.id, a.round, {"evaluated": True, **shown})
        row = next(r for r in self.store.rounds(a.id) if r.round == a.round)
        result = self._round_result(row, a.id)
        result["privacy"] = self._privacy(a.id, a.config.delta)
        self._event(a.id, "round", result)
        if a.round >= a.config.rounds:
            self._finish(now, "finished", None)
        else:
            self._open_phase("train", a.round + 1, now)

    def _fail(self, now: float, exc: FedRoomError) -> None:
        log.warning("run %s failed: %s", self._active.id if self._active else "?", exc.message)
        self._finish(now, "failed", exc)

    def _finish(self, now: float, status: str, exc: FedRoomError | None) -> None:
        a = self._active
        assert a is not None
        self.audit.append("run_finished", run_id=a.id, status=status, message=exc.message if exc else "")
        self.store.set_run_status(a.id, status, exc.to_dict() if exc else None)
        self._status_event(a.id)
        end = m.RunEnd(run_id=a.id, status=status, message=exc.message if exc else "")
        for name in sorted(set(a.accepted) | a.invited):
            cid = self._site_conns.get(name)
            if cid is not None:
                self._send(cid, end)
        self._active = None
        self._activate_next(now)
