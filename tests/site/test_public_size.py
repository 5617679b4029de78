"""Issue 13 item 3: nothing a site releases is a function of its exact record count.

The attack: the room used to calibrate sigma from the exact N (q = B / N), so for N = 476..484 all nine sigmas
differed although the coarse count said 480, and a script recovered each site's exact size from the epsilons it
reported. Now every plan, weight, count and epsilon a site releases comes from a public size.
"""

from __future__ import annotations

import json

import dp_accounting
import numpy as np
import pytest

from fedjax_room.errors import BudgetExceededError, PolicyError, StateError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureEval, SecureRelease
from fedjax_room.site.agent import SiteAgent
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import Plan, make_plan
from fedjax_room.site.policy import Policy
from fedjax_room.site.public_size import SIZE_KEY, SIZE_NOISE_MULTIPLIER, PublicSize, resolve_public_size

from .conftest import SPEC, make_data

# a fixed-noise run: its planned epsilon used to be a function of q = B / N (so of N); calibrating from a target
# is slower (seconds per plan) and is checked on two sites below
# plain unless a test asks for secure aggregation (on by default)
CONFIG = {"rounds": 2, "noise_multiplier": 1.0, "local_steps": 2, "batch_size": 20, "secure_aggregation": False}
SIZES = range(476, 485)


def _offer(run_id="run-1", **config):
    return m.RunOffer(run_id=run_id, spec=SPEC, config=RunConfig.from_dict({**CONFIG, **config}).to_dict())


def _start(run_id, rnd, phase):
    zeros = {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.zeros((4, 2), np.float32)}}
    return m.RoundStart(run_id=run_id, round=rnd, phase=phase, params=pack_tree(zeros), cohort=3, timeout=30.0)


def _secure_eval(run_id, rnd):
    from fedjax_room.identity import generate_key
    from fedjax_room.secagg import SecAggConfig

    keys = {i: generate_key().public_key().public_bytes_raw() for i in (1, 2, 3)}
    cfg = SecAggConfig(round_id=f"{run_id}/{rnd}/eval", clients=keys, vector_length=3, modulus_bits=64)
    setup = m.SecAggSetup(run_id=run_id, round=rnd, config=cfg.to_dict(), id=1, fraction=1.0, phase="eval")
    return SecureEval(_start(run_id, rnd, "eval"), setup)


