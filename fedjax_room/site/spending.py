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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

from fedjax_room.errors import BudgetExceededError, PolicyViolation, RefusedError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import Plan, site_eval_event

__all__ = ["Spending"]

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
    ) -> None:
        self.name = name
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

    @staticmethod
    def trials_left(config: RunConfig, trials_accepted: int) -> int:
        """How many runs of this run's kind the check covers: 1, or the trials of its tuning session not yet
        accepted (this one included)."""
        if config.tune_trials is None:
            return 1
        return config.tune_trials - trials_accepted

    def estimate(self, plan: Plan, config: RunConfig, *, trials_accepted: int = 0) -> dict[str, Any]:
        """What :meth:`check_run` decides on, as figures (nothing spent): the ledger's epsilon now and after the
        planned run (composed, at the site's delta), the cap, the naive ``remaining``, and ``fits``."""
        spent, cap = self.ledger.epsilon(), self.ledger.epsilon_cap
        trials = self.trials_left(config, trials_accepted)
        after = self.ledger.epsilon_after(self.planned_event(plan, max(1, trials), whole=True))
        # a fixed-noise run is accepted when one round fits, and stopped at the round that would pass the cap
        one = self.planned_event(plan, max(1, trials))
        checked = after if plan.mode == "target" else self.ledger.epsilon_after(one)
        out = {
            "ledger_epsilon": spent,
            "ledger_after": after,
            "epsilon_cap": cap,
            "remaining": max(0.0, cap - spent),
            "delta": self.ledger.delta,
            "fits": checked <= cap and trials >= 1,
            "cut_short": checked <= cap < after,
        }
        if config.tune_trials is not None:
            out["tune_trials_left"] = trials
        return out

    def check_run(self, plan: Plan, config: RunConfig | None = None, *, trials_accepted: int = 0) -> None:
        """Refuse a run whose planned training and evaluation would take the ledger past its cap; a trial of a
        tuning session is checked for all the session's trials still to come, and refused past its last."""
        trials = 1 if config is None else self.trials_left(config, trials_accepted)
        if trials < 1 and config is not None:
            raise PolicyViolation(
                f"{self.name}: tuning session {config.tune_session} declared {config.tune_trials} trials and this "
                f"site has taken part in {trials_accepted}; a further trial is refused (start a new room.tune, "
                "whose whole cost is checked up front)",
                party=self.name,
                reason="tune_trials",
            )
        if self.ledger.would_exceed(self.planned_event(plan, trials)):
            spent = self.ledger.epsilon()
            cap = self.ledger.epsilon_cap
            after = self.ledger.epsilon_after(self.planned_event(plan, trials))
            if trials > 1:
                what = f"the {trials} trials of this tuning session still to run"
            else:
                what = "this run" if plan.mode == "target" else "even one round of this run"
            raise PolicyViolation(
                f"{self.name}: {what} (epsilon {plan.epsilon_planned:.3g} planned per run) would take its ledger "
                f"past its cap: {spent:.3g} of {cap:g} already spent, {max(0.0, cap - spent):.3g} left, "
                f"{after:.3g} composed after it; ask for "
                + ("a smaller target_epsilon" if plan.mode == "target" else "a larger noise_multiplier")
                + (" or fewer trials" if trials > 1 else " or fewer rounds"),
                party=self.name,
                reason="epsilon_cap",
            )

    # -- before a release -----------------------------------------------------------------------------------

    def precheck(self, key: str, event: Any, round: int, spec: ModelSpec) -> None:
        """Refuse a release whose event would pass the cap before computing it (a data-independent check)."""
        if self.ledger.would_exceed(event):
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
        """Compose ``event`` into the ledger under ``key`` (fsynced): ``(run epsilon, ledger epsilon)``."""
        run_id = key.split("/", 1)[0]
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
