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

A sample-level ledger also holds the **tuning sessions** the site took part in (``sessions``, docs/privacy.md,
"Hyperparameter tuning"): per session, the distribution of its random number of trials, the bound ``k_max`` on
them, the runs admitted as its trials and, for a session accounted by private selection, its one charge, an
``(epsilon, delta)`` pair from Papernot & Steinke's bound (:func:`fedjax_room.dp.selection.selection_bound`).
That charge is composed with the ledger's events as the privacy-loss distribution of an ``(epsilon, delta)``-DP
mechanism (``dp_accounting.pld`` ``from_privacy_parameters``: the worst case of every such mechanism, so the
composition is a valid bound), and is written in the same atomic rewrite that admits the session's first trial:
a session is charged once, and a crash leaves it either uncharged and unadmitted or both.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedjax_room.dp.accounting import PLD_VALUE_DISCRETIZATION, Accountant, event_to_dict
from fedjax_room.errors import BudgetExceededError, StateError
from fedjax_room.files import atomic_write

__all__ = ["Ledger", "check_against_audit"]

_VERSION = 1
#: the version of a ledger that holds tuning sessions: a site of an older version refuses to read it (StateError)
#: rather than read its events alone and forget the sessions' charges
_VERSION_SESSIONS = 2


def _charge_pld(epsilon: float, delta: float) -> Any:
    from dp_accounting import pld

    params = pld.common.DifferentialPrivacyParameters(epsilon, delta)
    return pld.privacy_loss_distribution.from_privacy_parameters(
        params, value_discretization_interval=PLD_VALUE_DISCRETIZATION
    )


