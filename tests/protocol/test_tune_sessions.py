"""``room.tune`` is one request to the coordinator (``start_tune``, protocol/tuning.py): it draws the number of trials
and their options, runs the trials hidden, and publishes only the best. A hostile analyst (LoopbackRoom: the real
coordinator and site machines and agents) sees nothing of the other trials nor their number: not in the run list,
the snapshots, the models, the run events, the budget's rows or the audit tail; and the sites' ledgers hold the
session's one private-selection charge."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dp_accounting import pld

from fedjax_room.analyst.tune import tune
from fedjax_room.data import load_builtin
from fedjax_room.dp.accounting import event_from_dict
from fedjax_room.dp.selection import selection_bound
from fedjax_room.errors import ConfigError, FedRoomError, RefusedError
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.tuning import TRIAL_PREFIX, TuneSessions
from fedjax_room.sim import LoopbackRoom

from .conftest import FixedRandom

SPEC = logistic([64], 10)
RUN = {"rounds": 1, "local_steps": 2, "batch_size": 32, "target_epsilon": 1.0, "secure_aggregation": False}
_REPLIES = {m.StartTune: m.TuneStarted, m.GetTune: m.TuneReply, m.WatchRun: m.RunSnapshot}


class _Run:
    def __init__(self, snap: dict[str, Any]) -> None:
        self.id, self.status, self.config = snap["id"], snap["status"], snap["config"]


class _Analyst:
    """What room.tune needs of a room, over the loopback room's analyst connection (the clock runs while it waits)."""

    def __init__(self, room: LoopbackRoom) -> None:
        self.room = room

    def _ask(self, build: Any, *, resend: bool = True) -> Any:
        msg = build(self.room._next_req())
        for _ in range(10_000):
            reply = self.room._ask(msg, _REPLIES[type(msg)])
            if not isinstance(reply, m.TuneReply) or reply.tune["status"] != "running":
                return reply
            self.room.tick(max(1.0, (self.room.coord.next_deadline() or self.room.now) - self.room.now) + 1e-3)
            msg = build(self.room._next_req())
        raise AssertionError("the session did not end")

    def run(self, run_id: str) -> _Run:
        return _Run(self._ask(lambda req: m.WatchRun(req=req, run_id=run_id)).run)


def _room(tmp_path, policies: dict[str, dict[str, Any]], u: float = 0.8) -> LoopbackRoom:
    data = load_builtin("digits")
    parts = np.array_split(np.arange(len(data)), 2 * len(policies))
    sites = {
        name: (data.subset(parts[2 * i]), data.subset(parts[2 * i + 1]), policy)
        for i, (name, policy) in enumerate(policies.items())
    }
    room = LoopbackRoom(tmp_path, sites, seed=1)
    room.coord._tune_sessions = TuneSessions(FixedRandom(u))
    return room


def _visible(room: LoopbackRoom) -> dict[str, Any]:
    """Everything the analyst can ask the room for."""
    ask = room._ask
    return {
        "runs": ask(m.ListRuns(req=room._next_req()), m.RunsReply).runs,
        "budget": ask(m.GetBudget(req=room._next_req()), m.BudgetReply).sites,
        "audit": ask(m.GetAudit(req=room._next_req(), last=1000), m.AuditReply).records,
    }


