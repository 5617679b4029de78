"""What a site would do with a run, asked before the run exists: its plan, its policy's answer, the ledger after.

A ``estimate_offer`` (``room.estimate``) runs the same checks an offer runs — the policy
(:meth:`~fedjax_room.site.policy.Policy.check`), the schema, the plan for this site's public size
(:func:`~fedjax_room.site.plan.make_plan`), the budget (:meth:`~fedjax_room.site.spending.Spending.estimate`, the
same composed event :meth:`~fedjax_room.site.spending.Spending.check_run` refuses on) and the data owner's approval
(read, never waited for) — through :func:`check_offer`, the one function both the offer and the estimate call, so
an estimate agrees with what the site then accepts and spends. It spends nothing, writes nothing (no ledger, no
accepted run, no audit record, no inbox entry) and releases only what the offer's answer would release anyway: the
plan's public figures and the ledger's epsilon, cap and delta (already in ``site_status``).

An estimate is bounded: plans are cached (:func:`_cached_plan`, a pure function of the options and the public
size), the coordinator rate-limits analysts (``fedjax_room.protocol.estimates``) and the site machine runs at most
a couple of estimates at a time.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from fedjax_room.data import Schema
from fedjax_room.errors import FedRoomError, PolicyViolation, PrivacyError
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.approval import Inbox
from fedjax_room.site.plan import Plan, make_plan
from fedjax_room.site.policy import Policy
from fedjax_room.site.spending import Spending

__all__ = ["OPTION_FOR_REASON", "approval_state", "check_offer", "estimate_answer"]

#: the run option (or "spec", the model) an analyst changes to turn each refusal into an accept
OPTION_FOR_REASON = {
    "epsilon_cap": "target_epsilon",
    "site_epsilon_cap": "site_noise_multiplier",
    "privacy": "target_epsilon",
    "delta_cap": "delta",
    "min_sites": "min_sites",
    "aggregator": "aggregator",
    "secure_aggregation": "secure_aggregation",
    "model_family": "spec",
    "max_params": "spec",
    "schema": "spec",
    "not_approved": "spec",
    "rejected": "spec",
    "tune_trials": "tune_trials",
}


@functools.lru_cache(maxsize=64)
def _cached_plan(config_json: str, public_size: int, min_sites: int) -> Plan:
    return make_plan(RunConfig.from_dict(json.loads(config_json)), public_size=public_size, min_sites=min_sites)


def check_offer(
    name: str, policy: Policy, schema: Schema, public_size: int, spec: ModelSpec, config: RunConfig
) -> Plan:
    """The policy, schema and planning checks of an offer (the budget and the approval come after): this site's
    plan, or a :class:`PolicyViolation` with its reason."""
    policy.check(spec, config, party=name)
    if tuple(spec.input_shape) != tuple(schema.feature_shape) or spec.num_classes != len(schema.classes):
        raise PolicyViolation(
            f"{name}: the model takes inputs {list(spec.input_shape)} with {spec.num_classes} classes, "
            f"but this site's data has shape {list(schema.feature_shape)} and {len(schema.classes)} classes",
            party=name,
            reason="schema",
        )
    try:
        key = json.dumps(config.to_dict(), sort_keys=True)
        return _cached_plan(key, public_size, policy.min_sites)
    except PrivacyError as exc:
        raise PolicyViolation(f"{name}: {exc.message}", party=name, reason="privacy") from None


def approval_state(inbox: Inbox, policy: Policy, spec: ModelSpec, *, name: str) -> str:
    """``"approved"`` (the site runs it without asking) or ``"waits"`` (its data owner decides first); a spec the
    owner rejected, or one outside ``approved_models`` under automatic approval, raises :class:`PolicyViolation`
    (read only: nothing is added to the inbox)."""
    h = spec.hash
    if h in policy.approved_models:
        return "approved"
    decision = inbox.decision(h)
    if decision is None:
        if policy.approval == "manual":
            return "waits"
        if policy.approved_models:
            raise PolicyViolation(
                f"{name}: model {h[:12]} is not among this site's approved models", party=name, reason="not_approved"
            )
        return "approved"
    if decision.get("decision") != "approved":
        raise PolicyViolation(
            f"{name}: the data owner rejected model {h[:12]}: {decision.get('reason', '')}",
            party=name,
            reason="rejected",
        )
    return "approved"


def estimate_answer(
    msg: m.EstimateOffer,
    *,
    name: str,
    policy: Policy,
    schema: Schema,
    public_size: int,
    spending: Spending,
    inbox: Inbox,
) -> m.EstimateAnswer:
    """This site's answer to ``estimate_offer``: what it would plan, whether it would accept, nothing spent (a
    trial of a tuning session is checked against the session's record in the ledger)."""
    out: dict[str, Any] = {"accept": False}
    try:
        spec = ModelSpec.from_dict(msg.spec)
        config = RunConfig.from_dict(msg.config)
        plan = check_offer(name, policy, schema, public_size, spec, config)
        out.update(
            epsilon_planned=plan.epsilon_planned,
            noise_multiplier=plan.noise_multiplier,
            eval_noise_multiplier=plan.eval_noise_multiplier,
            min_sites=plan.min_sites,
        )
        figures = spending.estimate(plan, config)
        out.update(figures)
        out["approval"] = approval_state(inbox, policy, spec, name=name)
        if not figures["fits"]:
            spending.check_run(plan, config)  # raises the offer's own refusal
        out["accept"] = True
    except FedRoomError as exc:
        reason = getattr(exc, "reason", "") or exc.code
        option = OPTION_FOR_REASON.get(reason, "")
        if option == "target_epsilon" and msg.config.get("noise_multiplier") is not None:
            option = "noise_multiplier"  # a fixed-noise run: its noise is the option to change
        out.update(reason=reason, message=exc.message, option=option)
    ledger = spending.ledger
    out.setdefault("ledger_epsilon", ledger.epsilon())
    out.setdefault("epsilon_cap", ledger.epsilon_cap)
    out.setdefault("remaining", max(0.0, ledger.epsilon_cap - ledger.epsilon()))
    out.setdefault("delta", ledger.delta)
    return m.EstimateAnswer(est=msg.est, estimate=out)
