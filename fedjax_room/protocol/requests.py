"""The coordinator machine's side of the analysts' requests: list, start, prepare, watch, download, cancel.

A request that cannot be served gets a non-fatal ``error`` with its ``req`` (the machine's dispatch does that);
the connection stays up. Starting a run checks every bound of the request before anything is built
(:func:`~fedjax_room.protocol.config.check_run_request`), then prepares the run's initial model and checkpoint 0,
in a worker thread when the machine runs ``background`` (off the event loop). Cancelling is the analyst's own run,
or the operator's (``fedjax-room cancel``, read from the store on each tick).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections.abc import Callable
from typing import Any

from fedjax_room.errors import ConfigError, FedRoomError, RefusedError, StateError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.audit_sink import MAX_AUDIT_TAIL
from fedjax_room.protocol.codec import Tree
from fedjax_room.protocol.config import RunConfig, RunLimits
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.runs import RunDriver
from fedjax_room.protocol.tuning import HIDDEN_KINDS, SESSION_OPTIONS, TuneSession, TuneSessions, score

__all__ = ["AnalystRequests"]

log = logging.getLogger("fedjax_room.coordinator")


class AnalystRequests(RunDriver):
    """The handlers of the frames an analyst sends (``_on_<type>``), and run preparation, mixed into the machine."""

    max_frame: int
    limits: RunLimits
    _executor: concurrent.futures.ThreadPoolExecutor | None
    _init_params: Callable[[dict[str, Any], int], Tree]
    _tune_sessions: TuneSessions | None

    def _on_list_sites(self, c: Conn, msg: m.ListSites, now: float) -> None:
        connected = set(self.connected_sites)
        sites = [
            {
                "name": name,
                "schema": info["schema"],
                "record_count": info["record_count"],
                "status": "connected" if name in connected else "offline",
                "policy": info["policy"],
            }
            for name, info in self.store.sites().items()
        ]
        self._send(c.id, m.SitesReply(req=msg.req, sites=sites))

    def _on_list_runs(self, c: Conn, msg: m.ListRuns, now: float) -> None:
        from fedjax_room.models import spec_hash

        hidden = self._hidden_runs()
        runs = [
            {
                "id": r.id,
                "spec_hash": spec_hash(r.spec),
                "status": r.status,
                "rounds_done": r.rounds_done,
                "rounds": int(r.config.get("rounds", 0)),
                "waiting": self._waiting_sites(r.id) if r.status == "pending" else [],
            }
            for r in self.store.runs()
            if r.id not in hidden
        ]
        self._send(c.id, m.RunsReply(req=msg.req, runs=runs))

    def _on_start_run(self, c: Conn, msg: m.StartRun, now: float) -> None:
        # every bound (model size, checkpoint size, accountant work, durations) before anything is built
        spec, config = self._check_request(msg.spec, msg.config)
        if any(getattr(config, k) is not None for k in SESSION_OPTIONS):
            raise ConfigError("only the coordinator starts the trials of a tuning session: use room.tune (start_tune)")
        run_id = self.store.create_run(c.name, spec.to_dict(), config.to_dict())
        self._queue_run(run_id, c.name, spec.hash, spec.to_dict(), config, now)
        self._send(c.id, m.RunCreated(req=msg.req, run_id=run_id))
        log.info("run %s requested by %s", run_id, c.name)
        if self._active is None:
            self._activate_next(now)

    def _queue_run(
        self, run_id: str, analyst: str, spec_hash: str, spec: dict[str, Any], config: RunConfig, now: float
    ) -> None:
        """Audit a new run and build its initial model (now, or in the worker thread)."""
        self.audit.append("run_requested", run_id=run_id, analyst=analyst, spec_hash=spec_hash, config=config.to_dict())
        if self.background:
            self._prepare_later(run_id, spec, config)
        else:
            try:
                self._prepare(run_id, spec, config)
            except FedRoomError as exc:
                self._fail_pending(now, run_id, exc)
                raise

    # ------------------------------------------------------------------ tuning sessions (protocol/tuning.py)

    def _tune(self) -> TuneSessions:
        """The tuning sessions, and the hidden trials read from the store (made on first use)."""
        sessions = getattr(self, "_tune_sessions", None)
        if sessions is None:
            sessions = self._tune_sessions = TuneSessions()
        if not sessions.loaded:
            sessions.load_hidden(self.store.runs(), self.store.published_runs())
        return sessions

    def _hidden_runs(self) -> set[str]:
        return self._tune().hidden

    def _visible_run(self, run_id: str) -> Any:
        """The run ``run_id`` as an analyst may ask for it: a hidden trial reads as no run at all."""
        if run_id in self._hidden_runs():  # the words of an unknown id (views.RunViews._run_or_error)
            raise ConfigError(f"no run {run_id!r} in this room; list them with room.runs()")
        return self._run_or_error(run_id)

    def _audit_visible(self, rec: dict[str, Any]) -> bool:
        """Whether an analyst may read audit record ``rec``: not the session's commitment, nothing naming a hidden
        trial."""
        if rec.get("kind") in HIDDEN_KINDS:
            return False
        hidden = self._hidden_runs()
        if not hidden:
            return True
        text = json.dumps(rec.get("fields"), default=str)
        return not any(run_id in text for run_id in hidden)

    def _refuse_known_session(self, config: Any) -> None:
        session = getattr(config, "tune_session", None)
        if session is not None and self._tune().known(session, self.store.runs()):
            raise ConfigError(f"tuning session {session} is the coordinator's: an estimate may not name it")

    def _on_start_tune(self, c: Conn, msg: m.StartTune, now: float) -> None:
        from fedjax_room.protocol.tuning import check_request, draw_config

        base = dict(msg.config)
        check_request(msg.trials, msg.shape, msg.metric, msg.space, base)
        tunes = self._tune()
        probe = draw_config(msg.space, tunes.rng)
        # every bound of a trial before anything is drawn for real (a session refused here spends nothing)
        trial = {**base, **probe, "tune_session": 1, "tune_trials": msg.trials, "tune_shape": float(msg.shape)}
        spec, _ = self._check_request(msg.spec, trial)
        for name, entry in msg.space.items():  # each end of each range, each listed value: a valid option
            for value in entry.get("values") or entry.get("range") or []:
                RunConfig.from_dict({**trial, name: value}, limits=self.limits)
        self._tune_modes()
        s = tunes.start(c.name, spec.to_dict(), dict(msg.space), msg.trials, float(msg.shape), msg.metric, base, now)
        commitment, nonce = tunes.commitment(s)
        log.info("tuning session %s of %s: %d trials drawn (commitment nonce %s)", s.id, c.name, s.count, nonce)
        self.audit.append(
            "tune_session_drawn", session=s.id, analyst=c.name, mean=s.mean, shape=s.shape, commitment=commitment
        )
        self.audit.append("tune_requested", session=s.id, analyst=c.name, mean=s.mean, shape=s.shape, metric=s.metric)
        self._send(c.id, m.TuneStarted(req=msg.req, session=s.id))
        self._tune_next(s, now)
        if self._active is None:
            self._activate_next(now)

    def _tune_modes(self) -> None:
        """Refuse a session in a room whose sites account tuning differently: a site that composes every trial
        reports a ledger that grows with each one, which would tell the analyst the number of trials that the
        private-selection sites' bound assumes hidden."""
        modes = {
            name: str((info.get("policy") or {}).get("tuning_selection", "compose"))
            for name, info in self.store.sites().items()
        }
        if len(set(modes.values())) > 1:
            compose = sorted(n for n, v in modes.items() if v == "compose")
            raise RefusedError(
                f"the sites of this room account tuning differently ({', '.join(compose)} compose every trial, the "
                "others charge one private selection): a composing site's ledger would reveal the number of trials "
                'the others assume hidden; the sites must agree on tuning_selection ("private" is the default)',
                party="room",
                reason="tune_modes",
            )

    def _tune_next(self, s: TuneSession, now: float) -> None:
        """Start the session's next trial, or publish its best once the drawn number of trials has run."""
        tunes = self._tune()
        if s.trials:
            try:  # a site that composes joined (or re-configured) mid-session: end it, releasing nothing
                self._tune_modes()
            except RefusedError as exc:
                tunes.fail(s, exc.to_dict())
                self.audit.append("tune_failed", session=s.id, analyst=s.analyst, message=exc.message)
                return
        nxt = tunes.next_trial(s)
        if nxt is None:
            best = tunes.publish(s)
            if best is not None:
                self.store.mark_published(best)
                reset = getattr(self.audit, "reset_shown", None)
                if callable(reset):
                    reset()  # the best trial's own records are now the analyst's to read
                view = s.view()
                self.audit.append(
                    "tune_published", session=s.id, run_id=best, metric=s.metric, value=view["value"], analyst=s.analyst
                )
                log.info("tuning session %s: published %s", s.id, best)
            else:
                message = (s.error or {}).get("message")
                self.audit.append("tune_failed", session=s.id, analyst=s.analyst, message=message)
            return
        run_id, drawn = nxt
        try:
            spec, config = self._check_request(s.spec, s.trial_config(drawn))
        except FedRoomError as exc:  # this draw is not a run this room allows: a trial that released nothing
            log.info("tuning session %s: trial %s not started: %s", s.id, run_id, exc.message)
            tunes.trial_over(s, run_id, None)
            self._tune_next(s, now)
            return
        self.store.create_run(s.analyst, spec.to_dict(), config.to_dict(), run_id=run_id)
        try:
            self._queue_run(run_id, s.analyst, spec.hash, spec.to_dict(), config, now)
        except FedRoomError:
            pass  # failed (recorded): the next advance counts it

    def _tune_advance(self, now: float) -> None:
        """Move every session on whose current trial is over; fail the trials of sessions this coordinator lost."""
        tunes = self._tune()
        for s in list(tunes.sessions.values()):
            if s.status != "running" or s.current is None:
                continue
            run = self.store.run(s.current)
            if run is None or run.status not in ("finished", "failed"):
                continue
            first = len(s.trials) == 1
            if first and run.status == "failed" and run.rounds_done == 0 and s.best is None:
                # refused before it ran (a policy, the cap, too few sites): the session stops, nothing more spent
                error = dict(run.error or {"code": "refused", "message": "the first trial was refused"})
                error["message"] = str(error.get("message", "")).replace(run.id, "the first trial")
                tunes.fail(s, error)
                self.audit.append("tune_failed", session=s.id, analyst=s.analyst, message=error.get("message"))
                continue
            value = score(self.store.rounds(run.id), s.metric) if run.status == "finished" else None
            tunes.trial_over(s, run.id, value)
            self._tune_next(s, now)
        ours = {t for s in tunes.sessions.values() for t in s.trials}
        if not tunes.hidden - ours:  # no stored trial of a lost session (the usual case: no store scan)
            return
        for run in self.store.runs():
            if (
                run.id in tunes.hidden
                and run.id not in ours
                and run.status in ("pending", "running")
                and (self._active is None or self._active.id != run.id)
            ):
                self._fail_pending(
                    now,
                    run.id,
                    RefusedError(
                        f"{run.id} is a trial of a tuning session this coordinator no longer runs (it restarted)",
                        party="room",
                        reason="tune_lost",
                    ),
                )

    def _activate_next(self, now: float, *, resumed: bool = False) -> None:
        if not getattr(self, "_advancing", False):
            self._advancing = True
            try:
                self._tune_advance(now)
            finally:
                self._advancing = False
        super()._activate_next(now, resumed=resumed)

    def _on_get_tune(self, c: Conn, msg: m.GetTune, now: float) -> None:
        s = self._tune().owned(c.name, msg.session)
        self._send(c.id, m.TuneReply(req=msg.req, tune=s.view()))

    # ------------------------------------------------------------------ preparing a run's initial model

    def _prepare(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:
        """Build the initial model and write checkpoint 0 (touches no machine state: runs in a worker thread)."""
        from fedjax_room.robust.server import room_optimizer

        params = self._init_params(spec, config.seed)
        opt = room_optimizer(config)
        self.store.save_checkpoint(run_id, 0, params, opt.init(params))

    def _prepare_later(self, run_id: str, spec: dict[str, Any], config: RunConfig) -> None:
        if run_id in self._preparing:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-run")
        self._preparing[run_id] = self._executor.submit(self._prepare, run_id, spec, config)

    def _collect_prepared(self, now: float) -> None:
        for run_id, fut in list(self._preparing.items()):
            if not fut.done():
                continue
            del self._preparing[run_id]
            exc = fut.exception()
            if exc is not None:
                if not isinstance(exc, FedRoomError):
                    log.error("run %s: preparing its initial model failed", run_id, exc_info=exc)
                    exc = StateError(f"could not build the initial model of {run_id}: {type(exc).__name__}: {exc}")
                self._fail_pending(now, run_id, exc)

    def _fail_pending(self, now: float, run_id: str, exc: FedRoomError) -> None:
        """End a run that is not the active one (never offered, or cancelled while queued)."""
        run = self.store.run(run_id)
        if run is None or run.status in ("finished", "failed"):
            return
        log.warning("run %s failed: %s", run_id, exc.message)
        self.audit.append("run_finished", run_id=run_id, status="failed", message=exc.message)
        self.store.set_run_status(run_id, "failed", exc.to_dict())
        self._status_event(run_id)

    # ------------------------------------------------------------------ cancelling

    def _on_cancel_run(self, c: Conn, msg: m.CancelRun, now: float) -> None:
        run = self._visible_run(msg.run_id)
        if run.analyst != c.name:
            raise RefusedError(
                f"{run.id} was started by {run.analyst}, not {c.name}; only its analyst or the room's operator "
                "(`fedjax-room cancel --state DIR RUN_ID`) can cancel it",
                party="room",
                reason="not_your_run",
            )
        self._cancel(run.id, f"analyst {c.name}", msg.message, now)
        self._send(c.id, m.RunCancelled(req=msg.req, run_id=run.id, status="failed"))

    def _operator_cancels(self, now: float) -> None:
        for run_id, by, reason in self.store.pending_cancels():
            try:
                self._cancel(run_id, by or "operator", reason, now)
            except FedRoomError as exc:
                log.warning("operator cancel of %s: %s", run_id, exc.message)
            self.store.mark_cancel_done(run_id)

    def _cancel(self, run_id: str, by: str, reason: str, now: float) -> None:
        """Cancel ``run_id``: audited (``run_cancelled``), it ends ``failed`` with a ``cancelled`` refusal, and the
        sites taking part get ``run_end`` (they start no further round of it)."""
        run = self._run_or_error(run_id)
        if run.status in ("finished", "failed"):
            raise ConfigError(f"{run_id} is already {run.status}; nothing to cancel")
        reason = " ".join(str(reason).split())[:500]
        self.audit.append("run_cancelled", run_id=run_id, by=by, message=reason)
        log.info("run %s cancelled by %s%s", run_id, by, f": {reason}" if reason else "")
        exc = RefusedError(
            f"{run_id} was cancelled by {by}" + (f": {reason}" if reason else ""), party="room", reason="cancelled"
        )
        self._preparing.pop(run_id, None)  # a model still being built is dropped when it is done
        if self._active is not None and self._active.id == run_id:
            self._finish(now, "failed", exc)
        else:
            self._fail_pending(now, run_id, exc)

    def _on_watch_run(self, c: Conn, msg: m.WatchRun, now: float) -> None:
        self._visible_run(msg.run_id)
        snapshot = self.snapshot(msg.run_id)
        c.watching.add(msg.run_id)
        self._send(c.id, m.RunSnapshot(req=msg.req, run=snapshot))

    def _on_get_model(self, c: Conn, msg: m.GetModel, now: float) -> None:
        run = self._visible_run(msg.run_id)
        if self._active is not None and self._active.id == run.id:
            params_bytes, rnd = self._active.params_bytes, run.rounds_done
        else:
            _, _, params_bytes = self.store.load_checkpoint(run.id, run.rounds_done)
            rnd = run.rounds_done
        self.audit.append("model_downloaded", run_id=run.id, by=c.name, round=rnd)
        self._send(c.id, m.ModelReply(req=msg.req, run_id=run.id, round=rnd, params=params_bytes))

    def _on_get_budget(self, c: Conn, msg: m.GetBudget, now: float) -> None:
        self._send(c.id, m.BudgetReply(req=msg.req, sites=self.budget()))

    def _on_get_audit(self, c: Conn, msg: m.GetAudit, now: float) -> None:
        last = max(0, min(int(msg.last), MAX_AUDIT_TAIL))
        shown = getattr(self.audit, "shown", None)
        if callable(shown):  # the TailCache: the records an analyst may read (no hidden tuning trial's)
            self.audit.visible = self._audit_visible  # type: ignore[attr-defined]
            records = shown(last)
        else:  # pragma: no cover - the machine always wraps its sink in a TailCache
            records = [r for r in self.audit.tail(MAX_AUDIT_TAIL) if self._audit_visible(r)][-last:] if last else []
        # the hash chain is the operator's (fedjax-room audit verify): an analyst's records carry no index or
        # link, which would show where hidden records were left out
        out = [{k: v for k, v in r.items() if k not in ("index", "prev", "sig")} for r in records]
        self._send(c.id, m.AuditReply(req=msg.req, records=out))
