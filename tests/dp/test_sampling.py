"""Poisson sampling with fixed-size padding."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.dp.sampling import max_batch_size_for, poisson_sample
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


def test_overflow_truncates_with_warning():
    rng = np.random.default_rng(1)
    with pytest.warns(RuntimeWarning, match="truncated"):
        idx, mask = poisson_sample(rng, 100, 0.9, 10)
    assert mask.all() and len(np.unique(idx)) == 10


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
