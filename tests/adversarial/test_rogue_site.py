"""A rogue site against a real coordinator process on loopback (issue 14 section 5).

One honest site process (``site-a``) and one scripted rogue (``rogue``, enrolled like any site) in a room
started by :func:`~fedjax_room.sim.demo.start_room`. The rogue declares ``~400`` records, then:

1. answers an offer with a plan claiming weight 1e15 (more than it declared): the plan is refused, and the
   updates and metrics it then sends for that run (which it is not in) are recorded as no spend;
2. accepts the next run honestly, then sends an update claiming weight 1e15 (its share of the FedAvg mean
   stays at most 400 / (400 + site-a's weight)), an update for a round it was never asked for (no spend), and
   metrics claiming 1e12 correct answers out of 1 (the round's accuracy stays what the honest site's data
   allows);
3. refuses a third run, which site-a finishes on its own.
"""

from __future__ import annotations

import asyncio
import sqlite3

import numpy as np
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.data import load_dataset
from fedjax_room.identity import fingerprint, generate_key, public_key_bytes, save_private_key
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree, unpack_tree
from fedjax_room.sim.demo import start_room
from fedjax_room.site.plan import coarse_count
from fedjax_room.transport.client import open_connection

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
# plain updates (secure aggregation is on by default): the rogue's claims travel in the clear
RUN = {"rounds": 1, "target_epsilon": None, "noise_multiplier": 1.0, "local_steps": 2, "learning_rate": 0.01}
RUN["secure_aggregation"] = False
RUN["server_optimizer"] = "fedavg"  # the test reads the FedAvg weighting off the moved parameters
RUN["server_learning_rate"] = 1.0
DECLARED = 400
SHIFT = 10.0  # the rogue's update: +10 on every parameter


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    state = tmp_path_factory.mktemp("rogue-room")
    key = generate_key()
    save_private_key(key, state / "keys" / "rogue.key")
    store = Store.open(state / "coordinator")
    try:
        store.enroll("rogue", "site", public_key_bytes(key), fingerprint(key))
    finally:
        store.close()
    er = start_room(sites=1, dataset="digits", state_dir=state, policy={"epsilon_cap": 50.0, "min_sites": 1})
    client = er.connect()
    yield er, client, key
    client.close()
    er.stop()


class Rogue:
    """The scripted site: one websocket, frames read in order."""

    def __init__(self, ws):
        self.ws = ws
        self.errors: list[m.Error] = []

    async def send(self, msg: m.Message) -> None:
        await self.ws.send(m.encode(msg))

    async def expect(self, cls, *, timeout: float = 120.0, **match):
        """The next frame of type ``cls`` (with those field values); errors on the way are kept."""
        while True:
            msg = m.decode(await asyncio.wait_for(self.ws.recv(), timeout))
            if isinstance(msg, m.Error):
                self.errors.append(msg)
            if isinstance(msg, cls) and all(getattr(msg, k) == v for k, v in match.items()):
                return msg


def _spend_rows(er, site):
    db = sqlite3.connect(f"file:{er.coordinator_dir / 'room.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT run_id, round, phase FROM spend WHERE site = ? ORDER BY run_id, round", (site,)
        ).fetchall()
    finally:
        db.close()


def _shifted(tree):
    if isinstance(tree, dict):
        return {k: _shifted(v) for k, v in tree.items()}
    return np.full(np.shape(tree), SHIFT, np.float32)


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _leaves(tree[k])]
    return [np.ravel(np.asarray(tree, np.float64))]


def _update(run_id, rnd, params, weight):
    delta = _shifted(params)
    return m.Update(
        run_id=run_id, round=rnd, weight=weight, payload=pack_tree(delta), epsilon=0.1, ledger_epsilon=0.1, delta=1e-5
    )


def _metrics(run_id, rnd, correct, count):
    return m.Metrics(
        run_id=run_id,
        round=rnd,
        correct=correct,
        count=count,
        loss_sum=-1e12,
        epsilon=0.1,
        ledger_epsilon=0.2,
        delta=1e-5,
    )


