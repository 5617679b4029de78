"""DP-SGD optimiser and the jitted private train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_room.dp.clipping import clipped_grad
from fedjax_room.dp.noise import standard_normal_like
from fedjax_room.dp.optimizer import dpsgd, make_dp_train_step
from fedjax_room.errors import ConfigError
from fedjax_room.models import init_params, logistic, make_loss_fn, mlp


def _manual_noise(key, tree, stddev):
    """What gaussian_noise does: split the state key, draw N(0, 1) for the leaves with the step half."""
    next_key, step_key = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    noise = [stddev * z for z in standard_normal_like(step_key, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noise), next_key


def test_dpsgd_update_equals_manual_formula():
    lr, clip, sigma, ebs, key = 0.3, 1.5, 1.1, 20.0, jax.random.key(42)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    clipped_sum = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.array([1.0, -2.0])}
    tx = dpsgd(lr, clip_norm=clip, noise_multiplier=sigma, expected_batch_size=ebs, key=key)
    state = tx.init(params)
    updates, state = tx.update(clipped_sum, state, params)
    noise, _ = _manual_noise(key, clipped_sum, sigma * clip)
    expected = jax.tree_util.tree_map(lambda s, z: -lr * (s + z) / ebs, clipped_sum, noise)
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_dpsgd_momentum_two_steps():
    lr, clip, sigma, ebs, mom, key = 0.1, 1.0, 0.5, 4.0, 0.9, jax.random.key(3)
    params = {"w": jnp.zeros((4,))}
    g = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    tx = dpsgd(lr, clip_norm=clip, noise_multiplier=sigma, expected_batch_size=ebs, key=key, momentum=mom)
    state = tx.init(params)
    u1, state = tx.update(g, state, params)
    u2, state = tx.update(g, state, params)
    n1, k1 = _manual_noise(key, g, sigma * clip)
    n2, _ = _manual_noise(k1, g, sigma * clip)
    m1 = (g["w"] + n1["w"]) / ebs
    m2 = mom * m1 + (g["w"] + n2["w"]) / ebs
    np.testing.assert_allclose(u1["w"], -lr * m1, rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -lr * m2, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0},
        {"noise_multiplier": -1.0},
        {"expected_batch_size": 0},
        {"key": None},
        {"momentum": 1.0},
    ],
)
def test_dpsgd_bad_arguments(kwargs):
    base = {"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_batch_size": 8, "key": jax.random.key(0)}
    with pytest.raises(ConfigError):
        dpsgd(0.1, **{**base, **kwargs})


def _data(spec, size):
    x = jax.random.normal(jax.random.key(1), (size, *spec.input_shape))
    y = (x[:, 0] > 0).astype(jnp.int32)
    return {"x": x, "y": y}


@pytest.mark.parametrize("method", ["vmap", "fast"])
def test_train_step_matches_components(method):
    spec = mlp([4], 2, hidden=(3,))
    loss_fn = make_loss_fn(spec)
    params = init_params(spec, jax.random.key(0))
    batch = _data(spec, 8)
    mask = jnp.array([True] * 6 + [False] * 2)
    clip, lr, ebs, key = 0.1, 0.5, 6.0, jax.random.key(9)
    tx = dpsgd(lr, clip_norm=clip, noise_multiplier=1.0, expected_batch_size=ebs, key=key)
    step = make_dp_train_step(loss_fn, tx, clip_norm=clip, method=method)
    new_params, _, metrics = step(params, tx.init(params), batch, mask)

    total, norms = clipped_grad(loss_fn, clip, method="vmap")(params, batch, mask)
    noise, _ = _manual_noise(key, total, 1.0 * clip)
    expected = jax.tree_util.tree_map(lambda p, s, z: p - lr * (s + z) / ebs, params, total, noise)
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    real = {k: v[:6] for k, v in batch.items()}
    np.testing.assert_allclose(metrics["loss"], loss_fn(params, real), rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], np.mean(np.asarray(norms)[:6]), rtol=1e-5)
    np.testing.assert_allclose(metrics["clipped_fraction"], np.mean(np.asarray(norms)[:6] > clip), rtol=1e-6)
    assert int(metrics["num_examples"]) == 6 and int(metrics["num_nonfinite"]) == 0


def test_train_step_learns_and_counts_nonfinite():
    spec = logistic([4], 2)
    loss_fn = make_loss_fn(spec)
    params = init_params(spec, jax.random.key(0))
    batch = _data(spec, 64)
    tx = dpsgd(1.0, clip_norm=1.0, noise_multiplier=0.5, expected_batch_size=64, key=jax.random.key(1))
    step = make_dp_train_step(loss_fn, tx, clip_norm=1.0)
    state = tx.init(params)
    mask = jnp.ones(64, bool)
    start = float(loss_fn(params, batch))
    for _ in range(30):
        params, state, metrics = step(params, state, batch, mask)
    assert float(loss_fn(params, batch)) < 0.7 * start
    bad = {"x": batch["x"].at[3].set(jnp.nan), "y": batch["y"]}
    params2, _, metrics = step(params, state, bad, mask)
    assert int(metrics["num_nonfinite"]) == 1
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(params2))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))


def test_train_step_bad_arguments():
    loss_fn = make_loss_fn(logistic([4], 2))
    with pytest.raises(ConfigError, match="optax"):
        make_dp_train_step(loss_fn, "sgd", clip_norm=1.0)
    with pytest.raises(ConfigError):
        make_dp_train_step(loss_fn, optax.sgd(0.1), clip_norm=-1.0)
    with pytest.raises(ConfigError, match="method"):
        make_dp_train_step(loss_fn, optax.sgd(0.1), clip_norm=1.0, method="nope")
