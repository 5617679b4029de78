"""The Gaussian noise transformation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_room.dp.noise import GaussianNoiseState, gaussian_noise, standard_normal_like
from fedjax_room.errors import ConfigError


def test_noise_std_and_mean():
    # 1e6 samples: the sample std has relative standard error ~ 1/sqrt(2n) = 0.07%, so a 1%
    # tolerance is ~14 standard errors; the mean is checked within 4 standard errors (stddev / 1000).
    n, stddev = 1_000_000, 2.0
    tx = gaussian_noise(stddev, jax.random.key(1234))
    zeros = {"w": jnp.zeros((n,), jnp.float32)}
    noisy, _ = tx.update(zeros, tx.init(zeros))
    sample = np.asarray(noisy["w"], np.float64)
    assert abs(sample.std() / stddev - 1.0) < 0.01
    assert abs(sample.mean()) < 4 * stddev / np.sqrt(n)


def test_noise_is_added_not_replaced_and_dtype_kept():
    tx = gaussian_noise(0.5, jax.random.key(0))
    updates = {"a": jnp.full((1000,), 10.0, jnp.float32), "b": jnp.ones((3, 4), jnp.bfloat16)}
    noisy, _ = tx.update(updates, tx.init(updates))
    assert noisy["b"].dtype == jnp.bfloat16 and noisy["b"].shape == (3, 4)
    assert abs(float(jnp.mean(noisy["a"])) - 10.0) < 0.1


def test_key_is_split_each_update_and_reproducible():
    tx = gaussian_noise(1.0, jax.random.key(7))
    updates = {"a": jnp.zeros((4,)), "b": jnp.zeros((4,))}
    state = tx.init(updates)
    assert isinstance(state, GaussianNoiseState)
    first, state2 = tx.update(updates, state)
    second, _ = tx.update(updates, state2)
    again, _ = gaussian_noise(1.0, jax.random.key(7)).update(updates, state)
    assert not np.allclose(first["a"], second["a"])  # fresh noise each step
    assert not np.allclose(first["a"], first["b"])  # independent leaves
    np.testing.assert_array_equal(first["a"], again["a"])  # same key, same noise
    jitted, _ = jax.jit(tx.update)(updates, state)
    np.testing.assert_allclose(jitted["a"], first["a"], rtol=1e-6)


def test_zero_stddev_is_identity():
    tx = gaussian_noise(0.0, jax.random.key(0))
    updates = {"a": jnp.arange(5.0)}
    out, _ = tx.update(updates, tx.init(updates))
    np.testing.assert_array_equal(out["a"], updates["a"])


def test_legacy_uint32_key_accepted():
    tx = gaussian_noise(1.0, jax.random.PRNGKey(0))
    out, _ = tx.update({"a": jnp.zeros(3)}, tx.init(None))
    assert out["a"].shape == (3,)


@pytest.mark.parametrize("key", [None, 3, np.zeros(3, np.uint32), "seed"])
def test_key_required(key):
    with pytest.raises(ConfigError, match="key"):
        gaussian_noise(1.0, key)


@pytest.mark.parametrize("stddev", [-1.0, float("inf"), "1", None])
def test_bad_stddev(stddev):
    with pytest.raises(ConfigError, match="stddev"):
        gaussian_noise(stddev, jax.random.key(0))


def test_integer_updates_refused():
    tx = gaussian_noise(1.0, jax.random.key(0))
    with pytest.raises(ConfigError, match="floating"):
        tx.update({"a": jnp.zeros(3, jnp.int32)}, tx.init(None))


def test_leaves_get_independent_standard_normals():
    """One flat draw per dtype is cut into leaves: no leaf repeats another's noise, each is N(0, 1)."""
    shapes = [(300, 200), (200,), (300, 200), (7,), (1000,)]
    leaves = [jnp.zeros(s, jnp.float32) for s in shapes] + [jnp.zeros((50_000,), jnp.bfloat16)]
    draws = standard_normal_like(jax.random.key(5), leaves)
    assert [d.shape for d in draws] == [leaf.shape for leaf in leaves]
    assert [d.dtype for d in draws] == [leaf.dtype for leaf in leaves]
    big_a, big_b = np.asarray(draws[0]).ravel(), np.asarray(draws[2]).ravel()
    assert abs(np.corrcoef(big_a, big_b)[0, 1]) < 0.01  # 60k pairs: 4 standard errors is 0.016
    everything = np.concatenate([np.asarray(d, np.float64).ravel() for d in draws[:5]])
    assert len(np.unique(everything)) > 0.99 * everything.size
    for d in (big_a, np.asarray(draws[5], np.float64)):
        assert abs(d.std() - 1.0) < 0.02 and abs(d.mean()) < 0.02
    # The same key gives the same noise; a different key different noise.
    again = standard_normal_like(jax.random.key(5), leaves)
    np.testing.assert_array_equal(np.asarray(again[3]), np.asarray(draws[3]))
    other = standard_normal_like(jax.random.key(6), leaves)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(draws[0]))
