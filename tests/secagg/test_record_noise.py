"""Record-level noise added once across the sites (secagg/record_noise.py): the shares add up to the plan's
noise, the bound the ledger composes is the plan's multiplier, and what a site cannot encode is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.secagg.encoding import from_signed, to_signed
from fedjax_room.secagg.record_noise import MODULUS_BITS, RecordNoise


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = total + v  # uint64 arithmetic wraps modulo 2^64, as the SecAgg ring does
    return total


@pytest.mark.parametrize(("d", "sigma", "clip"), [(650, 11.8, 0.1), (50_890, 11.8, 0.1), (10, 0.7, 1.0)])
def test_the_bound_the_ledger_composes_is_the_plans_noise_multiplier(d, sigma, clip):
    mech = RecordNoise(clip_norm=clip, noise_multiplier=sigma, dimension=d, max_sites=5, min_sites=3)
    # the Skellam bound's effective Gaussian multiplier (Agarwal et al. Thm 3.5) is exactly sigma ...
    assert mech.effective_noise_multiplier == pytest.approx(sigma, rel=1e-9)
    # ... so the sum carries a little more noise than sigma * C (the rounding's inflated sensitivity), never less
    sd = math.sqrt(mech.central_variance) / mech.gamma
    assert sigma * clip < sd < sigma * clip * 1.01


def test_t_shares_add_up_to_the_noise_once_and_a_full_share_to_all_of_it():
    d, sigma, clip, t = 4000, 5.0, 0.1, 3
    rng = np.random.default_rng(0)
    sums = [rng.normal(size=d) * 3 for _ in range(t)]  # each site's clipped gradient sum
    mech = RecordNoise(clip_norm=clip, noise_multiplier=sigma, dimension=d, max_sites=t, min_sites=t)
    total = _ring_sum([mech.encode(x, np.random.default_rng(i)) for i, x in enumerate(sums)])
    coordinator = RecordNoise(clip_norm=clip, noise_multiplier=0.0, dimension=d, max_sites=t, min_sites=t)
    noise = coordinator.decode(total) - np.sum(sums, axis=0)  # the coordinator decodes with the same scale
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.05)  # sigma C once, not sqrt(t) sigma C
    assert abs(np.mean(noise)) < 4 * sigma * clip / math.sqrt(d)  # unbiased (stochastic rounding, centred noise)
    alone = RecordNoise(clip_norm=clip, noise_multiplier=sigma, dimension=d, max_sites=t, min_sites=t, share=False)
    one = coordinator.decode(alone.encode(sums[0], np.random.default_rng(9))) - sums[0]
    assert np.std(one) == pytest.approx(sigma * clip, rel=0.05)  # a site that trusts no one adds all of it


def test_one_record_moves_a_sites_integer_vector_by_at_most_the_stated_sensitivity():
    d, clip = 300, 0.1
    mech = RecordNoise(clip_norm=clip, noise_multiplier=0.0, dimension=d, max_sites=3, min_sites=3)
    rng = np.random.default_rng(1)
    for trial in range(20):
        x = rng.normal(size=d)
        g = rng.normal(size=d)
        g *= clip / np.linalg.norm(g)  # one record's clipped gradient
        # the same uniforms for both roundings (the coupling of the argument in the module docstring)
        a = to_signed(mech.encode(x, np.random.default_rng(trial)), MODULUS_BITS)
        b = to_signed(mech.encode(x + g, np.random.default_rng(trial)), MODULUS_BITS)
        assert np.linalg.norm((a - b).astype(np.float64)) <= mech.l2_sensitivity


def test_a_sum_a_site_cannot_encode_is_refused_not_wrapped():
    mech = RecordNoise(clip_norm=0.1, noise_multiplier=2.0, dimension=4, max_sites=3, min_sites=2)
    with pytest.raises(ConfigError, match="values"):
        mech.encode(np.zeros(5))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        mech.encode(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="could wrap"):  # a crafted or runaway sum: refused, nothing released
        mech.encode(np.array([1e17, 0.0, 0.0, 0.0]))
    with pytest.raises(ConfigError):
        RecordNoise(clip_norm=0.1, noise_multiplier=2.0, dimension=4, max_sites=2, min_sites=3)
    with pytest.raises(ConfigError):
        RecordNoise(clip_norm=0.0, noise_multiplier=2.0, dimension=4, max_sites=3, min_sites=2)


def test_a_large_variance_is_drawn_exactly_in_parts():
    # a big model's share has a Poisson mean past 2^40: drawn as a sum of parts, with the same variance
    mech = RecordNoise(clip_norm=1.0, noise_multiplier=80.0, dimension=10_000, max_sites=2, min_sites=1)
    assert mech.site_variance / 2 > 2.0**40
    x = np.zeros(10_000)
    noise = to_signed(mech.encode(x, np.random.default_rng(3)), MODULUS_BITS).astype(np.float64)
    assert np.var(noise) == pytest.approx(mech.site_variance, rel=0.05)
    assert from_signed(np.zeros(3, np.int64), MODULUS_BITS).dtype == np.uint64