def _composed_epsilon(acc: Accountant, charges: list[tuple[float, float]], delta: float) -> float:
    """Epsilon at ``delta`` of ``acc``'s events composed with the ``(epsilon, delta)`` charges (PLD composition)."""
    if not charges:
        return acc.epsilon(delta)
    if acc.kind != "pld":
        raise StateError(f"a {acc.kind} ledger holds no private-selection charge")
    if math.isinf(acc.epsilon(delta)):
        return math.inf
    total = _charge_pld(*charges[0])
    for charge in charges[1:]:
        total = total.compose(_charge_pld(*charge))
    if len(acc):
        total = acc._accountant._pld.compose(total)  # the events' composed PLD (dp_accounting.pld.PLDAccountant)
    return float(total.get_epsilon_for_delta(delta))


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
        #: tuning sessions (str(session id) -> record; see the module docstring)
        self._sessions: dict[str, dict[str, Any]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, epsilon_cap: float, delta: float, kind: str = "pld") -> Ledger:
        """Load ``path`` (or start an empty ledger there)."""
        ledger = cls(Path(path), epsilon_cap=epsilon_cap, delta=delta, kind=kind)
        if ledger.path.exists():
            try:
                data = json.loads(ledger.path.read_text())
                if data.get("version") not in (_VERSION, _VERSION_SESSIONS):
                    raise ValueError(f"version {data.get('version')!r}")
                # events are the record; the kind is the ledger's (a site-level ledger written by an older
                # version as "pld" is recomposed as "rdp_integer", the only certified one for Skellam noise)
                ledger._acc = Accountant.from_dict({**dict(data["accountant"]), "kind": kind})
                ledger._tags = [str(t) for t in data["tags"]]
                ledger._releases = dict(data["releases"])
                ledger._sessions = {str(k): dict(v) for k, v in dict(data.get("sessions") or {}).items()}
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
                self._total = _composed_epsilon(self._acc, self._charges(), self.delta)
            return self._total
        return _composed_epsilon(self._acc, self._charges(), delta)

    def _charges(self, extra: tuple[float, float] | None = None) -> list[tuple[float, float]]:
        """The ``(epsilon, delta)`` charges of the private-selection sessions (and ``extra``, a charge not made)."""
        out = [
            (float(r["charge"]["epsilon"]), float(r["charge"]["delta"]))
            for r in self._sessions.values()
            if r.get("charge") is not None
        ]
        return out if extra is None else [*out, extra]

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
        return self.epsilon_after(event) > self.epsilon_cap

    def epsilon_after(self, event: Any) -> float:
        """The total epsilon at the site's delta cap if ``event`` were composed now (nothing is spent or written)."""
        trial = copy.deepcopy(self._acc)
        trial.compose(event)
        return float(_composed_epsilon(trial, self._charges(), self.delta))

    def epsilon_after_charge(self, epsilon: float, delta: float) -> float:
        """The total epsilon at the site's delta cap if an ``(epsilon, delta)`` charge were composed now."""
        return float(_composed_epsilon(self._acc, self._charges((epsilon, delta)), self.delta))

    def session(self, session: int) -> dict[str, Any] | None:
        """The record of tuning session ``session`` (a copy), or None if this site took no part in it."""
        record = self._sessions.get(str(session))
        return None if record is None else copy.deepcopy(record)

    def session_of(self, run_id: str) -> dict[str, Any] | None:
        """The record of the tuning session run ``run_id`` was admitted to as a trial, if any (a copy)."""
        for record in self._sessions.values():
            if run_id in record.get("runs", ()):
                return copy.deepcopy(record)
        return None

    def admit(self, session: int, run_id: str, record: dict[str, Any] | None = None) -> None:
        """Admit run ``run_id`` as a trial of ``session`` and persist; the session's first trial gives its
        ``record`` (with its ``charge``, if any, which is composed in the same write; :class:`BudgetExceededError`,
        nothing written, if it would pass the cap). A run admitted already is left as it is."""
        key = str(session)
        sessions = copy.deepcopy(self._sessions)
        if key in sessions:
            if run_id in sessions[key]["runs"]:
                return
            sessions[key]["runs"].append(run_id)
        else:
            if record is None:
                raise StateError(f"tuning session {session} has no record on this site yet")
            sessions[key] = {**copy.deepcopy(record), "runs": [run_id]}
        charges = [
            (float(r["charge"]["epsilon"]), float(r["charge"]["delta"]))
            for r in sessions.values()
            if r.get("charge") is not None
        ]
        total = _composed_epsilon(self._acc, charges, self.delta)
        if key not in self._sessions and total > self.epsilon_cap:
            raise BudgetExceededError(
                f"tuning session {session} would take this site's epsilon to {total:.4g}, past its cap "
                f"{self.epsilon_cap:g}"
            )
        self._write(self._acc, self._tags, self._releases, sessions)
        self._sessions, self._total = sessions, total

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
        total = _composed_epsilon(trial, self._charges(), self.delta)
        if total > self.epsilon_cap:
            raise BudgetExceededError(
                f"release {key} would take this site's epsilon to {total:.4g}, past its cap {self.epsilon_cap:g}"
            )
        run_acc = copy.deepcopy(self._run_acc(run_id))
        run_acc.compose(event)
        run_eps = run_acc.epsilon(run_delta)
        releases = {**self._releases, key: {**record, "epsilon": run_eps, "ledger_epsilon": total}}
        tags = [*self._tags, key]
        self._write(trial, tags, releases, self._sessions)
        self._acc, self._tags, self._releases, self._total = trial, tags, releases, total
        self._runs[run_id] = run_acc
        return run_eps, total

    def _write(
        self, acc: Accountant, tags: list[str], releases: dict[str, Any], sessions: dict[str, dict[str, Any]]
    ) -> None:
        data: dict[str, Any] = {"version": _VERSION, "accountant": acc.to_dict(), "tags": tags, "releases": releases}
        if sessions:
            data["version"], data["sessions"] = _VERSION_SESSIONS, sessions
        atomic_write(self.path, json.dumps(data, sort_keys=True, indent=1).encode())

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
