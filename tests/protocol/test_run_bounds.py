"""Issue 14 section 4 at the machine level: bounded requests, bounded decoding, bad plans, cancel, audit tail.

Each test drives the real coordinator machine (tests/protocol/conftest.py) with the frames a hostile analyst
or site would send; the integration counterpart against real processes is tests/adversarial/test_hostile_analyst.py.
"""

from __future__ import annotations

import logging

import msgpack
import numpy as np
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.errors import ConfigError, FrameTooLargeError, StateError
from fedjax_room.models import mlp
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import MAX_DECODED_ITEMS, unpack
from fedjax_room.protocol.config import RunConfig, RunLimits, check_run_request
from fedjax_room.protocol.coordinator import CoordinatorMachine, MemoryAudit

HUGE = mlp([784], 10, hidden=[8192, 4096, 2048]).to_dict()  # ~49M parameters, never built
# plain mode (secure aggregation is on by default): the tests send plain updates by hand
OK = {"rounds": 1, "local_steps": 2, "round_timeout": 30.0, "target_epsilon": 1.0, "secure_aggregation": False}


def _errors(harness, conn):
    return [x for x in harness.take(conn) if isinstance(x, m.Error)]


def _start(harness, analyst, spec=None, req=1, **config):
    harness.send(analyst, m.StartRun(req=req, spec=spec or harness.SPEC, config={**OK, **config}))
    return harness.take(analyst)


@pytest.mark.parametrize(
    ("spec", "config", "words"),
    [
        (HUGE, {}, "parameters"),
        (None, {"rounds": 10_000, "local_steps": 100_000}, "rounds"),
        (None, {"rounds": 1000, "local_steps": 1000}, "rounds * local_steps"),
        (None, {"noise_multiplier": 0.02, "target_epsilon": None}, "noise_multiplier"),
        (None, {"rounds": 100, "local_steps": 950, "noise_multiplier": 0.3, "target_epsilon": None}, "accounting"),
        (None, {"round_timeout": 1e12}, "round_timeout"),
        (None, {"learning_rate": 1e38}, "learning_rate"),
        (None, {"batch_size": 1 << 20}, "batch_size"),
        (None, {"clip_norm": 1e30}, "clip_norm"),
        (None, {"target_epsilon": 1e9}, "target_epsilon"),
        (None, {"delta": 0.5}, "delta"),
        (None, {"server_optimizer": "fedadam", "secagg_range": 1e12}, "secagg_range"),
    ],
)
def test_unbounded_requests_are_refused_before_anything_is_built(harness, spec, config, words):
    analyst, _ = harness.setup_room(1)
    built = []
    harness.machine._init_params = lambda s, seed: built.append(s)
    (err,) = _errors_of(_start(harness, analyst, spec=spec, **config))
    assert err.req == 1 and not err.fatal and words in err.message
    assert built == [] and harness.store.runs() == []
    assert not (harness.store.state_dir / "checkpoints").exists()
    assert "run_requested" not in [r["kind"] for r in harness.audit.records]


def _errors_of(frames):
    return [x for x in frames if isinstance(x, m.Error)]


def test_checkpoint_that_cannot_be_read_back_is_refused_up_front():
    # 3.9M parameters pass max_params, but with fedadam state the checkpoint is over a 32 MiB reader limit
    spec = mlp([1000], 10, hidden=[3900]).to_dict()
    config = {**OK, "server_optimizer": "fedadam"}
    check_run_request(spec, {**OK, "server_optimizer": "fedavg"}, max_frame=64 << 20, max_checkpoint=32 << 20)
    with pytest.raises(ConfigError, match="checkpoint"):
        check_run_request(spec, config, max_frame=64 << 20, max_checkpoint=32 << 20)
    with pytest.raises(ConfigError, match="frame"):
        check_run_request(spec, {**OK, "server_optimizer": "fedavg"}, max_frame=8 << 20, max_checkpoint=32 << 20)