def _agent(tmp_path, n, *, policy=None, state=None):
    return SiteAgent(
        name="site-a",
        train=make_data(n, n),
        heldout=make_data(n // 4, n + 1),
        policy=Policy.from_dict(policy if policy is not None else {}),
        state_dir=state or tmp_path / f"site-{n}",
    )


def _released(agent, train=True):
    """Everything a site sends out about one run: status, plan, refusal text, update and metrics figures."""
    status = agent.status()
    accept = agent.handle("offer", _offer())
    refusal = agent.handle("offer", _offer(run_id="run-big", noise_multiplier=0.5, local_steps=20))  # past the cap
    assert isinstance(accept, m.RunAccept), accept
    assert isinstance(refusal, m.RunRefuse) and refusal.error["reason"] == "epsilon_cap", refusal
    if not train:  # (training compiles a step per site: done for a few sizes only, to keep the test fast)
        return {"record_count": status.record_count, "plan": accept.plan, "refusal": refusal.error["message"]}
    update = agent.handle("train", _start("run-1", 1, "train"))
    metrics = agent.handle("eval", _start("run-1", 1, "eval"))
    assert isinstance(update, m.Update) and isinstance(metrics, m.Metrics)
    return {
        "record_count": status.record_count,
        "status_ledger": status.ledger,
        "plan": accept.plan,
        "refusal": refusal.error["message"],
        "update": (update.weight, update.epsilon, update.ledger_epsilon, update.delta, update.site_epsilon),
        "metrics_eps": (metrics.epsilon, metrics.ledger_epsilon, metrics.delta),
        "ledger": agent.ledger.summary(),
    }


def test_sites_of_476_to_484_records_with_one_declared_size_release_the_same_figures(tmp_path):
    policy = {"declared_train_records": 480, "declared_heldout_records": 120, "epsilon_cap": 3.0}
    seen = [_released(_agent(tmp_path, n, policy=policy), train=n in (476, 484)) for n in SIZES]
    assert all({k: s[k] for k in seen[1]} == seen[1] for s in seen), [s["plan"] for s in seen]
    assert seen[0] == seen[-1]  # the trained ones: update and metrics figures too
    assert seen[0]["record_count"] == "~600" and seen[0]["plan"]["weight"] == 480


def test_dp_counted_sites_release_figures_of_their_public_size_only(tmp_path):
    # Nine sites whose (single, stored) DP count came out the same: everything they release is identical, and an
    # attacker inverting the old N -> epsilon map "recovers" the public size for each, never the real N.
    stored = PublicSize(train=480, heldout=120, source="dp_count", noise_multiplier=SIZE_NOISE_MULTIPLIER)
    seen = []
    for n in SIZES:
        state = tmp_path / f"dp-{n}"
        state.mkdir()
        (state / "public_size.json").write_text(json.dumps(stored.to_dict()))
        seen.append(_released(_agent(tmp_path, n, policy={"epsilon_cap": 3.0}, state=state), train=n in (476, 484)))
    assert all({k: s[k] for k in seen[1]} == seen[1] for s in seen)
    assert seen[0] == seen[-1]

    cfg = RunConfig.from_dict(CONFIG)
    table = {n: make_plan(cfg, public_size=n, min_sites=1).epsilon_planned for n in range(460, 501)}
    for s in seen:
        assert [n for n, eps in table.items() if eps == s["plan"]["epsilon_planned"]] == [480]


def test_target_epsilon_plans_do_not_depend_on_the_exact_size(tmp_path):
    policy = {"declared_train_records": 480, "declared_heldout_records": 120}
    offer = _offer(noise_multiplier=None, target_epsilon=1.0)
    plans = [_agent(tmp_path, n, policy=policy).handle("offer", offer).plan for n in (476, 484)]
    assert plans[0] == plans[1] and plans[0]["mode"] == "target"


def test_plan_fields_are_functions_of_the_public_size(tmp_path):
    cfg = RunConfig.from_dict(CONFIG)
    plan = make_plan(cfg, public_size=480, min_sites=2)
    assert plan.sampling_rate == 20 / 480 and plan.public_size == 480 and plan.weight == 480
    assert Plan.from_dict(plan.to_dict()) == plan
    old = {k: v for k, v in plan.to_dict().items() if k != "public_size"}  # a plan stored by an older version
    assert Plan.from_dict(old).public_size == 0
    with pytest.raises(Exception, match="public"):
        make_plan(cfg, public_size=0, min_sites=1)


def test_the_trainer_samples_the_real_records_at_the_public_rate():
    from fedjax_room.local import LocalTrainer

    trainer = LocalTrainer(SPEC, clip_norm=1.0, noise_multiplier=1.0, batch_size=20, learning_rate=0.1, public_size=480)
    assert trainer.sampling_rate(476) == trainer.sampling_rate(484) == 20 / 480
    assert trainer.event(476, 3) == trainer.event(484, 3)
    _, stats = trainer.train(
        {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.zeros((4, 2), np.float32)}},
        make_data(476, 0),
        2,
        seed=1,
    )
    assert stats.sampling_rate == 20 / 480 and stats.num_examples == 476


def test_the_dp_count_is_drawn_once_charged_once_and_never_redrawn(tmp_path):
    agent = _agent(tmp_path, 480)
    size = agent.public_size
    assert size.source == "dp_count" and size.noise_multiplier == SIZE_NOISE_MULTIPLIER
    assert agent.ledger.tags == [SIZE_KEY]
    assert agent.ledger.events == [{"type": "gaussian", "noise_multiplier": SIZE_NOISE_MULTIPLIER}]
    assert agent.status().record_count == size.record_count()
    again = _agent(tmp_path, 481, state=agent.state_dir)  # a restart, even with other data, reuses it
    assert again.public_size == size and again.ledger.tags == [SIZE_KEY]
    # a crash between writing the count and charging it: the restart charges it once
    state = tmp_path / "crashed"
    state.mkdir()
    (state / "public_size.json").write_text(json.dumps(size.to_dict()))
    reborn = _agent(tmp_path, 480, state=state)
    assert reborn.public_size == size and reborn.ledger.tags == [SIZE_KEY]


def test_the_dp_count_is_a_gaussian_of_sd_ten(tmp_path):
    draws = []
    for i in range(150):
        ledger = Ledger.open(tmp_path / f"l{i}.json", epsilon_cap=10.0, delta=1e-5)
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        size = resolve_public_size(folder, ledger, n_train=1000, n_heldout=250)
        draws.append((size.train - 1000, size.heldout - 250))
    d = np.asarray(draws, float)
    assert np.all(np.abs(d.mean(axis=0)) < 4.5 * 10 / np.sqrt(150))  # (fresh OS randomness: bounds at ~4.5 sd)
    assert np.all(np.abs(d.std(axis=0) / SIZE_NOISE_MULTIPLIER - 1) < 0.27)
    assert abs(np.corrcoef(d.T)[0, 1]) < 0.37  # independent noise per coordinate


