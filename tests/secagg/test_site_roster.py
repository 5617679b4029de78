"""A site joins a SecAgg round only with peers from its own manifest, and only if the roster is big enough."""

from __future__ import annotations

import pytest

from fedjax_room.identity import generate_key, public_key_bytes
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Send
from fedjax_room.protocol.site import SiteMachine
from fedjax_room.room_manifest import create_manifest
from fedjax_room.secagg import SecAggConfig

KEYS = {n: generate_key() for n in ("site-a", "site-b", "site-c")}
MANIFEST = create_manifest({n: public_key_bytes(k) for n, k in KEYS.items()}, public_key_bytes(generate_key()))


def _machine(manifest=MANIFEST, min_sites=1):
    status = m.SiteStatus(schema={}, record_count="~100", policy={}, ledger={})
    machine = SiteMachine(
        lambda: status, identity_key=KEYS["site-a"], manifest=manifest, name="site-a", min_sites=min_sites
    )
    machine.welcomed()
    return machine


def _setup(roster, **kw):
    ids = {name: i + 1 for i, name in enumerate(sorted(roster))}
    config = SecAggConfig("run-1/1", {ids[n]: k for n, k in roster.items()}, vector_length=4, **kw)
    return m.SecAggSetup(run_id="run-1", round=1, config=config.to_dict(), id=ids["site-a"], fraction=0.5)


def _answer(machine, setup):
    (action,) = machine.receive(m.encode(setup))
    assert isinstance(action, Send)
    return m.decode(action.data)


def _keys(*names):
    return {n: public_key_bytes(KEYS[n]) for n in names}


def test_a_manifest_roster_is_joined():
    reply = _answer(_machine(), _setup(_keys("site-a", "site-b", "site-c")))
    assert isinstance(reply, m.SecAgg)  # the key advertisement


def test_a_sybil_key_is_refused():
    roster = {**_keys("site-a"), "site-b": public_key_bytes(generate_key())}  # the coordinator's own key
    reply = _answer(_machine(), _setup(roster))
    assert isinstance(reply, m.Error) and reply.code == "unknown_identity"
    assert "not in this site's room manifest" in reply.message


def test_no_manifest_no_secure_round():
    reply = _answer(_machine(manifest=None), _setup(_keys("site-a", "site-b")))
    assert isinstance(reply, m.Error) and "no room manifest" in reply.message


def test_the_roster_is_counted_not_the_stated_cohort():
    reply = _answer(_machine(min_sites=3), _setup(_keys("site-a", "site-b")))
    assert isinstance(reply, m.Error) and reply.code == "policy_violation"
    # three sites, but sums of two would be released: still below this site's minimum
    reply = _answer(_machine(min_sites=3), _setup(_keys("site-a", "site-b", "site-c"), min_clients=2))
    assert isinstance(reply, m.Error) and reply.code == "policy_violation"


def test_a_manifest_that_lists_another_key_for_this_site_is_refused():
    other = create_manifest(
        {"site-a": public_key_bytes(generate_key()), "site-b": public_key_bytes(KEYS["site-b"])},
        public_key_bytes(generate_key()),
    )
    reply = _answer(_machine(manifest=other), _setup(_keys("site-a", "site-b")))
    assert isinstance(reply, m.Error) and "manifest" in reply.message


@pytest.mark.parametrize("n", [2, 3])
def test_replay_before_release_is_allowed(n):
    machine = _machine()
    names = ["site-a", "site-b", "site-c"][:n]
    assert isinstance(_answer(machine, _setup(_keys(*names))), m.SecAgg)
    assert isinstance(_answer(machine, _setup(_keys(*names))), m.SecAgg)  # nothing released yet: a fresh client
