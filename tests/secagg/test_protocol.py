"""The SecAgg state machines: exact sums, dropouts at every stage, aborts, deadlines, bad transitions."""

import numpy as np
import pytest

from fedjax_room.errors import ConfigError, ProtocolError, RoundError
from fedjax_room.identity import generate_key
from fedjax_room.secagg import (
    AdvertiseKeys,
    ClientState,
    KeyDirectory,
    MaskedInput,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    ServerState,
    ShareBundle,
    SurvivorList,
    UnmaskShares,
)
from fedjax_room.secagg.masking import default_neighbours
from fedjax_room.secagg.protocol import DROP_POINTS, run_round


@pytest.mark.parametrize(
    "n,neighbours",
    [(3, None), (10, None), (50, None), (3, 1), (10, 4), (50, default_neighbours(50)), (50, 8)],
)
def test_unmasked_sum_is_exact(room, n, neighbours):
    r = room(n, neighbours=neighbours)
    assert r.config.full_graph == (neighbours is None or neighbours + neighbours % 2 >= n - 1)
    run = run_round(r.config, r.keys, r.inputs)
    assert run.error is None and not run.client_errors and not run.rejected
    assert np.array_equal(run.total, r.expected(r.config.ids))
    assert run.server.survivors == r.config.ids
    assert all(c.state is ClientState.DONE for c in run.clients.values())


@pytest.mark.parametrize("bits", [16, 64])
def test_other_moduli(room, bits):
    r = room(6, bits=bits)
    run = run_round(r.config, r.keys, r.inputs, wire=False)
    assert np.array_equal(run.total, r.expected(r.config.ids))


def _survivors_after(config, drop):
    gone = set()
    for point in ("advertise", "share", "input"):
        gone |= set(drop.get(point, ()))
    return tuple(i for i in config.ids if i not in gone)


@pytest.mark.parametrize("point", DROP_POINTS)
def test_n_minus_t_dropouts_at_each_stage(room, point):
    r = room(10)
    slack = r.config.n - r.config.threshold
    assert slack == 4
    drop = {point: [2, 5, 7, 10]}
    run = run_round(r.config, r.keys, r.inputs, drop=drop)
    assert run.error is None, run.error
    survivors = _survivors_after(r.config, drop)
    assert run.server.survivors == survivors
    assert np.array_equal(run.total, r.expected(survivors))


def test_dropouts_spread_over_all_stages(room):
    r = room(50)
    drop = {p: list(range(2 + 5 * k, 7 + 5 * k)) for k, p in enumerate(DROP_POINTS)}  # 25 > n - t = 24
    drop["unmask"] = drop["unmask"][:4]
    run = run_round(r.config, r.keys, r.inputs, drop=drop)
    assert run.error is None, run.error
    survivors = _survivors_after(r.config, drop)
    assert len(survivors) == 35 and run.server.survivors == survivors
    assert np.array_equal(run.total, r.expected(survivors))
    assert len(run.server.participants["U5"]) == r.config.threshold


@pytest.mark.parametrize("point", ["share", "input", "consistency", "unmask"])
def test_secagg_plus_neighbourhood_dropouts(room, point):
    r = room(30, neighbours=8)
    cfg = r.config
    assert (cfg.holder_count, cfg.threshold) == (9, 5)
    victim = 1
    neighbours = sorted(cfg.graph[victim])
    ok = run_round(cfg, r.keys, r.inputs, drop={point: neighbours[:4]})  # 5 holders left: enough
    assert ok.error is None, ok.error
    survivors = _survivors_after(cfg, {point: neighbours[:4]})
    assert np.array_equal(ok.total, r.expected(survivors))
    too_many = run_round(cfg, r.keys, r.inputs, drop={point: neighbours[:5]})
    assert isinstance(too_many.error, RoundError) and too_many.total is None


def test_secagg_plus_scattered_dropouts(room):
    r = room(50, neighbours=8)
    drop = {"share": [3, 17], "input": [22, 41], "consistency": [9], "unmask": [30, 44]}
    run = run_round(r.config, r.keys, r.inputs, drop=drop)
    assert run.error is None, run.error
    assert np.array_equal(run.total, r.expected(_survivors_after(r.config, drop)))


