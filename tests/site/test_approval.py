"""Data-owner approval at the site: policy settings, the inbox, and an offer that waits for a decision."""

from __future__ import annotations

import threading

import pytest

from fedjax_room.errors import ConfigError, PolicyError, PolicyViolation
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig
from fedjax_room.site.approval import Inbox
from fedjax_room.site.policy import Policy

SPEC = {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}
WIDER = {
    "family": "mlp",
    "input_shape": [4],
    "num_classes": 2,
    "layers": [{"type": "dense", "features": 3}, {"type": "relu"}, {"type": "dense", "features": 2}],
}


def _offer(run_id="run-1", spec=SPEC):
    cfg = {"rounds": 1, "target_epsilon": 1.0, "local_steps": 3, "batch_size": 20}
    return m.RunOffer(run_id=run_id, spec=spec, config=RunConfig.from_dict(cfg).to_dict())


def test_policy_approval_settings_are_validated():
    h = ModelSpec.from_dict(SPEC).hash
    p = Policy.from_dict({"approval": "manual", "approved_models": [h]})
    assert p.approval == "manual" and p.approved_models == (h,)
    assert p.to_dict()["approved_models"] == [h]
    with pytest.raises(PolicyError, match="approval"):
        Policy.from_dict({"approval": "sometimes"})
    with pytest.raises(PolicyError, match="approved_models"):
        Policy.from_dict({"approved_models": ["not-a-hash"]})


def test_inbox_pending_decide_and_prefixes(tmp_path):
    inbox = Inbox(tmp_path)
    h = ModelSpec.from_dict(SPEC).hash
    inbox.add_pending(h, SPEC, "run-1", params=10)
    inbox.add_pending(h, SPEC, "run-2")
    (entry,) = inbox.pending()
    assert entry["runs"] == ["run-1", "run-2"] and entry["family"] == "logistic"
    with pytest.raises(ConfigError, match="reason"):
        inbox.decide(h[:10], "rejected", "")
    with pytest.raises(ConfigError, match="matches 0"):
        inbox.decide("ffff", "approved")
    record = inbox.decide(h[:10], "approved")
    assert record["spec_hash"] == h and inbox.decision(h)["decision"] == "approved"
    assert inbox.pending() == []


def test_listed_models_pass_and_unlisted_ones_are_refused_under_auto(factory):
    h = ModelSpec.from_dict(SPEC).hash
    agent = factory.agent(approved_models=(h,))
    assert isinstance(agent.offer(_offer()), m.RunAccept)
    with pytest.raises(PolicyViolation) as info:
        agent.offer(_offer("run-2", WIDER))
    assert info.value.reason == "not_approved"


def test_manual_offer_waits_then_proceeds_and_a_changed_spec_waits_again(factory):
    agent = factory.agent(approval="manual")
    agent.approval_poll = 0.05
    sent = []
    agent.notify = sent.append
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("answer", agent.offer(_offer())))
    t.start()
    inbox = Inbox(agent.state_dir)
    h = ModelSpec.from_dict(SPEC).hash
    for _ in range(200):
        if inbox.pending():
            break
        t.join(0.05)
    assert [e["spec_hash"] for e in inbox.pending()] == [h]
    assert t.is_alive() and "answer" not in result
    (waiting,) = sent
    assert isinstance(waiting, m.RunWaiting) and waiting.spec_hash == h and "site-a" in waiting.message
    inbox.decide(h, "approved")
    t.join(10)
    assert isinstance(result["answer"], m.RunAccept)
    assert isinstance(agent.offer(_offer("run-2")), m.RunAccept)  # decided once, per spec

    # a changed spec waits again; a rejection carries the owner's reason
    wider = ModelSpec.from_dict(WIDER).hash
    Inbox(agent.state_dir).decide(wider, "rejected", "too wide")  # decided ahead of the offer
    with pytest.raises(PolicyViolation) as info:
        agent.offer(_offer("run-3", WIDER))
    assert info.value.reason == "rejected" and "too wide" in info.value.message


def test_a_stopping_agent_gives_up_waiting(factory):
    agent = factory.agent(approval="manual")
    agent.approval_poll = 0.05
    agent.stopping.set()
    with pytest.raises(Exception, match="stopped while waiting"):
        agent.offer(_offer())
