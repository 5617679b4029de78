"""SecureRound (the coordinator's side of a secure train phase) driven with SecAgg clients and synthetic updates."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.identity import generate_key, public_key_bytes
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureRound, flatten_update, make_encoder, site_ids
from fedjax_room.secagg import SecAggClient, SecAggConfig, message_from_dict

REFERENCE = {"dense_0": {"kernel": np.zeros((30, 10), np.float32), "bias": np.zeros(10, np.float32)}}


def _update(seed):
    rng = np.random.default_rng(seed)
    return {"dense_0": {"kernel": rng.normal(0, 0.1, (30, 10)), "bias": rng.normal(0, 0.1, 10)}}


def _drive(n, drop_after_advert=(), **config):
    names = [f"site-{i:02d}" for i in range(n)]
    keys = {name: generate_key() for name in names}
    weights = {name: 100.0 + 10 * i for i, name in enumerate(names)}
    cfg = RunConfig.from_dict({"secure_aggregation": True, "distributed_noise": False, **config})
    rnd = SecureRound(
        run_id="run-1",
        round=1,
        config=cfg,
        roster={k: public_key_bytes(v) for k, v in keys.items()},
        weights=weights,
        reference=REFERENCE,
        min_sites=1,
        now=0.0,
    )
    clients, inbox = {}, []
    for name in names:
        setup = rnd.setup(name)
        client = SecAggClient(SecAggConfig.from_dict(setup.config), setup.id, keys[name])
        clients[name] = (client, setup)
        vec = make_encoder(cfg, client.config).encode(setup.fraction * flatten_update(_update(setup.id)))
        inbox += [(name, m.to_dict()) for m in [client.advertise(), *client.set_input(vec)]]
    while inbox:
        name, body = inbox.pop(0)
        out = rnd.receive(name, body, 0.0)
        if name in drop_after_advert and body["t"].endswith("advertise_keys"):
            out += rnd.drop(name, 0.0)
        for to, frame in out:
            if to in drop_after_advert:
                continue
            inbox += [(to, m.to_dict()) for m in clients[to][0].receive(message_from_dict(frame.body))]
    assert rnd.state == "done"
    delta, survivors = rnd.aggregate()
    return rnd, delta, survivors, {n: clients[n][1] for n in names}


@pytest.mark.parametrize("n", [5, 20])
def test_weighted_fedavg_of_the_survivors(n):
    drop = ("site-01", "site-03")
    rnd, delta, survivors, setups = _drive(n, drop_after_advert=drop)
    assert rnd.secagg.full_graph == (n < 16)  # SecAgg+ for larger rooms
    assert survivors == sorted(set(setups) - set(drop))
    w = {s: setups[s].fraction for s in survivors}
    expected = sum(w[s] * flatten_update(_update(setups[s].id)) for s in survivors) / sum(w.values())
    assert np.max(np.abs(flatten_update(delta) - expected)) < 1e-6
    assert site_ids(setups) == {s: setups[s].id for s in setups}


def test_distributed_dp_is_an_unweighted_noised_mean_of_clipped_updates():
    rnd, delta, survivors, setups = _drive(5, site_noise_multiplier=0.5, site_clip_norm=0.5)
    assert all(s.fraction == 1.0 for s in setups.values())
    clipped = []
    for s in survivors:
        u = flatten_update(_update(setups[s].id))
        clipped.append(u * min(1.0, 0.5 / np.linalg.norm(u)))
    err = flatten_update(delta) - np.mean(clipped, axis=0)
    sd = 0.5 * 0.5 * np.sqrt(5 / rnd.secagg.min_clients) / 5  # sigma * S * sqrt(k / min_sites) / k
    assert abs(np.std(err) / sd - 1) < 0.15 and abs(np.mean(err)) < 4 * sd / np.sqrt(err.size)
