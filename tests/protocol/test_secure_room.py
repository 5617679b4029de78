"""Secure aggregation in the room, driven in process by the one round engine (fedjax_room.sim.LoopbackRoom): the
coordinator machine, site machines and real site agents (tiny logistic model, synthetic data), every frame encoded,
jobs run inline, a virtual clock."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema
from fedjax_room.local import evaluate
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.secure import flatten_update
from fedjax_room.sim.loopback import LoopbackRoom

SCHEMA = Schema(features=("a", "b", "c", "d"), feature_shape=(4,), label="y", classes=(0, 1))
SPEC = {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}
BASE = {
    "rounds": 2,
    "target_epsilon": None,
    "noise_multiplier": 0.8,
    "batch_size": 16,
    "local_steps": 5,
    "learning_rate": 0.5,
    "round_timeout": 30.0,
    "seed": 3,
}


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return Dataset(x, y, SCHEMA)


def Room(tmp_path, tag, names=("site-a", "site-b", "site-c"), policies=None, sizes=None, seed=0):
    """One coordinator and its sites in one process: the real machines and agents (fedjax_room.sim.LoopbackRoom)."""
    policies = policies or {}
    sites = {
        name: (make_data((sizes or {}).get(name, 150 + 50 * i), 10 + i), make_data(40, 20 + i), policies.get(name))
        for i, name in enumerate(names)
    }
    room = LoopbackRoom(tmp_path / tag, sites, seed=seed, keep_frames=True)
    room.kill_after = {}  # site -> secagg message type after which its connection drops

    def after(site, msg):
        if isinstance(msg, m.SecAgg) and room.kill_after.get(site) == str(msg.body.get("t")).split("/")[-1]:
            room.kill(site)

    room.after_site_frame = after
    return room


def start(room, settle=True, **config):
    return room.start(SPEC, {**BASE, **config}, settle=settle)


def params(room, run_id):
    return room.store.load_checkpoint(run_id, room.store.run(run_id).rounds_done)[0]


def _accuracy(params):
    test = make_data(2000, 99)
    return evaluate(ModelSpec.from_dict(SPEC), params, test).accuracy


def test_secure_run_matches_the_plain_run(tmp_path):
    plain = Room(tmp_path, "plain")
    rid = start(plain)
    secure = Room(tmp_path, "secure")
    sid = start(secure, secure_aggregation=True)
    assert rid == sid
    for room, run_id in ((plain, rid), (secure, sid)):
        run = room.store.run(run_id)
        assert run.status == "finished" and run.rounds_done == 2, run.error
    a, b = flatten_update(params(plain, rid)), flatten_update(params(secure, sid))
    assert np.max(np.abs(a - b)) < 1e-5  # fixed-point error (~1e-8 per coordinate per round) and float noise
    assert abs(_accuracy(params(plain, rid)) - _accuracy(params(secure, sid))) <= 0.005
    # the sites' sample-level accounting is the same either way
    assert plain.coord.snapshot(rid)["privacy"].keys() == secure.coord.snapshot(sid)["privacy"].keys()
    kinds = [r["fields"].get("secure") for r in secure.audit.records if r["kind"] == "aggregate_applied"]
    assert kinds == [True, True]


def test_the_coordinator_never_holds_an_unmasked_update(tmp_path):
    room = Room(tmp_path, "secure")
    run_id = start(room, secure_aggregation=True, rounds=1)
    assert room.store.run(run_id).status == "finished"
    updates = [msg for _, msg in room.received if isinstance(msg, m.Update)]
    assert updates and all(u.payload == b"" for u in updates)
    sent = [(site, msg) for site, msg in room.received if msg.TYPE == "secagg" and "data" in msg.body]
    masked = {site: msg.body["data"] for site, msg in sent if msg.phase == "train"}
    # the evaluation goes masked too, in its own session: 3 ring elements of 8 bytes each
    assert {site: len(msg.body["data"]) for site, msg in sent if msg.phase == "eval"} == dict.fromkeys(room.sites, 24)
    assert set(masked) == set(room.sites)
    coord_bytes = b"".join(p.read_bytes() for p in (tmp_path / "secure" / "coordinator").rglob("*") if p.is_file())
    audit_bytes = json.dumps(room.audit.records, default=repr).encode()
    for name, s in room.sites.items():
        ring = np.load(s["agent"].state_dir / "releases" / run_id / "1-train.ring.npy")
        plain = ring.tobytes()
        assert masked[name] != plain and len(masked[name]) == len(plain)
        for chunk in (plain[:32], plain[len(plain) // 2 : len(plain) // 2 + 32]):
            assert chunk not in coord_bytes and chunk not in audit_bytes


def test_a_site_dropping_after_its_masked_input_still_counts(tmp_path):
    names = ("site-a", "site-b", "site-c", "site-d")
    plain = Room(tmp_path, "plain", names=names)
    rid = start(plain, rounds=1)
    secure = Room(tmp_path, "secure", names=names)
    secure.kill_after["site-d"] = "masked_input"
    sid = start(secure, secure_aggregation=True, rounds=1)
    run = secure.store.run(sid)
    assert run.status == "finished", run.error
    rounds = secure.store.rounds(sid)
    assert "site-d" in rounds[0].sites  # its input is in the sum; it only missed the consistency stage
    assert np.max(np.abs(flatten_update(params(plain, rid)) - flatten_update(params(secure, sid)))) < 1e-5


def test_a_site_dropping_after_advertising_is_left_out_of_the_sum(tmp_path):
    plain = Room(tmp_path, "plain", names=("site-a", "site-b", "site-c"))
    rid = start(plain, rounds=1)
    secure = Room(tmp_path, "secure", names=("site-a", "site-b", "site-c", "site-d"))
    secure.kill_after["site-d"] = "advertise_keys"
    sid = start(secure, secure_aggregation=True, rounds=1, min_sites=3)
    run = secure.store.run(sid)
    assert run.status == "finished", run.error
    assert secure.store.rounds(sid)[0].dropped == ["site-d"]
    # the survivors' FedAvg equals the plain room's with only those three sites
    assert np.max(np.abs(flatten_update(params(plain, rid)) - flatten_update(params(secure, sid)))) < 1e-5


def test_too_many_dropouts_fail_the_round_and_release_nothing(tmp_path):
    room = Room(tmp_path, "secure", names=("site-a", "site-b", "site-c"))
    room.kill_after["site-b"] = "advertise_keys"
    room.kill_after["site-c"] = "advertise_keys"
    run_id = start(room, secure_aggregation=True, rounds=1)
    run = room.store.run(run_id)
    assert run.status == "failed" and "secure aggregation aborted" in run.error["message"]
    assert run.rounds_done == 0


def test_a_site_requiring_secure_aggregation(tmp_path):
    policies = {"site-a": {"require_secure_aggregation": True}}
    room = Room(tmp_path, "policy", policies=policies)
    first = start(room, rounds=1, secure_aggregation=False)
    refusals = room.coord.snapshot(first)["refusals"]
    assert [(r["site"], r["reason"]) for r in refusals] == [("site-a", "secure_aggregation")]
    second = start(room, rounds=1, secure_aggregation=True)
    snap = room.coord.snapshot(second)
    assert snap["status"] == "finished" and snap["refusals"] == []
    assert room.store.rounds(second)[0].sites == ["site-a", "site-b", "site-c"]


def test_distributed_dp_reports_both_guarantees(tmp_path):
    room = Room(tmp_path, "ddp")
    run_id = start(room, secure_aggregation=True, site_noise_multiplier=1.0, site_clip_norm=0.5, rounds=2)
    snap = room.coord.snapshot(run_id)
    assert snap["status"] == "finished", snap["error"]
    for site, p in snap["privacy"].items():
        assert 0 < p["epsilon"] < np.inf  # sample level (DP-SGD), as without secure aggregation
        assert 0 < p["site_epsilon"] < np.inf  # site level (distributed DP over 2 rounds)
        agent = room.sites[site]["agent"]
        # each round's training (Skellam) and evaluation release, at the site level (issue 13 item 7)
        assert len(agent.site_ledger.tags) == 4 and agent.site_ledger.run_epsilon(run_id, 1e-5) == pytest.approx(
            p["site_epsilon"]
        )


def test_site_noise_needs_secure_aggregation():
    from fedjax_room.errors import ConfigError
    from fedjax_room.protocol.config import RunConfig

    with pytest.raises(ConfigError, match="secure_aggregation"):
        RunConfig.from_dict({**BASE, "secure_aggregation": False, "site_noise_multiplier": 1.0})


def test_a_secure_round_resumes_after_a_coordinator_restart(tmp_path):
    room = Room(tmp_path, "restart")
    room.cut = lambda msg: isinstance(msg, m.SecAggSetup) and msg.round == 2  # it goes down as round 2 opens
    run_id = start(room, settle=False, secure_aggregation=True, rounds=2)
    assert room.store.run(run_id).rounds_done == 1
    room.restart_coordinator()  # resumes round 2 with no site connected; they join while adverts are open
    run = room.store.run(run_id)
    assert run.status == "finished" and run.rounds_done == 2, run.error
    assert room.store.rounds(run_id)[-1].sites == ["site-a", "site-b", "site-c"]


def test_masked_uploads_are_audited_on_both_sides(tmp_path):
    """Each site records the digest of the masked bytes it sends; the coordinator the same digest on receipt."""
    import hashlib

    room = Room(tmp_path, "masked-audit")
    run_id = start(room, secure_aggregation=True, rounds=2)
    assert room.store.run(run_id).status == "finished"
    sent = {
        (site, msg.round): hashlib.sha256(msg.body["data"]).hexdigest()
        for site, msg in room.received
        if isinstance(msg, m.SecAgg) and msg.body.get("t") == "secagg/masked_input"
    }
    assert len(sent) == 2 * len(room.sites)
    for name, s in room.sites.items():
        released = {
            (name, r["fields"]["round"]): r["fields"]["digest"]
            for r in s["audit"].records
            if r["kind"] == "masked_input_released"
        }
        assert released == {k: v for k, v in sent.items() if k[0] == name}
    received = {
        (r["fields"]["site"], r["fields"]["round"]): r["fields"]["digest"]
        for r in room.audit.records
        if r["kind"] == "masked_input_received"
    }
    assert received == sent


def test_secure_update_records_hash_the_accounting_they_carry_not_an_empty_payload(tmp_path):
    """Under secure aggregation the ``update`` frame's payload is empty: its audit digest says so and hashes the
    frame's accounting (the same on both sides), never the sha256 of nothing."""
    import hashlib

    from fedjax_room.protocol.codec import ACCOUNTING_FIELDS

    empty = hashlib.sha256(b"").hexdigest()
    room = Room(tmp_path, "secure-digest")
    run_id = start(room, secure_aggregation=True, rounds=1)
    assert room.store.run(run_id).status == "finished"
    updates = {(site, msg.round): msg for site, msg in room.received if isinstance(msg, m.Update)}
    received = [r["fields"] for r in room.audit.records if r["kind"] == "update_received"]
    assert len(received) == len(room.sites)
    for f in received:
        assert f["digest_of"] == "accounting" and f["digest"] != empty
        sent = updates[(f["site"], f["round"])]
        canonical = json.dumps({k: getattr(sent, k) for k in ACCOUNTING_FIELDS}, sort_keys=True, separators=(",", ":"))
        assert f["digest"] == hashlib.sha256(canonical.encode()).hexdigest()
    by_site = {f["site"]: f["digest"] for f in received}
    for name, s in room.sites.items():
        (released,) = [r["fields"] for r in s["audit"].records if r["kind"] == "update_released"]
        assert released["digest_of"] == "accounting" and released["digest"] == by_site[name]  # both sides agree


