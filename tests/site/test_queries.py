"""A site's query answers: policy checks first (nothing spent), then OpenDP noise, the ledger event, the release."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema
from fedjax_room.dp.accounting import Accountant, event_to_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.query_spec import QuerySpec, dlaplace_variance, layout
from fedjax_room.protocol.query_tasks import SecureQuery, SecureQueryRelease
from fedjax_room.secagg.dlaplace import DistributedDiscreteLaplace, polya_share
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.policy import Policy
from fedjax_room.site.queries import QueryAnswerer, query_event, query_key, true_vector
from fedjax_room.site.releases import ReleaseStore

ALL = ["count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing"]
SCHEMA = Schema(features=("age", "sex"), feature_shape=(2,), label="y", classes=("no", "yes"))


def _data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(0, 90, n), rng.integers(0, 2, n)], axis=1).astype(np.float32)
    return Dataset(x, rng.integers(0, 2, n).astype(np.int32), SCHEMA)


def _answerer(tmp_path, queries=None, cap=50.0, data=None):
    if queries is None:
        queries = {"allowed": ALL, "max_epsilon": 5.0, "epsilon_share": 1.0}
    policy = Policy.from_dict({"epsilon_cap": cap, "queries": queries})
    ledger = Ledger.open(tmp_path / "ledger.json", epsilon_cap=cap, delta=1e-5)
    audit: list[tuple[str, dict]] = []
    answerer = QueryAnswerer(
        name="site-a",
        datasets=data or [_data(300, 0), _data(100, 1)],
        policy=policy,
        ledger=ledger,
        releases=ReleaseStore(tmp_path, "site-a"),
        audit=lambda kind, **fields: audit.append((kind, fields)),
    )
    return answerer, ledger, audit


def _ask(query: dict, qid: str = "q-1") -> m.QueryAsk:
    return m.QueryAsk(query_id=qid, query=QuerySpec.from_dict(query).to_dict())


def test_true_vector_counts_what_the_query_declares():
    data = [_data(300, 0), _data(100, 1)]
    x = np.concatenate([d.x for d in data])
    y = np.concatenate([d.y for d in data])
    spec = QuerySpec.from_dict({"kind": "histogram", "feature": "age", "bins": [0, 30, 60, 90], "epsilon": 1})
    assert true_vector(spec, data).tolist() == np.histogram(x[:, 0], [0, 30, 60, 90])[0].tolist()
    spec = QuerySpec.from_dict({"kind": "count", "epsilon": 1, "by": "sex", "keys": [0, 1, 7]})
    assert true_vector(spec, data).tolist() == [int((x[:, 1] == 0).sum()), int((x[:, 1] == 1).sum()), 0]
    spec = QuerySpec.from_dict({"kind": "count_by_label", "epsilon": 1})
    assert true_vector(spec, data).tolist() == np.bincount(y, minlength=2).tolist()
    spec = QuerySpec.from_dict({"kind": "sum", "feature": "age", "bounds": [0, 50], "epsilon": 1})
    assert true_vector(spec, data)[0] / spec.fixed_scale == pytest.approx(np.clip(x[:, 0], 0, 50).sum(), rel=1e-4)


def test_a_query_spends_exactly_its_documented_event(tmp_path):
    answerer, ledger, audit = _answerer(tmp_path)
    query = {"kind": "mean", "feature": "age", "bounds": [0, 100], "epsilon": 1.0, "by": "sex", "keys": [0, 1]}
    before = Accountant("pld").compose(ledger.events[0]) if ledger.events else Accountant("pld")
    out = answerer.answer(_ask(query))
    assert isinstance(out, m.QueryAnswer) and len(out.values) == 4
    spec = QuerySpec.from_dict(query)
    event = event_to_dict(query_event(layout(spec, classes=2)))
    assert event == {
        "type": "composed",
        "events": [
            {"type": "discrete_laplace", "noise_parameter": 0.5, "sensitivity": 1},
            {"type": "discrete_laplace", "noise_parameter": 0.5, "sensitivity": 1},
        ],
    }
    assert ledger.events == [event] and ledger.tags == [query_key("q-1")]
    assert out.ledger_epsilon == pytest.approx(before.compose(event).epsilon(1e-5))
    assert out.ledger_epsilon == pytest.approx(1.0, abs=1e-3)  # pure epsilon-DP: one query of 1 costs 1
    assert [k for k, _ in audit] == ["query_released"]
    # a replayed query id is refused, never answered again, and nothing more is spent
    again = answerer.answer(_ask(query))
    assert isinstance(again, m.QueryRefuse) and again.error["reason"] == "query_replay"
    assert len(ledger.events) == 1


@pytest.mark.parametrize(
    ("queries", "query", "reason"),
    [
        ({"allowed": ["count"]}, {"kind": "mean", "feature": "age", "bounds": [0, 1], "epsilon": 1}, "query_kind"),
        ({}, {"kind": "count", "epsilon": 1}, "query_kind"),  # the default policy answers no query
        ({"allowed": ["count"], "max_epsilon": 0.5}, {"kind": "count", "epsilon": 1}, "query_epsilon"),
        ({"allowed": ["count"], "min_epsilon": 0.5}, {"kind": "count", "epsilon": 0.1}, "query_epsilon"),
        ({"allowed": ["count"], "require_secure": True}, {"kind": "count", "epsilon": 1}, "secure_aggregation"),
        (
            {"allowed": ["histogram"], "max_bins": 2},
            {"kind": "histogram", "feature": "age", "bins": [0, 1, 2, 3], "epsilon": 1},
            "query_size",
        ),
        ({"allowed": ["sum"]}, {"kind": "sum", "feature": "income", "bounds": [0, 1], "epsilon": 1}, "schema"),
        ({"allowed": ["count"]}, {"kind": "count", "epsilon": 1, "by": "sex", "keys": ["m"]}, "schema"),
        (
            {"allowed": ["count"], "max_epsilon": 3, "epsilon_share": 0.1},
            {"kind": "count", "epsilon": 3},
            "query_budget",
        ),
    ],
)
def test_refusals_are_typed_and_spend_nothing(tmp_path, queries, query, reason):
    answerer, ledger, audit = _answerer(tmp_path, queries=queries, cap=2.0)
    out = answerer.answer(_ask(query))
    assert isinstance(out, m.QueryRefuse), out
    assert out.error["reason"] == reason and out.error["code"] == "policy_violation"
    assert ledger.events == [] and audit == [("query_refused", {"query_id": "q-1", "reason": reason})]


def test_training_and_queries_spend_from_one_cap(tmp_path):
    import dp_accounting as dpa

    answerer, ledger, audit = _answerer(tmp_path, queries={"allowed": ["count"], "epsilon_share": 1.0}, cap=2.0)
    ledger.commit("run-1/1/train", dpa.GaussianDpEvent(3.0), {"round": 1, "phase": "train"}, run_delta=1e-5)
    spent = ledger.epsilon()
    assert 1.0 < spent < 2.0
    out = answerer.answer(_ask({"kind": "count", "epsilon": 1.0}))
    assert isinstance(out, m.QueryRefuse) and out.error["reason"] == "epsilon_cap"
    assert len(ledger.events) == 1 and ledger.epsilon() == spent
    assert isinstance(answerer.answer(_ask({"kind": "count", "epsilon": 0.1}, "q-2")), m.QueryAnswer)


def test_a_malformed_query_from_the_coordinator_is_refused(tmp_path):
    answerer, ledger, _ = _answerer(tmp_path)
    out = answerer.answer(m.QueryAsk(query_id="q-9", query={"kind": "histogram", "feature": "age", "epsilon": 1}))
    assert isinstance(out, m.QueryRefuse) and out.error["reason"] == "bad_query" and ledger.events == []
    # a query asked secure that came without its secure-aggregation round is not answered in the clear
    out = answerer.answer(_ask({"kind": "count", "epsilon": 1, "secure": True}))
    assert isinstance(out, m.QueryRefuse) and out.error["reason"] == "secure_aggregation" and ledger.events == []


def test_plain_answers_are_unbiased_with_the_stated_noise(tmp_path):
    data = [_data(200, 3)]
    answerer, ledger, _ = _answerer(tmp_path, data=data)
    spec = {"kind": "histogram", "feature": "age", "bins": [0.9 * i for i in range(101)], "epsilon": 0.5}
    truth = true_vector(QuerySpec.from_dict(spec), data)
    errors = np.array([np.asarray(answerer.answer(_ask(spec, f"q-{i}")).values) - truth for i in range(30)])
    assert abs(errors.mean()) < 0.3
    assert errors.var() == pytest.approx(float(dlaplace_variance(2.0)), rel=0.15)
    assert len(ledger.events) == 30


def test_secure_answers_leave_only_a_ring_vector(tmp_path):
    answerer, ledger, _ = _answerer(tmp_path)
    ask = _ask({"kind": "count_by_label", "epsilon": 1, "secure": True})
    setup = m.SecAggSetup(run_id="q-1", round=1, config={}, id=1, fraction=1.0)
    out = answerer.answer(SecureQuery(ask=ask, setup=setup, min_sites=2))
    assert isinstance(out, SecureQueryRelease)
    assert out.answer.values == [] and out.vector.dtype == np.uint64 and out.vector.shape == (2,)
    assert len(ledger.events) == 1


def test_polya_shares_of_min_sites_sum_to_the_full_discrete_laplace():
    rng = np.random.default_rng(5)
    scales = np.full(100_000, 2.0)
    full = float(dlaplace_variance(2.0))
    two_of_two = polya_share(scales, 2, rng) + polya_share(scales, 2, rng)
    assert two_of_two.var() == pytest.approx(full, rel=0.04)
    t = math.exp(-0.5)
    assert np.mean(two_of_two == 0) == pytest.approx((1 - t) / (1 + t), abs=0.01)  # DLap's P(0)
    three_of_two = two_of_two + polya_share(scales, 2, rng)  # a site more: more noise, never less
    assert three_of_two.var() == pytest.approx(1.5 * full, rel=0.04)
    mech = DistributedDiscreteLaplace((2.0, 2.0), 2)
    total = mech.encode(np.array([5, -7])) + mech.encode(np.array([1, 2]))
    assert np.abs(mech.decode(total) - np.array([6, -5])).max() < 40
