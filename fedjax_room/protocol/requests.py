"""The coordinator machine's side of the analysts' requests: list, start, prepare, watch, download, cancel.

A request that cannot be served gets a non-fatal ``error`` with its ``req`` (the machine's dispatch does that);
the connection stays up. Starting a run checks every bound of the request before anything is built
(:func:`~fedjax_room.protocol.config.check_run_request`), then prepares the run's initial model and checkpoint 0,
in a worker thread when the machine runs ``background`` (off the event loop). Cancelling is the analyst's own run,
or the operator's (``fedjax-room cancel``, read from the store on each tick).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

from fedjax_room.errors import ConfigError, FedRoomError, RefusedError, StateError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.audit_sink import MAX_AUDIT_TAIL
from fedjax_room.protocol.codec import Tree
from fedjax_room.protocol.config import RunConfig, RunLimits, check_run_request
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.runs import RunDriver
from fedjax_room.protocol.tuning import TuneDraws

__all__ = ["AnalystRequests"]

log = logging.getLogger("fedjax_room.coordinator")


class AnalystRequests(RunDriver):
    """The handlers of the frames an analyst sends (``_on_<type>``), and run preparation, mixed into the machine."""

    max_frame: int
    limits: RunLimits
    _executor: concurrent.futures.ThreadPoolExecutor | None
    _init_params: Callable[[dict[str, Any], int], Tree]
    _tune_draws: TuneDraws | None

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
        ]
        self._send(c.id, m.RunsReply(req=msg.req, runs=runs))

    def _on_start_run(self, c: Conn, msg: m.StartRun, now: float) -> None:
        # every bound (model size, checkpoint size, accountant work, durations) before anything is built
        spec, config = check_run_request(
            msg.spec,
            msg.config,
            limits=self.limits,
            max_frame=min(self.max_frame, getattr(self.store, "max_params_bytes", self.max_frame)),
            max_checkpoint=getattr(self.store, "max_checkpoint_bytes", 4 * self.max_frame),
        )
        self._tune().start_trial(c.name, config, self.store.runs(), self.audit.append)  # protocol/tuning.py
        run_id = self.store.create_run(c.name, spec.to_dict(), config.to_dict())
        self.audit.append("run_requested", run_id=run_id, analyst=c.name, spec_hash=spec.hash, config=config.to_dict())
        if self.background:
            self._prepare_later(run_id, spec.to_dict(), config)
        else:
            try:
                self._prepare(run_id, spec.to_dict(), config)
            except FedRoomError as exc:
                self._fail_pending(now, run_id, exc)
                raise
        self._send(c.id, m.RunCreated(req=msg.req, run_id=run_id))
        log.info("run %s requested by %s", run_id, c.name)
        if self._active is None:
            self._activate_next(now)

    def _tune(self) -> TuneDraws:
        """The tuning sessions' drawn numbers of trials (made on first use)."""
        draws = getattr(self, "_tune_draws", None)
        if draws is None:
            draws = self._tune_draws = TuneDraws()
        return draws

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
        run = self._run_or_error(msg.run_id)
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
        snapshot = self.snapshot(msg.run_id)
        c.watching.add(msg.run_id)
        self._send(c.id, m.RunSnapshot(req=msg.req, run=snapshot))

    def _on_get_model(self, c: Conn, msg: m.GetModel, now: float) -> None:
        run = self._run_or_error(msg.run_id)
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
        self._send(c.id, m.AuditReply(req=msg.req, records=list(self.audit.tail(last))))