def test_site_epsilon_cap_refuses_the_round_that_would_pass_it(tmp_path):
    ddp = {"secure_aggregation": True, "site_noise_multiplier": 1.0, "site_clip_norm": 0.5}
    probe = Room(tmp_path, "probe")
    start(probe, rounds=1, **ddp)
    one_round = probe.sites["site-a"]["agent"].site_ledger.epsilon()
    assert 0 < one_round < np.inf

    # (1.001: per-site evaluation dominates the site-level epsilon, so one more Skellam round adds only a little)
    room = Room(tmp_path, "cap", policies={"site-a": {"site_epsilon_cap": 1.001 * one_round}})
    run_id = start(room, rounds=2, **ddp)
    agent = room.sites["site-a"]["agent"]
    # Round 1 fits and is spent on both ledgers; round 2 would pass the site-level cap: refused, nothing spent.
    assert [t.split("/", 1)[1] for t in agent.site_ledger.tags] == ["1/train", "1/eval"]  # evaluation included
    assert agent.site_ledger.epsilon() == pytest.approx(one_round) and agent.site_ledger.epsilon() <= 1.001 * one_round
    assert f"{run_id}/2/train" not in agent.ledger.tags
    refused = [r["fields"] for r in room.sites["site-a"]["audit"].records if r["kind"] == "run_refused"]
    assert refused and refused[-1]["reason"] == "site_epsilon_cap" and refused[-1]["round"] == 2
    # The other sites were not limited.
    tags = [t.split("/", 1)[1] for t in room.sites["site-b"]["agent"].site_ledger.tags]
    assert tags == ["1/train", "1/eval", "2/train", "2/eval"]
