"""The coordinator machine's side of approvals (run_waiting), revocation, and the defence in a round."""

from __future__ import annotations

from fedjax_room.protocol import messages as m


def _start(harness, analyst, **config):
    cfg = {"rounds": 1, "target_epsilon": 1.0, "round_timeout": 10.0, **config}
    harness.send(analyst, m.StartRun(req=1, spec=harness.SPEC, config=cfg))
    (created,) = [x for x in harness.take(analyst) if isinstance(x, m.RunCreated)]
    harness.send(analyst, m.WatchRun(req=2, run_id=created.run_id))
    (snap,) = [x for x in harness.take(analyst) if isinstance(x, m.RunSnapshot)]
    return created.run_id, snap


def _events(harness, analyst, kind):
    return [x.data for x in harness.take(analyst) if isinstance(x, m.RunEvent) and x.kind == kind]


def test_a_waiting_site_keeps_the_offer_open_until_it_answers(harness):
    analyst, sites = harness.setup_room(2)
    run_id, snap = _start(harness, analyst)
    assert snap.run["waiting"] == []
    for conn in sites.values():
        harness.take(conn)
    harness.send(sites["site-b"], m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    harness.send(sites["site-a"], m.RunWaiting(run_id=run_id, spec_hash="ab" * 32, message="waiting for approval"))
    (event,) = _events(harness, analyst, "waiting")
    assert event["waiting"] == ["site-a"] and event["site"] == "site-a"
    harness.send(analyst, m.ListRuns(req=3))
    (reply,) = [x for x in harness.take(analyst) if isinstance(x, m.RunsReply)]
    assert reply.runs[0]["waiting"] == ["site-a"]
    harness.tick(600.0)  # far past round_timeout: a person decides, the offer stays open
    assert harness.store.run(run_id).status == "pending"
    assert any(r["kind"] == "run_waiting" for r in harness.audit.records)
    harness.send(sites["site-a"], m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    assert harness.store.run(run_id).status == "running"
    assert _events(harness, analyst, "waiting") == [{"waiting": [], "site": "site-a", "message": ""}]


def test_a_waiting_offer_stays_open_across_a_coordinator_restart(harness):
    from fedjax_room.protocol.coordinator import CoordinatorMachine

    analyst, sites = harness.setup_room(2)
    run_id, _ = _start(harness, analyst)
    for conn in sites.values():
        harness.take(conn)
    harness.send(sites["site-b"], m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    harness.send(sites["site-a"], m.RunWaiting(run_id=run_id, spec_hash="ab" * 32, message="waiting for approval"))
    # The coordinator goes down while site-a's data owner decides; site-a's offer job keeps waiting.
    harness.machine = CoordinatorMachine(harness.store, audit=harness.audit, init_params=lambda s, k: None)
    harness._perform(harness.machine.start(harness.now))
    new = {name: harness.site(name) for name in sites}
    for conn in new.values():
        assert any(isinstance(x, m.RunOffer) and x.run_id == run_id for x in harness.take(conn))
    harness.send(new["site-b"], m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    harness.tick(600.0)  # far past round_timeout: still a person deciding, the offer stays open
    assert harness.store.run(run_id).status == "pending"
    harness.send(new["site-a"], m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    assert harness.store.run(run_id).status == "running"
    assert sorted(harness.machine._active.accepted) == ["site-a", "site-b"]


def test_an_offer_cut_by_a_restart_waits_for_the_sites_to_come_back(harness):
    from fedjax_room.protocol.coordinator import CoordinatorMachine

    analyst, sites = harness.setup_room(2)
    run_id, _ = _start(harness, analyst)  # offered; the coordinator goes down before any site answers
    harness.machine = CoordinatorMachine(harness.store, audit=harness.audit, init_params=lambda s, k: None)
    harness._perform(harness.machine.start(harness.now))
    assert harness.machine.active_run == run_id and harness.store.run(run_id).status == "pending"
    new = {name: harness.site(name) for name in sites}
    for conn in new.values():
        assert any(isinstance(x, m.RunOffer) for x in harness.take(conn))
        harness.send(conn, m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    assert harness.store.run(run_id).status == "running"


def test_a_rejection_reaches_the_analyst_with_its_reason(harness):
    analyst, sites = harness.setup_room(1)
    run_id, _ = _start(harness, analyst)
    harness.take(sites["site-a"])
    harness.send(sites["site-a"], m.RunWaiting(run_id=run_id, spec_hash="cd" * 32, message="waiting"))
    err = {"code": "policy_violation", "reason": "rejected", "message": "site-a: rejected: too wide", "party": "site-a"}
    harness.send(sites["site-a"], m.RunRefuse(run_id=run_id, round=None, error=err))
    run = harness.store.run(run_id)
    assert run.status == "failed" and "too wide" in run.error["message"]


def test_revoke_closes_the_live_connection_audits_and_refuses_reconnects(harness):
    analyst, sites = harness.setup_room(2)
    harness.store.revoke("site-b")  # what `fedjax-room revoke` does, from another process
    harness.tick(0.5)
    assert sites["site-b"] in harness.closed and harness.closed[sites["site-b"]].code == 1008
    assert sites["site-a"] not in harness.closed
    kinds = [(r["kind"], r["fields"].get("name")) for r in harness.audit.records]
    assert kinds.count(("identity_revoked", "site-b")) == 1
    harness.tick(0.5)  # audited once
    assert [(r["kind"], r["fields"].get("name")) for r in harness.audit.records].count(
        ("identity_revoked", "site-b")
    ) == 1
    conn = harness.connect("site-b")
    (err,) = harness.take(conn)
    assert isinstance(err, m.Error) and err.code == "unknown_identity" and conn in harness.closed


def test_the_defence_flags_a_booster_and_reports_it_per_round(harness):
    analyst, sites = harness.setup_room(4)
    run_id, snap = _start(harness, analyst, aggregator="median")
    assert any(d["name"] == "robust_aggregation" and d["active"] for d in snap.run["defences"])
    for conn in sites.values():
        harness.take(conn)
        harness.send(conn, m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    values = {"site-a": 50.0, "site-b": 1.0, "site-c": 1.1, "site-d": 0.9}
    for name, conn in sites.items():
        harness.take(conn)
        harness.send(conn, harness.update(run_id, 1, values[name]))
    (report,) = [r for r in harness.audit.records if r["kind"] == "defence_report"]
    assert list(report["fields"]["flagged"]) == ["site-a"] and report["fields"]["aggregator"] == "median"
    for conn in sites.values():
        harness.take(conn)
        harness.send(conn, harness.metrics(run_id, 1))
    (rnd,) = _events(harness, analyst, "round")
    assert list(rnd["defence"]["flagged"]) == ["site-a"]
    assert rnd["defence"]["trust"]["site-a"] < rnd["defence"]["trust"]["site-b"]
    assert rnd["defence"]["aggregate_check"]["ok"] and rnd["defence"]["aggregate_check"]["norm"] > 0
    assert rnd["defence"]["held_out_loss_check"]["ok"]  # the first loss is the reference


def test_exclude_below_leaves_a_distrusted_site_out(harness):
    analyst, sites = harness.setup_room(4)
    run_id, snap = _start(harness, analyst, rounds=3, aggregator="fedavg", exclude_below=0.5)
    assert any(d["name"] == "trust_exclusion" and d["active"] for d in snap.run["defences"])
    for conn in sites.values():
        harness.take(conn)
        harness.send(conn, m.RunAccept(run_id=run_id, plan={"min_sites": 1}))
    values = {"site-a": 50.0, "site-b": 1.0, "site-c": 1.1, "site-d": 0.9}
    excluded = []
    for rnd in (1, 2, 3):
        for name, conn in sites.items():
            harness.take(conn)
            harness.send(conn, harness.update(run_id, rnd, values[name]))
        for conn in sites.values():
            harness.take(conn)
            harness.send(conn, harness.metrics(run_id, rnd))
        (result,) = _events(harness, analyst, "round")
        assert list(result["defence"]["flagged"]) == ["site-a"]
        excluded.append(result["defence"]["excluded"])
    # trust 1 -> 0.7 -> 0.49: left out from round 2 on (a fedavg of the rest: no 50.0 in the model)
    assert excluded == [[], ["site-a"], ["site-a"]]
    assert harness.store.run(run_id).status == "finished"