def test_store_writer_refuses_what_its_reader_would_call_corrupt(tmp_path):
    store = Store.open(tmp_path)
    store.max_checkpoint_bytes = 1 << 20
    params = {"w": np.zeros(300_000, np.float32)}  # 1.2 MB
    with pytest.raises(StateError, match="too large"):
        store.save_checkpoint("run-1", 0, params, {"count": np.zeros((), np.int64)})
    assert not store.has_checkpoint("run-1", 0)
    small = {"w": np.ones(1000, np.float32)}
    store.save_checkpoint("run-1", 0, small, {"count": np.zeros((), np.int64)})
    np.testing.assert_array_equal(store.load_checkpoint("run-1", 0)[0]["w"], small["w"])


def test_operator_limits_file(tmp_path):
    (tmp_path / "limits.toml").write_text("[run]\nmax_rounds = 3\nmax_round_timeout = 5.0\n")
    store = Store.open(tmp_path)
    limits = store.run_limits()
    assert (limits.max_rounds, limits.max_round_timeout, limits.max_params) == (3, 5.0, RunLimits().max_params)
    with pytest.raises(ConfigError, match="rounds"):
        RunConfig.from_dict({"rounds": 4}, limits=limits)
    (tmp_path / "limits.toml").write_text("[run]\nmax_roundz = 3\n")
    with pytest.raises(ConfigError, match="unknown run limits"):
        store.run_limits()