@pytest.mark.slow  # three one-round trials on one site
def test_a_private_session_shows_the_analyst_only_its_best_trial_and_charges_it_once(tmp_path):
    room = _room(tmp_path, {"site-a": {"epsilon_cap": 10.0, "tuning_selection": "private"}})
    result = tune(_Analyst(room), SPEC, {"learning_rate": [0.1, 0.3, 1.0]}, trials=2, **RUN)
    trials = [r.id for r in room.store.runs()]  # the operator's store holds every trial ...
    assert len(trials) == 3 and result.run.id in trials and all(t.startswith(TRIAL_PREFIX) for t in trials)
    hidden = set(trials) - {result.run.id}
    assert result.run.status == "finished" and result.run.config["tune_session"] == result.session
    assert result.value is not None and result.config["learning_rate"] in (0.1, 0.3, 1.0)
    assert any(r["kind"] == "tune_session_drawn" for r in room.audit.records)  # ... and its audit log every record
    seen = _visible(room)
    assert [r["id"] for r in seen["runs"]] == [result.run.id]  # ... the analyst only the best trial
    assert [row["run_id"] for s in seen["budget"] for row in s["runs"]] == [result.run.id]
    text = repr(seen)
    assert not any(t in text for t in hidden) and "tune_session_drawn" not in text
    assert not any({"index", "prev", "sig"} & set(r) for r in seen["audit"])  # no gaps to count
    assert any(r["kind"] == "tune_published" and r["fields"]["run_id"] == result.run.id for r in seen["audit"])
    for trial in hidden:  # a hidden trial's id reads as no run at all
        for ask in (m.WatchRun, m.GetModel):
            with pytest.raises(ConfigError) as info:
                room._ask(ask(req=room._next_req(), run_id=trial), m.RunSnapshot)
            assert info.value.message == f"no run {trial!r} in this room; list them with room.runs()"
    events = [x for x in room.analyst_inbox if isinstance(x, m.RunEvent)]
    assert all(e.run_id == result.run.id for e in events)  # no trial's round or status reached the analyst
    assert len(room.global_params(result.run.id)) > 0
    # the site's ledger: one Papernot & Steinke charge for the session, nothing composed per trial
    ledger = room.sites["site-a"]["agent"].ledger
    record = ledger.session(result.session)
    assert record["mode"] == "private" and record["runs"] == trials
    bound = selection_bound(event_from_dict(record["event"]), 2.0, 1.0, 1e-5)
    assert record["charge"]["epsilon"] == pytest.approx(bound["epsilon"])
    charge = pld.privacy_loss_distribution.from_privacy_parameters(
        pld.common.DifferentialPrivacyParameters(bound["epsilon"], bound["delta"]), value_discretization_interval=1e-3
    )
    assert ledger.epsilon() == pytest.approx(charge.get_epsilon_for_delta(1e-5), rel=1e-9)
    # a trial takes no run number, and nobody names the session to the sites again
    with pytest.raises(ConfigError, match="only the coordinator starts the trials"):
        room.start(SPEC, {**RUN, "tune_session": result.session, "tune_trials": 2})
    config = {**RUN, "tune_session": result.session, "tune_trials": 2}
    with pytest.raises(ConfigError, match="may not name it"):
        room._ask(m.EstimateRun(req=room._next_req(), spec=SPEC.to_dict(), config=config), m.EstimateReply)
    assert room.start(SPEC, RUN, settle=False) == "run-1"
    room.restart_coordinator()  # a new coordinator reads which trial was published from the store
    assert [r["id"] for r in _visible(room)["runs"]] == [result.run.id, "run-1"]
    with pytest.raises(ConfigError, match="no tuning session"):  # the session was the old coordinator's memory
        room._ask(m.GetTune(req=room._next_req(), session=result.session), m.TuneReply)


def test_a_session_refused_up_front_spends_nothing(tmp_path):
    room = _room(tmp_path, {"site-a": {"epsilon_cap": 0.5, "tuning_selection": "private"}})
    with pytest.raises(FedRoomError) as info:  # the session's charge is past the cap: refused at its first offer
        tune(_Analyst(room), SPEC, {"learning_rate": [0.1, 0.3]}, trials=4, **RUN)
    assert "epsilon_cap" in str(info.value.to_dict()) and TRIAL_PREFIX not in info.value.message
    assert len(room.store.runs()) == 1  # no second trial was tried
    ledger = room.sites["site-a"]["agent"].ledger
    assert ledger.epsilon() == 0.0 and not ledger.tags
    assert _visible(room)["runs"] == []


def test_bad_sessions_are_refused_before_anything_runs(tmp_path):
    room = _room(
        tmp_path,
        {"site-a": {"epsilon_cap": 10.0, "tuning_selection": "private"}, "site-b": {"tuning_selection": "compose"}},
    )
    with pytest.raises(RefusedError) as info:  # a composing site's ledger would count the trials
        tune(_Analyst(room), SPEC, {"learning_rate": [0.1, 0.3]}, trials=2, **RUN)
    assert info.value.reason == "tune_modes" and "site-b" in info.value.message
    base = {**RUN, "min_sites": 1}
    for space, options, match in (
        ({"tune_trials": [2, 3]}, {}, "not run options"),
        ({"learning_rate": (1.0, 0.1)}, {}, "low <= high"),
        ({"rounds": [1, 10**9]}, {}, "rounds"),
        ({"learning_rate": [0.1]}, {"tune_shape": 2.0}, "sets tune_session"),
    ):
        with pytest.raises(ConfigError, match=match):
            wire = {k: {"range": list(v)} if isinstance(v, tuple) else {"values": v} for k, v in space.items()}
            config = {**base, **options}
            room._ask(
                m.StartTune(req=room._next_req(), spec=SPEC.to_dict(), space=wire, trials=2, config=config),
                m.TuneStarted,
            )
    assert room.store.runs() == [] and not any(r["kind"] == "tune_session_drawn" for r in room.audit.records)


