"""A tuning session in a site's ledger (site/spending.py, site/ledger.py, dp/selection.py): under
``tuning_selection = "private"`` one charge, Papernot & Steinke's bound for releasing the best of a random number of
trials, made once at the first trial (refused up front past the cap, never twice, kept across a restart); the
number of trials bounded at ``k_max`` (its tail added to delta); the hostile analyst's or coordinator's moves
refused: more trials than ``k_max``, the session id again with another mean or shape, a dearer trial."""

from __future__ import annotations

import json
import math

import dp_accounting as dpa
import pytest
from dp_accounting import pld

from fedjax_room.dp.selection import DELTA_SHARE, TAIL_SHARE, draw_trials, selection_bound, trials_pmf
from fedjax_room.errors import PolicyError, PolicyViolation
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import make_plan
from fedjax_room.site.policy import Policy
from fedjax_room.site.spending import Spending

PUBLIC = 1000
BASE = {"rounds": 2, "local_steps": 3, "batch_size": 32, "target_epsilon": 1.0, "secure_aggregation": False}
TRIAL = {**BASE, "tune_session": 7, "tune_trials": 4, "tune_shape": 1.0}


def _spending(path, *, cap=10.0, mode="private") -> Spending:
    ledger = Ledger.open(path / "ledger.json", epsilon_cap=cap, delta=1e-5)
    site = Ledger.open(path / "site_ledger.json", epsilon_cap=math.inf, delta=1e-5, kind="rdp_integer")
    return Spending("site-a", ledger, site, heldout_bound=100, audit=lambda kind, **f: None, tuning_selection=mode)


def _trial(**changes):
    config = RunConfig.from_dict({**TRIAL, **changes})
    return make_plan(config, public_size=PUBLIC, min_sites=1), config


def _one_trial_event(plan) -> dpa.DpEvent:
    """One trial's releases from its plan's public figures: the DP-SGD steps and the evaluations."""
    q = min(1.0, BASE["batch_size"] / PUBLIC)
    train = dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(plan.noise_multiplier)), BASE["local_steps"] * BASE["rounds"]
    )
    return dpa.ComposedDpEvent([train, plan.eval_events()])


def test_the_ledger_charges_a_private_session_once_by_papernot_and_steinkes_bound(tmp_path):
    spending = _spending(tmp_path)
    plan, config = _trial()
    spending.check_run(plan, config, run_id="run-1")
    assert spending.ledger.epsilon() == 0.0 and spending.ledger.session(7) is None  # a check spends nothing
    spending.admit("run-1", plan, config)
    # the figure, recomputed from dp-accounting alone: RDP of the repeat-and-select event at delta/2, the geometric
    # tail past k_max added to delta, and that (epsilon, delta) composed as a PLD at the site's delta
    rdp = dpa.rdp.RdpAccountant()
    rdp.compose(dpa.dp_event.RepeatAndSelectDpEvent(_one_trial_event(plan), 4.0, 1.0))
    eps = rdp.get_epsilon(DELTA_SHARE * 1e-5)
    factor = 1 + math.exp(eps)
    k_max = math.ceil(math.log(TAIL_SHARE * DELTA_SHARE * 1e-5 / factor) / math.log(1 - 1 / 4))  # geometric tail
    tail = (1 - 1 / 4) ** k_max
    record = spending.ledger.session(7)
    assert record["k_max"] == k_max and record["charge"]["tail"] == pytest.approx(tail, rel=1e-6)
    assert record["charge"]["epsilon"] == pytest.approx(eps, rel=1e-9)
    session_delta = DELTA_SHARE * 1e-5 + factor * tail
    assert record["charge"]["delta"] == pytest.approx(session_delta, rel=1e-6) and session_delta < 0.6e-5
    expected = pld.privacy_loss_distribution.from_privacy_parameters(
        pld.common.DifferentialPrivacyParameters(eps, session_delta), value_discretization_interval=1e-3
    ).get_epsilon_for_delta(1e-5)
    assert spending.ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    # far below composing the k_max trials the site may take part in (the bound a coordinator that does not keep
    # the other trials to itself would be held to); for so short a trial, composing just the mean 4 would be less
    composed = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    composed.compose(_one_trial_event(plan), k_max)
    assert spending.ledger.epsilon() < composed.get_epsilon(1e-5) / 2

    # every further trial (another learning rate) and every release of every trial: nothing more is composed
    for i in range(2, 6):
        other, cfg = _trial(learning_rate=0.1 * i)
        spending.check_run(other, cfg, run_id=f"run-{i}")
        spending.admit(f"run-{i}", other, cfg)
        spending.precheck(f"run-{i}/1/train", other.train_event(), 1, _spec())
        run_eps, total = spending.commit(f"run-{i}/1/train", other.train_event(), {"round": 1}, cfg, _spec())
        assert run_eps == pytest.approx(eps) and total == pytest.approx(expected, rel=1e-9)
    assert spending.ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert spending.ledger.released("run-3/1/train")["covered_by_session"] == 7
    # a restart: the ledger read back holds the one charge, and admitting a trial again charges nothing
    again = _spending(tmp_path)
    assert again.ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    again.admit("run-1", plan, config)
    again.admit("run-6", *_trial(learning_rate=0.7))
    assert again.ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert again.ledger.session(7)["runs"] == [f"run-{i}" for i in range(1, 7)]
    # a ledger holding a session is a version an older site refuses to read, rather than forget the charge
    assert json.loads((tmp_path / "ledger.json").read_text())["version"] == 2