def test_a_cap_too_small_for_the_count_refuses_and_writes_nothing(tmp_path):
    ledger = Ledger.open(tmp_path / "ledger.json", epsilon_cap=0.1, delta=1e-5)
    with pytest.raises(BudgetExceededError, match="declared_train_records"):
        resolve_public_size(tmp_path, ledger, n_train=10, n_heldout=2)
    assert ledger.events == [] and not (tmp_path / "public_size.json").exists()
    with pytest.raises(BudgetExceededError):
        _agent(tmp_path, 100, policy={"epsilon_cap": 0.1}, state=tmp_path / "small")


def test_declared_sizes_spend_nothing_and_bound_the_heldout_records(tmp_path):
    agent = _agent(tmp_path, 480, policy={"declared_train_records": 400, "declared_heldout_records": 50})
    assert agent.ledger.events == [] and agent.public_size.source == "declared"
    assert len(agent._heldout) == 50  # at most the declared held-out records are evaluated
    assert agent.status().record_count == "~450"


def test_policy_declared_sizes_are_validated():
    with pytest.raises(PolicyError, match="both"):
        Policy.from_dict({"declared_train_records": 10})
    with pytest.raises(PolicyError, match="declared_train_records"):
        Policy.from_dict({"declared_train_records": 0, "declared_heldout_records": 0})
    with pytest.raises(PolicyError, match="declared_heldout_records"):
        Policy.from_dict({"declared_train_records": 5, "declared_heldout_records": -1})
    p = Policy.from_dict({"declared_train_records": 5, "declared_heldout_records": 0})
    assert Policy.from_dict(p.to_dict()) == p


def test_a_corrupt_public_size_file_is_refused(tmp_path):
    (tmp_path / "public_size.json").write_text(json.dumps({"train": -3, "heldout": 1, "source": "dp_count"}))
    ledger = Ledger.open(tmp_path / "ledger.json", epsilon_cap=10.0, delta=1e-5)
    with pytest.raises(StateError, match="never delete"):
        resolve_public_size(tmp_path, ledger, n_train=10, n_heldout=2)
    assert ledger.events == []


def test_the_count_event_is_a_gaussian_mechanism():
    from fedjax_room.site.public_size import size_event

    assert size_event() == dp_accounting.GaussianDpEvent(SIZE_NOISE_MULTIPLIER)


def test_a_distributed_dp_evaluation_is_composed_into_the_site_level_ledger(tmp_path):
    # Issue 13 item 7: the site-level ledger left evaluation releases out. Zeroing out the whole site moves its
    # evaluation vector by at most DELTA2 * heldout_bound (protocol/evaluation.py); that Gaussian event is composed and
    # capped there, and the site-level epsilon the room hears (metrics.site_epsilon) includes it.
    from fedjax_room.site.plan import site_eval_event

    ddp = {"secure_aggregation": True, "site_noise_multiplier": 1.0, "site_clip_norm": 0.5}
    policy = {"declared_train_records": 480, "declared_heldout_records": 120}
    agent = _agent(tmp_path, 480, policy=policy)
    assert isinstance(agent.handle("offer", _offer(**ddp)), m.RunAccept)
    release = agent.handle("eval", _secure_eval("run-1", 1))
    assert isinstance(release, SecureRelease), release
    metrics = release.update
    _, _, plan = agent._load_run("run-1")
    assert agent.site_ledger.tags == ["run-1/1/eval"]
    assert agent.site_ledger.events == [{"type": "gaussian", "noise_multiplier": plan.eval_noise_multiplier / 120}]
    assert site_eval_event(plan.eval_noise_multiplier, 120) == dp_accounting.GaussianDpEvent(
        plan.eval_noise_multiplier / 120
    )
    assert metrics.site_epsilon == agent.site_ledger.run_epsilon("run-1", 1e-5) > 0
    assert agent.handle("eval", _secure_eval("run-1", 1)).update == metrics  # asked again: the same, nothing spent
    assert agent.site_ledger.tags == ["run-1/1/eval"]
    # a plain run's evaluation stays off the site-level ledger
    assert isinstance(agent.handle("offer", _offer(run_id="run-2")), m.RunAccept)
    plain = agent.handle("eval", _start("run-2", 1, "eval"))
    assert isinstance(plain, m.Metrics) and plain.site_epsilon is None and agent.site_ledger.tags == ["run-1/1/eval"]


def test_the_site_level_cap_refuses_an_evaluation_before_it_is_computed(tmp_path):
    ddp = {"secure_aggregation": True, "site_noise_multiplier": 1.0, "site_clip_norm": 0.5}
    policy = {"declared_train_records": 480, "declared_heldout_records": 120, "site_epsilon_cap": 0.5}
    agent = _agent(tmp_path, 480, policy=policy)
    assert isinstance(agent.handle("offer", _offer(**ddp)), m.RunAccept)
    reply = agent.handle("eval", _secure_eval("run-1", 1))
    assert isinstance(reply, m.RunRefuse) and reply.error["reason"] == "site_epsilon_cap"
    assert agent.site_ledger.events == [] and agent.ledger.events == []
