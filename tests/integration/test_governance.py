"""Governance in a real room: audit logs that verify and cross-check, manual model approval, key revocation.

Two site processes; site-a's policy says ``approval = "manual"``. The data owner decides with the
``fedjax-room site approve|reject`` command in a subprocess while the agent runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from fedjax_room.audit import cross_check, verify_log
from fedjax_room.errors import AuthError
from fedjax_room.identity import load_private_key
from fedjax_room.models import logistic, mlp
from fedjax_room.sim.demo import start_room
from fedjax_room.site.ledger import Ledger
from fedjax_room.transport.client import open_connection

pytestmark = pytest.mark.slow

FAST = {"rounds": 2, "local_steps": 5, "batch_size": 32, "learning_rate": 1.0, "round_timeout": 60.0}
# governance, not masking: site-b alone must be able to finish a run (secure aggregation needs two sites)
FAST["secure_aggregation"] = False


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    state = tmp_path_factory.mktemp("gov")
    policy = {"epsilon_cap": 50.0, "min_sites": 1}
    er = start_room(
        sites=2, dataset="digits", state_dir=state, policy=policy, policies={"site-a": {**policy, "approval": "manual"}}
    )
    client = er.connect()
    yield er, client
    client.close()
    er.stop()


def _cli(*args):
    done = subprocess.run(
        [sys.executable, "-m", "fedjax_room", *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _until(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _site_records(er, name, kind):
    return [r for r in verify_log(er.site_dir(name) / "state") if r["kind"] == kind]


def test_manual_approval_then_rejection_of_a_changed_spec(room):
    er, client = room
    state_a = er.site_dir("site-a") / "state"
    spec = mlp([64], 10, hidden=(16,))
    run = client.train(spec, **FAST)
    _until(lambda: run.waiting == ["site-a"], what="site-a to wait for approval")
    assert run.waiting_text == "waiting for approval by site-a"
    assert run.status == "pending"
    assert next(r for r in client.runs() if r.id == run.id).waiting == ("site-a",)
    listed = _cli("site", "pending", "--state", state_a)
    assert spec.hash in listed
    time.sleep(1.0)
    assert run.status == "pending" and not run.history  # it really waits
    _cli("site", "approve", spec.hash[:12], "--state", state_a)
    run.wait(120)
    assert run.status == "finished", run.error
    assert run.waiting == []
    assert set(run.history[-1].sites) == {"site-a", "site-b"}
    assert [r["fields"]["spec_hash"] for r in _site_records(er, "site-a", "model_approved")] == [spec.hash]

    # the same spec runs again without asking
    again = client.train(spec, **{**FAST, "rounds": 1}).wait(120)
    assert again.status == "finished" and "site-a" in again.history[-1].sites

    # one layer wider: a new spec, a new approval; the owner says no and the analyst sees why
    wider = mlp([64], 10, hidden=(17,))
    assert wider.hash != spec.hash
    run2 = client.train(wider, **{**FAST, "rounds": 1})
    _until(lambda: run2.waiting == ["site-a"], what="site-a to wait for the wider model")
    _cli("site", "reject", wider.hash, "--reason", "hidden layer too wide for our data", "--state", state_a)
    run2.wait(120)
    assert run2.status == "finished", run2.error  # site-b alone meets min_sites
    (refusal,) = [r for r in run2.refusals if r.site == "site-a"]
    assert refusal.reason == "rejected"
    assert "hidden layer too wide for our data" in refusal.message
    assert run2.waiting == []
    rejected = _site_records(er, "site-a", "model_rejected")
    assert [(r["fields"]["spec_hash"], r["fields"]["reason"]) for r in rejected] == [
        (wider.hash, "hidden layer too wide for our data")
    ]


def test_logs_verify_cross_check_and_match_the_ledger(room):
    er, client = room
    spec = logistic([64], 10)
    # site-a asks for approval of every new spec; its owner approves this one ahead (a full hash)
    _cli("site", "approve", spec.hash, "--state", er.site_dir("site-a") / "state")
    run = client.train(spec, **FAST).wait(120)
    assert run.status == "finished", run.error
    coord = verify_log(er.coordinator_dir)
    assert any(r["kind"] == "defence_report" for r in coord)
    for name in er.site_names:
        site_dir = er.site_dir(name) / "state"
        report = cross_check(site_dir, er.coordinator_dir)
        assert report.ok and report.matched >= 2, report.summary()
        records = verify_log(site_dir)
        releases = [r for r in records if r["kind"] in ("update_released", "metrics_released")]
        assert releases
        ledger = Ledger.open(site_dir / "ledger.json", epsilon_cap=50.0, delta=1e-5)
        assert releases[-1]["fields"]["ledger_epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-9)
        mine = [r for r in releases if r["fields"]["run_id"] == run.id]
        assert mine[-1]["fields"]["epsilon"] == pytest.approx(run.privacy[name].epsilon, rel=1e-9)


def test_revoked_key_is_closed_and_refused(room):
    er, client = room
    _cli("revoke", "--state", er.coordinator_dir, "--name", "site-b")

    def revoked_logged():
        kinds = [(r["kind"], r["fields"].get("name")) for r in verify_log(er.coordinator_dir)]
        return ("identity_revoked", "site-b") in kinds

    _until(revoked_logged, 30, "identity_revoked in the coordinator log")
    _until(lambda: not any(s.name == "site-b" and s.status == "connected" for s in client.sites()), 30, "site-b gone")
    key = load_private_key(er.state_dir / "keys" / "site-b.key")
    with pytest.raises(AuthError):
        asyncio.run(open_connection(er.url, key, role="site", name="site-b", coordinator_key=er.manifest_path))
