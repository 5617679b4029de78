"""The site agent: policy refusals, plans within the target, ledger before release, idempotent replays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.errors import PolicyError, PolicyViolation
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree, unpack_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.policy import Policy


def _offer(run_id="run-1", spec=None, **config):
    # plain mode (secure aggregation is on by default): these tests read each update
    cfg = {"rounds": 2, "target_epsilon": 1.0, "local_steps": 3, "batch_size": 20, "secure_aggregation": False}
    cfg.update(config)
    return m.RunOffer(
        run_id=run_id,
        spec=spec
        or {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]},
        config=RunConfig.from_dict(cfg).to_dict(),
    )


def _zeros():
    return {"dense_0": {"bias": np.zeros(2, np.float32), "kernel": np.zeros((4, 2), np.float32)}}


def _start(run_id, rnd, phase, params=None, cohort=3):
    return m.RoundStart(
        run_id=run_id, round=rnd, phase=phase, params=pack_tree(params or _zeros()), cohort=cohort, timeout=30.0
    )


@pytest.mark.parametrize(
    ("policy", "spec", "config", "reason"),
    [
        (
            {"allowed_families": ["logistic"]},
            {
                "family": "mlp",
                "input_shape": [4],
                "num_classes": 2,
                "layers": [{"type": "dense", "features": 8}, {"type": "relu"}, {"type": "dense", "features": 2}],
            },
            {},
            "model_family",
        ),
        ({"max_params": 5}, None, {}, "max_params"),
        ({"allowed_aggregators": ["mean"]}, None, {}, "aggregator"),
        ({"require_secure_aggregation": True}, None, {}, "secure_aggregation"),
        ({"delta_cap": 1e-6}, None, {"delta": 1e-5}, "delta_cap"),
        ({"min_sites": 3}, None, {"min_sites": 2}, "min_sites"),
        (
            {},
            {"family": "logistic", "input_shape": [5], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]},
            {},
            "schema",
        ),
        ({"epsilon_cap": 0.5}, None, {"target_epsilon": 1.0}, "epsilon_cap"),
    ],
)
def test_policy_refusals_are_typed(factory, policy, spec, config, reason):
    agent = factory.agent(**policy)
    reply = agent.handle("offer", _offer(spec=spec, **config))
    assert isinstance(reply, m.RunRefuse) and reply.round is None
    assert reply.error["code"] == "policy_violation" and reply.error["reason"] == reason, reply.error
    assert reply.error["party"] == "site-a" and reply.error["message"]
    assert not (agent.state_dir / "runs" / "run-1.json").exists()
    assert agent.ledger.events == []


def test_policy_file_validation(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('epsilon_cap = 2.0\nallowed_families = ["transformer"]\n')
    with pytest.raises(PolicyError, match="allowed_families"):
        Policy.load(path)
    path.write_text("epsilon_cap = -1\n")
    with pytest.raises(PolicyError, match="epsilon_cap"):
        Policy.load(path)
    path.write_text("epsilon_cap = 2.0\nmin_sites = 2\n")
    assert Policy.load(path) == Policy(epsilon_cap=2.0, min_sites=2)


def test_accept_train_eval_and_replay(factory):
    agent = factory.agent(epsilon_cap=5.0)
    accept = agent.handle("offer", _offer())
    assert isinstance(accept, m.RunAccept)
    assert 0.9 < accept.plan["epsilon_planned"] <= 1.0
    assert agent.handle("offer", _offer()) == accept  # a re-offer (coordinator restart) gets the same plan

    update = agent.handle("train", _start("run-1", 1, "train"))
    assert isinstance(update, m.Update), update
    # the ledger was on disk before the update was returned
    on_disk = json.loads((agent.state_dir / "ledger.json").read_text())
    assert on_disk["tags"] == ["run-1/1/train"]
    delta = unpack_tree(update.payload)
    assert delta["dense_0"]["kernel"].shape == (4, 2) and delta["dense_0"]["kernel"].dtype == np.float32
    assert 0 < update.epsilon <= 1.0 and update.weight == 200

    # asked again (a coordinator crashed): the same bytes, nothing spent twice
    again = agent.handle("train", _start("run-1", 1, "train"))
    assert again == update and len(agent.ledger.events) == 1

    metrics = agent.handle("eval", _start("run-1", 1, "eval"))
    assert isinstance(metrics, m.Metrics)
    assert metrics.count != 60.0  # noised
    assert agent.ledger.tags == ["run-1/1/train", "run-1/1/eval"]
    assert agent.handle("eval", _start("run-1", 1, "eval")) == metrics

    # a restarted site (same state dir) keeps its ledger and resends
    reborn = factory.agent(epsilon_cap=5.0)
    assert reborn.ledger.tags == agent.ledger.tags
    assert reborn.handle("train", _start("run-1", 1, "train")) == update

    for rnd in (2,):
        assert isinstance(agent.handle("train", _start("run-1", rnd, "train")), m.Update)
        last = agent.handle("eval", _start("run-1", rnd, "eval"))
    assert last.epsilon <= 1.0  # the whole run, training and evaluation, within the target


def test_replay_after_a_restart_is_identical(factory):
    agent = factory.agent()
    agent.handle("offer", _offer())
    update = agent.handle("train", _start("run-1", 1, "train"))
    reborn = factory.agent()
    again = reborn.handle("train", _start("run-1", 1, "train"))
    assert again == update and len(reborn.ledger.events) == 1


@pytest.mark.parametrize("phase", ["train", "eval"])
def test_a_committed_release_whose_stored_content_is_lost_is_refused_not_recomputed(factory, phase):
    agent = factory.agent()
    agent.handle("offer", _offer())
    assert not isinstance(agent.handle(phase, _start("run-1", 1, phase)), m.RunRefuse)
    (agent.state_dir / "releases" / "run-1" / f"1-{phase}.release").unlink()
    reborn = factory.agent()
    again = reborn.handle(phase, _start("run-1", 1, phase))
    assert isinstance(again, m.RunRefuse) and again.error["code"] == "state", again
    assert "recomput" in again.error["message"] and len(reborn.ledger.events) == 1


def test_a_round_past_the_cap_is_refused_and_the_ledger_never_passes_it(factory):
    agent = factory.agent(epsilon_cap=2.0)
    offer = _offer(rounds=50, target_epsilon=None, noise_multiplier=3.0, local_steps=5)
    assert isinstance(agent.handle("offer", offer), m.RunAccept)  # one round fits; the rest is checked per round
    refused = None
    for rnd in range(1, 51):
        reply = agent.handle("train", _start("run-1", rnd, "train"))
        if isinstance(reply, m.RunRefuse):
            refused = reply
            break
        assert isinstance(agent.handle("eval", _start("run-1", rnd, "eval")), (m.Metrics, m.RunRefuse))
    assert refused is not None and refused.round == rnd
    assert refused.error["reason"] == "epsilon_cap" and "cap" in refused.error["message"]
    assert agent.ledger.epsilon() <= 2.0
    from fedjax_room.site.ledger import Ledger

    assert Ledger.open(agent.state_dir / "ledger.json", epsilon_cap=2.0, delta=1e-5).epsilon() <= 2.0


def test_cohort_below_policy_minimum_is_refused(factory):
    agent = factory.agent(min_sites=3)
    agent.handle("offer", _offer())
    reply = agent.handle("train", _start("run-1", 1, "train", cohort=2))
    assert isinstance(reply, m.RunRefuse) and reply.error["reason"] == "min_sites"
    assert agent.ledger.events == []


def test_unknown_run_and_bad_params(factory):
    agent = factory.agent()
    reply = agent.handle("train", _start("run-9", 1, "train"))
    assert reply.error["reason"] == "unknown_run"
    agent.handle("offer", _offer())
    bad = {"dense_0": {"bias": np.zeros(3, np.float32), "kernel": np.zeros((4, 2), np.float32)}}
    reply = agent.handle("train", _start("run-1", 1, "train", params=bad))
    assert isinstance(reply, m.RunRefuse) and reply.error["code"] == "protocol"
    assert agent.ledger.events == []
    reply = agent.handle("offer", _offer(run_id="../../etc"))
    assert isinstance(reply, m.RunRefuse)


def test_status_reveals_no_rows(factory):
    agent = factory.agent()
    status = agent.status()
    assert status.record_count == "~260"
    blob = m.encode(status)
    assert factory.train.x[:1].tobytes() not in blob
    assert set(status.ledger) >= {"epsilon", "epsilon_cap", "delta"}


def test_seeds_are_secret_and_stable(factory, tmp_path):
    a = factory.agent(state=tmp_path / "a")
    b = factory.agent(state=tmp_path / "b")
    assert a._seed("run-1", 0, 1, "train") == a._seed("run-1", 0, 1, "train")
    assert a._seed("run-1", 0, 1, "train") != b._seed("run-1", 0, 1, "train")  # different secrets


def test_offer_policy_violation_type():
    with pytest.raises(PolicyViolation):
        from fedjax_room.models import ModelSpec

        Policy(allowed_families=("logistic",)).check(
            ModelSpec.from_dict(
                {"family": "mlp", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}
            ),
            RunConfig(),
        )
