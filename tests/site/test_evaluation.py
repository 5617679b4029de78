"""Metrics an analyst can read (issue 16): the evaluation schedule, its share of the budget read off the ledger, the
post-processing of released figures, and the noise shares of a summed release (protocol/evaluation.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedjax_room.dp.accounting import Accountant, event_from_dict
from fedjax_room.protocol import evaluation as ev
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.evaluate import skellam
from fedjax_room.site.plan import EVAL_SHARE, make_plan

from .conftest import SPEC


def _offer(run_id="run-1", **config):
    cfg = {"rounds": 4, "target_epsilon": 2.0, "local_steps": 3, "batch_size": 20, "secure_aggregation": False}
    return m.RunOffer(run_id=run_id, spec=SPEC, config=RunConfig.from_dict({**cfg, **config}).to_dict())


def _start(rnd, phase, run_id="run-1"):
    zeros = {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.zeros((4, 2), np.float32)}}
    return m.RoundStart(run_id=run_id, round=rnd, phase=phase, params=pack_tree(zeros), cohort=3, timeout=30.0)


def test_the_schedule_is_every_eval_every_rounds_and_always_the_last():
    assert ev.eval_rounds(5, None) == (3, 5)  # unset: halfway and after the last round
    assert ev.eval_rounds(10, None) == (5, 10)
    assert ev.eval_rounds(1, None) == (1,)
    assert ev.eval_rounds(5, 1) == (1, 2, 3, 4, 5)
    assert ev.eval_rounds(10, 3) == (3, 6, 9, 10)
    assert ev.eval_rounds(4, 50) == (4,)
    assert all(ev.is_eval_round(r, 10, 3) == (r in (3, 6, 9, 10)) for r in range(-1, 13))
    with pytest.raises(Exception, match="eval_every"):
        RunConfig.from_dict({"eval_every": 0})


@pytest.mark.parametrize("config", [{}, {"eval_every": 1}, {"target_epsilon": 0.5, "rounds": 6}])
def test_evaluation_costs_at_most_a_tenth_of_the_runs_epsilon_in_the_ledger(factory, config):
    """A whole run through the agent: the ledger's run epsilon stays within the target, and what its evaluation
    releases add to it (the run's epsilon minus that of its training releases alone) is at most 10% of it."""
    agent = factory.agent(epsilon_cap=100.0)
    offer = _offer(**config)
    cfg = RunConfig.from_dict(offer.config)
    accept = agent.handle("offer", offer)
    assert isinstance(accept, m.RunAccept), accept
    schedule = ev.eval_rounds(cfg.rounds, cfg.eval_every)
    for rnd in range(1, cfg.rounds + 1):
        assert isinstance(agent.handle("train", _start(rnd, "train")), m.Update)
        reply = agent.handle("eval", _start(rnd, "eval"))
        if rnd in schedule:
            assert isinstance(reply, m.Metrics), reply
        else:  # off the schedule: refused before anything is computed, nothing spent
            assert isinstance(reply, m.RunRefuse) and reply.error["reason"] == "round_range"
    tags = [t for t in agent.ledger.tags if t.startswith("run-1/")]
    assert tags == [
        f"run-1/{r}/{p}" for r in range(1, cfg.rounds + 1) for p in ("train", "eval") if p == "train" or r in schedule
    ]
    train = Accountant("pld")
    for tag, event in zip(agent.ledger.tags, agent.ledger.events, strict=True):
        if tag.startswith("run-1/") and tag.endswith("/train"):
            train.compose(event_from_dict(event))
    total = agent.ledger.run_epsilon("run-1", cfg.delta)
    alone = train.epsilon(cfg.delta)
    assert total <= cfg.target_epsilon * (1 + 1e-6)
    assert total == pytest.approx(accept.plan["epsilon_planned"], rel=1e-6)
    assert 0 < (total - alone) / total <= EVAL_SHARE


def test_fewer_evaluations_get_less_noise_each():
    plan = {
        e: make_plan(RunConfig.from_dict({"rounds": 5, "eval_every": e}), public_size=400, min_sites=2)
        for e in (None, 1)
    }
    assert plan[None].eval_rounds == (3, 5) and plan[1].eval_rounds == (1, 2, 3, 4, 5)
    assert plan[None].eval_noise_multiplier < plan[1].eval_noise_multiplier
    # the floor comes from the config alone: every site of a run shares it, whatever its size
    other = make_plan(RunConfig.from_dict({"rounds": 5}), public_size=4000, min_sites=2)
    assert other.eval_noise_floor == plan[None].eval_noise_floor


def test_released_figures_are_in_range_and_never_nan():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        correct, wrong = rng.normal(0, 50, size=2) + rng.integers(0, 100, size=2)
        loss_sum = rng.normal(0, 500)
        r = ev.released(correct, wrong, loss_sum, cw_std=abs(rng.normal(0, 10)), loss_std=abs(rng.normal(0, 50)))
        if r.accuracy is None:
            assert max(correct, 0) + max(wrong, 0) < ev.COUNT_FLOOR and r.loss is None
            continue
        assert 0.0 <= r.accuracy <= 1.0 and r.loss >= 0.0
        assert all(math.isfinite(v) and v >= 0 for v in (r.count, r.accuracy_std, r.loss_std))
    assert ev.released(-5.0, -3.0, 10.0, cw_std=1.0, loss_std=1.0).accuracy is None  # nothing to divide by
    assert ev.released(20.0, -4.0, -30.0, cw_std=1.0, loss_std=1.0).accuracy == 1.0  # clamped, loss floored at 0
    assert ev.released(20.0, -4.0, -30.0, cw_std=1.0, loss_std=1.0).loss == 0.0
    assert ev.released(float("nan"), 3.0, 1.0, cw_std=1.0, loss_std=1.0).accuracy is None
    assert ev.released(1e308, 1e308, float("inf"), cw_std=1.0, loss_std=1.0).loss is None


def test_shares_add_up_to_each_sites_noise_in_any_released_sum():
    """Secure runs: each site adds floor^2 / t plus its own extra; any sum of t or more sites (one dropped, or
    none) carries at least each of its sites' stated noise. Plain runs: each site adds all of it."""
    floor, t, draws = 3.0, 3, 20000
    sigmas = [3.0, 3.0, 3.0, 3.6, 3.0]  # one site planned more evaluation noise than the floor
    rng = np.random.default_rng(1)
    shares = np.stack(
        [skellam(ev.share_variance(s, floor, secure=True, min_clients=t), draws, rng) for s in sigmas]
    )  # (sites, draws), integer units
    for survivors in ([0, 1, 2], [0, 1, 3], [0, 2, 3, 4], [0, 1, 2, 3, 4]):  # sums of t..n sites
        total = shares[survivors].sum(axis=0)
        assert total.dtype == np.int64
        want = max(sigmas[i] for i in survivors) * ev.SCALE
        assert np.std(total) >= want * 0.98, survivors  # within the sampling error of 20000 draws
        stated = ev.noise_std(ev.share_variance(sigmas[i], floor, secure=True, min_clients=t) for i in survivors)
        assert np.std(total) / ev.GAMMA_CW == pytest.approx(stated[0], rel=0.03)  # the published noise scale
    # a single site's share alone is far less noisy than its stated noise: it must never be seen un-summed
    assert np.std(shares[0]) < 0.6 * floor * ev.SCALE
    plain = skellam(ev.share_variance(3.0, floor, secure=False, min_clients=t), draws, rng)
    assert np.std(plain) == pytest.approx(3.0 * ev.SCALE, rel=0.03)


def test_the_vector_a_site_releases_has_the_stated_sensitivity(factory):
    """The integer vector is exact (no noise after rounding): one record moves it by GAMMA_CW in exactly one of
    (correct, wrong) and at most GAMMA_LOSS in the loss, so its L2 sensitivity is DELTA2 <= SCALE."""
    from fedjax_room.models import ModelSpec
    from fedjax_room.site.evaluate import noised_vector

    data = factory.heldout
    params = {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.ones((4, 2), np.float32)}}
    spec = ModelSpec.from_dict(SPEC)
    full = np.array(noised_vector(spec, params, data, seed=0, variance=0.0))
    less = np.array(noised_vector(spec, params, data.subset(np.arange(1, len(data))), seed=0, variance=0.0))
    step = full - less
    assert sorted(step[:2].tolist()) == [0, ev.GAMMA_CW] and 0 <= step[2] <= ev.GAMMA_LOSS
    assert full[0] + full[1] == ev.GAMMA_CW * len(data)
    assert ev.DELTA2 <= ev.SCALE
