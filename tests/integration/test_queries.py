"""DP exploration queries on the demo room (real coordinator and site processes on loopback).

The test wrote the sites' data (``start_room`` partitions digits into each site's folder), so it knows every true
answer: each query kind's released values fall inside their stated 95% intervals in at least 90% of the trials,
and each site's ledger grows by exactly the documented event.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.data import load_dataset
from fedjax_room.dp.accounting import Accountant, event_to_dict
from fedjax_room.protocol.query_spec import QuerySpec, dlaplace_variance, layout
from fedjax_room.site.queries import query_event, query_key

pytestmark = pytest.mark.slow

ALL = ["count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing"]
FEATURE = "pixel_3_3"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from fedjax_room.sim.demo import start_room

    state = tmp_path_factory.mktemp("queries-room")
    policy = {"epsilon_cap": 5000.0, "queries": {"allowed": ALL, "max_epsilon": 3.0, "epsilon_share": 1.0}}
    # site-c answers queries of epsilon up to 2 only: a query of 2.5 makes it drop out of a secure round
    policies = {"site-c": {**policy, "queries": {**policy["queries"], "max_epsilon": 2.0}}}
    with start_room(sites=3, dataset="digits", state_dir=state, policy=policy, policies=policies) as room:
        client = room.connect()
        try:
            yield room, client
        finally:
            client.close()


def _records(room):
    out = {}
    for name in room.site_names:
        parts = [load_dataset(room.site_dir(name) / f) for f in ("train.npz", "heldout.npz")]
        x = np.concatenate([p.x.reshape(len(p), -1) for p in parts])
        y = np.concatenate([p.y for p in parts])
        out[name] = (x, y, parts[0].schema)
    return out


def _truth(kind: str, records, **q) -> np.ndarray:
    xs = np.concatenate([r[0] for r in records.values()])
    ys = np.concatenate([r[1] for r in records.values()])
    schema = next(iter(records.values()))[2]
    col = xs[:, list(schema.features).index(FEATURE)] if kind not in ("count", "count_by_label") else None
    if kind == "count":
        return np.bincount(ys, minlength=10).astype(float)[q["keys"]]
    if kind == "count_by_label":
        return np.bincount(ys, minlength=10).astype(float)
    if kind == "histogram":
        bins = np.asarray(q["bins"], float)
        idx = np.clip(np.searchsorted(bins, col, side="right") - 1, 0, len(bins) - 2)
        return np.bincount(idx, minlength=len(bins) - 1).astype(float)
    if kind == "sum":
        lo, hi = q["bounds"]
        return np.array([np.clip(col[ys == k], lo, hi).sum() for k in q["keys"]])
    if kind == "mean":
        lo, hi = q["bounds"]
        return np.array([np.clip(col[ys == k], lo, hi).mean() for k in q["keys"]])
    if kind == "quantiles":
        lo, hi = q["bounds"]
        return np.quantile(np.clip(col, lo, hi), q["quantiles"])
    return np.array([0.0, len(ys)])  # missing: digits has no missing value


DIGITS = list(range(10))
#: (kind, feature, options, trials): 100 released values per kind or more (200 where the interval is not exact)
CASES = [
    ("count", None, {"by": "digit", "keys": DIGITS}, 10),
    ("count_by_label", None, {}, 10),
    ("histogram", FEATURE, {"bins": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17]}, 7),
    ("sum", FEATURE, {"bounds": [0, 16], "by": "digit", "keys": DIGITS}, 20),
    ("mean", FEATURE, {"bounds": [0, 16], "by": "digit", "keys": DIGITS}, 10),
    ("quantiles", FEATURE, {"bounds": [0, 16], "quantiles": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}, 20),
    ("missing", FEATURE, {}, 50),
]


@pytest.mark.parametrize(("kind", "feature", "options", "trials"), CASES, ids=[c[0] for c in CASES])
def test_each_kind_is_within_its_interval_of_the_truth(demo, kind, feature, options, trials):
    room, client = demo
    records = _records(room)
    truth = _truth(kind, records, **options)
    hits = total = 0
    for _ in range(trials):
        result = client.query(kind, feature, epsilon=1.0, **options)
        lo, hi = result.ci(0.95)
        assert result.kind == kind and result.sites == room.site_names and not result.secure
        assert len(result.labels) == len(truth) == len(result.total)
        hits += int(np.sum((lo <= truth) & (truth <= hi)))
        total += len(truth)
    print(f"{kind}: {hits} of {total} released values inside their 95% intervals")
    assert hits / total >= 0.9, (kind, hits, total)


def test_per_site_and_secure_answers_are_within_their_intervals(demo):
    room, client = demo
    records = _records(room)
    site_truth = {n: np.bincount(r[1], minlength=10).astype(float) for n, r in records.items()}
    truth = sum(site_truth.values())
    hits = total = 0
    for _ in range(6):
        plain = client.query("count_by_label", epsilon=1.0)
        for name in room.site_names:
            lo, hi = plain.site_ci(name, 0.95)
            hits += int(np.sum((lo <= site_truth[name]) & (site_truth[name] <= hi)))
            total += 10
        secure = client.query("count_by_label", epsilon=1.0, secure=True)
        assert secure.secure and secure.per_site == {} and secure.sites == room.site_names
        lo, hi = secure.ci(0.95)
        hits += int(np.sum((lo <= truth) & (truth <= hi)))
        total += 10
    assert hits / total >= 0.9


def _ledger(room, name):
    return json.loads((room.site_dir(name) / "state" / "ledger.json").read_text())


def test_the_ledger_grows_by_exactly_the_documented_event(demo):
    room, client = demo
    options = {"bounds": (0.0, 16.0), "by": "digit", "keys": [0, 1]}
    before = {n: _ledger(room, n) for n in room.site_names}
    result = client.query("mean", FEATURE, epsilon=0.8, **options)
    spec = QuerySpec.from_dict({"kind": "mean", "feature": FEATURE, "epsilon": 0.8, **options})
    event = event_to_dict(query_event(layout(spec, classes=10)))
    for name in room.site_names:
        after = _ledger(room, name)
        old_events = before[name]["accountant"]["events"]
        assert after["accountant"]["events"] == [*old_events, event]
        assert after["tags"] == [*before[name]["tags"], query_key(result.query_id)]
        release = after["releases"][query_key(result.query_id)]
        expected = Accountant("pld")
        for e in after["accountant"]["events"]:
            expected.compose(e)
        assert release["ledger_epsilon"] == pytest.approx(expected.epsilon(1e-5))
    budget = client.budget()  # the room's budget view moves with the queries' spend (one cap for all releases)
    for name in room.site_names:
        release = _ledger(room, name)["releases"][query_key(result.query_id)]
        assert budget[name].epsilon_spent == pytest.approx(release["ledger_epsilon"])
        assert budget[name].runs["queries"] == pytest.approx(release["epsilon"])  # every query so far, composed


def test_a_secure_sum_shows_the_coordinator_masked_vectors_only_and_keeps_full_noise(demo):
    room, client = demo
    records = _records(room)
    bins = [i / 4 for i in range(65)]
    spec = QuerySpec.from_dict({"kind": "histogram", "feature": FEATURE, "bins": bins, "epsilon": 2.5})
    xs = np.concatenate([records[n][0] for n in ("site-a", "site-b")])
    col = xs[:, list(records["site-a"][2].features).index(FEATURE)]
    truth = np.bincount(np.clip(np.searchsorted(bins, col, side="right") - 1, 0, 63), minlength=64)
    errors = []
    for _ in range(20):
        result = client.query("histogram", FEATURE, bins=bins, epsilon=2.5, secure=True)
        assert result.secure and result.per_site == {} and result.sites == ["site-a", "site-b"]
        assert result.refused["site-c"]["reason"] == "query_epsilon"  # in the round's roster, then dropped
        errors.append(result.total - truth)
    errors = np.concatenate(errors)
    full = float(dlaplace_variance(1 / 2.5))  # the central discrete Laplace of the query's epsilon
    assert 0.75 < errors.var() / full < 1.33  # two of three shares would carry two thirds of it
    # the coordinator's record of the last one: digests of masked vectors, who answered; no value
    records_ = [
        r for r in client.audit(200) if result.query_id in (r["fields"].get("query_id"), r["fields"].get("run_id"))
    ]
    kinds = [r["kind"] for r in records_]
    assert kinds.count("query_requested") == 1 and kinds.count("query_answered") == 1
    assert kinds.count("masked_input_received") == 2 and set(kinds) == {
        "query_requested",
        "masked_input_received",
        "query_answered",
    }
    for r in records_:
        assert set(r["fields"]) <= {
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
    assert spec.epsilon == result.epsilon