@pytest.mark.slow  # an estimate, then two one-round trials on one site
def test_a_composed_session_is_estimated_for_its_mean_and_every_trial_is_composed(tmp_path):
    """Under ``tuning_selection = "compose"``: an estimate for a new session checks the session's mean number of
    trials, the coordinator's drawn number ends it, and every trial's releases are composed in the ledger."""
    import dp_accounting as dpa

    room = _room(tmp_path, {"site-a": {"epsilon_cap": 10.0, "tuning_selection": "compose"}}, u=0.6)  # two trials
    config = {**RUN, "learning_rate": 0.5, "tune_session": 7, "tune_trials": 2}
    (est,) = room._ask(m.EstimateRun(req=room._next_req(), spec=SPEC.to_dict(), config=config), m.EstimateReply).sites
    assert est["accept"] and est["tune_k_max"] == est["tune_trials_left"] > 2 and "tune_epsilon" not in est
    result = tune(_Analyst(room), SPEC, {"learning_rate": [0.2, 0.5]}, trials=2, **RUN)
    trials = [r.id for r in room.store.runs()]
    assert len(trials) == 2 and result.run.id in trials
    agent = room.sites["site-a"]["agent"]
    assert (
        agent.ledger.session(result.session)["runs"] == trials
        and agent.ledger.session(result.session)["charge"] is None
    )
    q = RUN["batch_size"] / agent.public_size.train
    acc = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    for tag in agent.ledger.tags:  # every release of both trials composed with PLD, recomputed here
        run, _, phase = tag.split("/")
        plan = room.store.run_sites(run)["site-a"]["plan"]
        if phase == "train":
            gaussian = dpa.GaussianDpEvent(plan["noise_multiplier"])
            acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, gaussian), RUN["local_steps"]))
        else:
            acc.compose(dpa.GaussianDpEvent(plan["eval_noise_multiplier"]))
    assert {t.split("/")[0] for t in agent.ledger.tags} == set(trials)
    assert agent.ledger.epsilon() == pytest.approx(acc.get_epsilon(agent.ledger.delta), rel=2e-3)


def test_while_a_session_runs_the_analyst_sees_only_that_it_runs_and_a_restart_ends_it(harness):
    """The machine alone (tests/protocol/conftest.py's harness; the site does not answer): the trial is offered to
    the site as a run of the session, the analyst sees no run and a bare "running"; a new coordinator over the
    same store fails the lost session's trial (``tune_lost``) and still shows it to nobody."""
    from tests.protocol.conftest import Harness

    analyst, sites = harness.setup_room(1)
    space = {"learning_rate": {"values": [0.1, 0.3]}}
    harness.send(analyst, m.StartTune(req=1, spec=SPEC.to_dict(), space=space, trials=4, config={"rounds": 1}))
    (started,) = harness.take(analyst)
    assert isinstance(started, m.TuneStarted)
    (offer,) = [x for x in harness.take(sites["site-a"]) if isinstance(x, m.RunOffer)]
    assert offer.run_id.startswith(TRIAL_PREFIX) and offer.config["tune_session"] == started.session
    assert offer.config["tune_trials"] == 4 and offer.config["learning_rate"] in (0.1, 0.3)
    harness.send(analyst, m.GetTune(req=2, session=started.session))
    harness.send(analyst, m.ListRuns(req=3))
    tune_reply, runs = harness.take(analyst)
    assert tune_reply.tune["status"] == "running" and tune_reply.tune["run_id"] is None and runs.runs == []
    assert set(tune_reply.tune) == {
        "session",
        "status",
        "trials",
        "shape",
        "metric",
        "run_id",
        "value",
        "config",
        "error",
    }
    again = Harness(harness.store.state_dir.parent, store=harness.store)  # the coordinator restarted
    trial = harness.store.run(offer.run_id)
    assert trial.status == "failed" and trial.error["reason"] == "tune_lost"
    again.enroll("analyst-2", "analyst")
    other = again.connect("analyst-2")
    again.take(other)
    again.send(other, m.ListRuns(req=1))
    again.send(other, m.GetTune(req=2, session=started.session))
    runs, error = again.take(other)
    assert runs.runs == [] and isinstance(error, m.Error) and "no tuning session" in error.message
