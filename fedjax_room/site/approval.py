"""A site's approval inbox: model specs waiting for the data owner's yes or no, kept under the state directory.

With ``approval = "manual"`` in ``policy.toml`` a run whose model spec (by :attr:`ModelSpec.hash`) is not in
``approved_models`` and not yet decided waits in the inbox; the agent tells the room (``run_waiting``) and
polls the inbox each half second. The data owner decides from a shell, while the agent runs::

    fedjax-room site pending --state STATE            # what is waiting: spec hash, family, parameters, runs
    fedjax-room site approve HASH --state STATE       # a unique prefix of the hash is enough
    fedjax-room site reject HASH --reason "..." --state STATE

Layout (one writer per file, so the agent and the command never race)::

    STATE/inbox/pending/<hash>.json     written by the agent: the spec, the runs that asked, when
    STATE/inbox/decisions/<hash>.json   written by the command: approved | rejected, reason, when

A decision is about a spec, not a run: an approved spec runs again without asking; a changed spec (one layer
wider) has another hash and waits again. The agent audits each decision it acts on (``model_approved`` /
``model_rejected``) in the site's log; the command never writes the log (one writer per log).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedjax_room.errors import ConfigError, PolicyViolation, RefusedError
from fedjax_room.files import atomic_write
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.site.policy import Policy

__all__ = ["Inbox", "await_approval"]

log = logging.getLogger("fedjax_room.site")

_HEX = set("0123456789abcdef")


def _is_hash(text: str) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


class Inbox:
    """The approval inbox of the site whose state directory is ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "inbox"

    def _pending_path(self, spec_hash: str) -> Path:
        return self.dir / "pending" / f"{spec_hash}.json"

    def _decision_path(self, spec_hash: str) -> Path:
        return self.dir / "decisions" / f"{spec_hash}.json"

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written by another process: read it again next time
            return None

    # ------------------------------------------------------------------ the agent's side

    def add_pending(self, spec_hash: str, spec: dict[str, Any], run_id: str, *, params: int = 0) -> dict[str, Any]:
        """Put ``spec`` in the inbox (or add ``run_id`` to its runs); returns the entry."""
        entry = self._read(self._pending_path(spec_hash)) or {
            "spec_hash": spec_hash,
            "spec": spec,
            "family": spec.get("family", ""),
            "params": params,
            "runs": [],
            "since": time.time(),
        }
        if run_id not in entry["runs"]:
            entry["runs"].append(run_id)
        atomic_write(self._pending_path(spec_hash), json.dumps(entry, sort_keys=True).encode())
        return entry

    def decision(self, spec_hash: str) -> dict[str, Any] | None:
        """``{"decision": "approved" | "rejected", "reason", "at"}`` for ``spec_hash``, or None (undecided)."""
        return self._read(self._decision_path(spec_hash))

    # ------------------------------------------------------------------ the data owner's side

    def pending(self) -> list[dict[str, Any]]:
        """Specs waiting for a decision, oldest first."""
        out = []
        for path in sorted((self.dir / "pending").glob("*.json")):
            entry = self._read(path)
            if entry is not None and self.decision(entry["spec_hash"]) is None:
                out.append(entry)
        return sorted(out, key=lambda e: e.get("since", 0.0))

    def resolve(self, prefix: str) -> str:
        """The full spec hash for ``prefix`` (a full hash, or a unique prefix of a pending one)."""
        prefix = prefix.strip().lower()
        if _is_hash(prefix):
            return prefix
        matches = [p.stem for p in (self.dir / "pending").glob("*.json") if p.stem.startswith(prefix)] if prefix else []
        if len(matches) != 1:
            raise ConfigError(
                f"{prefix!r} matches {len(matches)} pending spec(s); give more of the hash "
                "(see `fedjax-room site pending --state DIR`)"
            )
        return matches[0]

    def decide(self, prefix: str, decision: str, reason: str = "") -> dict[str, Any]:
        """Record ``approved`` or ``rejected`` (with ``reason``) for a spec; the running agent picks it up."""
        if decision not in ("approved", "rejected"):
            raise ConfigError(f"decision must be 'approved' or 'rejected', got {decision!r}")
        spec_hash = self.resolve(prefix)
        if decision == "rejected" and not reason.strip():
            raise ConfigError('say why: `fedjax-room site reject HASH --reason "..."` (the analyst sees it)')
        record = {"spec_hash": spec_hash, "decision": decision, "reason": reason.strip(), "at": time.time()}
        atomic_write(self._decision_path(spec_hash), json.dumps(record, sort_keys=True).encode())
        return record


def await_approval(
    inbox: Inbox,
    policy: Policy,
    spec: ModelSpec,
    run_id: str,
    *,
    name: str,
    audit: Callable[..., None],
    notify: Callable[[m.Message], None] | None,
    stopping: threading.Event,
    poll: float,
) -> None:
    """The data owner's approval of ``spec`` for ``run_id`` at the site ``name`` (policy ``approval`` /
    ``approved_models``).

    A spec in ``approved_models`` passes. With ``approval = "manual"`` an undecided spec waits in the inbox
    (``notify`` tells the room ``run_waiting``; the inbox is read every ``poll`` s until ``stopping`` is set) until
    ``fedjax-room site approve|reject``; each decision acted on is audited. Raises :class:`PolicyViolation`
    (``rejected`` with the owner's reason, or ``not_approved``), or :class:`RefusedError` when stopped.
    """
    h = spec.hash
    if h in policy.approved_models:
        return
    decision = inbox.decision(h)
    if decision is None and policy.approval == "auto":
        if policy.approved_models:
            raise PolicyViolation(
                f"{name}: model {h[:12]} is not among this site's approved models; ask its data owner to "
                "add its spec hash to approved_models",
                party=name,
                reason="not_approved",
            )
        return
    if decision is None:
        inbox.add_pending(h, spec.to_dict(), run_id, params=spec.param_count())
        audit("approval_requested", run_id=run_id, spec_hash=h)
        log.info("%s: run %s waits for approval of model %s (fedjax-room site approve)", name, run_id, h)
        if notify is not None:
            text = f"waiting for approval by {name} (model {h[:12]})"
            notify(m.RunWaiting(run_id=run_id, spec_hash=h, message=text))
        while decision is None:
            if stopping.wait(poll):
                raise RefusedError(f"{name} stopped while waiting for approval", party=name)
            decision = inbox.decision(h)
    kind = "model_approved" if decision["decision"] == "approved" else "model_rejected"
    audit(kind, run_id=run_id, spec_hash=h, reason=decision.get("reason", ""), decided_at=decision["at"])
    if kind == "model_rejected":
        raise PolicyViolation(
            f"{name}: the data owner rejected model {h[:12]}: {decision.get('reason', '')}",
            party=name,
            reason="rejected",
        )
