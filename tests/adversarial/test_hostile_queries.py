"""A hostile analyst's queries against real processes on loopback: refused with a typed reason, nothing spent.

The analyst bypasses the client's checks (raw ``query`` frames), asks for kinds the sites' policies forbid, for
bins, bounds or keys it did not declare, for too much epsilon, past the queries' share of the cap, and for
oversized answers. Each is refused with its typed reason, no site's ledger moves, and the room answers an honest
query afterwards.
"""

from __future__ import annotations

import json
import math

import pytest

from fedjax_room.errors import ConfigError, FedRoomError, PolicyViolation, RefusedError
from fedjax_room.protocol import messages as m

pytestmark = pytest.mark.slow

POLICY = {
    "epsilon_cap": 10.0,
    "queries": {"allowed": ["count", "count_by_label", "histogram"], "max_epsilon": 1.0, "epsilon_share": 0.25},
}


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    from fedjax_room.sim.demo import start_room

    with start_room(
        sites=3, dataset="digits", state_dir=tmp_path_factory.mktemp("hostile-queries"), policy=POLICY
    ) as r:
        client = r.connect()
        try:
            yield r, client
        finally:
            client.close()


def _ledgers(r):
    return {
        n: json.loads((r.site_dir(n) / "state" / "ledger.json").read_text())
        if (r.site_dir(n) / "state" / "ledger.json").exists()
        else None
        for n in r.site_names
    }


def _raw(client, query):
    """A query frame sent as is, past the client's own checks."""
    return client._ask(lambda req: m.Query(req=req, query=query), resend=False)


RAW = [
    ({"kind": "histogram", "feature": "pixel_3_3", "epsilon": 1.0}, "bins"),
    ({"kind": "mean", "feature": "pixel_3_3", "epsilon": 1.0}, "bounds"),
    ({"kind": "quantiles", "feature": "pixel_3_3", "epsilon": 1.0}, "bounds"),
    ({"kind": "count", "epsilon": 1.0, "by": "digit"}, "keys"),
    ({"kind": "count", "epsilon": 1.0, "by": "digit", "keys": list(range(10_000))}, "keys"),
    ({"kind": "histogram", "feature": "pixel_3_3", "bins": list(range(5000)), "epsilon": 1.0}, "bins"),
    ({"kind": "count", "epsilon": math.nan}, "epsilon"),
    ({"kind": "count", "epsilon": -1.0}, "epsilon"),
    ({"kind": "sum", "feature": "pixel_3_3", "bounds": [0, math.inf], "epsilon": 1.0}, "bounds"),
    ({"kind": "count", "epsilon": 1.0, "timeout": 1e9}, "timeout"),
    ({"kind": "rows", "epsilon": 1.0}, "kind"),
    ({"kind": "count", "epsilon": 1.0, "where": "1=1"}, "unknown"),
]


@pytest.mark.parametrize(("query", "match"), RAW, ids=[f"{q['kind']}-{m}-{i}" for i, (q, m) in enumerate(RAW)])
def test_undeclared_or_unbounded_queries_are_refused_before_any_site_is_asked(room, query, match):
    r, client = room
    before = _ledgers(r)
    with pytest.raises((ConfigError, FedRoomError), match=match) as info:
        _raw(client, query)
    assert isinstance(info.value, ConfigError) or info.value.code in ("config", "protocol")
    assert _ledgers(r) == before


def test_what_the_policy_forbids_is_refused_by_every_site_with_its_reason(room):
    r, client = room
    before = _ledgers(r)
    for call, reason in [
        (lambda: client.query("mean", "pixel_3_3", bounds=(0, 16), epsilon=0.5), "query_kind"),
        (lambda: client.query("count", epsilon=2.0), "query_epsilon"),
        (lambda: client.query("count", epsilon=0.5, by="income", keys=[1]), "schema"),
        (lambda: client.query("histogram", "no_such_pixel", bins=[0, 1], epsilon=0.5), "schema"),
    ]:
        with pytest.raises(RefusedError) as info:
            call()
        assert info.value.reason == reason, info.value
        assert isinstance(info.value, PolicyViolation | RefusedError)
    assert _ledgers(r) == before


def test_past_the_queries_share_of_the_cap_is_refused_and_spends_nothing(room):
    r, client = room
    for _ in range(2):  # 2.5 of the cap of 10 is the queries' share: two queries of 1 fit
        client.query("count", epsilon=1.0)
    before = _ledgers(r)
    with pytest.raises(RefusedError) as info:
        client.query("count", epsilon=1.0)
    assert info.value.reason == "query_budget"
    assert _ledgers(r) == before
    result = client.query("count_by_label", epsilon=0.5)  # what still fits is answered: the room serves on
    assert result.sites == r.site_names and len(result.total) == 10
    assert [s.name for s in client.sites()] == r.site_names
