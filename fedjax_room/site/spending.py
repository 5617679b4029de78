"""How a site spends its privacy budget: check before computing, commit before releasing, pay for failures.

:class:`Spending` is the agent's one door to its two ledgers (:class:`~fedjax_room.site.ledger.Ledger`): the
sample-level ledger every release is composed into, and the site-level ledger of distributed-DP runs (a
separate neighbouring relation, capped by the policy's ``site_epsilon_cap``). Its rules:

* a run is accepted only if its planned events fit under the cap (:meth:`Spending.check_run`);
* before a release is computed, its event must fit (:meth:`Spending.precheck`, :meth:`Spending.precheck_site`:
  data-independent checks, nothing spent on a refusal);
* a release's cost is committed, fsynced, before it leaves (:meth:`Spending.commit`), once per key;
* a data-dependent computation that fails is paid for anyway, then refused with a data-independent message
  (:meth:`Spending.pay_failed`): whether it failed could depend on a record.

Every refusal is a :class:`~fedjax_room.errors.PolicyViolation` with ``reason="epsilon_cap"`` or
``"site_epsilon_cap"``, and is written to the site's audit log.

A trial of a **tuning session** (``room.tune``: the run carries ``tune_session``, the mean ``tune_trials`` and the
``tune_shape`` of the distribution of the session's random number of trials) is admitted by :meth:`Spending.admit`
once its data owner approved it. Under the policy's ``tuning_selection = "private"`` the session is charged once,
at its first trial, with Papernot & Steinke's private-selection bound of one trial's planned training and
evaluation (:func:`~fedjax_room.dp.selection.selection_bound`), refused up front if that would pass the cap; the
trials' own releases are then recorded in the ledger (each key spent once) with nothing composed for them. Under
``"compose"`` every trial's releases are composed like any run's. Either way a site takes part in at most
``k_max`` trials of a session, and a trial that declares another mean, shape or delta than the session's first,
or (private) costs more than the trial the session was charged for, is refused (``reason="tune_trials"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, NoReturn

from fedjax_room.dp.accounting import event_from_dict, event_to_dict
from fedjax_room.dp.selection import DEFAULT_SHAPE, rdp_curve, selection_bound
from fedjax_room.errors import BudgetExceededError, FedRoomError, PolicyViolation, RefusedError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import Plan, site_eval_event

__all__ = ["TUNING_SELECTIONS", "Spending", "tune_shape"]

#: how a site accounts a tuning session: one private-selection charge, or every trial composed
TUNING_SELECTIONS = ("private", "compose")


def tune_shape(config: RunConfig) -> float:
    """The shape of ``config``'s tuning session's distribution of trials (:data:`DEFAULT_SHAPE` if unset)."""
    shape = getattr(config, "tune_shape", None)
    return DEFAULT_SHAPE if shape is None else float(shape)


log = logging.getLogger("fedjax_room.site")


class Spending:
    """The ledgers of the site ``name``; ``audit(kind, **fields)`` records each refusal."""

    def __init__(
        self,
        name: str,
        ledger: Ledger,
        site_ledger: Ledger,
        *,
        heldout_bound: int,
        audit: Callable[..., None],
        tuning_selection: str = "compose",
    ) -> None:
        self.name = name
        #: the policy's ``tuning_selection``: how a tuning session this site joins from now on is accounted
        self.tuning_selection = tuning_selection
        self.ledger = ledger
        self.site_ledger = site_ledger
        self.heldout_bound = heldout_bound
        self._audit = audit
        #: the sample-level ledger's summary, refreshed at each commit (what ``site_status`` shows)
        self.summary = ledger.summary()

    # -- before a run ---------------------------------------------------------------------------------------

    @staticmethod
    def planned_event(plan: Plan, trials: int = 1, *, whole: bool = False) -> Any:
        """The composed event of the run ``plan`` describes (all its training and evaluation releases; one round
        of a fixed-noise run unless ``whole``: what the site checks before accepting one), ``trials`` times over
        (the trials of a tuning session still to come)."""
        import dp_accounting as dpa

        from fedjax_room.dp.accounting import dpsgd_event

        rounds = plan.rounds if plan.mode == "target" or whole else 1
        event: Any = dpa.ComposedDpEvent(
            [
                dpsgd_event(plan.noise_multiplier, plan.sampling_rate, plan.local_steps * rounds),
                plan.eval_events(None if rounds == plan.rounds else rounds),  # the evaluation schedule's releases
            ]
        )
        return event if trials == 1 else dpa.SelfComposedDpEvent(event, trials)

    def session_record(self, plan: Plan, config: RunConfig) -> tuple[dict[str, Any], bool] | None:
        """For a trial of a tuning session: ``(the session's record on this site, whether it is new)`` (the one its
        first trial made, or the one this trial would start: mode, mean, shape, delta, one trial's planned event,
        ``k_max`` and, in private mode, the charge); None outside tuning. Nothing is written. Raises
        :class:`PolicyViolation` (``tune_trials``) for a trial that does not belong to the session it names."""
        if config.tune_session is None or config.tune_trials is None:
            return None
        session, mean, shape = config.tune_session, float(config.tune_trials), tune_shape(config)
        event = self.planned_event(plan, whole=True)  # one trial: its training and its evaluation schedule
        record = self.ledger.session(session)
        if record is not None:
            declared = (record["mean"], record["shape"], record["delta"])
            if declared != (mean, shape, config.delta):
                raise PolicyViolation(
                    f"{self.name}: tuning session {session} was declared with a mean of {record['mean']:g} trials, "
                    f"shape {record['shape']:g} and delta {record['delta']:g}, not {mean:g}, {shape:g} and "
                    f"{config.delta:g}; a session keeps them (start a new room.tune)",
                    party=self.name,
                    reason="tune_trials",
                )
            if record["mode"] == "private":
                charged = rdp_curve(event_from_dict(record["event"]))
                if not bool((rdp_curve(event) <= charged * (1 + 1e-9) + 1e-12).all()):
                    raise PolicyViolation(
                        f"{self.name}: this trial of tuning session {session} costs more privacy than the trial the "
                        "session was charged for (its Renyi DP exceeds it at some order); every trial of a session "
                        "must cost at most what its first did (vary learning_rate, clip_norm, ..., not the budget)",
                        party=self.name,
                        reason="tune_trials",
                    )
            return record, False
        if self.tuning_selection not in TUNING_SELECTIONS:
            raise PolicyViolation(f"{self.name}: unknown tuning_selection", party=self.name, reason="tune_trials")
        try:
            bound = selection_bound(event, mean, shape, config.delta)
        except FedRoomError as exc:
            raise PolicyViolation(f"{self.name}: {exc.message}", party=self.name, reason="tune_trials") from None
        record = {
            "mode": self.tuning_selection,
            "mean": mean,
            "shape": shape,
            "delta": config.delta,
            "event": event_to_dict(event),
            "k_max": bound["k_max"],
            "charge": None,
        }
        if self.tuning_selection == "private":
            record["charge"] = {k: bound[k] for k in ("epsilon", "delta", "delta_rdp", "tail")}
        return record, True

    def _trial_refusal(self, config: RunConfig, record: dict[str, Any], run_id: str) -> PolicyViolation | None:
        runs = record.get("runs", [])
        if run_id in runs or len(runs) < record["k_max"]:
            return None
        return PolicyViolation(
            f"{self.name}: tuning session {config.tune_session} (a mean of {record['mean']:g} trials) has had its "
            f"{record['k_max']} trials on this site, the most its bound allows; a further trial is refused (start a "
            "new room.tune)",
            party=self.name,
            reason="tune_trials",
        )

    def _session_after(self, plan: Plan, config: RunConfig, record: dict[str, Any], new: bool) -> tuple[float, float]:
        """``(the ledger's epsilon after this trial is admitted, after it and its planned releases)``."""
        charge = record.get("charge")
        if charge is not None:
            after = (
                self.ledger.epsilon_after_charge(charge["epsilon"], charge["delta"]) if new else self.ledger.epsilon()
            )
            return after, after
        import dp_accounting as dpa

        count = math.ceil(record["mean"]) if new else 1  # compose: a new session is checked for its mean
        whole = self.ledger.epsilon_after(dpa.SelfComposedDpEvent(self.planned_event(plan, whole=True), count))
        first = whole if plan.mode == "target" else self.ledger.epsilon_after(self.planned_event(plan, count))
        return first, whole

    def estimate(self, plan: Plan, config: RunConfig, *, run_id: str = "") -> dict[str, Any]:
        """What :meth:`check_run` decides on, as figures (nothing spent): the ledger's epsilon now and after the
        planned run (composed, at the site's delta), the cap, the naive ``remaining``, and ``fits``; for a trial of
        a tuning session also ``tune_trials_left`` (of its ``tune_k_max``) and, accounted by private selection, the
        session's ``tune_epsilon`` / ``tune_delta`` (Papernot & Steinke's bound, charged once)."""
        spent, cap = self.ledger.epsilon(), self.ledger.epsilon_cap
        session = self.session_record(plan, config)
        if session is None:
            after = self.ledger.epsilon_after(self.planned_event(plan, whole=True))
            # a fixed-noise run is accepted when one round fits, and stopped at the round that would pass the cap
            checked = after if plan.mode == "target" else self.ledger.epsilon_after(self.planned_event(plan))
            trials_ok = True
        else:
            record, new = session
            checked, after = self._session_after(plan, config, record, new)
            trials_ok = self._trial_refusal(config, record, run_id) is None
        out = {
            "ledger_epsilon": spent,
            "ledger_after": after,
            "epsilon_cap": cap,
            "remaining": max(0.0, cap - spent),
            "delta": self.ledger.delta,
            "fits": checked <= cap and trials_ok,
            "cut_short": checked <= cap < after,
        }
        if session is not None:
            record, _ = session
            out["tune_k_max"] = int(record["k_max"])
            out["tune_trials_left"] = int(record["k_max"]) - len(record.get("runs", []))
            if record.get("charge") is not None:
                out["tune_epsilon"] = float(record["charge"]["epsilon"])
                out["tune_delta"] = float(record["charge"]["delta"])
        return out

    def check_run(self, plan: Plan, config: RunConfig | None = None, *, run_id: str = "") -> None:
        """Refuse a run whose planned training and evaluation would take the ledger past its cap; a trial of a
        tuning session is checked as its session (see the module docstring): its first trial for the session's
        charge (private) or its mean number of trials (compose), and refused past ``k_max`` trials."""
        session = None if config is None else self.session_record(plan, config)
        if session is None:
            self._check_one(plan)
            return
        assert config is not None
        record, new = session
        refusal = self._trial_refusal(config, record, run_id)
        if refusal is not None:
            raise refusal
        first, _ = self._session_after(plan, config, record, new)
        if first <= self.ledger.epsilon_cap:
            return
        charge = record.get("charge")
        if charge is not None:
            what = (
                f"tuning session {config.tune_session} (a mean of {record['mean']:g} trials, shape "
                f"{record['shape']:g}; "
                f"its best trial released by private selection: Papernot & Steinke's bound, epsilon "
                f"{charge['epsilon']:.3g} at delta {charge['delta']:.3g} for the whole session, "
                f"{plan.epsilon_planned:.3g} planned per trial)"
            )
        elif new:
            what = f"the {math.ceil(record['mean'])} trials (the mean) of tuning session {config.tune_session}"
        else:
            what = f"this trial of tuning session {config.tune_session}"
        raise self._over_cap(what, first, plan, "fewer trials")

    def _check_one(self, plan: Plan) -> None:
        event = self.planned_event(plan)
        if not self.ledger.would_exceed(event):
            return
        what = "this run" if plan.mode == "target" else "even one round of this run"
        what += f" (epsilon {plan.epsilon_planned:.3g} planned per run)"
        raise self._over_cap(what, self.ledger.epsilon_after(event), plan, "fewer rounds")

    def _over_cap(self, what: str, after: float, plan: Plan, fewer: str) -> PolicyViolation:
        """The refusal of ``what``, which would take the ledger to ``after``, past its cap (``epsilon_cap``)."""
        spent, cap = self.ledger.epsilon(), self.ledger.epsilon_cap
        return PolicyViolation(
            f"{self.name}: {what} would take its ledger past its cap: {spent:.3g} of {cap:g} already spent, "
            f"{max(0.0, cap - spent):.3g} left, {after:.3g} composed after it; ask for "
            + ("a smaller target_epsilon" if plan.mode == "target" else "a larger noise_multiplier")
            + f" or {fewer}",
            party=self.name,
            reason="epsilon_cap",
        )

    def admit(self, run_id: str, plan: Plan, config: RunConfig) -> None:
        """Admit an accepted trial of a tuning session (after its data owner's approval; nothing outside tuning):
        checked again, then recorded in the ledger, with the session's one charge at its first trial (fsynced in
        the same write; a run admitted already, e.g. offered again after a restart, is not charged again)."""
        session = self.session_record(plan, config)
        if session is None or config.tune_session is None:
            return
        record, new = session
        if run_id in record.get("runs", []):
            return
        self.check_run(plan, config, run_id=run_id)
        try:
            self.ledger.admit(config.tune_session, run_id, record if new else None)
        except BudgetExceededError as exc:
            raise PolicyViolation(f"{self.name}: {exc.message}", party=self.name, reason="epsilon_cap") from None
        self.summary = self.ledger.summary()
        charge = record.get("charge")
        self._audit(
            "tune_trial_admitted",
            run_id=run_id,
            session=config.tune_session,
            mode=record["mode"],
            k_max=record["k_max"],
            charged=bool(new and charge is not None),
            epsilon=None if charge is None else charge["epsilon"],
            delta=None if charge is None else charge["delta"],
            ledger_epsilon=self.ledger.epsilon(),
        )

    def covered(self, run_id: str) -> dict[str, Any] | None:
        """The private-selection session whose charge covers run ``run_id``'s releases, if any."""
        record = self.ledger.session_of(run_id)
        return record if record is not None and record.get("charge") is not None else None

    # -- before a release -----------------------------------------------------------------------------------

    def precheck(self, key: str, event: Any, round: int, spec: ModelSpec) -> None:
        """Refuse a release whose event would pass the cap before computing it (a data-independent check); a trial's
        release covered by its session's private-selection charge composes nothing, so it always fits."""
        if self.covered(key.split("/", 1)[0]) is None and self.ledger.would_exceed(event):
            run_id = key.split("/", 1)[0]
            self._audit("run_refused", run_id=run_id, spec_hash=spec.hash, reason="epsilon_cap", round=round)
            raise PolicyViolation(
                f"{self.name}: release {key} would take its ledger past its cap; refusing round {round} (ledger stays "
                f"at {self.ledger.epsilon():.4g} of {self.ledger.epsilon_cap:g})",
                party=self.name,
                reason="epsilon_cap",
            )

    def precheck_site(self, key: str, event: Any, what: str, round: int, spec: ModelSpec) -> None:
        """Refuse a release (nothing spent, nothing released) whose site-level event would pass the site-level cap."""
        if self.site_ledger.released(key) is not None or not self.site_ledger.would_exceed(event):
            return
        run_id = key.split("/", 1)[0]
        self._audit("run_refused", run_id=run_id, spec_hash=spec.hash, reason="site_epsilon_cap", round=round)
        raise PolicyViolation(
            f"{self.name}: {what} would take its site-level ledger (distributed DP) past its cap: "
            f"{self.site_ledger.epsilon():.4g} of {self.site_ledger.epsilon_cap:g} spent; refusing it",
            party=self.name,
            reason="site_epsilon_cap",
        )

    def site_eval_event(self, plan: Plan) -> Any:
        """The site-level event of one evaluation of a distributed-DP run (:func:`~fedjax_room.site.plan.
        site_eval_event` over the public held-out bound)."""
        return site_eval_event(plan.eval_noise_multiplier, self.heldout_bound)

    # -- committing -----------------------------------------------------------------------------------------

    def commit(
        self, key: str, event: Any, record: dict[str, Any], config: RunConfig, spec: ModelSpec
    ) -> tuple[float, float]:
        """Compose ``event`` into the ledger under ``key`` (fsynced): ``(run epsilon, ledger epsilon)``. A trial's
        release covered by its session's private-selection charge is recorded under ``key`` with nothing composed
        (the charge already holds it), and its run epsilon is the session's."""
        run_id = key.split("/", 1)[0]
        session = self.covered(run_id)
        if session is not None:
            import dp_accounting as dpa

            event, record = dpa.NoOpDpEvent(), {**record, "covered_by_session": config.tune_session}
        try:
            run_eps, total = self.ledger.commit(key, event, record, run_delta=config.delta)
        except BudgetExceededError as exc:
            self._audit("run_refused", run_id=run_id, spec_hash=spec.hash, reason="epsilon_cap", round=record["round"])
            raise PolicyViolation(
                f"{self.name}: {exc.message}; refusing round {record['round']} (ledger stays at "
                f"{self.ledger.epsilon():.4g} of {self.ledger.epsilon_cap:g})",
                party=self.name,
                reason="epsilon_cap",
            ) from None
        self.summary = self.ledger.summary()
        if session is not None:
            run_eps = float(session["charge"]["epsilon"])
        return run_eps, total

    def pay_failed(self, key: str, event: Any, round: int, phase: str, config: RunConfig, spec: ModelSpec) -> NoReturn:
        """A data-dependent computation failed: spend its cost anyway (its failure could depend on a record), then
        refuse with a data-independent message; the details stay in this site's log."""
        log.exception("%s: %s of %s failed; spending its cost and refusing", self.name, phase, key)
        self.commit(key, event, {"round": round, "phase": phase, "failed": True}, config, spec)
        raise RefusedError(
            f"{self.name}: {phase} of round {round} failed on this site (see its log); its privacy cost is spent and "
            "nothing is released",
            party=self.name,
            reason="site_error",
        )

    def commit_site(self, key: str, event: Any, round: int, phase: str, config: RunConfig) -> float:
        """Compose a release's site-level event (distributed DP) into the site-level ledger, once per key; the run's
        site-level epsilon."""
        done = self.site_ledger.released(key)
        if done is not None:
            return float(done["epsilon"])
        record = {"round": round, "phase": phase, "site_level": True}
        run_eps, _ = self.site_ledger.commit(key, event, record, run_delta=config.delta)
        return float(run_eps)

    def commit_site_eval(self, key: str, config: RunConfig, plan: Plan, round: int) -> float | None:
        """In a distributed-DP run, compose this evaluation's site-level event into the site-level ledger; the run's
        site-level epsilon (None in other runs)."""
        if config.site_noise_multiplier is None:
            return None
        return self.commit_site(key, self.site_eval_event(plan), round, "eval", config)