def test_rogue_site_cannot_outweigh_fake_or_pad_the_record(room):
    er, client, key = room
    schema = load_dataset(er.site_dir("site-a") / "train.npz").schema.to_dict()
    honest_weight = coarse_count(len(load_dataset(er.site_dir("site-a") / "train.npz").y))

    async def script():
        ws, _ = await open_connection(er.url, key, role="site", name="rogue", coordinator_key=er.manifest_path)
        rogue = Rogue(ws)
        await rogue.send(
            m.SiteStatus(
                schema=schema,
                record_count=f"~{DECLARED}",
                policy={"epsilon_cap": 10.0, "min_sites": 1},
                ledger={"epsilon": 0.0, "epsilon_cap": 10.0, "delta": 1e-5},
            )
        )
        # --- run 1: a plan that claims more than the site declared is refused; stale frames are not spend
        run1 = await asyncio.to_thread(client.train, SPEC, **RUN)
        offer = await rogue.expect(m.RunOffer, run_id=run1.id)
        plan = {"mode": "noise", "min_sites": 1, "weight": 10**15, "epsilon_planned": 0.1}
        await rogue.send(m.RunAccept(run_id=offer.run_id, plan=plan))
        refused = await rogue.expect(m.Error, run_id=run1.id)
        assert refused.reason == "bad_plan" and "declared" in refused.message
        for rnd in (1, 2, 3):
            await rogue.send(_update(run1.id, rnd, {}, 10**15))
            await rogue.expect(m.Error, run_id=run1.id)
            await rogue.send(_metrics(run1.id, rnd, 1e12, 1e12))
            await rogue.expect(m.Error, run_id=run1.id)
        await asyncio.to_thread(run1.wait, 120)

        # --- run 2: in the run, the rogue overclaims its weight and its accuracy
        run2 = await asyncio.to_thread(client.train, SPEC, **RUN)
        await rogue.expect(m.RunOffer, run_id=run2.id)
        plan = {"mode": "noise", "min_sites": 1, "weight": DECLARED, "eval_noise_multiplier": 0.1}
        await rogue.send(m.RunAccept(run_id=run2.id, plan=plan))
        start = await rogue.expect(m.RoundStart, run_id=run2.id, phase="train")
        before = unpack_tree(start.params)
        await rogue.send(_update(run2.id, 7, before, DECLARED))  # a round it was never asked for
        await rogue.expect(m.Error, run_id=run2.id)
        await rogue.send(_update(run2.id, start.round, before, 10**15))
        evaluate = await rogue.expect(m.RoundStart, run_id=run2.id, phase="eval")
        after = unpack_tree(evaluate.params)
        await rogue.send(_metrics(run2.id, evaluate.round, 1e12, 1.0))
        await rogue.expect(m.RunEnd, run_id=run2.id)
        await asyncio.to_thread(run2.wait, 120)

        # --- run 3: the rogue refuses; the honest site finishes it alone
        run3 = await asyncio.to_thread(client.train, SPEC, **RUN)
        await rogue.expect(m.RunOffer, run_id=run3.id)
        no = {"code": "refused", "message": "not today", "party": "rogue", "reason": "rejected"}
        await rogue.send(m.RunRefuse(run_id=run3.id, round=None, error=no))
        await asyncio.to_thread(run3.wait, 120)
        await ws.close()
        return run1, run2, run3, before, after

    run1, run2, run3, before, after = asyncio.run(script())

    # 1. the bad plan was a refusal; run 1 trained on site-a alone and reports no spend by the rogue
    assert run1.status == "finished", run1.error
    assert [(r.site, r.reason) for r in run1.refusals] == [("rogue", "bad_plan")]
    assert "rogue" not in run1.privacy.sites
    # 2. the rogue's share of the mean is bounded by what it declared, whatever weight it claims
    assert run2.status == "finished", run2.error
    share = DECLARED / (DECLARED + honest_weight)
    moved = np.mean(np.concatenate(_leaves(after)) - np.concatenate(_leaves(before)))
    assert abs(moved - share * SHIFT) < 0.5, (moved, share)  # unbounded: ~SHIFT (weight 1e15 vs ~1000)
    accuracy = run2.history[-1].accuracy
    assert accuracy is not None and accuracy < 0.6  # unbounded: 1.0 (1e12 correct out of 1)
    # no spend row for the round it was never asked for, nor for run 1
    assert sorted(_spend_rows(er, "rogue")) == [(run2.id, 1, "eval"), (run2.id, 1, "train")]
    # 3. the room still serves an honest run
    assert run3.status == "finished", run3.error
    assert set(run3.history[-1].sites) == {"site-a"}


def _others_can_read(path) -> bool:
    return bool(path.stat().st_mode & 0o077)


def test_no_state_file_is_readable_by_other_users(room):
    """After a real run: every state folder is 0700 and every file in it 0600 (before: 0755 and 0644)."""
    er, client, _ = room
    run = client.train(SPEC, **RUN)
    run.wait(120)
    assert run.status == "finished", run.error
    public = {"room-manifest.json"}  # the room manifest every party pins, and public keys, are public by design
    roots = [er.coordinator_dir, er.state_dir / "keys", er.state_dir / "logs"]
    roots += [er.site_dir(n) / "state" for n in er.site_names]
    checked = []
    for root in roots:
        assert root.is_dir(), root
        for path in [root, *root.rglob("*")]:
            if path.is_file() and (path.name in public or path.suffix == ".pub"):
                continue
            assert not _others_can_read(path), f"{path} is {oct(path.stat().st_mode & 0o777)}"
            checked.append(path)
    for name in er.site_names:  # the records the room wrote for its sites
        folder = er.site_dir(name)
        for path in [folder, folder / "train.npz", folder / "heldout.npz"]:
            assert not _others_can_read(path), f"{path} is {oct(path.stat().st_mode & 0o777)}"
    kinds = {p.name for p in checked}
    assert {"room.sqlite3", "audit.jsonl", "audit.jsonl.head", "ledger.json"} <= kinds, sorted(kinds)
    assert any(p.suffix == ".key" for p in checked) and any("checkpoint" in str(p) for p in checked)