def _spec():
    from fedjax_room.models import logistic

    return logistic([64], 10)


def test_a_session_whose_bound_passes_the_cap_is_refused_up_front_with_nothing_spent(tmp_path):
    plan, config = _trial()
    bound = selection_bound(_one_trial_event(plan), 4.0, 1.0, 1e-5)
    spending = _spending(tmp_path, cap=bound["epsilon"] - 0.05)  # one trial alone (epsilon ~1) would fit
    est = spending.estimate(plan, config)
    assert not est["fits"] and est["tune_epsilon"] == pytest.approx(bound["epsilon"], rel=1e-9)
    assert est["ledger_after"] > spending.ledger.epsilon_cap and est["tune_k_max"] == bound["k_max"]
    with pytest.raises(PolicyViolation) as info:
        spending.check_run(plan, config, run_id="run-1")
    assert info.value.reason == "epsilon_cap"
    assert "Papernot & Steinke" in info.value.message and f"{bound['epsilon']:.3g}" in info.value.message
    with pytest.raises(PolicyViolation):
        spending.admit("run-1", plan, config)
    assert spending.ledger.epsilon() == 0.0 and spending.ledger.session(7) is None
    assert not (tmp_path / "ledger.json").exists()  # nothing written


def test_a_site_whose_policy_composes_composes_every_trial(tmp_path):
    spending = _spending(tmp_path, mode="compose")
    plan, config = _trial()
    est = spending.estimate(plan, config)
    assert "tune_epsilon" not in est and est["fits"]
    mean = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    mean.compose(_one_trial_event(plan), 4)  # a new session is checked for its mean number of trials
    assert est["ledger_after"] == pytest.approx(mean.get_epsilon(1e-5), rel=2e-3)
    spending.admit("run-1", plan, config)
    assert spending.ledger.session(7)["charge"] is None and spending.ledger.epsilon() == 0.0
    for i, rnd in ((1, 1), (1, 2), (2, 1)):
        spending.commit(f"run-{i}/{rnd}/train", plan.train_event(), {"round": rnd}, config, _spec())
    expected = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    expected.compose(plan.train_event(), 3)
    assert spending.ledger.epsilon() == pytest.approx(expected.get_epsilon(1e-5), rel=1e-6)


