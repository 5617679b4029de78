"""The runs a site accepted: ``STATE/runs/<run>.json`` holds each one's spec, run options and plan.

Written once, when the site accepts the offer (after its policy, approval and budget checks); every later job of
the run (train, eval) reads the run from here, never from the coordinator's frames, so a coordinator cannot change
a run's options or plan after the site accepted it. An offer of an id already used for another spec or other
options is refused (``run_id_reused``).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedjax_room.errors import ProtocolError, RefusedError
from fedjax_room.files import atomic_write
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.fields import is_id
from fedjax_room.site.plan import Plan

__all__ = ["AcceptedRuns"]


class AcceptedRuns:
    """The accepted runs of the site ``name`` under ``state_dir/runs``."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.root = Path(state_dir) / "runs"
        self.name = name

    def _path(self, run_id: str) -> Path:
        if not is_id(run_id):
            raise ProtocolError(f"run id {run_id!r} is not a plain name")
        return self.root / f"{run_id}.json"

    def accepted_plan(self, run_id: str, spec: ModelSpec, config: RunConfig) -> Plan | None:
        """The plan this site accepted ``run_id`` with, if it did with this spec and these options; None if it never
        accepted the run; refused (``run_id_reused``) if the id was accepted for another run."""
        path = self._path(run_id)
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        if rec["spec_hash"] == spec.hash and RunConfig.from_stored(rec["config"]) == config:
            return Plan.from_dict(rec["plan"])
        raise RefusedError(
            f"{self.name}: run id {run_id} was already used for another run", party=self.name, reason="run_id_reused"
        )

    def accept(self, run_id: str, spec: ModelSpec, config: RunConfig, plan: Plan) -> None:
        """Record ``run_id`` as accepted with ``plan`` (atomically)."""
        rec = {"spec_hash": spec.hash, "spec": spec.to_dict(), "config": config.to_dict(), "plan": plan.to_dict()}
        atomic_write(self._path(run_id), json.dumps(rec, sort_keys=True).encode())

    def load(self, run_id: str) -> tuple[ModelSpec, RunConfig, Plan]:
        """``(spec, options, plan)`` of an accepted run; refused (``unknown_run``) if this site never accepted it."""
        try:
            rec = json.loads(self._path(run_id).read_text())
        except FileNotFoundError:
            raise RefusedError(
                f"{self.name} never accepted run {run_id}; offer it first", party=self.name, reason="unknown_run"
            ) from None
        return ModelSpec.from_dict(rec["spec"]), RunConfig.from_stored(rec["config"]), Plan.from_dict(rec["plan"])
