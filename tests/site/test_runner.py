"""Building a site from files, as `fedjax-room site` does."""

from __future__ import annotations

import pytest

from fedjax_room.audit import verify_log
from fedjax_room.errors import PolicyError
from fedjax_room.identity import generate_key, save_private_key
from fedjax_room.site.policy import Policy
from fedjax_room.site.runner import build_agent


def test_build_agent_from_files(factory, tmp_path):
    key = tmp_path / "keys" / "clinic-1.key"
    save_private_key(generate_key(), key)
    data = tmp_path / "data.npz"
    factory.train.save(data)
    policy = Policy(epsilon_cap=4.0).save(tmp_path / "policy.toml")
    agent = build_agent(key=key, data=data, policy=policy)
    assert agent.name == "clinic-1"
    assert agent.state_dir == tmp_path / "keys" / "clinic-1-state"
    assert len(agent._train) + len(agent._heldout) == len(factory.train) and len(agent._heldout) == 40
    records = verify_log(agent.state_dir)
    assert records[-1]["kind"] == "policy_loaded" and records[-1]["fields"]["policy_digest"] == agent.policy.digest
    agent.audit.close()


def test_bad_policy_file_is_a_clear_error(factory, tmp_path):
    key = tmp_path / "s.key"
    save_private_key(generate_key(), key)
    data = tmp_path / "data.npz"
    factory.train.save(data)
    (tmp_path / "policy.toml").write_text("epsilon_cap = 'lots'\n")
    with pytest.raises(PolicyError, match="epsilon_cap"):
        build_agent(key=key, data=data, policy=tmp_path / "policy.toml")
