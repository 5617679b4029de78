import math

import dp_accounting
import numpy as np
import pytest

from fedjax_room.errors import ConfigError, PrivacyError
from fedjax_room.secagg.ddp import _ORDERS, SkellamMechanism, clip_update, site_level_event
from fedjax_room.secagg.protocol import run_round


def test_clip_update():
    x, norm = clip_update(np.array([[3.0, 4.0]]), 1.0)
    assert norm == 5.0 and np.allclose(x, [0.6, 0.8])
    x, norm = clip_update(np.array([0.3, 0.4]), 1.0)
    assert np.allclose(x, [0.3, 0.4])
    with pytest.raises(ConfigError):
        clip_update(np.array([np.inf]), 1.0)


def test_without_noise_the_sum_is_the_clipped_sum():
    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=0.0, dimension=500, max_sites=8, min_sites=5)
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=500) * s for s in (0.001, 0.01, 0.1, 1.0, 3.0, 0.05, 0.2, 0.7)]
    total = sum(mech.encode(u, rng) for u in updates)
    expected = sum(clip_update(u, 1.0)[0] for u in updates)
    assert np.abs(mech.decode(total) - expected).max() <= len(updates) / mech.gamma


def test_stochastic_rounding_is_unbiased():
    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=0.0, dimension=200_000, max_sites=2, min_sites=1, scale=4.0)
    x = np.full(200_000, 0.9 / math.sqrt(200_000))  # inside the clip ball; 4 * x is far from an integer
    decoded = mech.decode(mech.encode(x, np.random.default_rng(1)))
    assert abs(decoded.mean() - x.mean()) < 5 * 0.5 / 4 / math.sqrt(200_000)


def test_noise_in_the_sum_has_std_sigma_s():
    d, n, m = 40_000, 5, 3
    mech = SkellamMechanism(clip_norm=2.0, noise_multiplier=1.5, dimension=d, max_sites=n, min_sites=m)
    rng = np.random.default_rng(2)
    updates = [rng.normal(size=d) for _ in range(n)]
    total = sum(mech.encode(u, rng) for u in updates)
    noise = mech.decode(total) - sum(clip_update(u, 2.0)[0] for u in updates)
    assert abs(noise.mean()) < 0.05
    assert noise.std() == pytest.approx(1.5 * 2.0 * math.sqrt(n / m), rel=0.03)  # >= sigma * S


def test_through_secure_aggregation_exactly(room):
    r = room(5, length=300)
    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=1.0, dimension=300, max_sites=5, min_sites=3)
    assert r.config.min_clients == 3
    rng = np.random.default_rng(3)
    encoded = {cid: mech.encode(rng.normal(size=300), rng) for cid in r.config.ids}
    run = run_round(r.config, r.keys, encoded, drop={"input": [2]})
    direct = sum(encoded[c] for c in (1, 3, 4, 5))
    assert np.array_equal(run.total, direct)
    assert np.allclose(mech.decode(run.total), mech.decode(direct))


def test_worst_case_inputs_do_not_wrap():
    n, d = 20, 64
    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=1.0, dimension=d, max_sites=n, min_sites=11)
    rng = np.random.default_rng(4)
    spike = np.zeros(d)
    spike[0] = 1.0
    for sign in (1.0, -1.0):
        total = sum(mech.encode(sign * spike, rng) for _ in range(n))
        decoded = mech.decode(total)
        assert decoded[0] == pytest.approx(sign * n, abs=10 * math.sqrt(n / 11))
    half = 2**31
    assert n * (mech.gamma + 1) + 10 * mech.gamma * math.sqrt(n / 11) < half


def test_dp_event_dominates_the_skellam_bound():
    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=1.0, dimension=1_000_000, max_sites=10, min_sites=6)
    z = mech.effective_noise_multiplier
    assert 0.999 * 1.0 < z < 1.0  # rounding inflates the sensitivity by sqrt(d) / (gamma S) < 0.03%
    for rounds in (1, 10, 100):
        acc = dp_accounting.rdp.RdpAccountant(orders=list(_ORDERS))
        acc.compose(mech.dp_event(rounds))
        gaussian = acc.get_epsilon(1e-5)
        strict = mech.epsilon(rounds, 1e-5)
        assert strict <= gaussian <= strict * 1.001
    with pytest.raises(PrivacyError, match="subsampled"):
        mech.dp_event(5, sampling_rate=0.2)  # no certified bound for subsampled Skellam


