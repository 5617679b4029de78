"""Building a site from files, as `fedjax-room site` does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.audit import verify_log
from fedjax_room.data import save_dataset
from fedjax_room.errors import PolicyError, SchemaError
from fedjax_room.identity import generate_key, save_private_key, save_public_key
from fedjax_room.site.policy import Policy
from fedjax_room.site.runner import build_agent
from tests.site.conftest import make_data


def test_build_agent_from_files(factory, tmp_path):
    key = tmp_path / "keys" / "clinic-1.key"
    save_private_key(generate_key(), key)
    data = tmp_path / "data.npz"
    save_dataset(factory.train, data)
    policy = Policy(epsilon_cap=4.0).save(tmp_path / "policy.toml")
    agent = build_agent(key=key, data=data, policy=policy)
    assert agent.name == "clinic-1"
    assert agent.state_dir == tmp_path / "keys" / "clinic-1-state"
    assert len(agent._train) + len(agent._heldout) == len(factory.train) and 20 <= len(agent._heldout) <= 60
    records = verify_log(agent.state_dir)
    assert records[-1]["kind"] == "policy_loaded" and records[-1]["fields"]["policy_digest"] == agent.policy.digest
    agent.audit.close()


def test_bad_policy_file_is_a_clear_error(factory, tmp_path):
    key = tmp_path / "s.key"
    save_private_key(generate_key(), key)
    data = tmp_path / "data.npz"
    save_dataset(factory.train, data)
    (tmp_path / "policy.toml").write_text("epsilon_cap = 'lots'\n")
    with pytest.raises(PolicyError, match="epsilon_cap"):
        build_agent(key=key, data=data, policy=tmp_path / "policy.toml")


def _site_files(tmp_path, name="clinic-1"):
    key = tmp_path / "keys" / f"{name}.key"
    if not key.exists():
        save_private_key(generate_key(), key)
    policy = tmp_path / "policy.toml"
    if not policy.exists():
        Policy(epsilon_cap=4.0).save(policy)
    return key, policy


def _sides(agent):
    rows = lambda ds: {(r.tobytes(), int(c)) for r, c in zip(ds.x, ds.y, strict=True)}  # noqa: E731
    return rows(agent._train), rows(agent._heldout)


def test_adding_one_record_moves_no_other_record_between_train_and_heldout(factory, tmp_path):
    """Issue 13 item 5: without --heldout, each record's side depends on that record (and the site's secret) alone."""
    from fedjax_room.data import Dataset

    key, policy = _site_files(tmp_path)
    base = Dataset(
        np.concatenate([factory.train.x, factory.heldout.x]),
        np.concatenate([factory.train.y, factory.heldout.y]),
        factory.train.schema,
    )
    save_dataset(base, tmp_path / "base.npz")
    one = make_data(1, 77)
    grown = Dataset(np.concatenate([one.x, base.x]), np.concatenate([one.y, base.y]), base.schema)
    save_dataset(grown, tmp_path / "grown.npz")
    state = tmp_path / "state"
    a = build_agent(key=key, data=tmp_path / "base.npz", policy=policy, state_dir=state)
    a.audit.close()
    b = build_agent(key=key, data=tmp_path / "grown.npz", policy=policy, state_dir=state)
    b.audit.close()
    (train_a, held_a), (train_b, held_b) = _sides(a), _sides(b)
    assert train_a <= train_b and held_a <= held_b  # no record moved
    assert len(train_b | held_b) == len(train_a | held_a) + 1


def _npz_without_schema(path, ds, extra_label=None):
    labels = np.asarray(ds.schema.classes)[ds.y]
    x = ds.x
    if extra_label is not None:
        x = np.concatenate([x, x[:1]])
        labels = np.concatenate([labels, [extra_label]])
    np.savez(path, x=x, y=labels)  # what a data owner's own script writes: arrays, no schema
    return path


def _schema_that_leaves(tmp_path, data, **kwargs):
    key, policy = _site_files(tmp_path)
    try:
        agent = build_agent(key=key, data=data, policy=policy, state_dir=tmp_path / f"state-{data.stem}", **kwargs)
    except SchemaError:
        return "refused"
    agent.audit.close()
    return agent.status().schema


def test_one_rare_label_does_not_change_the_schema_that_leaves(factory, tmp_path):
    """Issue 13 item 9: adding one record with label 7 must not turn the classes (0, 1) into (0, 1, 7)."""
    plain = _npz_without_schema(tmp_path / "plain.npz", factory.train)
    rare = _npz_without_schema(tmp_path / "rare.npz", factory.train, extra_label=7)
    assert _schema_that_leaves(tmp_path, plain) == _schema_that_leaves(tmp_path, rare)
    declared = factory.train.schema.to_dict() | {"classes": [0, 1, 7]}
    (tmp_path / "schema.json").write_text(json.dumps(declared))
    with_plain = _schema_that_leaves(tmp_path, plain, schema=tmp_path / "schema.json")
    with_rare = _schema_that_leaves(tmp_path, rare, schema=tmp_path / "schema.json")
    assert with_plain == with_rare and with_plain["classes"] == [0, 1, 7]


def test_a_site_without_a_declared_class_list_refuses_to_start(factory, tmp_path):
    key, policy = _site_files(tmp_path)
    data = _npz_without_schema(tmp_path / "plain.npz", factory.train)
    with pytest.raises(SchemaError) as info:
        build_agent(key=key, data=data, policy=policy)
    msg = info.value.message
    assert "declared" in msg and "--schema" in msg and "classes" in msg
    assert not (tmp_path / "keys" / "clinic-1-state").exists()  # nothing started


def test_heldout_file_is_read_with_the_declared_schema(factory, tmp_path):
    key, policy = _site_files(tmp_path)
    save_dataset(factory.train, tmp_path / "train.npz")
    held = _npz_without_schema(tmp_path / "held.npz", factory.heldout)
    agent = build_agent(key=key, data=tmp_path / "train.npz", heldout=held, policy=policy)
    agent.audit.close()
    assert agent._heldout.schema == agent._train.schema and len(agent._heldout) == len(factory.heldout)


def test_the_site_command_refuses_an_undeclared_schema(factory, tmp_path):
    """The real `fedjax-room site` process exits with the clear message, before it connects anywhere."""
    import subprocess
    import sys

    key, policy = _site_files(tmp_path)
    data = tmp_path / "plain.csv"
    data.write_text("a,b,c,d,y\n" + "\n".join(f"{i},{i},{i},{i},{i % 2}" for i in range(20)) + "\n")
    save_public_key(generate_key().public_key(), tmp_path / "keys" / "coordinator.key.pub")  # a pinned coordinator
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedjax_room",
            "site",
            "--coordinator",
            "ws://127.0.0.1:9",
            "--key",
            str(key),
            "--data",
            str(data),
            "--policy",
            str(policy),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "no declared schema" in proc.stderr and "plain.csv.schema.json" in proc.stderr, proc.stderr
