"""What an analyst may see of the room's runs: budgets, snapshots, round results, and the pushed run events.

The read side of the coordinator machine (:class:`~fedjax_room.protocol.coordinator.CoordinatorMachine` inherits
it through :class:`~fedjax_room.protocol.runs.RunDriver`): everything here reads the store and sends
``run_event`` frames to the analysts watching a run; nothing changes a run. No per-site update and no un-noised
metric is in any view.
"""

from __future__ import annotations

import math
from typing import Any

from fedjax_room.errors import ConfigError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig, check_run_request
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.limits import RunLimits
from fedjax_room.protocol.store import RoomStore, StoredRun

__all__ = ["RunViews"]


class RunViews:
    """The views and events of the machine's runs (the machine provides the attributes declared here)."""

    store: RoomStore
    _conns: dict[int, Conn]
    limits: RunLimits
    max_frame: int

    def _check_request(self, spec: Any, config: Any) -> tuple[Any, RunConfig]:
        """A run request's spec and config checked against this room's bounds (:func:`check_run_request`: the
        limits, a ``round_start`` that fits in one frame, a checkpoint the store can write and read back)."""
        return check_run_request(
            spec,
            config,
            limits=self.limits,
            max_frame=min(self.max_frame, getattr(self.store, "max_params_bytes", self.max_frame)),
            max_checkpoint=getattr(self.store, "max_checkpoint_bytes", 4 * self.max_frame),
        )

    def _send(self, conn: int, msg: m.Message) -> None:  # pragma: no cover - provided by the machine
        raise NotImplementedError

    def _hidden_runs(self) -> set[str]:  # pragma: no cover - the machine's tuning sessions (protocol/requests.py)
        return set()

    def budget(self) -> list[dict[str, Any]]:
        """Per site: epsilon spent (as the site reports its composed ledger), delta, cap, remaining, and ``runs``:
        each run's own epsilon as the site reported it (``[{"run_id", "epsilon"}]``, oldest run first)."""
        out = []
        runs: dict[str, list[dict[str, Any]]] = {}
        hidden = self._hidden_runs()
        for run in self.store.runs():
            if run.id in hidden:  # a tuning session's trial that was not published (protocol/tuning.py)
                continue
            for site, spend in self.store.run_spend(run.id).items():
                runs.setdefault(site, []).append({"run_id": run.id, "epsilon": spend["epsilon"]})
        for site, spend in self.store.run_spend("queries").items():  # DP exploration queries, composed (queries.py)
            runs.setdefault(site, []).append({"run_id": "queries", "epsilon": spend["epsilon"]})
        for name, info in self.store.sites().items():
            ledger, policy = info["ledger"], info["policy"]
            cap = float(ledger.get("epsilon_cap", policy.get("epsilon_cap", math.inf)))
            spent = float(ledger.get("epsilon", 0.0))
            out.append(
                {
                    "site": name,
                    "epsilon_spent": spent,
                    "delta": float(ledger.get("delta", policy.get("delta_cap", 0.0))),
                    "epsilon_cap": cap,
                    "remaining": max(0.0, cap - spent),
                    "runs": runs.get(name, []),
                }
            )
        return out

    def _privacy(self, run_id: str, delta: float) -> dict[str, dict[str, float | None]]:
        sites = self.store.sites()
        out: dict[str, dict[str, float | None]] = {}
        site_level = self.store.run_site_spend(run_id)
        for site, spend in self.store.run_spend(run_id).items():
            policy = sites.get(site, {}).get("policy", {})
            cap = float(policy.get("epsilon_cap", math.inf))
            out[site] = {
                "epsilon": spend["epsilon"],
                "delta": spend["delta"] or delta,
                "cap": cap,
                "remaining": max(0.0, cap - spend["ledger_epsilon"]),
                "site_epsilon": site_level.get(site),  # site-level (distributed DP); None without it
            }
        return out

    def _round_result(self, row: Any, run_id: str) -> dict[str, Any]:
        evals = getattr(self.store, "evals", None)
        released = (evals(run_id) if callable(evals) else {}).get(row.round) or {}
        return {
            "round": row.round,
            "sites": row.sites,
            "dropped": row.dropped,
            "loss": row.loss,
            "accuracy": row.accuracy,
            # protocol/evaluation.py: whether this round was on the schedule, the noise scale (standard deviation)
            # of its released figures, and the sites whose held-out sets the (summed) release covers
            "evaluated": bool(released.get("evaluated", row.loss is not None or row.accuracy is not None)),
            "accuracy_std": released.get("accuracy_std"),
            "loss_std": released.get("loss_std"),
            "eval_sites": list(row.eval_sites),
            "epsilon": row.epsilon,
            "defence": self.store.defences(run_id).get(row.round),
        }

    def defences(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Which poisoning defences run for a run with ``config`` (name, active, detail), see docs/robustness.md."""
        from fedjax_room.robust.secure_checks import active_defences

        statuses = active_defences(
            secure_aggregation=bool(config.get("secure_aggregation", False)),
            aggregator=str(config.get("aggregator", "fedavg")),
            exclude_below=config.get("exclude_below"),
        )
        return [{"name": d.name, "active": d.active, "detail": d.detail} for d in statuses]

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """Everything an analyst may see about a run (no per-site updates, no un-noised metrics)."""
        run = self._run_or_error(run_id)
        config = run.config
        refusals = [
            {
                "site": s,
                "reason": (info["error"] or {}).get("reason") or (info["error"] or {}).get("code", ""),
                "message": (info["error"] or {}).get("message", ""),
                "round": info["round"],
            }
            for s, info in self.store.run_sites(run_id).items()
            if info["state"] in ("refused", "left")
        ]
        return {
            "id": run.id,
            "spec": run.spec,
            "config": config,
            "status": run.status,
            "rounds_done": run.rounds_done,
            "rounds": int(config.get("rounds", 0)),
            "history": [self._round_result(r, run_id) for r in self.store.rounds(run_id) if r.status == "evaluated"],
            "refusals": refusals,
            "error": run.error,
            "privacy": self._privacy(run_id, float(config.get("delta", 0.0))),
            "defences": self.defences(config),
            # sites whose data owner has not yet approved the model (approval = "manual"); empty once decided
            "waiting": sorted(s for s, i in self.store.run_sites(run_id).items() if i["state"] == "waiting"),
        }

    def _event(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        for c in self._conns.values():
            if c.state == "ready" and run_id in c.watching:
                self._send(c.id, m.RunEvent(run_id=run_id, kind=kind, data=data))

    def _progress_event(self, run_id: str, round_: int, phase: str, answered: int, cohort: int) -> None:
        """``progress``: inside a round, how many of the cohort have answered this phase (counts only, no names)."""
        data = {"round": round_, "phase": phase, "answered": answered, "cohort": cohort}
        self._event(run_id, "progress", data)

    def _status_event(self, run_id: str) -> None:
        run = self.store.run(run_id)
        if run is None:  # not a run of this room: nothing to tell its watchers
            return
        self._event(
            run_id,
            "status",
            {
                "status": run.status,
                "error": run.error,
                "rounds_done": run.rounds_done,
                "privacy": self._privacy(run_id, float(run.config.get("delta", 0.0))),
            },
        )

    def _waiting_sites(self, run_id: str, only: str | None = None) -> list[str]:
        """Sites whose data owner has not yet approved the run's model (``run_waiting``), sorted."""
        sites = self.store.run_sites(run_id)
        return sorted(s for s, info in sites.items() if info["state"] == "waiting" and only in (None, s))

    def _run_or_error(self, run_id: str) -> StoredRun:
        run = self.store.run(run_id)
        if run is None:
            raise ConfigError(f"no run {run_id!r} in this room; list them with room.runs()")
        return run
