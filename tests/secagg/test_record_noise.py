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
    mech = RecordNoise(clip_norm=1.0, noise_multiplier=80.0, dimension=10_000, max_sites=2, min_sites=1, share=False)
    assert mech.site_variance / 2 > 2.0**40
    x = np.zeros(10_000)
    noise = to_signed(mech.encode(x, np.random.default_rng(3)), MODULUS_BITS).astype(np.float64)
    assert np.var(noise) == pytest.approx(mech.site_variance, rel=0.05)
    assert from_signed(np.zeros(3, np.int64), MODULUS_BITS).dtype == np.uint64


def _pairwise_sum(n, t, inputs, alive_views, secrets, *, d, sigma=5.0, clip=0.1, seed=0):
    """The decoded noise of the sum of the sites in ``inputs`` (id -> clipped sum), each adding its own share at
    encode time and its pairwise terms for its ``alive_views[id]`` just before masking (what SecAggClient does)."""
    mech = RecordNoise(clip_norm=clip, noise_multiplier=sigma, dimension=d, max_sites=n, min_sites=t)
    vectors = []
    for i, x in inputs.items():
        own = mech.encode(x, np.random.default_rng([seed, i]))
        peers = {j: secrets[frozenset((i, j))] for j in range(n) if j != i}
        vectors.append(
            own + mech.pairwise_terms(i, range(n), alive_views[i], peers, b"ctx", np.random.default_rng([seed, i, 17]))
        )
    decoder = RecordNoise(clip_norm=clip, noise_multiplier=0.0, dimension=d, max_sites=n, min_sites=t)
    return mech, decoder.decode(_ring_sum(vectors)) - np.sum(list(inputs.values()), axis=0)


def test_pairwise_shares_carry_the_noise_exactly_once_with_every_site_or_one_dropped():
    n, d, sigma, clip = 4, 20_000, 5.0, 0.1
    rng = np.random.default_rng(5)
    secrets = {frozenset((i, j)): rng.bytes(32) for i in range(n) for j in range(n) if i < j}
    xs = {i: rng.normal(size=d) for i in range(n)}
    everyone = {i: frozenset(range(n)) for i in range(n)}
    mech, noise = _pairwise_sum(n, n - 1, xs, everyone, secrets, d=d)
    assert mech.pairwise and mech.site_variance == pytest.approx(mech.central_variance / n)
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.03)  # once: not sqrt(n / t) times it
    # site 3 shared its keys, then dropped before its masked input: its partners' terms stand in for its share
    _, noise = _pairwise_sum(n, n - 1, {i: xs[i] for i in range(3)}, everyone, secrets, d=d)
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.03)
    # site 3 dropped before the key sharing: nobody sees it alive, and each adds an independent term instead
    early = {i: frozenset(range(3)) for i in range(3)}
    _, noise = _pairwise_sum(n, n - 1, {i: xs[i] for i in range(3)}, early, secrets, d=d)
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.03)


def test_the_pairwise_terms_cancel_exactly_and_a_coordinator_showing_different_alive_sets_only_adds_noise():
    n, d = 3, 5_000
    rng = np.random.default_rng(6)
    secrets = {frozenset((i, j)): rng.bytes(32) for i in range(n) for j in range(n) if i < j}
    mech = RecordNoise(clip_norm=0.1, noise_multiplier=5.0, dimension=d, max_sites=n, min_sites=n - 1)
    terms = [
        mech.pairwise_terms(
            i, range(n), range(n), {j: secrets[frozenset((i, j))] for j in range(n) if j != i}, b"ctx", rng
        )
        for i in range(n)
    ]
    assert not np.any(_ring_sum(terms))  # both ends of a pair derive the same draw: the sum is exactly zero
    # a hostile coordinator tells site 0 that site 2 is gone, and the others that everyone is there
    views = {0: frozenset({0, 1}), 1: frozenset(range(n)), 2: frozenset(range(n))}
    xs = {i: np.zeros(d) for i in range(n)}
    for dropped in (None, 2):
        inputs = {i: x for i, x in xs.items() if i != dropped}
        _, noise = _pairwise_sum(n, n - 1, inputs, views, secrets, d=d)
        assert np.std(noise) >= 5.0 * 0.1 * 0.97  # never under the plan's noise


def test_a_threshold_under_n_minus_one_or_a_sparse_graph_falls_back_to_plain_shares():
    mech = RecordNoise(clip_norm=0.1, noise_multiplier=5.0, dimension=10, max_sites=10, min_sites=6)
    assert not mech.pairwise and mech.site_variance == pytest.approx(mech.central_variance / 6)
    assert not np.any(mech.pairwise_terms(0, range(10), range(10), {}, b"ctx", np.random.default_rng(0)))
    sparse = RecordNoise(clip_norm=0.1, noise_multiplier=5.0, dimension=10, max_sites=10, min_sites=9, full_graph=False)
    assert not sparse.pairwise and sparse.site_variance == pytest.approx(sparse.central_variance / 9)
    alone = RecordNoise(clip_norm=0.1, noise_multiplier=5.0, dimension=10, max_sites=3, min_sites=2, share=False)
    assert not alone.pairwise and alone.site_variance == pytest.approx(alone.central_variance)


@pytest.mark.parametrize("drop", [None, "input", "share"])
def test_through_the_secagg_protocol_the_unmasked_sum_carries_the_noise_once(room, drop):
    """Real SecAgg clients (X25519 key agreement, Shamir, masks): each site gives its encoded sum and its pairwise
    terms as ``set_input(..., extra=)``; the server unmasks the survivors' sum with the plan's noise exactly once,
    whether every site stays or one drops after sharing keys (``input``) or before (``share``)."""
    from functools import partial

    from fedjax_room.secagg import SecAggClient
    from fedjax_room.secagg.protocol import run_round

    n, d, sigma, clip = 4, 4_000, 5.0, 0.1
    r = room(n, length=d, bits=64, min_clients=n - 1)
    mech = RecordNoise(clip_norm=clip, noise_multiplier=sigma, dimension=d, max_sites=n, min_sites=n - 1)
    assert r.config.full_graph and mech.pairwise
    rng = np.random.default_rng(8)
    xs = {cid: rng.normal(size=d) for cid in r.keys}
    clients, inputs = {}, {}
    for cid in r.keys:
        client = SecAggClient(r.config, cid, r.keys[cid])
        noise = np.random.default_rng([cid, 17])

        def extra(alive, secrets, cid=cid, noise=noise):
            return mech.pairwise_terms(cid, r.config.ids, alive, secrets, r.config.digest, noise)

        client.set_input = partial(client.set_input, extra=extra)  # what the site's session does
        clients[cid] = client
        inputs[cid] = mech.encode(xs[cid], np.random.default_rng([cid, 13]))
    out = run_round(r.config, r.keys, inputs, drop={drop: {n}} if drop else None, clients=clients)
    assert out.total is not None, out.error
    survivors = [cid for cid in r.keys if not (drop and cid == n)]
    decoder = RecordNoise(clip_norm=clip, noise_multiplier=0.0, dimension=d, max_sites=n, min_sites=n - 1)
    noise = decoder.decode(out.total) - np.sum([xs[c] for c in survivors], axis=0)
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.05)
