"""Issue 14 section 5: deleting (or rolling back) ledger.json must not reset a site's budget.

Before: a site whose ledger.json was deleted started with an empty ledger, all its spent privacy forgotten.
Now the site start (``build_agent``, what ``fedjax-room site`` runs) compares the ledger with the releases its
audit log records and refuses, saying how to recover.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from fedjax_room.data import save_dataset
from fedjax_room.errors import StateError
from fedjax_room.identity import generate_key, save_private_key
from fedjax_room.protocol import messages as m
from fedjax_room.site.policy import Policy
from fedjax_room.site.runner import build_agent
from tests.site.test_agent import _offer, _start


@pytest.fixture
def site_files(factory, tmp_path):
    key = tmp_path / "keys" / "clinic-1.key"
    save_private_key(generate_key(), key)
    save_dataset(factory.train, tmp_path / "train.npz")
    save_dataset(factory.heldout, tmp_path / "heldout.npz")
    fields = {f.name for f in dataclasses.fields(Policy)}
    sizes = {"declared_train_records": len(factory.train), "declared_heldout_records": len(factory.heldout)}
    policy = Policy(epsilon_cap=5.0, **{k: v for k, v in sizes.items() if k in fields}).save(tmp_path / "policy.toml")
    return {"key": key, "data": tmp_path / "train.npz", "heldout": tmp_path / "heldout.npz", "policy": policy}


def _spend(agent, rnd):
    reply = agent.handle("eval", _start("run-1", rnd, "eval"))
    assert isinstance(reply, m.Metrics), reply


def test_a_deleted_or_rolled_back_ledger_stops_the_site(site_files):
    agent = build_agent(**site_files)
    assert isinstance(agent.handle("offer", _offer()), m.RunAccept)
    _spend(agent, 1)
    ledger = agent.state_dir / "ledger.json"
    shutil.copy(ledger, ledger.with_name("old-ledger.json"))
    _spend(agent, 2)
    spent = agent.ledger.epsilon()
    assert spent > 0
    agent.audit.close()

    again = build_agent(**site_files)  # the ledger agrees with the log: the site starts
    assert again.ledger.epsilon() == spent
    again.audit.close()

    ledger.unlink()
    with pytest.raises(StateError, match="missing or behind") as info:
        build_agent(**site_files)
    assert "run-1/1/eval" in info.value.message and "Restore ledger.json" in info.value.message

    shutil.copy(ledger.with_name("old-ledger.json"), ledger)  # an older copy: behind the log
    with pytest.raises(StateError, match="run-1/2/eval"):
        build_agent(**site_files)

    # a site with no recorded spend starts with an empty ledger as before
    ledger.unlink()
    fresh = dict(site_files, state_dir=site_files["key"].parent / "new-state")
    build_agent(**fresh).audit.close()
