"""Poisson sampling with fixed-size padding."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.dp.sampling import binomial_tail, max_batch_size_for, overflow_probability, poisson_sample
from fedjax_room.errors import ConfigError


def test_mean_size_and_uniform_inclusion():
    rng = np.random.default_rng(0)
    n, q, draws = 1000, 0.05, 2000
    size = max_batch_size_for(n, q)
    sizes, counts = [], np.zeros(n)
    for _ in range(draws):
        idx, mask = poisson_sample(rng, n, q, size)
        assert idx.dtype == np.int32 and mask.dtype == bool and idx.shape == mask.shape == (size,)
        k = int(mask.sum())
        assert mask[:k].all() and not mask[k:].any()  # real examples first
        assert (idx[k:] == 0).all()  # padding points at a valid row
        assert len(np.unique(idx[:k])) == k and (np.diff(idx[:k]) > 0).all()
        sizes.append(k)
        counts[idx[:k]] += 1
    # mean of Binomial(n, q) over `draws` draws: standard error sqrt(n q (1-q) / draws) ~ 0.15.
    assert abs(np.mean(sizes) - n * q) < 4 * np.sqrt(n * q * (1 - q) / draws)
    assert abs(np.var(sizes) / (n * q * (1 - q)) - 1) < 0.15
    # every example is included with probability q (per-example count ~ Binomial(draws, q), sd ~ 9.7)
    assert abs(counts.mean() - draws * q) < 1.0
    assert counts.min() > draws * q - 6 * np.sqrt(draws * q) and counts.max() < draws * q + 6 * np.sqrt(draws * q)


def test_overflow_keeps_the_whole_poisson_sample():
    # Issue 13 item 8: truncating an overflowing batch is not Poisson sampling, and was not in delta. Now the cap
    # only sets a compiled shape: with the same randomness a tiny cap gives exactly the sample an unbounded one does.
    for seed in range(20):
        big_idx, big_mask = poisson_sample(np.random.default_rng(seed), 100, 0.9, 100)  # cannot overflow
        with pytest.warns(RuntimeWarning, match="padded"):
            idx, mask = poisson_sample(np.random.default_rng(seed), 100, 0.9, 10)
        assert len(idx) % 10 == 0 and len(idx) >= mask.sum()
        assert sorted(idx[mask]) == sorted(big_idx[big_mask])  # every drawn example is kept: the law is Binomial
        assert int(mask.sum()) > 10


def test_a_long_run_spends_no_delta_on_the_batch_cap():
    # The 14063-step run of the issue (60 epochs of 60000 examples at batch 256): with truncation its coupling bound
    # was 14063 * 1e-9 ~ 1.4e-5 on top of delta = 1e-5. Without truncation the sampler is exactly Poisson at any cap,
    # so the run's delta is the accountant's alone; the cap is only how often a step needs a larger shape.
    scipy_stats = pytest.importorskip("scipy.stats")
    n, q, steps = 60000, 256 / 60000, 14063
    cap = max_batch_size_for(n, q)
    bound = overflow_probability(n, q, cap, steps)
    exact = steps * scipy_stats.binom.sf(cap, n, q)  # union bound with scipy's tail
    assert exact <= bound <= exact * (1 + 1e-5) and bound < 1e-6
    rng = np.random.default_rng(5)
    draws = [poisson_sample(rng, n, q, cap)[1].sum() for _ in range(200)]
    assert max(draws) <= cap  # the usual shape holds in practice
    assert overflow_probability(n, q, cap, 0) == 0.0 and overflow_probability(100, 0.5, 100, 9) == 0.0


@pytest.mark.parametrize(
    ("n", "q", "k"),
    [(480, 32 / 480, 73), (60000, 256 / 60000, 366), (1_000_000, 1e-3, 1200), (2**31 - 1, 1e-6, 3000), (50, 0.5, 40)],
)
def test_binomial_tail_is_an_upper_bound(n, q, k):
    scipy_stats = pytest.importorskip("scipy.stats")
    exact = scipy_stats.binom.sf(k - 1, n, q)
    bound = binomial_tail(n, q, k)
    assert exact <= bound <= exact * (1 + 1e-5)
    assert binomial_tail(n, q, 0) == 1.0 and binomial_tail(n, q, n + 1) == 0.0


def test_edge_rates():
    rng = np.random.default_rng(2)
    idx, mask = poisson_sample(rng, 5, 1.0, 5)
    assert mask.all() and list(idx) == [0, 1, 2, 3, 4]
    idx, mask = poisson_sample(rng, 5, 0.0, 3)
    assert not mask.any()
    idx, mask = poisson_sample(rng, 0, 0.5, 2)
    assert not mask.any()


def test_max_batch_size_for_bounds_overflow():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n, q in [(60000, 256 / 60000), (100, 0.01), (1_000_000, 1e-3), (50, 0.5)]:
        size = max_batch_size_for(n, q)
        assert scipy_stats.binom.sf(size, n, q) < 1e-9  # P(count > size)
        assert size <= max(1.2 * scipy_stats.binom.isf(1e-9, n, q), 12)  # not absurdly conservative
    assert max_batch_size_for(10, 1.0) == 10
    assert max_batch_size_for(10, 0.0) == 1
    assert max_batch_size_for(3, 0.9) == 3


@pytest.mark.parametrize(
    "args",
    [(-1, 0.1, 4), (10, 1.5, 4), (10, -0.1, 4), (10, 0.1, 0), (10, "0.1", 4), (1.5, 0.1, 4)],
)
def test_bad_arguments(args):
    with pytest.raises(ConfigError):
        poisson_sample(np.random.default_rng(0), *args)


def test_rng_must_be_generator():
    with pytest.raises(ConfigError, match="Generator"):
        poisson_sample(np.random.RandomState(0), 10, 0.1, 4)
    with pytest.raises(ConfigError):
        max_batch_size_for(10, 0.1, overflow_probability=0.0)