@pytest.mark.parametrize("point", DROP_POINTS)
def test_fewer_than_t_survivors_abort_and_release_nothing(room, point):
    r = room(10)
    seen = []
    run = run_round(
        r.config, r.keys, r.inputs, drop={point: [1, 3, 4, 8, 9]}, observer=lambda d, c, m, b: seen.append(m)
    )
    assert isinstance(run.error, RoundError) and "nothing was released" in str(run.error)
    assert run.total is None and run.server.state is ServerState.ABORTED
    with pytest.raises(RoundError):
        run.server.result()
    assert not run.server._sum.any()  # the masked running sum is wiped too
    if point != "unmask":
        assert not any(isinstance(m, UnmaskShares) for m in seen), "no share may be revealed before the abort"
    aborted = [m for m in seen if isinstance(m, RoundAborted)]
    stayed = [c for cid, c in run.clients.items() if cid not in (1, 3, 4, 8, 9)]
    assert aborted and all(c.state in (ClientState.ABORTED, ClientState.DONE) for c in stayed)


def test_clients_refuse_to_continue_with_too_few_peers(room):
    r = room(7)
    client = SecAggClient(r.config, 1, r.keys[1])
    client.advertise()
    peers = []
    for cid in (2, 3):  # threshold is 4: me + 2 is not enough
        peers.append(SecAggClient(r.config, cid, r.keys[cid]).advertise())
    with pytest.raises(RoundError, match="4 are needed"):
        client.receive(KeyDirectory(r.config.digest, tuple(peers)))
    assert client.state is ClientState.ABORTED
    with pytest.raises(ProtocolError):
        client.receive(KeyDirectory(r.config.digest, tuple(peers)))


def test_deadlines_close_stages_and_late_messages_are_ignored(room):
    r = room(6)
    cfg = r.config
    server = SecAggServer(cfg, stage_timeout=10.0, now=0.0)
    clients = {cid: SecAggClient(cfg, cid, r.keys[cid]) for cid in cfg.ids}
    for cid in cfg.ids:
        clients[cid].set_input(r.inputs[cid])
    late = clients[6].advertise()
    out = []
    for cid in range(1, 6):
        out += server.receive(clients[cid].advertise(), now=1.0)
    assert out == [] and server.deadline == 10.0
    assert server.tick(9.9) == []
    out = server.tick(10.0)
    assert server.state is ServerState.SHARE and {e.recipient for e in out} == {1, 2, 3, 4, 5}
    assert server.deadline == 20.0
    assert server.receive(late, now=10.5) == [] and server.ignored[0][:2] == (6, "AdvertiseKeys")

    def pump(envelopes, now):
        replies = []
        for env in envelopes:
            replies += [(env.recipient, m) for m in clients[env.recipient].receive(env.message)]
        nxt = []
        for _, m in replies:
            nxt += server.receive(m, now=now)
        return nxt

    out = pump(out, 11.0)  # ShareKeys from all five -> bundles
    assert all(isinstance(e.message, ShareBundle) for e in out)
    replies = [(e.recipient, clients[e.recipient].receive(e.message)) for e in out]
    for cid, msgs in replies:
        if cid != 5:  # client 5's masked input is lost
            for m in msgs:
                assert server.receive(m, now=12.0) == []
    out = server.tick(31.0)  # the collect stage times out without client 5
    assert all(isinstance(e.message, SurvivorList) for e in out) and server.survivors == (1, 2, 3, 4)
    assert server.receive(replies[4][1][0], now=31.5) == []  # client 5's input, late: ignored
    out = pump(pump(out, 32.0), 33.0)
    assert out == [] and server.state is ServerState.DONE
    assert np.array_equal(server.result(), r.expected((1, 2, 3, 4)))


