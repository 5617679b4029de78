"""The coordinator machine, driven by frames and a fake clock: handshake, bad frames, rounds, deadlines."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedjax_room.identity import generate_key
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import unpack_tree
from fedjax_room.protocol.handshake import make_hello


def _state(store):
    return (store.runs(), store.sites(), store.spend_rows(), [r for run in store.runs() for r in store.rounds(run.id)])


# ------------------------------------------------------------------------------------------- handshake


def test_valid_site_is_welcomed(harness):
    harness.enroll("site-a", "site")
    conn = harness.connect("site-a")
    (welcome,) = harness.take(conn)
    assert isinstance(welcome, m.Welcome) and welcome.name == "site-a" and conn not in harness.closed


def _refused(harness, conn, code):
    (err,) = harness.take(conn)
    assert isinstance(err, m.Error) and err.fatal and err.code == code, err
    assert conn in harness.closed
    assert any(r["kind"] == "connection_refused" and r["fields"]["code"] == code for r in harness.audit.records)
    return err


def test_unknown_key_is_refused_and_room_carries_on(harness):
    harness.enroll("site-a", "site")
    stranger = generate_key()
    conn = harness.connect("site-x", role="site", key=stranger)
    err = _refused(harness, conn, "unknown_identity")
    assert "enroll" in err.message
    ok = harness.connect("site-a")
    assert isinstance(harness.take(ok)[0], m.Welcome)


def test_bad_signature_is_refused(harness):
    key = harness.enroll("site-a", "site")
    conn = harness.open()
    (challenge,) = harness.take(conn)
    hello = make_hello(challenge, key, role="site", name="site-a")
    forged = m.Hello(role="site", name="site-a", public_key=hello.public_key, nonce=hello.nonce, signature=bytes(64))
    harness.send(conn, forged)
    _refused(harness, conn, "bad_signature")


def test_signature_for_another_role_does_not_verify(harness):
    key = harness.enroll("site-a", "site")
    conn = harness.open()
    (challenge,) = harness.take(conn)
    hello = make_hello(challenge, key, role="analyst", name="site-a")
    harness.send(
        conn,
        m.Hello(role="site", name="site-a", public_key=hello.public_key, nonce=hello.nonce, signature=hello.signature),
    )
    _refused(harness, conn, "bad_signature")


def test_replayed_hello_is_refused(harness):
    key = harness.enroll("site-a", "site")
    first = harness.open()
    (challenge,) = harness.take(first)
    hello = make_hello(challenge, key, role="site", name="site-a")
    harness.send(first, hello)
    assert isinstance(harness.take(first)[0], m.Welcome)
    second = harness.open()
    harness.take(second)
    harness.send(second, hello)  # an eavesdropper replays the captured hello
    _refused(harness, second, "replay")


def test_analyst_acting_as_site_is_refused(harness):
    harness.enroll("analyst", "analyst")
    conn = harness.connect("analyst", role="site")
    err = _refused(harness, conn, "wrong_role")
    assert "enrolled as analyst" in err.message


def test_handshake_timeout(harness):
    conn = harness.open()
    harness.tick(30)
    assert conn in harness.closed


# ------------------------------------------------------------------------------------------- bad frames


def test_malformed_oversized_out_of_order_frames_close_only_that_connection(harness):
    harness.enroll("site-a", "site")
    harness.enroll("analyst", "analyst")
    good = harness.site("site-a")
    harness.take(good)
    before = _state(harness.store)

    cases = {
        "protocol": b"\xc1garbage",
        "frame_too_large": b"\x00" * 10_000,  # over the pre-auth limit
    }
    for code, frame in cases.items():
        conn = harness.open()
        harness.take(conn)
        harness.feed(conn, frame)
        _refused(harness, conn, code)

    # text frame
    conn = harness.open()
    harness.take(conn)
    harness.feed(conn, "hello")
    _refused(harness, conn, "protocol")

    # out of order: an update before the hello
    conn = harness.open()
    harness.take(conn)
    harness.send(conn, harness.update("run-1", 1, 0.1))
    err = _refused(harness, conn, "protocol")
    assert "hello" in err.message

    # out of order after auth: a second hello, an analyst sending site traffic, a site before site_status
    analyst = harness.connect("analyst")
    harness.take(analyst)
    harness.send(analyst, m.SiteStatus(schema={}, record_count="1", policy={}, ledger={}))
    assert "out of order" in _refused(harness, analyst, "protocol").message

    harness.enroll("site-b", "site")
    conn = harness.connect("site-b")
    harness.take(conn)
    harness.send(conn, harness.update("run-1", 1, 0.1))
    assert "site_status" in _refused(harness, conn, "protocol").message

    # a frame with a wrong version
    conn = harness.connect("site-b")
    harness.take(conn)
    harness.feed(conn, msgpack.packb({"v": 7, "t": "list_runs", "req": 1}))
    _refused(harness, conn, "version")

    assert good not in harness.closed
    assert _state(harness.store) == before


# ------------------------------------------------------------------------------------------- runs


def _start_run(harness, analyst, **config):
    # plain mode (secure aggregation is on by default): these tests drive the per-update path by hand
    # and plain FedAvg (the default is FedAdam): the tests check the weighted average's arithmetic
    cfg = {"rounds": 2, "target_epsilon": 1.0, "round_timeout": 10.0, "secure_aggregation": False}
    cfg.update({"server_optimizer": "fedavg", "server_learning_rate": 1.0, "model_average": 0.0, **config})
    harness.send(analyst, m.StartRun(req=1, spec=harness.SPEC, config=cfg))
    created = [x for x in harness.take(analyst) if isinstance(x, m.RunCreated)]
    assert created, "run not created"
    run_id = created[0].run_id
    harness.send(analyst, m.WatchRun(req=2, run_id=run_id))
    harness.take(analyst)
    return run_id


def _offers(harness, sites, run_id, accept=True):
    for conn in sites.values():
        (offer,) = [x for x in harness.take(conn) if isinstance(x, m.RunOffer)]
        assert offer.run_id == run_id
        if accept:
            harness.send(conn, m.RunAccept(run_id=run_id, plan={"min_sites": 1}))


def _round_starts(harness, conn):
    return [x for x in harness.take(conn) if isinstance(x, m.RoundStart)]


def test_full_run_fedavg_weighted(harness):
    analyst, sites = harness.setup_room()
    run_id = _start_run(harness, analyst)
    _offers(harness, sites, run_id)
    weights = {"site-a": 50, "site-b": 50, "site-c": 100}  # within the ~100 records each declared
    values = {"site-a": 1.0, "site-b": 2.0, "site-c": 4.0}
    for rnd in (1, 2):
        for name, conn in sites.items():
            (start,) = _round_starts(harness, conn)
            assert (start.round, start.phase, start.cohort) == (rnd, "train", 3)
            harness.send(conn, harness.update(run_id, rnd, values[name], weight=weights[name]))
        for conn in sites.values():
            (start,) = _round_starts(harness, conn)
            assert start.phase == "eval"
            harness.send(conn, harness.metrics(run_id, rnd))
    events = [x for x in harness.take(analyst) if isinstance(x, m.RunEvent)]
    rounds = [e.data for e in events if e.kind == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["accuracy"] == 0.8 and rounds[0]["loss"] == 0.4
    assert set(rounds[0]["epsilon"]) == set(sites)
    assert events[-1].kind == "status" and events[-1].data["status"] == "finished"
    # weighted mean: (1*50 + 2*50 + 4*100) / 200 = 2.75 per round, server lr 1
    harness.send(analyst, m.GetModel(req=5, run_id=run_id))
    (model,) = [x for x in harness.take(analyst) if isinstance(x, m.ModelReply)]
    params = unpack_tree(model.params)
    np.testing.assert_allclose(params["dense_0"]["bias"], 5.5)
    kinds = [r["kind"] for r in harness.audit.records]
    for kind in (
        "run_requested",
        "run_accepted",
        "round_opened",
        "update_received",
        "aggregate_applied",
        "run_finished",
        "model_downloaded",
    ):
        assert kind in kinds, kind


def test_straggler_is_dropped_at_the_deadline(harness):
    analyst, sites = harness.setup_room()
    run_id = _start_run(harness, analyst, rounds=1, min_sites=2)
    _offers(harness, sites, run_id)
    for name in ("site-a", "site-b"):
        _round_starts(harness, sites[name])
        harness.send(sites[name], harness.update(run_id, 1, 1.0))
    harness.tick(5)
    assert harness.store.rounds(run_id) == []  # still waiting
    harness.tick(6)  # past the 10 s deadline
    (row,) = harness.store.rounds(run_id)
    assert row.sites == ["site-a", "site-b"] and row.dropped == ["site-c"]
    # the straggler's late update is answered with a non-fatal error and ignored
    harness.send(sites["site-c"], harness.update(run_id, 1, 9.0))
    late = [x for x in harness.take(sites["site-c"]) if isinstance(x, m.Error)]
    assert late and not late[-1].fatal and sites["site-c"] not in harness.closed


def test_too_few_updates_fail_the_run_with_a_message(harness):
    analyst, sites = harness.setup_room(2)
    run_id = _start_run(harness, analyst, rounds=1, min_sites=2)
    _offers(harness, sites, run_id)
    harness.send(sites["site-a"], harness.update(run_id, 1, 1.0))
    harness.tick(11)
    run = harness.store.run(run_id)
    assert run.status == "failed" and "at least 2" in run.error["message"]


def test_refusals_end_the_run_with_a_clear_message(harness):
    analyst, sites = harness.setup_room(2)
    run_id = _start_run(harness, analyst, rounds=3, min_sites=2)
    _offers(harness, sites, run_id)
    for conn in sites.values():
        harness.send(conn, harness.update(run_id, 1, 1.0))
    for conn in sites.values():
        harness.send(conn, harness.metrics(run_id, 1))
    err = {
        "code": "policy_violation",
        "message": "round 2 would take epsilon past the cap 1.0",
        "party": "site-b",
        "reason": "epsilon_cap",
    }
    harness.send(sites["site-b"], m.RunRefuse(run_id=run_id, round=2, error=err))
    run = harness.store.run(run_id)
    assert run.status == "failed"
    assert "site-b refused (epsilon_cap" in run.error["message"]
    events = [x for x in harness.take(analyst) if isinstance(x, m.RunEvent)]
    assert any(e.kind == "refusal" and e.data["reason"] == "epsilon_cap" for e in events)


def test_offer_refused_by_all(harness):
    analyst, sites = harness.setup_room(2)
    run_id = _start_run(harness, analyst)
    err = {"code": "policy_violation", "message": "mlp not allowed", "party": "x", "reason": "model_family"}
    for conn in sites.values():
        harness.take(conn)
        harness.send(conn, m.RunRefuse(run_id=run_id, round=None, error=err))
    run = harness.store.run(run_id)
    assert run.status == "failed" and "model_family" in run.error["message"]


def test_secure_run_sends_secagg_setup_before_round_start_and_refuses_plain_updates(harness):
    analyst, sites = harness.setup_room(3)
    config = {"secure_aggregation": True, "distributed_noise": False}  # weighted FedAvg: each site's fraction
    harness.send(analyst, m.StartRun(req=9, spec=harness.SPEC, config=config))
    (created,) = harness.take(analyst)
    assert isinstance(created, m.RunCreated), created
    _offers(harness, sites, created.run_id)
    ids = {}
    for name, conn in sites.items():
        frames = harness.take(conn)
        assert [type(x) for x in frames] == [m.SecAggSetup, m.RoundStart]
        setup = frames[0]
        assert setup.config["round_id"] == f"{created.run_id}/1" and setup.fraction == pytest.approx(1 / 3)
        ids[name] = setup.id
    assert ids == {"site-a": 1, "site-b": 2, "site-c": 3}  # sorted names, deterministic
    harness.send(sites["site-a"], harness.update(created.run_id, 1, 0.1))  # an unmasked update
    (err,) = harness.take(sites["site-a"])
    assert isinstance(err, m.Error) and err.fatal and "secure aggregation" in err.message


def test_restart_resumes_from_the_last_finished_round(tmp_path, harness):
    analyst, sites = harness.setup_room(2)
    run_id = _start_run(harness, analyst, rounds=3)
    _offers(harness, sites, run_id)
    for conn in sites.values():
        harness.send(conn, harness.update(run_id, 1, 1.0))
    for conn in sites.values():
        harness.send(conn, harness.metrics(run_id, 1))
    harness.send(sites["site-a"], harness.update(run_id, 2, 1.0))
    # crash here: round 2 half-collected. A new machine on the same store resumes round 2.
    from fedjax_room.protocol.coordinator import CoordinatorMachine

    harness.machine = CoordinatorMachine(harness.store, audit=harness.audit, init_params=lambda s, k: None)
    harness._perform(harness.machine.start(harness.now))
    assert harness.machine.active_run == run_id
    new = {name: harness.site(name) for name in sites}
    for conn in new.values():
        starts = _round_starts(harness, conn)
        assert [(s.round, s.phase) for s in starts] == [(2, "train")]
        np.testing.assert_allclose(unpack_tree(starts[0].params)["dense_0"]["bias"], 1.0)


def test_oversized_site_description_is_refused(harness):
    harness.enroll("site-a", "site")
    conn = harness.connect("site-a")
    harness.take(conn)
    harness.send(conn, m.SiteStatus(schema={"features": ["x" * 100] * 5000}, record_count="~1", policy={}, ledger={}))
    _refused(harness, conn, "frame_too_large")
    assert harness.store.sites() == {}


def test_restart_after_the_last_round_finishes_the_run(harness):
    analyst, sites = harness.setup_room(1)
    run_id = _start_run(harness, analyst, rounds=1)
    _offers(harness, sites, run_id)
    conn = sites["site-a"]
    harness.send(conn, harness.update(run_id, 1, 1.0))
    harness.send(conn, harness.metrics(run_id, 1))
    assert harness.store.run(run_id).status == "finished"
    harness.store.set_run_status(run_id, "running")  # as if killed between the evaluation and finishing
    from fedjax_room.protocol.coordinator import CoordinatorMachine

    machine = CoordinatorMachine(harness.store, audit=harness.audit, init_params=lambda s, k: None)
    machine.start(harness.now)
    assert harness.store.run(run_id).status == "finished" and machine.active_run is None


def test_malformed_update_mid_round_closes_that_site_only(harness):
    analyst, sites = harness.setup_room(2)
    run_id = _start_run(harness, analyst, rounds=1, min_sites=1)
    _offers(harness, sites, run_id)
    bad = {"dense_0": {"kernel": np.full((3, 2), np.nan, np.float32), "bias": np.zeros(2, np.float32)}}
    from fedjax_room.protocol.codec import pack_tree

    harness.send(
        sites["site-a"],
        m.Update(
            run_id=run_id, round=1, weight=10, payload=pack_tree(bad), epsilon=0.1, ledger_epsilon=0.1, delta=1e-5
        ),
    )
    err = [x for x in harness.take(sites["site-a"]) if isinstance(x, m.Error)][-1]
    assert err.fatal and "NaN" in err.message and sites["site-a"] in harness.closed
    assert sites["site-b"] not in harness.closed
    assert harness.store.rounds(run_id) == []
    harness.send(sites["site-b"], harness.update(run_id, 1, 1.0))
    harness.tick(11)  # site-a's answer never comes: the round closes with site-b
    (row,) = harness.store.rounds(run_id)
    assert row.sites == ["site-b"] and row.dropped == ["site-a"]
