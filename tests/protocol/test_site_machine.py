"""The site machine: status on connect, jobs deduplicated, bad or out-of-order frames refused."""

from __future__ import annotations

from fedjax_room.protocol import messages as m
from fedjax_room.protocol.actions import Close, Send, Work
from fedjax_room.protocol.site import SiteMachine


def _machine():
    status = m.SiteStatus(schema={}, record_count="~10", policy={}, ledger={})
    return SiteMachine(lambda: status)


def _start(rnd=1, phase="train"):
    return m.encode(m.RoundStart(run_id="run-1", round=rnd, phase=phase, params=b"", cohort=2, timeout=5.0))


def test_status_on_every_connection():
    sm = _machine()
    (send,) = sm.welcomed()
    assert isinstance(m.decode(send.data), m.SiteStatus)
    sm.disconnected()
    assert isinstance(m.decode(sm.welcomed()[0].data), m.SiteStatus)


def test_jobs_are_deduplicated_while_in_flight_and_answered_on_the_new_connection():
    sm = _machine()
    sm.welcomed()
    (work,) = sm.receive(_start())
    assert isinstance(work, Work) and work.kind == "train" and work.key == "run-1/1/train"
    sm.disconnected()
    sm.welcomed()
    assert sm.receive(_start()) == []  # re-asked after a reconnect while still training
    (send,) = sm.work_done(work.key, m.RunEnd(run_id="run-1", status="x", message=""))
    assert isinstance(send, Send)
    assert isinstance(sm.receive(_start())[0], Work)  # done: a later re-ask is a (cheap) replay job


def test_result_while_disconnected_is_dropped():
    sm = _machine()
    sm.welcomed()
    (work,) = sm.receive(_start(phase="eval"))
    sm.disconnected()
    assert sm.work_done(work.key, m.RunEnd(run_id="run-1", status="x", message="")) == []


def test_malformed_and_out_of_order_frames_are_refused():
    for frame in (
        b"\xc1",
        _start(phase="dance"),
        m.encode(m.Challenge(nonce=b"x" * 32, room_id="r", version=1)),
        "text",
    ):
        sm = _machine()
        sm.welcomed()
        actions = sm.receive(frame)
        err = m.decode(actions[0].data)
        assert isinstance(err, m.Error) and err.fatal and err.code == "protocol"
        assert isinstance(actions[1], Close) and not sm.connected


def test_fatal_error_from_coordinator_closes():
    sm = _machine()
    sm.welcomed()
    (close,) = sm.receive(m.encode(m.Error(code="protocol", message="bye", fatal=True)))
    assert isinstance(close, Close)
    sm.welcomed()
    assert sm.receive(m.encode(m.Error(code="protocol", message="late update ignored"))) == []