def test_input_may_arrive_after_key_sharing(room):
    r = room(4)
    cfg = r.config
    server = SecAggServer(cfg)
    clients = {cid: SecAggClient(cfg, cid, r.keys[cid]) for cid in cfg.ids}
    out = []
    for cid in cfg.ids:
        if cid != 1:
            clients[cid].set_input(r.inputs[cid])
        out += server.receive(clients[cid].advertise())
    for _ in range(2):  # directory -> ShareKeys -> bundles -> masked inputs (but not client 1's)
        nxt = []
        for env in out:
            for m in clients[env.recipient].receive(env.message):
                nxt += server.receive(m)
        out = nxt
    assert server.state is ServerState.COLLECT and clients[1].state is ClientState.READY
    (masked,) = clients[1].set_input(r.inputs[1])
    assert isinstance(masked, MaskedInput)
    out = server.receive(masked)
    while out:
        nxt = []
        for env in out:
            for m in clients[env.recipient].receive(env.message):
                nxt += server.receive(m)
        out = nxt
    assert np.array_equal(server.result(), r.expected(cfg.ids))


def test_invalid_transitions(room):
    r = room(4)
    cfg = r.config
    client = SecAggClient(cfg, 1, r.keys[1])
    advert = client.advertise()
    with pytest.raises(ProtocolError):
        client.advertise()
    with pytest.raises(ProtocolError, match="in state await_keys"):
        client.receive(SurvivorList(cfg.digest, (1, 2, 3)))
    assert client.state is ClientState.AWAIT_KEYS  # a wrong-state message is refused, not fatal
    with pytest.raises(ProtocolError, match="another"):
        client.receive(SurvivorList(b"x" * 32, (1, 2, 3)))
    with pytest.raises(ProtocolError):
        client.receive(advert)  # clients take only server messages
    with pytest.raises(ConfigError):
        client.set_input(np.zeros(cfg.vector_length, dtype=np.uint64))
    with pytest.raises(ConfigError):
        SecAggClient(cfg, 1, generate_key())
    with pytest.raises(ConfigError):
        SecAggClient(cfg, 99, r.keys[1])

    server = SecAggServer(cfg)
    with pytest.raises(RoundError, match="not finished"):
        server.result()
    server.receive(advert)
    with pytest.raises(ProtocolError, match="already sent"):
        server.receive(advert)
    with pytest.raises(ProtocolError, match="while the server is in stage advertise"):
        server.receive(MaskedInput(cfg.digest, 2, b"", b"s" * 64))
    with pytest.raises(ProtocolError, match="not in this round"):
        server.receive(AdvertiseKeys(cfg.digest, 77, advert.enc_key, advert.mask_key, advert.seed_commitment, b""))
    with pytest.raises(ProtocolError, match="another"):
        server.receive(AdvertiseKeys(b"x" * 32, 2, advert.enc_key, advert.mask_key, advert.seed_commitment, b""))
    with pytest.raises(ProtocolError, match="does not accept"):
        server.receive(RoundAborted(cfg.digest, "?"))

    done = run_round(cfg, r.keys, r.inputs)
    with pytest.raises(ProtocolError, match="no stage is open"):
        done.server.close_stage()
    with pytest.raises(ProtocolError):
        done.clients[1].set_input(r.inputs[1])


def test_wire_and_in_memory_agree_and_bytes_are_counted(room):
    r = room(5, length=1000)
    a = run_round(r.config, r.keys, r.inputs, wire=True)
    b = run_round(r.config, r.keys, r.inputs, wire=False)
    assert np.array_equal(a.total, b.total)
    assert all(a.bytes_up[c] > 4000 for c in r.config.ids) and not b.bytes_up


def test_a_client_that_leaves_after_its_input_is_still_summed(room):
    r = room(5)
    cfg = r.config
    server = SecAggServer(cfg)
    clients = {cid: SecAggClient(cfg, cid, r.keys[cid]) for cid in cfg.ids}
    out = []
    for cid in cfg.ids:
        clients[cid].set_input(r.inputs[cid])
        out += server.receive(clients[cid].advertise())
    while out:
        nxt = []
        for env in sorted(out, key=lambda e: -e.recipient):  # client 5 uploads first
            assert env.recipient != 5 or server.state in (ServerState.SHARE, ServerState.COLLECT)
            for m in clients[env.recipient].receive(env.message):
                nxt += server.receive(m)
                if isinstance(m, MaskedInput) and m.sender == 5:
                    nxt += server.drop(5)  # its connection closes right after the upload
        out = nxt
    assert server.survivors == cfg.ids and server.participants["U4"] == (1, 2, 3, 4)
    assert np.array_equal(server.result(), r.expected(cfg.ids))
