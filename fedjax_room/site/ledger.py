"""A site's privacy ledger: every release it made, as DP events, persisted before anything leaves.

``STATE/ledger.json`` holds the :class:`~fedjax_room.dp.accounting.Accountant` events (JSON, never
pickle), a tag per event (``run/round/phase``) and, per release key, what was released (digest,
epsilon). It is rewritten atomically (temporary file, fsync, rename, fsync of the folder) by
:meth:`Ledger.commit`, which refuses — :class:`~fedjax_room.errors.BudgetExceededError`, nothing
written — any event that would take the total epsilon at the site's ``delta_cap`` past its cap. So
the ledger on disk is never past the cap, and a release key is spent at most once.

A site keeps two ledgers: the sample-level one (``kind="pld"``, add/remove one record) and, for
distributed-DP runs, a site-level one (``kind="rdp_integer"``, the whole site's data zeroed out), whose
epsilon is a certified bound of the Skellam releases and of the site's evaluation releases in those runs
(see :mod:`fedjax_room.secagg.ddp` and :func:`fedjax_room.site.plan.site_eval_event`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedjax_room.dp.accounting import Accountant, event_to_dict
from fedjax_room.errors import BudgetExceededError, StateError
from fedjax_room.files import atomic_write

__all__ = ["Ledger", "check_against_audit"]

_VERSION = 1


class Ledger:
    """Open with :meth:`open`; query with :meth:`epsilon` / :meth:`run_epsilon` / :meth:`would_exceed`."""

    def __init__(self, path: Path, *, epsilon_cap: float, delta: float, kind: str = "pld") -> None:
        self.path = path
        self.epsilon_cap = float(epsilon_cap)
        self.delta = float(delta)
        self.kind = kind
        self._acc = Accountant(kind)
        self._tags: list[str] = []
        self._releases: dict[str, dict[str, Any]] = {}
        self._runs: dict[str, Accountant] = {}
        self._total: float | None = 0.0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, epsilon_cap: float, delta: float, kind: str = "pld") -> Ledger:
        """Load ``path`` (or start an empty ledger there)."""
        ledger = cls(Path(path), epsilon_cap=epsilon_cap, delta=delta, kind=kind)
        if ledger.path.exists():
            try:
                data = json.loads(ledger.path.read_text())
                if data.get("version") != _VERSION:
                    raise ValueError(f"version {data.get('version')!r}")
                # events are the record; the kind is the ledger's (a site-level ledger written by an older
                # version as "pld" is recomposed as "rdp_integer", the only certified one for Skellam noise)
                ledger._acc = Accountant.from_dict({**dict(data["accountant"]), "kind": kind})
                ledger._tags = [str(t) for t in data["tags"]]
                ledger._releases = dict(data["releases"])
                if len(ledger._tags) != len(ledger._acc):
                    raise ValueError("tags and events differ in length")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StateError(
                    f"privacy ledger {ledger.path} is unreadable ({exc}); restore it from a backup — "
                    "never delete a ledger, that would forget spent privacy"
                ) from None
            ledger._total = None
        return ledger

    # ------------------------------------------------------------------ queries

    def epsilon(self, delta: float | None = None) -> float:
        """Total epsilon spent (all runs) at ``delta`` (default: the site's delta cap)."""
        if delta is None or delta == self.delta:
            if self._total is None:
                self._total = self._acc.epsilon(self.delta)
            return self._total
        return self._acc.epsilon(delta)

    def run_epsilon(self, run_id: str, delta: float) -> float:
        """Epsilon spent by one run at ``delta``."""
        return self._run_acc(run_id).epsilon(delta)

    def _run_acc(self, run_id: str) -> Accountant:
        acc = self._runs.get(run_id)
        if acc is None:
            acc = Accountant(self.kind)
            for tag, event in zip(self._tags, self._acc.events, strict=True):
                if tag.split("/", 1)[0] == run_id:
                    acc.compose(event)
            self._runs[run_id] = acc
        return acc

    def would_exceed(self, event: Any) -> bool:
        """Whether composing ``event`` would take the total past the cap (nothing is spent)."""
        return self._acc.would_exceed(event, epsilon_cap=self.epsilon_cap, delta=self.delta)

    def epsilon_after(self, event: Any) -> float:
        """The total epsilon at the site's delta cap if ``event`` were composed now (nothing is spent or written)."""
        trial = copy.deepcopy(self._acc)
        trial.compose(event)
        return float(trial.epsilon(self.delta))

    def run_epsilons(self) -> dict[str, float]:
        """Each run's own epsilon at the site's delta cap (its events composed alone), oldest run first."""
        runs = list(dict.fromkeys(tag.split("/", 1)[0] for tag in self._tags))
        return {run: self.run_epsilon(run, self.delta) for run in runs}

    def released(self, key: str) -> dict[str, Any] | None:
        """The record of release ``key`` (``run/round/phase``) if it was made."""
        return self._releases.get(key)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every composed event (JSON dicts), oldest first."""
        return self._acc.events

    @property
    def tags(self) -> list[str]:
        """The release key of each event."""
        return list(self._tags)

    def summary(self) -> dict[str, Any]:
        """What a site tells the room about its ledger: epsilon spent, cap, delta, number of releases."""
        return {
            "epsilon": self.epsilon(),
            "epsilon_cap": self.epsilon_cap,
            "delta": self.delta,
            "releases": len(self._releases),
        }

    # ------------------------------------------------------------------ spending

    def commit(self, key: str, event: Any, record: dict[str, Any], *, run_delta: float) -> tuple[float, float]:
        """Spend ``event`` for release ``key`` and persist; returns ``(run epsilon at run_delta, total epsilon)``.

        Raises :class:`BudgetExceededError` (and spends nothing) if it would pass the cap, and
        :class:`StateError` if ``key`` was already spent.
        """
        if key in self._releases:
            raise StateError(f"release {key} was already made; resend it instead of spending again")
        run_id = key.split("/", 1)[0]
        trial = copy.deepcopy(self._acc)
        trial.compose(event)
        total = trial.epsilon(self.delta)
        if total > self.epsilon_cap:
            raise BudgetExceededError(
                f"release {key} would take this site's epsilon to {total:.4g}, past its cap {self.epsilon_cap:g}"
            )
        run_acc = copy.deepcopy(self._run_acc(run_id))
        run_acc.compose(event)
        run_eps = run_acc.epsilon(run_delta)
        releases = {**self._releases, key: {**record, "epsilon": run_eps, "ledger_epsilon": total}}
        tags = [*self._tags, key]
        data = {"version": _VERSION, "accountant": trial.to_dict(), "tags": tags, "releases": releases}
        atomic_write(self.path, json.dumps(data, sort_keys=True, indent=1).encode())
        self._acc, self._tags, self._releases, self._total = trial, tags, releases, total
        self._runs[run_id] = run_acc
        return run_eps, total

    @staticmethod
    def event_dict(event: Any) -> dict[str, Any]:
        """JSON form of an event."""
        return event if isinstance(event, dict) else event_to_dict(event)


#: audit record kind -> the ledger phase its release was committed under (``run/round/phase``)
_AUDITED_RELEASES = {"update_released": "train", "metrics_released": "eval"}


def check_against_audit(ledger: Ledger, records: Iterable[Mapping[str, Any]]) -> None:
    """Refuse to start a site whose ledger has forgotten spend its audit log records.

    Every release is committed to the ledger before it is audited (``update_released`` / ``metrics_released``),
    so each such record's ``run/round/phase`` must be in the ledger, and the ledger's total epsilon must be at
    least the largest ``ledger_epsilon`` the log records. A ledger that was deleted (an empty one is started
    in its place) or rolled back to an older copy fails this: :class:`StateError`, saying how to recover.
    """
    missing: list[str] = []
    recorded = 0.0
    for rec in records:
        phase = _AUDITED_RELEASES.get(str(rec.get("kind")))
        fields = rec.get("fields") or {}
        if phase is None or not isinstance(fields, Mapping):
            continue
        key = f"{fields.get('run_id')}/{fields.get('round')}/{phase}"
        if ledger.released(key) is None:
            missing.append(key)
        spent = fields.get("ledger_epsilon")
        if isinstance(spent, int | float) and not isinstance(spent, bool) and math.isfinite(spent):
            recorded = max(recorded, float(spent))
    behind = recorded > ledger.epsilon() * (1 + 1e-6) + 1e-9
    if not missing and not behind:
        return
    what = (
        f"{len(missing)} release(s) its audit log records are not in it (first: {missing[0]})"
        if missing
        else f"its epsilon {ledger.epsilon():.4g} is below the {recorded:.4g} its audit log records"
    )
    raise StateError(
        f"privacy ledger {ledger.path} is missing or behind this site's audit log: {what}. Starting would forget "
        "spent privacy, so the site refuses. Restore ledger.json (and site_ledger.json) from a backup of this "
        "state directory taken after the last release, then start the site again; `fedjax-room audit show "
        f"{ledger.path.parent} --kind update_released --kind metrics_released` lists every recorded release. "
        "Never start a site with a new ledger while its audit log records spend."
    )