def test_a_site_takes_part_in_at_most_k_max_trials_of_a_session(tmp_path):
    """A hostile coordinator (or analyst) running trial after trial: the site's bound on the number holds."""
    spending = _spending(tmp_path)
    plan, config = _trial(tune_trials=2, tune_shape=16.0)  # a light tail: a small k_max
    k_max = spending.estimate(plan, config)["tune_k_max"]
    assert 2 < k_max < 40
    for i in range(k_max):
        spending.admit(f"run-{i}", plan, config)
    est = spending.estimate(plan, config, run_id="run-next")
    assert not est["fits"] and est["tune_trials_left"] == 0
    with pytest.raises(PolicyViolation) as info:
        spending.check_run(plan, config, run_id="run-next")
    assert info.value.reason == "tune_trials" and f"{k_max} trials" in info.value.message
    with pytest.raises(PolicyViolation):
        spending.admit("run-next", plan, config)
    spending.check_run(plan, config, run_id="run-0")  # a trial admitted already is still its trial


@pytest.mark.parametrize(
    "changes",
    [{"tune_trials": 8}, {"tune_shape": 0.5}, {"delta": 1e-6}, {"target_epsilon": 2.0}],
    ids=["mean", "shape", "delta", "dearer-trial"],
)
def test_a_trial_that_does_not_fit_the_session_it_names_is_refused(tmp_path, changes):
    spending = _spending(tmp_path)
    spending.admit("run-1", *_trial())
    before = spending.ledger.epsilon()
    plan, config = _trial(**changes)
    with pytest.raises(PolicyViolation) as info:
        spending.check_run(plan, config, run_id="run-2")
    assert info.value.reason == "tune_trials"
    with pytest.raises(PolicyViolation):
        spending.admit("run-2", plan, config)
    assert spending.ledger.epsilon() == before and spending.ledger.session(7)["runs"] == ["run-1"]
    cheaper, cfg = _trial(target_epsilon=0.5)  # a trial that costs less is covered by the charge
    spending.admit("run-3", cheaper, cfg)


def test_k_max_bounds_the_tail_and_the_draw_follows_the_distribution():
    for mean, shape in ((4, 1.0), (8, 0.0), (16, 4.0)):
        bound = selection_bound(dpa.GaussianDpEvent(5.0), mean, shape, 1e-5)
        pmf = trials_pmf(mean, shape, bound["k_max"] + 20_000)
        beyond = math.fsum(pmf[bound["k_max"] :])
        assert beyond == pytest.approx(bound["tail"], rel=1e-6)
        factor = 1 + math.exp(bound["epsilon"])
        assert factor * beyond <= TAIL_SHARE * bound["delta_rdp"]  # P(K > k_max) is a tenth of the RDP delta
        assert factor * math.fsum(pmf[bound["k_max"] - 1 :]) > TAIL_SHARE * bound["delta_rdp"]  # the smallest k
        assert bound["delta"] == pytest.approx(bound["delta_rdp"] + factor * bound["tail"])
        assert math.fsum(k * p for k, p in enumerate(pmf, 1)) == pytest.approx(mean, rel=1e-6)
    import random

    rng = random.Random(0)
    draws = [draw_trials(4, 1.0, rng) for _ in range(4000)]
    assert min(draws) >= 1 and sum(draws) / len(draws) == pytest.approx(4, rel=0.08)
    assert sum(d == 1 for d in draws) / len(draws) == pytest.approx(0.25, abs=0.03)  # geometric: P(K=1) = 1/mean


def test_the_policy_says_how_a_tuning_session_is_accounted():
    assert Policy().tuning_selection == "private"  # the coordinator shows the analyst only the best trial
    assert Policy.from_dict({"tuning_selection": "compose"}).tuning_selection == "compose"
    assert 'tuning_selection = "compose"' in Policy.from_dict({"tuning_selection": "compose"}).to_toml()
    with pytest.raises(PolicyError, match="tuning_selection"):
        Policy.from_dict({"tuning_selection": "best"})
