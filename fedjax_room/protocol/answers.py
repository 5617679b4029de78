"""The coordinator machine's side of the sites' answers: status, accept / refuse / waiting, updates, metrics.

Each handler checks a site's frame against the active run (a frame about a run, round or phase that is not open
gets a non-fatal ``error`` and is ignored: :meth:`~fedjax_room.protocol.runs.RunDriver._stale`), bounds what the
site claims (sizes, weights and metrics against what it declared: :mod:`fedjax_room.protocol.bounds`), records
what it reports it spent, and closes the phase when every site has answered. Secure train phases go through
:class:`~fedjax_room.protocol.secure.SecureDriver`, which this class extends.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fedjax_room.errors import FrameTooLargeError, ProtocolError, RefusedError, RoundError, error_from_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.bounds import bound_metrics, bound_weight, declared_size, eval_margin, weight_problem
from fedjax_room.protocol.codec import unpack_tree, update_digest
from fedjax_room.protocol.config import RunLimits
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.runs import APPROVAL_TIMEOUT, _Active
from fedjax_room.protocol.secure import SecureDriver

__all__ = ["SiteAnswers"]

log = logging.getLogger("fedjax_room.coordinator")

#: Largest policy / plan / ledger summary a site may send (a schema may be 4x: feature names).
MAX_DESCRIPTION = 64 * 1024


def _small(obj: Any, what: str, limit: int) -> None:
    from fedjax_room.protocol.codec import pack

    if len(pack(obj)) > limit:
        raise FrameTooLargeError(f"{what} is over {limit} bytes; send a summary, not data")


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def _plan_problem(plan: Any, limits: RunLimits) -> str | None:
    """Why a site's ``run_accept`` plan cannot be scheduled on (None: it can): the coordinator reads
    ``min_sites`` (and shows ``weight``) from it."""
    if not isinstance(plan, dict):
        return "the plan must be a map"
    min_sites = plan.get("min_sites", 1)
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or not 1 <= min_sites <= limits.max_min_sites:
        return f"min_sites must be an integer in [1, {limits.max_min_sites}], got {min_sites!r}"
    weight = plan.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        return f"weight must be a finite non-negative number, got {weight!r}"
    return None


class SiteAnswers(SecureDriver):
    """The handlers of the frames a site sends (``_on_<type>``), mixed into the machine."""

    max_frame: int
    limits: RunLimits
    _declared: dict[tuple[str, str], int | None]

    def _on_site_status(self, c: Conn, msg: m.SiteStatus, now: float) -> None:
        if len(msg.record_count) > 32:
            raise ProtocolError("site_status record_count must be a short coarse count such as '~500'")
        _small(msg.schema, "site_status schema", 4 * MAX_DESCRIPTION)
        _small(msg.policy, "site_status policy", MAX_DESCRIPTION)
        _small(msg.ledger, "site_status ledger", MAX_DESCRIPTION)
        self.store.save_site(
            c.name, schema=msg.schema, record_count=msg.record_count, policy=msg.policy, ledger=msg.ledger
        )
        c.reported = True
        a = self._active
        if a is None:
            return
        if a.phase == "offer" and c.name not in a.answered:
            a.invited.add(c.name)
            self._send(c.id, m.RunOffer(run_id=a.id, spec=a.spec, config=a.config.to_dict()))
        elif a.phase in ("train", "eval") and c.name in a.accepted and c.name not in a.answered:
            if a.secure is not None:
                if not a.secure.can_join(c.name):
                    return  # it left the SecAgg round when its connection closed; it rejoins next round
                self._send(c.id, a.secure.setup(c.name))  # connected late (e.g. the coordinator restarted)
            self._send(c.id, self._round_start(a))

    def _on_run_accept(self, c: Conn, msg: m.RunAccept, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or a.phase != "offer" or c.name not in a.invited:
            if not (a is not None and a.id == msg.run_id and c.name in a.accepted):
                self._stale(c, msg.run_id, "run_accept")
            return
        if c.name in a.answered:
            return
        _small(msg.plan, "run_accept plan", MAX_DESCRIPTION)
        was_waiting = c.name in self._waiting_sites(a.id, c.name)
        problem = _plan_problem(msg.plan, self.limits)
        if problem is None:  # the weight is bounded by the size the site declared (protocol/bounds.py)
            self._declared[(a.id, c.name)] = size = declared_size(self._site_info(c.name).get("record_count"))
            problem = weight_problem(msg.plan, size)
        if problem is not None:  # refused once, recorded as this site's refusal; never scheduled on
            err = RefusedError(f"{c.name}'s plan for {a.id} is malformed: {problem}", party=c.name, reason="bad_plan")
            log.warning("run %s: %s", a.id, err.message)
            self.audit.append("run_refused", run_id=a.id, site=c.name, reason="bad_plan", round=None)
            self.store.set_run_site(a.id, c.name, "refused", error=err.to_dict())
            a.answered[c.name] = "refused"
            self._send(c.id, m.Error.of(err, run_id=a.id))
            self._event(a.id, "refusal", {"site": c.name, "reason": "bad_plan", "message": err.message, "round": None})
            if was_waiting:
                self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
            self._maybe_close(now)
            return
        self.audit.append("run_accepted", run_id=a.id, site=c.name, reason="")
        self.store.set_run_site(a.id, c.name, "accepted", plan=msg.plan)
        a.accepted[c.name] = dict(msg.plan)
        a.answered[c.name] = "accepted"
        if was_waiting:
            self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
        self._maybe_close(now)

    def _on_run_refuse(self, c: Conn, msg: m.RunRefuse, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or (c.name not in a.invited and c.name not in a.accepted):
            self._stale(c, msg.run_id, "run_refuse")
            return
        err = error_from_dict(msg.error if isinstance(msg.error, dict) else {})
        reason = getattr(err, "reason", "") or err.code
        was_waiting = c.name in self._waiting_sites(a.id, c.name)
        self.audit.append("run_refused", run_id=a.id, site=c.name, reason=reason, round=msg.round)
        state = "refused" if a.phase == "offer" else "left"
        self.store.set_run_site(a.id, c.name, state, error=err.to_dict(), round=msg.round)
        a.accepted.pop(c.name, None)
        a.answered[c.name] = "refused"
        if a.phase in ("train", "eval") and a.secure is not None:
            self._secure_dropped(c.name, now)
            if self._active is not a:
                return
        refusal = {"site": c.name, "reason": reason, "message": err.message, "round": msg.round}
        self._event(a.id, "refusal", refusal)
        if was_waiting:
            self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": ""})
        if a.phase != "offer" and len(a.accepted) < a.min_sites:
            self._fail(
                now,
                RoundError(
                    f"run {a.id} stopped at round {a.round}: site {c.name} refused ({reason}: {err.message}); "
                    f"{len(a.accepted)} site(s) remain but the run needs at least {a.min_sites}"
                ),
            )
            return
        self._maybe_close(now)

    def _on_run_waiting(self, c: Conn, msg: m.RunWaiting, now: float) -> None:
        a = self._active
        if a is None or a.id != msg.run_id or a.phase != "offer" or c.name not in a.invited or c.name in a.answered:
            self._stale(c, msg.run_id, "run_waiting")
            return
        if len(msg.message) > 1024 or len(msg.spec_hash) > 128:
            raise ProtocolError("run_waiting fields must be short (a spec hash and one line)")
        log.info("run %s waits for approval by %s", a.id, c.name)
        self.audit.append("run_waiting", run_id=a.id, site=c.name, spec_hash=msg.spec_hash)
        self.store.set_run_site(a.id, c.name, "waiting")
        a.deadline = max(a.deadline, now + APPROVAL_TIMEOUT)  # a person decides: the offer stays open
        self._event(a.id, "waiting", {"waiting": self._waiting_sites(a.id), "site": c.name, "message": msg.message})

    def _record_spend(self, c: Conn, msg: m.Update | m.Metrics, phase: str) -> None:
        """Store what the site reports it spent on this release, and its whole ledger's epsilon."""
        self.store.record_spend(
            c.name,
            msg.run_id,
            msg.round,
            phase,
            epsilon=msg.epsilon,
            ledger_epsilon=msg.ledger_epsilon,
            delta=msg.delta,
        )
        self.store.update_site_ledger(c.name, {"epsilon": msg.ledger_epsilon})

    def _on_update(self, c: Conn, msg: m.Update, now: float) -> None:
        if not _finite(msg.epsilon, msg.ledger_epsilon, msg.delta) or msg.weight <= 0:
            raise ProtocolError("update: weight must be positive and epsilon/delta finite numbers")
        if msg.site_epsilon is not None and not _finite(msg.site_epsilon):
            raise ProtocolError("update: site_epsilon must be a finite number")
        if self._asked(c, msg.run_id, msg.round, "train"):  # only releases this site was asked for count as spend
            self._record_spend(c, msg, "train")
            if msg.site_epsilon is not None:
                self.store.record_site_spend(c.name, msg.run_id, msg.round, msg.site_epsilon)
        a = self._awaiting(c, msg.run_id, msg.round, "train")
        if a is None:
            self._stale(c, msg.run_id, f"update for round {msg.round}")
            return
        if a.config.secure_aggregation:  # the update itself travels masked in secagg frames
            if msg.payload:
                raise ProtocolError("update: with secure aggregation the payload must be empty (send it masked)")
            self.audit.append("update_received", run_id=a.id, round=a.round, site=c.name, **update_digest(msg))
            a.answered[c.name] = "secure"
            self._progress_event(a.id, a.round, a.phase, len(a.answered), len(a.accepted))
            return
        from fedjax_room.robust.aggregate import check_update

        delta = check_update(unpack_tree(msg.payload, max_bytes=self.max_frame), a.params)
        self.audit.append("update_received", run_id=a.id, round=a.round, site=c.name, **update_digest(msg))
        weight = bound_weight(msg.weight, a.accepted[c.name], self._size(a.id, c.name))  # protocol/bounds.py
        if weight < msg.weight:
            log.warning(
                "run %s round %d: %s claimed weight %g, clamped to %g", a.id, a.round, c.name, msg.weight, weight
            )
        a.answered[c.name] = (delta, weight)
        self._progress_event(a.id, a.round, a.phase, len(a.answered), len(a.accepted))
        self._maybe_close(now)

    def _awaiting(self, c: Conn, run_id: str, round_: int, phase: str) -> _Active | None:
        """The active run if it is waiting for this site's answer in ``phase`` of ``round_``, else None."""
        a = self._active
        if (
            a is None
            or a.id != run_id
            or a.phase != phase
            or a.round != round_
            or c.name not in a.accepted
            or c.name in a.answered
        ):
            return None
        return a

    def _on_metrics(self, c: Conn, msg: m.Metrics, now: float) -> None:
        if not _finite(msg.correct, msg.count, msg.loss_sum, msg.epsilon, msg.ledger_epsilon, msg.delta):
            raise ProtocolError("metrics: every value must be a finite number")
        if msg.site_epsilon is not None and not _finite(msg.site_epsilon):
            raise ProtocolError("metrics: site_epsilon must be a finite number")
        if self._asked(c, msg.run_id, msg.round, "eval"):
            self._record_spend(c, msg, "eval")
            if msg.site_epsilon is not None:  # distributed DP: the site-level ledger includes evaluations
                self.store.record_site_spend(c.name, msg.run_id, msg.round, msg.site_epsilon)
        a = self._awaiting(c, msg.run_id, msg.round, "eval")
        if a is None:
            self._stale(c, msg.run_id, f"metrics for round {msg.round}")
            return
        if a.config.secure_aggregation:  # the counts travel masked; this frame is the accounting only
            a.answered[c.name] = "secure"
            self._progress_event(a.id, a.round, a.phase, len(a.answered), len(a.accepted))
            return
        size = self._size(a.id, c.name)
        margin = eval_margin(a.accepted[c.name], size)
        bounded = bound_metrics(msg.correct, msg.count, msg.loss_sum, size=size, margin=margin)
        if bounded != (msg.correct, msg.count, msg.loss_sum):
            log.warning("run %s round %d: %s's metrics clamped to %s (~%s)", a.id, a.round, c.name, bounded, size)
        a.answered[c.name] = bounded
        self._progress_event(a.id, a.round, a.phase, len(a.answered), len(a.accepted))
        self._maybe_close(now)

    def _size(self, run_id: str, name: str) -> int | None:
        """The size ``name`` declared when it accepted ``run_id`` (after a restart: what it declares now)."""
        if (run_id, name) in self._declared:
            return self._declared[(run_id, name)]
        return declared_size(self._site_info(name).get("record_count"))

    def _site_info(self, name: str) -> dict[str, Any]:
        """What the site last declared in ``site_status`` (empty if it never did)."""
        sites = getattr(self.store, "sites", None)
        return dict((sites() if callable(sites) else {}).get(name) or {})

    def _asked(self, c: Conn, run_id: str, round_: int, phase: str) -> bool:
        """Whether the active run asked this site for ``phase`` of ``round_`` (now, or in a round already past).

        Every accepted site is asked in every round, so a late release for a past round is real spend; a frame for
        another run, a future round, or from a site not (or no longer) in the run is not.
        """
        a = self._active
        if a is None or a.id != run_id or c.name not in a.accepted or a.phase not in ("train", "eval"):
            return False
        if round_ < a.round:
            return round_ >= 1
        return round_ == a.round and (phase == a.phase or (phase == "train" and a.phase == "eval"))
