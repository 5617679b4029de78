"""``room.estimate`` on a real room (LoopbackRoom: the real coordinator and site machines and agents): each site's
estimate is what it then accepts and spends, a refusal it foresees is the refusal the run gets, and an estimate
spends, stores and audits nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.data import load_builtin
from fedjax_room.errors import RefusedError
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig
from fedjax_room.sim import LoopbackRoom

SPEC = logistic([64], 10)
CONFIG = {"rounds": 2, "local_steps": 3, "batch_size": 32, "target_epsilon": 1.0, "learning_rate": 0.5}
CONFIG = {**CONFIG, "secure_aggregation": False}  # a room of one site below: nothing to mask it among


def _room(tmp_path, caps=(10.0, 10.0)) -> LoopbackRoom:
    data = load_builtin("digits")
    parts = np.array_split(np.arange(len(data)), 2 * len(caps))
    sites = {
        f"site-{'ab'[i]}": (data.subset(parts[2 * i]), data.subset(parts[2 * i + 1]), {"epsilon_cap": cap})
        for i, cap in enumerate(caps)
    }
    return LoopbackRoom(tmp_path, sites, seed=1)


def estimate(room: LoopbackRoom, config=CONFIG) -> dict[str, dict]:
    reply = room._ask(m.EstimateRun(req=room._next_req(), spec=SPEC.to_dict(), config=dict(config)), m.EstimateReply)
    return {r["site"]: r for r in reply.sites}


def _count(records) -> int | None:
    if records is None:
        return None
    return len(records() if callable(records) else records)


def _state(room: LoopbackRoom) -> dict[str, tuple]:
    """What an estimate must leave as it was: each site's ledger file, accepted runs, audit log; the room's runs."""
    out = {}
    for name, s in room.sites.items():
        agent = s["agent"]
        ledger = agent.state_dir / "ledger.json"
        runs = sorted(p.name for p in agent.state_dir.glob("runs/*"))
        records = _count(getattr(agent.audit, "records", None))
        out[name] = (ledger.read_bytes() if ledger.exists() else b"", runs, records, agent.ledger.epsilon())
    out["room"] = (len(room.store.runs()), _count(room.audit.records))
    return out


@pytest.mark.slow  # two sites calibrate their plans (PLD) for the estimate, then train: ~40-60 s on a loaded box
def test_the_estimate_is_what_each_site_then_spends_and_spends_nothing(tmp_path):
    room = _room(tmp_path)
    before = _state(room)
    est = estimate(room)
    assert _state(room) == before  # nothing spent, stored or audited, at the sites or in the room
    assert sorted(est) == ["site-a", "site-b"] and all(e["accept"] for e in est.values())
    run_id = room.start(SPEC, CONFIG)
    assert room.store.run(run_id).status == "finished"
    delta = RunConfig.from_dict(CONFIG).delta
    for name, e in est.items():
        agent = room.sites[name]["agent"]
        assert e["epsilon_planned"] <= 1.0
        # the run's own epsilon in the site's ledger, and the ledger's composed total, are what it estimated
        assert agent.ledger.run_epsilon(run_id, delta) == pytest.approx(e["epsilon_planned"], rel=2e-3)
        assert agent.ledger.epsilon() == pytest.approx(e["ledger_after"], rel=2e-3)
        assert e["ledger_epsilon"] == pytest.approx(before[name][3])
    again = estimate(room)  # the next estimate starts from the ledger as it is now
    for name in est:
        assert again[name]["ledger_epsilon"] == pytest.approx(room.sites[name]["agent"].ledger.epsilon())


def test_a_refusal_the_estimate_foresees_is_the_refusal_the_run_gets(tmp_path):
    room = _room(tmp_path, caps=(10.0, 0.5))
    est = estimate(room)
    a, b = est["site-a"], est["site-b"]
    assert a["accept"] and not b["accept"]
    assert b["reason"] == "epsilon_cap" and b["option"] == "target_epsilon"
    assert "site-b" in b["message"] and b["epsilon_cap"] == 0.5 and b["remaining"] == pytest.approx(0.5)
    assert b["epsilon_planned"] > b["remaining"] and b["ledger_after"] > b["epsilon_cap"]
    run_id = room.start(SPEC, CONFIG)
    sites = room.store.run_sites(run_id)
    assert sites["site-b"]["state"] == "refused" and sites["site-b"]["error"]["reason"] == "epsilon_cap"
    assert sites["site-a"]["state"] == "accepted"
    assert room.sites["site-b"]["agent"].ledger.epsilon() == 0.0  # the refused site spent nothing
    # fixed noise: a site accepts when one round fits, and says it would stop at its cap
    fixed = estimate(room, {**CONFIG, "target_epsilon": None, "noise_multiplier": 4.0, "rounds": 40})
    assert fixed["site-b"]["accept"] and fixed["site-b"]["cut_short"] and not fixed["site-a"]["cut_short"]
    assert fixed["site-b"]["ledger_after"] > fixed["site-b"]["epsilon_cap"]
    noisy = estimate(room, {**CONFIG, "target_epsilon": None, "noise_multiplier": 1.0})
    assert noisy["site-b"]["reason"] == "epsilon_cap" and noisy["site-b"]["option"] == "noise_multiplier"


def test_an_estimate_of_a_run_the_room_refuses_is_refused_by_the_room(tmp_path):
    room = _room(tmp_path)
    with pytest.raises(Exception) as info:
        estimate(room, {**CONFIG, "rounds": 10**6})
    assert "rounds" in str(info.value)
    assert not isinstance(info.value, RefusedError) or info.value.reason != "rate_limited"


def test_a_site_runs_a_couple_of_estimates_at_once_and_answers_the_rest_busy():
    """What a hostile coordinator flooding a site with estimate offers gets: two jobs, then "busy" at once."""
    from fedjax_room.protocol.actions import Send, Work
    from fedjax_room.protocol.site import MAX_ESTIMATES_IN_FLIGHT, SiteMachine

    machine = SiteMachine(lambda: m.SiteStatus(schema={}, record_count="~1", policy={}, ledger={}), name="site-a")
    machine.welcomed()
    out = []
    for est in range(1, 6):
        out += machine.receive(m.encode(m.EstimateOffer(est=est, spec=SPEC.to_dict(), config=CONFIG)))
    jobs = [a for a in out if isinstance(a, Work)]
    busy = [m.decode(a.data) for a in out if isinstance(a, Send)]
    assert len(jobs) == MAX_ESTIMATES_IN_FLIGHT == 2 and {j.kind for j in jobs} == {"estimate"}
    assert [b.est for b in busy] == [3, 4, 5] and all(b.estimate["reason"] == "busy" for b in busy)
