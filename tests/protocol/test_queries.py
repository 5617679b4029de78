"""Query routing on the room's engine (LoopbackRoom: the real coordinator and site machines, frames as bytes).

Plain queries come back per site; secure ones are one SecAgg round whose coordinator holds masked vectors only,
and whose released sum carries the full discrete Laplace noise with a site dropped.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.data import load_builtin, partition
from fedjax_room.errors import ConfigError, RefusedError, error_from_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.query_spec import QuerySpec, dlaplace_variance
from fedjax_room.secagg import MaskedInput
from fedjax_room.sim.loopback import LoopbackRoom
from fedjax_room.site.queries import true_vector

ALL = ["count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing"]
QUERIES = {"allowed": ALL, "max_epsilon": 3.0, "epsilon_share": 1.0}
BINS = [i / 4 for i in range(65)]  # 64 bins over [0, 16]


def _room(tmp_path, policies=None, **kwargs):
    full = load_builtin("digits", seed=0)
    parts = partition(full, 3, seed=0)
    sites = {}
    for i, part in enumerate(parts):
        name = f"site-{'abc'[i]}"
        train, heldout = part.split(0.2, seed=0)
        policy = {"epsilon_cap": 1000.0, "queries": QUERIES, **(policies or {}).get(name, {})}
        sites[name] = (train, heldout, policy)
    return LoopbackRoom(tmp_path, sites, seed=0, **kwargs)


def ask(room: LoopbackRoom, query: dict, *, ticks: int = 100) -> m.Message:
    """Send a query as the analyst and run the clock until its reply (or error) comes."""
    req = room._next_req()
    seen = len(room.analyst_inbox)
    room._route(room.coord.receive(room.analyst, m.encode(m.Query(req=req, query=query)), room.now), None)
    room.pump()
    for _ in range(ticks):
        for x in room.analyst_inbox[seen:]:
            if getattr(x, "req", None) == req:
                return x
        room.tick(5.0)
    raise AssertionError("no reply to the query")


def _records(room, names):
    return [d for n in names for d in room.sites[n]["agent"].queries.datasets]


def test_a_plain_query_comes_back_per_site(tmp_path):
    with _room(tmp_path) as room:
        reply = ask(room, {"kind": "count_by_label", "epsilon": 1.0})
        assert isinstance(reply, m.QueryReply), reply
        r = reply.result
        assert r["sites"] == ["site-a", "site-b", "site-c"] and not r["secure"] and r["noise_shares"] == 3.0
        assert r["total"] == pytest.approx(np.sum([r["per_site"][s] for s in r["sites"]], axis=0))
        subset = ask(room, {"kind": "count", "epsilon": 0.5, "sites": ["site-b"]}).result
        assert subset["sites"] == ["site-b"] and list(subset["per_site"]) == ["site-b"]
        kinds = [rec["kind"] for rec in room.audit.records if str(rec.get("fields", {}).get("query_id", ""))]
        assert kinds.count("query_requested") == 2 and kinds.count("query_answered") == 2


def test_bad_queries_are_refused_with_a_typed_error_and_the_room_serves_on(tmp_path):
    with _room(tmp_path) as room:
        for query, cls, match in [
            ({"kind": "histogram", "feature": "pixel_0_0", "epsilon": 1.0}, ConfigError, "bins"),
            ({"kind": "count", "epsilon": 1.0, "sites": ["site-z"]}, ConfigError, "site-z"),
            ({"kind": "count", "epsilon": 1.0, "sites": ["site-a"], "secure": True}, RefusedError, "two sites"),
        ]:
            reply = ask(room, query)
            assert isinstance(reply, m.Error) and not reply.fatal
            with pytest.raises(cls, match=match):
                raise error_from_dict(reply.error_dict())
        assert isinstance(ask(room, {"kind": "count", "epsilon": 1.0}), m.QueryReply)
        assert all(s["agent"].ledger.summary()["releases"] == 1 for s in room.sites.values())


def test_a_replayed_query_id_is_refused_by_the_site(tmp_path):
    with _room(tmp_path, keep_frames=True) as room:
        reply = ask(room, {"kind": "count", "epsilon": 1.0, "sites": ["site-a"]})
        qid = reply.result["query_id"]
        ledger = room.sites["site-a"]["agent"].ledger
        events = list(ledger.events)
        # the coordinator (or anyone replaying its frames) asks the same query again, then another with its id
        for query in ({"kind": "count", "epsilon": 1.0}, {"kind": "count_by_label", "epsilon": 1.0}):
            ask_again = m.QueryAsk(query_id=qid, query=QuerySpec.from_dict(query).to_dict())
            room._queue.append(("site", "site-a", m.encode(ask_again)))
            room.pump()
        refusals = [msg for site, msg in room.received if isinstance(msg, m.QueryRefuse) and msg.query_id == qid]
        assert [r.error["reason"] for r in refusals] == ["query_replay", "query_replay"]
        assert ledger.events == events


def test_a_silent_site_is_reported_after_the_deadline(tmp_path):
    with _room(tmp_path) as room:
        room.kill("site-c")
        result = ask(room, {"kind": "count", "epsilon": 1.0, "sites": ["site-a", "site-c"]}).result
        assert result["sites"] == ["site-a"] and result["refused"]["site-c"]["reason"] == "offline"


def test_a_site_that_requires_it_makes_the_query_secure(tmp_path):
    policies = {"site-b": {"queries": {**QUERIES, "require_secure": True}}}
    with _room(tmp_path, policies=policies) as room:
        r = ask(room, {"kind": "count", "epsilon": 1.0}).result
        assert r["secure"] and r["per_site"] == {} and r["sites"] == ["site-a", "site-b", "site-c"]
        # asked of that site alone, a query cannot be summed: refused, nothing spent
        reply = ask(room, {"kind": "count", "epsilon": 1.0, "sites": ["site-b"]})
        assert isinstance(reply, m.Error) and reply.reason == "too_few_sites"
        assert all(s["agent"].ledger.summary()["releases"] == 1 for s in room.sites.values())


def _secure_query(room, query, watch):
    """Ask a secure query; ``watch(site, msg)`` sees every frame the coordinator received."""
    room.after_site_frame = watch
    try:
        return ask(room, query)
    finally:
        room.after_site_frame = None


def test_the_coordinator_sees_masked_vectors_only(tmp_path):
    with _room(tmp_path, keep_frames=True) as room:
        query = {"kind": "count_by_label", "epsilon": 1.0, "secure": True}
        sums = []

        def watch(site, msg):
            if isinstance(msg, m.SecAgg) and msg.body.get("t") == MaskedInput.type:
                q = next(iter(room.coord._queries.values()))
                sums.append(np.asarray(q.server._sum).copy())  # the coordinator's state: a running masked sum

        reply = _secure_query(room, query, watch)
        assert isinstance(reply, m.QueryReply), reply
        r = reply.result
        qid = r["query_id"]
        assert r["secure"] and r["per_site"] == {} and r["sites"] == ["site-a", "site-b", "site-c"]
        # what each site sent: an accounting-only answer, and its vector masked
        answers = [msg for _, msg in room.received if isinstance(msg, m.QueryAnswer) and msg.query_id == qid]
        assert len(answers) == 3 and all(a.values == [] for a in answers)
        masked = {
            s: msg.body["data"]
            for s, msg in room.received
            if isinstance(msg, m.SecAgg) and msg.run_id == qid and msg.body.get("t") == MaskedInput.type
        }
        assert sorted(masked) == ["site-a", "site-b", "site-c"]
        truth = true_vector(QuerySpec.from_dict(query), _records(room, ["site-a", "site-b", "site-c"]))
        for site, data in masked.items():
            ring = np.load(room.tmp_dir / "sites" / site / "releases" / "@queries" / qid / "0-train.ring.npy")
            assert bytes(data) != ring.tobytes()  # masked, not the site's (already noised) vector
            assert np.abs(np.frombuffer(bytes(data), np.uint64).view(np.int64)).max() > 2**40  # looks uniform
        for partial in sums[:-1]:  # before the last input the running sum is still masked noise
            assert np.abs(partial.view(np.int64)).max() > 2**40
        assert np.abs(np.asarray(r["total"]) - truth).max() < 40  # the unmasked sum: truth plus the noise
        records = [
            rec
            for rec in room.audit.records
            if rec.get("fields", {}).get("query_id") == qid or rec.get("fields", {}).get("run_id") == qid
        ]
        kinds = sorted({rec["kind"] for rec in records})
        assert kinds == ["masked_input_received", "query_answered", "query_requested"]
        for rec in records:  # no value of any site, nor of the sum, is in the coordinator's audit
            assert set(rec["fields"]) <= {
                "query_id",
                "run_id",
                "round",
                "site",
                "digest",
                "analyst",
                "query",
                "sites",
                "secure",
                "refused",
                "released",
            }
        assert qid not in room.coord._queries  # nothing of the round is kept once it is released


def test_a_secure_sum_carries_the_full_noise_with_a_site_dropped(tmp_path):
    # site-c is in every round's roster (it joins the secure aggregation) but refuses the query (epsilon too large
    # for its policy): a dropout of each round. min_clients is 2, so the two survivors' shares are the full noise.
    policies = {"site-c": {"queries": {**QUERIES, "max_epsilon": 0.1}}}
    with _room(tmp_path, policies=policies) as room:
        query = {"kind": "histogram", "feature": "pixel_3_3", "bins": BINS, "epsilon": 0.5, "secure": True}
        truth = true_vector(QuerySpec.from_dict(query), _records(room, ["site-a", "site-b"]))
        errors = []
        for _ in range(40):
            r = ask(room, query).result
            assert r["sites"] == ["site-a", "site-b"] and r["refused"]["site-c"]["reason"] == "query_epsilon"
            assert r["min_sites"] == 2 and r["noise_shares"] == 1.0
            errors.append(np.asarray(r["total"]) - truth)
        errors = np.concatenate(errors)
        full = float(dlaplace_variance(2.0))  # the central mechanism's: scale 1 / 0.5
        assert abs(errors.mean()) < 0.3
        assert 0.8 < errors.var() / full < 1.25  # not the 2/3 of it that two of three shares would carry


def test_a_site_lost_mid_round_leaves_a_released_sum_with_full_noise(tmp_path):
    with _room(tmp_path) as room:
        killed = []

        def watch(site, msg):
            if site == "site-c" and isinstance(msg, m.SecAgg) and not killed:
                killed.append(site)
                room.kill("site-c")  # its connection closes after its first secure-aggregation message

        reply = _secure_query(room, {"kind": "count_by_label", "epsilon": 1.0, "secure": True}, watch)
        assert killed == ["site-c"] and isinstance(reply, m.QueryReply), reply
        r = reply.result
        assert r["sites"] == ["site-a", "site-b"] and r["min_sites"] == 2 and r["noise_shares"] == 1.0
        truth = true_vector(QuerySpec.from_dict(r["query"]), _records(room, ["site-a", "site-b"]))
        assert np.abs(np.asarray(r["total"]) - truth).max() < 40