@pytest.mark.parametrize(("sigma", "rounds", "old_pld", "skellam"), [(1.0, 5, 11.48, 12.31), (0.5, 50, 159.5, 210.2)])
def test_the_reported_site_epsilon_is_the_certified_skellam_bound(tmp_path, sigma, rounds, old_pld, skellam):
    # Issue 13 item 7: d = 1e6, 10 sites. The site-level ledger used to report the PLD of a Gaussian at z_eff
    # (11.48, 159.5), below the certified Skellam RDP bound (12.31, 210.2). Now it composes the same events, round
    # by round as a site does, in an integer-order RDP accountant, and reports at least the Skellam bound.
    from fedjax_room.dp.accounting import Accountant
    from fedjax_room.site.ledger import Ledger

    mech = SkellamMechanism(clip_norm=1.0, noise_multiplier=sigma, dimension=1_000_000, max_sites=10, min_sites=10)
    ledger = Ledger.open(tmp_path / "site_ledger.json", epsilon_cap=math.inf, delta=1e-5, kind="rdp_integer")
    for r in range(1, rounds + 1):
        run_eps, total = ledger.commit(f"run-1/{r}/train", mech.dp_event(1), {"round": r}, run_delta=1e-5)
    certified = mech.epsilon(rounds, 1e-5)
    assert certified == pytest.approx(skellam, abs=0.1)
    assert run_eps >= certified and total >= certified and run_eps <= certified * (1 + 1e-9)
    assert mech.certified_epsilon(rounds, 1e-5) >= certified
    gaussian_pld = Accountant("pld").compose(mech.dp_event(rounds)).epsilon(1e-5)
    assert gaussian_pld == pytest.approx(old_pld, abs=0.1) and gaussian_pld < certified  # what was reported
    # a site-level ledger written as "pld" by an older version is recomposed as certified when a site opens it
    old = Ledger.open(tmp_path / "old.json", epsilon_cap=math.inf, delta=1e-5, kind="pld")
    for r in range(1, rounds + 1):
        old.commit(f"run-1/{r}/train", mech.dp_event(1), {"round": r}, run_delta=1e-5)
    assert old.epsilon() < certified
    reopened = Ledger.open(tmp_path / "old.json", epsilon_cap=math.inf, delta=1e-5, kind="rdp_integer")
    assert reopened.epsilon() == pytest.approx(total, rel=1e-12) and reopened.epsilon() >= certified


def test_evaluation_releases_are_in_the_site_level_bound():
    from fedjax_room.site.plan import site_eval_event

    # zeroing out a site moves (count, correct, loss_sum / 5) by at most sqrt(3) * H; the noise is sqrt(3) * sigma
    assert site_eval_event(20.0, 100) == dp_accounting.GaussianDpEvent(0.2)
    assert site_eval_event(20.0, 0) == dp_accounting.NoOpDpEvent()
    with pytest.raises(ConfigError):
        site_eval_event(20.0, -1)


def test_site_level_event_and_settings():
    ev = site_level_event(1.2, 3)
    assert ev == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.2), 3)
    with pytest.raises(PrivacyError):
        site_level_event(0.0, 3)
    with pytest.raises(ConfigError):
        site_level_event(1.0, 0)
    with pytest.raises(ConfigError):
        site_level_event(1.0, 1, sampling_rate=1.5)
    with pytest.raises(ConfigError):
        SkellamMechanism(1.0, 1.0, 10, max_sites=3, min_sites=4)
    with pytest.raises(ConfigError):
        SkellamMechanism(1.0, 1.0, 10, max_sites=3, min_sites=2, scale=1e12)
    with pytest.raises(ConfigError):
        SkellamMechanism(1.0, 1.0, 10, 3, 2).encode(np.zeros(11))
    mech = SkellamMechanism(0.5, 0.8, 1000, 7, 4, modulus_bits=64)
    assert SkellamMechanism.from_dict(mech.to_dict()) == mech
    assert mech.site_variance / 2 <= 2.0**40 * (1 + 1e-9)  # 64 bits: the Poisson-exactness cap binds
