"""Each aggregator on hand-made inputs: exact median and trimmed mean, Krum's choice, norm bounding, the registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_room.errors import ConfigError, RoundError
from fedjax_room.robust import (
    AGGREGATORS,
    get_aggregator,
    stack_updates,
    unstack_updates,
)


def _rng_updates(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 7)).astype(np.float32)


@pytest.mark.parametrize("n", [5, 6])
def test_median_is_exact_on_arrays_and_pytrees(n: int) -> None:
    x = _rng_updates(n)
    agg = get_aggregator("median")
    out, state, info = agg.aggregate(x, None, agg.init())
    np.testing.assert_allclose(out, np.median(x, axis=0), rtol=0, atol=1e-7)
    assert int(state.count) == 1
    assert bool(np.all(info.selected))
    # The same numbers as a two-leaf pytree give the same result leaf by leaf.
    tree = {"a": x[:, :3].reshape(n, 3, 1), "b": {"c": x[:, 3:]}}
    out_tree, _, _ = agg.aggregate(tree)
    np.testing.assert_allclose(out_tree["a"].reshape(3), np.median(x[:, :3], axis=0), atol=1e-7)
    np.testing.assert_allclose(out_tree["b"]["c"], np.median(x[:, 3:], axis=0), atol=1e-7)


def test_median_kept_fraction_counts_the_middle_site() -> None:
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    _, _, info = get_aggregator("median").aggregate(x)
    np.testing.assert_array_equal(info.kept, [0.0, 1.0, 0.0])


@pytest.mark.parametrize(("n", "beta"), [(10, 0.2), (7, 0.3), (5, 0.0), (4, 0.49)])
def test_trimmed_mean_is_exact(n: int, beta: float) -> None:
    x = _rng_updates(n, seed=n)
    out, _, info = get_aggregator("trimmed_mean", beta=beta).aggregate(x)
    k = int(np.floor(beta * n))
    expected = np.sort(x, axis=0)[k : n - k].mean(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # Every coordinate keeps n - 2k values: the kept fractions add up to that.
    np.testing.assert_allclose(float(np.sum(info.kept)), n - 2 * k, rtol=1e-6)


def test_zero_weight_means_absent_for_every_rule() -> None:
    x = _rng_updates(6, seed=3)
    x[5] = 1e6  # a wild update with weight 0 must not matter
    w = np.array([1, 2, 3, 4, 5, 0], np.float32)
    for name in AGGREGATORS:
        agg = get_aggregator(name)
        full, _, info = agg.aggregate(x, w)
        ref, _, _ = agg.aggregate(x[:5], w[:5])
        np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-6, err_msg=name)
        assert not bool(info.selected[5]), name
        assert np.isnan(info.scores[5]), name


def test_fedavg_weights_and_mean_ignores_them() -> None:
    x = np.array([[0.0, 0.0], [3.0, 6.0]], np.float32)
    w = np.array([1.0, 2.0])
    fedavg, _, _ = get_aggregator("fedavg").aggregate(x, w)
    mean, _, _ = get_aggregator("mean").aggregate(x, w)
    np.testing.assert_allclose(fedavg, [2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(mean, [1.5, 3.0], rtol=1e-6)


def _clusters(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    honest = 1.0 + 0.05 * rng.normal(size=(7, 5))
    attackers = -3.0 + 0.01 * rng.normal(size=(3, 5))  # colluding: close to each other, far from the rest
    return np.concatenate([attackers, honest]).astype(np.float32)


def test_krum_picks_one_honest_update() -> None:
    x = _clusters()
    out, _, info = get_aggregator("krum", f=3).aggregate(x)
    chosen = np.flatnonzero(info.selected)
    assert len(chosen) == 1 and chosen[0] >= 3
    np.testing.assert_allclose(out, x[chosen[0]])
    assert np.all(info.scores[:3] > info.scores[chosen[0]])


def test_multi_krum_selects_exactly_the_honest_cluster() -> None:
    x = _clusters(seed=1)
    out, _, info = get_aggregator("multi_krum", f=3).aggregate(x)
    np.testing.assert_array_equal(np.asarray(info.selected), [False] * 3 + [True] * 7)
    np.testing.assert_allclose(out, x[3:].mean(axis=0), rtol=1e-5)
    # f left unset: (n - 3) // 2 = 3 for 10 sites, the same choice.
    _, _, auto = get_aggregator("multi_krum").aggregate(x)
    np.testing.assert_array_equal(np.asarray(auto.selected), np.asarray(info.selected))
    # m picks how many to average.
    _, _, two = get_aggregator("multi_krum", f=3, m=2).aggregate(x)
    assert int(np.sum(two.selected)) == 2 and not np.any(np.asarray(two.selected)[:3])


def test_krum_with_too_few_sites_for_f_says_so() -> None:
    with pytest.raises(RoundError, match=r"at least 9 sites"):
        get_aggregator("krum", f=3).aggregate(_rng_updates(8))
    out, _, info = get_aggregator("multi_krum").aggregate(_rng_updates(2))  # auto f: a plain mean
    assert bool(np.all(info.selected))


def test_norm_bound_clips_the_outlier() -> None:
    x = np.zeros((5, 4), np.float32)
    x[:4, 0] = [1.0, 1.0, 1.2, 0.8]
    x[4] = [0.0, 100.0, 0.0, 0.0]
    out, _, info = get_aggregator("norm_bound", factor=1.0).aggregate(x)
    assert float(info.bound) == pytest.approx(1.0)  # median of 0.8, 1, 1, 1.2, 100
    np.testing.assert_allclose(info.kept, [1.0, 1.0, 1 / 1.2, 1.0, 0.01], rtol=1e-5)
    np.testing.assert_allclose(out, [(1 + 1 + 1 + 0.8) / 5, 1.0 / 5, 0, 0], rtol=1e-5)
    assert info.scores[4] == pytest.approx(100.0)
    # A fixed cap alone (what sites can apply themselves under secure aggregation).
    out, _, info = get_aggregator("norm_bound", factor=None, max_norm=0.5).aggregate(x)
    assert float(info.bound) == pytest.approx(0.5)
    assert float(jnp.linalg.norm(out)) <= 0.5 + 1e-6


def test_registry_and_bad_options() -> None:
    for name in AGGREGATORS:
        agg = get_aggregator(name)
        assert agg.name == name
    with pytest.raises(ConfigError, match="unknown aggregator"):
        get_aggregator("geometric_median")
    with pytest.raises(ConfigError, match="does not take"):
        get_aggregator("median", beta=0.1)
    with pytest.raises(ConfigError, match="beta"):
        get_aggregator("trimmed_mean", beta=0.5)
    with pytest.raises(ConfigError):
        get_aggregator("krum", f=-1)
    with pytest.raises(ConfigError):
        get_aggregator("norm_bound", factor=None)
    with pytest.raises(ConfigError, match="one entry per site"):
        get_aggregator("fedavg").aggregate(_rng_updates(3), [1.0, 2.0])
    with pytest.raises(RoundError):
        get_aggregator("fedavg").aggregate(_rng_updates(3), [0.0, 0.0, 0.0])


def test_aggregators_trace_under_an_outer_jit() -> None:
    x = _rng_updates(6, seed=9)
    w = np.ones(6, np.float32)
    for name in ("median", "trimmed_mean", "multi_krum", "norm_bound"):
        agg = get_aggregator(name)
        jitted = jax.jit(lambda u, w, agg=agg: agg.aggregate(u, w)[0])
        np.testing.assert_allclose(jitted(x, w), agg.aggregate(x, w)[0], rtol=1e-6, atol=1e-7)


def test_stack_and_unstack_by_site_name() -> None:
    a = {"w": np.ones((2, 2), np.float32)}
    b = {"w": np.zeros((2, 2), np.float32)}
    stacked, sites = stack_updates({"site-b": b, "site-a": a})
    assert sites == ("site-a", "site-b")
    np.testing.assert_array_equal(stacked["w"][0], a["w"])
    back = unstack_updates(stacked)
    np.testing.assert_array_equal(back[1]["w"], b["w"])
    with pytest.raises(RoundError, match="site-b"):
        stack_updates({"site-a": a, "site-b": {"w": np.zeros(3, np.float32)}})


@pytest.mark.parametrize("n", [1, 2, 7, 65])
def test_stable_ranks_equal_double_argsort_with_ties_and_absent_sites(n):
    from fedjax_room.robust import aggregators

    rng = np.random.default_rng(n)
    values = rng.standard_normal((n, 50, 3)).astype(np.float32)
    if n > 1:
        values[n - 1] = values[0]  # a sybil: identical update, ties everywhere
        values[1, :10] = np.inf  # absent sites are ranked last
    values[:, 0, 0] = 0.5  # a column of ties
    want = np.argsort(np.argsort(values, axis=0, kind="stable"), axis=0, kind="stable")
    got = aggregators._stable_ranks(jnp.asarray(values))
    np.testing.assert_array_equal(np.asarray(got), want)
