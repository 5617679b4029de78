"""One round engine: a simulation is a LoopbackRoom run, bit for bit, and the room's global models are the robust
layer's FedAvg and server optimiser applied to the updates its sites sent (tiny logistic model, 3 sites, 2 rounds)."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.models import logistic
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import flatten_tree, unpack_tree
from fedjax_room.robust.aggregate import aggregate
from fedjax_room.robust.server import server_optimizer
from fedjax_room.sim import LoopbackRoom, SimSpec, run_simulation, site_name
from fedjax_room.sim.harness import _data, sim_config

SPEC = SimSpec(
    dataset="digits",
    num_sites=3,
    rounds=2,
    model=logistic([64], 10).to_dict(),
    local_steps=3,
    batch_size=32,
    learning_rate=0.5,
    noise_multiplier=0.8,
    clip_norm=1.0,
    server_optimizer="fedadam",
    server_learning_rate=0.05,
    seed=4,
)


def _same(a, b) -> bool:
    fa, fb = flatten_tree(a), flatten_tree(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


def _room(tmp_path, spec: SimSpec, **kwargs) -> LoopbackRoom:
    _, test, sites = _data(spec)
    chunks = np.array_split(np.arange(len(test)), spec.num_sites)
    setups = {
        site_name(i): (sites[i], test.subset(chunks[i]), {"epsilon_cap": spec.epsilon_cap})
        for i in range(spec.num_sites)
    }
    return LoopbackRoom(tmp_path, setups, seed=spec.seed, **kwargs)


def test_a_simulation_is_a_loopback_room_run_bit_for_bit(tmp_path):
    sim = run_simulation(SPEC)
    room = _room(tmp_path / "room", SPEC)
    run = room.train(SPEC.model, sim_config(SPEC))
    assert run.status == "finished" and len(run.rounds) == 2
    assert _same(sim.params, run.params)  # the same global model, to the bit
    assert _same(room.global_params(run.run_id), run.params)  # and what the analyst downloads
    assert sim.privacy == run.privacy and all(0 < p["epsilon"] < np.inf for p in run.privacy.values())
    again = _room(tmp_path / "again", SPEC).train(SPEC.model, sim_config(SPEC))
    assert all(_same(a.params, b.params) for a, b in zip(run.rounds, again.rounds, strict=True))
    other = _room(tmp_path / "other", SPEC.replace(seed=5)).train(SPEC.model, sim_config(SPEC))
    assert not _same(other.params, run.params)  # another room seed: other site secrets, other noise


def test_the_rooms_models_are_the_robust_layers_fedavg_and_server_optimiser(tmp_path):
    """Replaying the coordinator's arithmetic on the updates the sites sent gives its checkpoints exactly."""
    room = _room(tmp_path, SPEC, keep_frames=True)
    run = room.train(SPEC.model, sim_config(SPEC))
    assert run.status == "finished"
    opt = server_optimizer(SPEC.server_optimizer, SPEC.server_learning_rate)
    params, state = run.initial_params, opt.init(run.initial_params)
    for r in run.rounds:
        sent = {s: x for s, x in room.received if isinstance(x, m.Update) and x.round == r.round}
        assert sorted(sent) == sorted(r.sites) == [site_name(i) for i in range(3)]
        delta = aggregate({s: (unpack_tree(u.payload), u.weight) for s, u in sent.items()}, "fedavg")
        params, state = opt.update(delta, state, params)
        assert _same(params, r.params), r.round
    assert int(np.asarray(state["count"]).reshape(())) == 2


def test_secure_aggregation_gives_the_plain_model_up_to_fixed_point(tmp_path):
    plain = run_simulation(SPEC.replace(rounds=1))
    secure = run_simulation(SPEC.replace(rounds=1, secure_aggregation=True))
    a, b = flatten_tree(plain.params), flatten_tree(secure.params)
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) < 1e-5
    assert secure.rounds[0].flagged == () and plain.privacy.keys() == secure.privacy.keys()


def test_the_simulation_takes_only_what_the_room_takes():
    with pytest.raises(ConfigError, match="noise_multiplier"):
        run_simulation(SPEC.replace(noise_multiplier=0.0))  # the room never trains without DP noise
    with pytest.raises(ConfigError, match="secure aggregation"):
        run_simulation(SPEC.replace(aggregator="median", secure_aggregation=True))


@pytest.mark.slow
def test_the_room_over_real_websockets_gives_the_same_model(tmp_path):
    """The embedded room (a coordinator process and 2 site processes on 127.0.0.1, real websockets) and a
    LoopbackRoom with the same sites (data, policy, secret) train the same global model, to the bit."""
    import shutil

    from fedjax_room.data.loaders import load_dataset
    from fedjax_room.sim.demo import start_room
    from fedjax_room.site.policy import Policy

    spec = logistic([64], 10)
    config = {**sim_config(SPEC), "round_timeout": 120.0}
    with start_room(sites=2, dataset="digits", state_dir=tmp_path / "ws", policy={"epsilon_cap": 100.0}) as er:
        analyst = er.connect()
        try:
            ws = analyst.train(spec, **config).wait(300)
            assert ws.status == "finished", ws.error
            ws_params = ws.params  # downloaded from the room while it runs
        finally:
            analyst.close()
        names = er.site_names
    sites = {}
    for name in names:
        folder = tmp_path / "ws" / "sites" / name
        train = load_dataset(folder / "train.npz", None, infer=False)
        heldout = load_dataset(folder / "heldout.npz", train.schema, infer=False)
        sites[name] = (train, heldout, Policy.load(folder / "policy.toml").to_dict())
        (tmp_path / "lb" / "sites" / name).mkdir(parents=True)
        shutil.copy(folder / "state" / "secret", tmp_path / "lb" / "sites" / name / "secret")
    loop = LoopbackRoom(tmp_path / "lb", sites).train(spec, config)
    assert loop.status == "finished" and loop.run_id == ws.id
    assert _same(ws_params, loop.params)