def test_amplification_frame_is_refused_after_bounded_work():
    n = 8 * 1024 * 1024 - 64
    frame = msgpack.packb({"v": m.VERSION, "t": "start_run", "req": 1, "config": {}, "spec": {"layers": []}})
    # 8 MiB of empty arrays, as one big array and as many moderate ones
    one = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    many = msgpack.packb({"a": [[]] * (MAX_DECODED_ITEMS // 2), "b": [[]] * (MAX_DECODED_ITEMS // 2)})
    for data in (one, many):
        with pytest.raises(FrameTooLargeError):
            unpack(data)
    assert unpack(frame)["t"] == "start_run"


def test_amplification_frame_closes_only_that_connection(harness):
    analyst, sites = harness.setup_room(1)
    bomb = msgpack.packb(
        {"v": m.VERSION, "t": "start_run", "req": 1, "config": {}, "spec": {"layers": [[]] * (2 * MAX_DECODED_ITEMS)}}
    )
    harness.feed(analyst, bomb)
    assert analyst in harness.closed and harness.closed[analyst].code == 1009
    other = harness.connect("analyst")
    assert isinstance(harness.take(other)[0], m.Welcome)


def test_malformed_plan_is_refused_once_and_the_room_keeps_scheduling(harness, caplog):
    analyst, sites = harness.setup_room(2)
    frames = _start(harness, analyst)
    (created,) = [x for x in frames if isinstance(x, m.RunCreated)]
    run_id = created.run_id
    good, bad = sites["site-a"], sites["site-b"]
    for conn in sites.values():
        assert any(isinstance(x, m.RunOffer) for x in harness.take(conn))
    with caplog.at_level(logging.WARNING, "fedjax_room.coordinator"):
        harness.send(bad, m.RunAccept(run_id=run_id, plan={"min_sites": "x", "weight": 100}))
        harness.send(bad, m.RunAccept(run_id=run_id, plan={"min_sites": "x", "weight": 100}))
        harness.send(good, m.RunAccept(run_id=run_id, plan={"min_sites": 1, "weight": 100}))
        for _ in range(20):
            harness.tick(0.05)
    (err,) = _errors(harness, bad)
    assert err.reason == "bad_plan" and not err.fatal and bad not in harness.closed
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 1
    assert not [r for r in caplog.records if r.exc_info]
    (start,) = [x for x in harness.take(good) if isinstance(x, m.RoundStart)]
    harness.send(good, harness.update(run_id, 1, 1.0))
    (start,) = [x for x in harness.take(good) if isinstance(x, m.RoundStart)]
    assert start.phase == "eval"
    harness.send(good, harness.metrics(run_id, 1))
    assert harness.store.run(run_id).status == "finished"
    assert harness.store.run_sites(run_id)["site-b"]["state"] == "refused"


def test_a_stored_bad_plan_or_request_never_makes_the_tick_raise(harness):
    analyst, sites = harness.setup_room(1)
    run_id = [x for x in _start(harness, analyst) if isinstance(x, m.RunCreated)][0].run_id
    harness.store.set_run_site(run_id, "site-a", "accepted", plan={"min_sites": "x"})
    harness.store.set_run_status(run_id, "running")
    # a second run whose stored config is outside the (now lower) bounds
    run2 = [x for x in _start(harness, analyst, req=2, rounds=2) if isinstance(x, m.RunCreated)][0].run_id
    machine = CoordinatorMachine(
        harness.store, audit=MemoryAudit(), init_params=lambda s, k: None, limits=RunLimits(max_rounds=1)
    )
    machine.start(0.0)
    for t in range(1, 30):
        machine.tick(t * 10.0)  # never raises
    assert harness.store.run(run2).status == "failed"
    assert "rounds" in harness.store.run(run2).error["message"]


def _created(frames):
    return [x for x in frames if isinstance(x, m.RunCreated)][0].run_id


def test_analyst_cancels_own_run_sites_get_run_end_and_others_cannot(harness):
    analyst, sites = harness.setup_room(1)
    harness.enroll("analyst-b", "analyst")
    other = harness.connect("analyst-b")
    harness.take(other)
    run_id = _created(_start(harness, analyst, round_timeout=3600.0))
    site = sites["site-a"]
    harness.take(site)
    harness.send(site, m.RunAccept(run_id=run_id, plan={"min_sites": 1, "weight": 100}))
    assert any(isinstance(x, m.RoundStart) for x in harness.take(site))  # training; the site goes silent
    harness.send(other, m.CancelRun(req=7, run_id=run_id, message="mine now"))
    (err,) = _errors(harness, other)
    assert err.reason == "not_your_run" and harness.store.run(run_id).status == "running"
    queued = _created(_start(harness, analyst, req=3))
    harness.send(analyst, m.CancelRun(req=8, run_id=run_id, message="wrong data"))
    replies = harness.take(analyst)
    assert any(isinstance(x, m.RunCancelled) and x.req == 8 for x in replies)
    run = harness.store.run(run_id)
    assert run.status == "failed" and run.error["reason"] == "cancelled" and "wrong data" in run.error["message"]
    ends = [x for x in harness.take(site) if isinstance(x, m.RunEnd)]
    assert [e.run_id for e in ends] == [run_id]
    cancelled = [r for r in harness.audit.records if r["kind"] == "run_cancelled"]
    assert cancelled[0]["fields"] == {"run_id": run_id, "by": "analyst analyst", "message": "wrong data"}
    assert harness.machine.active_run == queued  # the room moved on at once
    harness.send(analyst, m.CancelRun(req=9, run_id=run_id))
    (err,) = _errors(harness, analyst)
    assert "already" in err.message


def test_operator_cancels_any_run_from_the_store(harness):
    analyst, sites = harness.setup_room(1)
    run_id = _created(_start(harness, analyst))
    harness.store.request_cancel(run_id, "operator", "maintenance")
    harness.tick(0.5)
    run = harness.store.run(run_id)
    assert run.status == "failed" and run.error["reason"] == "cancelled"
    assert any(isinstance(x, m.RunEnd) for x in harness.take(sites["site-a"]))
    assert harness.store.pending_cancels() == []
    assert [r["fields"]["by"] for r in harness.audit.records if r["kind"] == "run_cancelled"] == ["operator"]


def test_get_audit_reads_the_log_once_not_per_request(harness):
    analyst, _ = harness.setup_room(1)
    calls = []
    sink = harness.machine.audit.sink
    original = sink.tail
    sink.tail = lambda last: calls.append(last) or original(last)
    for req in range(5):
        harness.send(analyst, m.GetAudit(req=req, last=3))
        _start(harness, analyst, req=100 + req)  # more records in between
    harness.send(analyst, m.GetAudit(req=50, last=3))
    replies = [x for x in harness.take(analyst) if isinstance(x, m.AuditReply)]
    assert len(calls) == 1
    shown = [{k: v for k, v in r.items() if k not in ("index", "prev", "sig")} for r in harness.audit.records[-3:]]
    assert replies[-1].records == shown  # an analyst's records carry no chain links (protocol/requests.py)
