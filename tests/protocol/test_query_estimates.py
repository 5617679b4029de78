"""Query estimates (``room.estimate_query``) on the room's engine (LoopbackRoom: real coordinator and site machines).

An estimate runs each site's real pre-data checks (the same function its answer calls) and composes the ledger on
a copy: it must predict the real query's ledger and refusals exactly, and spend, store and use up nothing.
"""

from __future__ import annotations

import hashlib

import pytest

from fedjax_room.analyst.results import EstimateReport
from fedjax_room.data import load_builtin, partition
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.query_spec import QuerySpec
from fedjax_room.sim.loopback import LoopbackRoom

ALL = ["count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing"]
QUERIES = {"allowed": ALL, "max_epsilon": 3.0, "epsilon_share": 1.0}


def _room(tmp_path, policies=None, **kwargs):
    parts = partition(load_builtin("digits", seed=0), 3, seed=0)
    sites = {}
    for i, part in enumerate(parts):
        name = f"site-{'abc'[i]}"
        train, heldout = part.split(0.2, seed=0)
        policy = {"epsilon_cap": 1000.0, "queries": QUERIES, **(policies or {}).get(name, {})}
        sites[name] = (train, heldout, policy)
    return LoopbackRoom(tmp_path, sites, seed=0, **kwargs)


def ask(room: LoopbackRoom, query: dict, *, estimate: bool = False, ticks: int = 100) -> m.Message:
    """Send a query (or its estimate) as the analyst and run the clock until its reply (or error) comes."""
    req = room._next_req()
    seen = len(room.analyst_inbox)
    frame = m.encode(m.Query(req=req, query=query, estimate=estimate))
    room._route(room.coord.receive(room.analyst, frame, room.now), None)
    room.pump()
    for _ in range(ticks):
        for x in room.analyst_inbox[seen:]:
            if getattr(x, "req", None) == req:
                return x
        room.tick(5.0)
    raise AssertionError("no reply to the query")


def _estimate(room: LoopbackRoom, query: dict) -> EstimateReport:
    reply = ask(room, query, estimate=True)
    assert isinstance(reply, m.QueryReply) and reply.result["estimate"] is True, reply
    return EstimateReport.from_list(reply.result["sites"])


def _state(room: LoopbackRoom) -> dict[str, str]:
    """Every file of every site's state directory, by digest (ledger, releases, runs)."""
    out = {}
    for name, s in room.sites.items():
        root = s["agent"].state_dir
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[f"{name}/{p.relative_to(root)}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_an_estimate_spends_nothing_and_predicts_the_ledger_after_the_query(tmp_path):
    with _room(tmp_path) as room:
        assert isinstance(ask(room, {"kind": "count", "epsilon": 1.0}), m.QueryReply)  # a ledger to compose onto
        before, audit = _state(room), len(room.audit.records)
        query = {"kind": "histogram", "feature": "pixel_3_3", "bins": [0.0, 4.0, 8.0, 12.0, 16.0], "epsilon": 0.5}
        report = _estimate(room, query)
        assert _state(room) == before and len(room.audit.records) == audit  # nothing spent, stored or audited
        assert list(report) == ["site-a", "site-b", "site-c"] and report.accepting == list(report)
        ledgers = {n: s["agent"].ledger for n, s in room.sites.items()}
        for name, e in report.sites.items():
            assert e.epsilon_planned == 0.5 and e.ledger_epsilon == pytest.approx(ledgers[name].epsilon())
            assert e.ledger_after > e.ledger_epsilon and e.remaining == pytest.approx(1000.0 - e.ledger_after)
        assert "site-a" in report._repr_html_()
        assert isinstance(ask(room, query), m.QueryReply)
        for name, e in report.sites.items():  # composed like the real release: the same ledger after it
            assert ledgers[name].epsilon() == pytest.approx(e.ledger_after, rel=1e-9)


def test_an_estimate_does_not_use_up_the_query_id(tmp_path):
    with _room(tmp_path, keep_frames=True) as room:
        agent = room.sites["site-a"]["agent"]
        query = QuerySpec.from_dict({"kind": "count", "epsilon": 1.0}).to_dict()
        for estimate in (True, True, False):  # the same id estimated twice, then asked for real
            room._queue.append(
                ("site", "site-a", m.encode(m.QueryAsk(query_id="q-0123456789abcdef", query=query, estimate=estimate)))
            )
            room.pump()
        got = [x for site, x in room.received if getattr(x, "query_id", "") == "q-0123456789abcdef"]
        assert [type(x).__name__ for x in got] == ["QueryAnswer"] * 3, got
        assert [x.estimate is not None for x in got] == [True, True, False]
        assert got[0].values == [] and got[0].estimate["accept"] is True and len(got[2].values) == 1
        assert got[2].ledger_epsilon == pytest.approx(got[0].estimate["ledger_after"])
        assert agent.ledger.summary()["releases"] == 1


def test_what_the_estimate_refuses_the_query_refuses_for_the_same_reason(tmp_path):
    policies = {
        "site-b": {"queries": {**QUERIES, "allowed": ["count", "count_by_label"]}},
        "site-c": {"queries": {**QUERIES, "epsilon_share": 0.0015}},  # 1.5 of the cap of 1000 for queries
    }
    with _room(tmp_path, policies=policies) as room:
        assert isinstance(ask(room, {"kind": "count", "epsilon": 1.0}), m.QueryReply)  # site-c: 1.0 of its 1.5
        for query, refusing in [
            ({"kind": "count_by_label", "epsilon": 1.0}, {"site-c": "query_budget"}),
            ({"kind": "missing", "feature": "pixel_0_0", "epsilon": 0.25}, {"site-b": "query_kind"}),
            ({"kind": "count", "epsilon": 5.0}, dict.fromkeys(room.sites, "query_epsilon")),
        ]:
            before = _state(room)
            report = _estimate(room, query)
            assert _state(room) == before
            assert {e.site: e.reason for e in report.refusing} == refusing, report.to_dict()
            assert all(e.option for e in report.refusing)
            reply = ask(room, query)
            refused = reply.result["refused"] if isinstance(reply, m.QueryReply) else None
            if refused is None:  # nobody answered: the typed error names every site's reason
                assert isinstance(reply, m.Error) and reply.error_dict()["reason"] == "query_epsilon"
                continue
            assert {s: r["reason"] for s, r in refused.items()} == refusing
            assert sorted(reply.result["sites"]) == report.accepting
