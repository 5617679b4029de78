"""Inside a round the coordinator tells its watchers how far the round is: ``progress`` run events (counts only).

A real coordinator and site machines (LoopbackRoom; tiny logistic model, 3 sites, 2 rounds), plain and secure.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.sim import LoopbackRoom, SimSpec, site_name
from fedjax_room.sim.harness import _data, sim_config

SPEC = SimSpec(
    dataset="digits",
    num_sites=3,
    rounds=1,
    model=logistic([64], 10).to_dict(),
    local_steps=2,
    batch_size=32,
    learning_rate=0.5,
    noise_multiplier=0.8,
    clip_norm=1.0,
    seed=7,
)


def _send(room: LoopbackRoom, msg: m.Message) -> None:
    """One analyst frame to the coordinator, its answers routed, nothing pumped yet."""
    room._route(room.coord.receive(room.analyst, m.encode(msg), room.now), None)


def _start_watching(room: LoopbackRoom, spec: dict, config: dict) -> str:
    """Start a run and watch it (as ``Room.train`` then ``room.run`` do) before any site has answered."""
    _send(room, m.StartRun(req=room._next_req(), spec=spec, config=config))
    (created,) = [x for x in room.analyst_inbox if isinstance(x, m.RunCreated)]
    _send(room, m.WatchRun(req=room._next_req(), run_id=created.run_id))
    return str(created.run_id)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_each_phase_of_each_round_counts_its_answers_before_the_round_closes(tmp_path, secure):
    _, test, sites = _data(SPEC)
    chunks = np.array_split(np.arange(len(test)), SPEC.num_sites)
    setups = {site_name(i): (sites[i], test.subset(chunks[i]), {"epsilon_cap": 10.0}) for i in range(3)}
    room = LoopbackRoom(tmp_path, setups, seed=SPEC.seed)
    config = {**sim_config(SPEC), "secure_aggregation": secure}
    run_id = _start_watching(room, SPEC.model, config)
    room.pump()
    room.settle(run_id)
    result = room.result(run_id)
    assert result.status == "finished"
    events = [x for x in room.analyst_inbox if isinstance(x, m.RunEvent) and x.run_id == result.run_id]
    for rnd in range(1, SPEC.rounds + 1):
        closed = next(i for i, e in enumerate(events) if e.kind == "round" and e.data["round"] == rnd)
        progress = [e.data for e in events[:closed] if e.kind == "progress" and e.data["round"] == rnd]
        train = [p["answered"] for p in progress if p["phase"] == "train"]
        assert train == [0, 1, 2, 3]  # the phase opened, then one more site each time
        assert {p["cohort"] for p in progress} == {3}
        assert all(set(p) == {"round", "phase", "answered", "cohort"} for p in progress)  # counts, no site names
        later = [e for e in events[closed:] if e.kind == "progress" and e.data["round"] == rnd]
        assert later == []  # nothing about a round after it closed
