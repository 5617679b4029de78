"""Per-example clipping: both paths against a Python loop over single examples."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_room.dp import fast_clipping
from fedjax_room.dp.clipping import clipped_grad, make_clipper, per_example_grads
from fedjax_room.errors import ConfigError
from fedjax_room.models import ModelSpec, cnn, init_params, logistic, make_loss_fn, mlp

B = 6
# Clipping uses certified float32 upper bounds of the norms (dp/float_bounds.py): a few 1e-6 above the
# exact norm here, up to ~2e-5 for the Gram trick over positions.
RTOL, ATOL = 5e-5, 1e-5

SPECS = {
    "logistic": logistic([5], 3),
    "mlp": mlp([5], 3, hidden=(4,), activation="tanh"),
    # conv -> relu -> max_pool -> conv (stride 2) -> relu -> max_pool -> flatten -> dense -> relu -> dense
    "cnn": cnn([8, 8, 2], 3, conv=((4, 3, 1), (4, 2, 2)), dense=(5,)),
    # The DP MNIST CNN's shape in small: a strided one-channel first conv (space-to-depth in the model,
    # im2col one dimension at a time in the fast path), stride-1 max pools, tanh.
    "dpcnn": ModelSpec.from_dict(
        {
            "family": "cnn",
            "input_shape": [12, 12, 1],
            "num_classes": 3,
            "layers": [
                {"type": "conv", "features": 4, "kernel": 4, "stride": 2, "padding": "SAME"},
                {"type": "tanh"},
                {"type": "max_pool", "window": 2, "stride": 1},
                {"type": "conv", "features": 6, "kernel": 2, "stride": 2, "padding": "VALID"},
                {"type": "tanh"},
                {"type": "max_pool", "window": 2, "stride": 1},
                {"type": "flatten"},
                {"type": "dense", "features": 5},
                {"type": "tanh"},
                {"type": "dense", "features": 3},
            ],
        }
    ),
}


def _setup(name: str, scale: float = 1.0, size: int = B):
    spec = SPECS[name]
    params = init_params(spec, jax.random.key(0))
    x = scale * jax.random.normal(jax.random.key(1), (size, *spec.input_shape), jnp.float32)
    y = jnp.arange(size, dtype=jnp.int32) % 3
    return make_loss_fn(spec), params, {"x": x, "y": y}


def _loop_grads(loss_fn, params, batch):
    grad = jax.jit(jax.grad(loss_fn))
    size = batch["x"].shape[0]
    return [grad(params, jax.tree_util.tree_map(lambda v, i=i: v[i : i + 1], batch)) for i in range(size)]


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def _reference(loss_fn, params, batch, clip_norm, keep=None):
    grads = _loop_grads(loss_fn, params, batch)
    norms = np.array([np.linalg.norm(_flat(g)) for g in grads])
    total = None
    for i, g in enumerate(grads):
        if keep is not None and not keep[i]:
            continue
        c = min(1.0, clip_norm / norms[i])
        term = jax.tree_util.tree_map(lambda v, c=c: np.asarray(v, np.float64) * c, g)
        total = term if total is None else jax.tree_util.tree_map(np.add, total, term)
    return total, norms


def _assert_tree_close(a, b, rtol=RTOL, atol=ATOL):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_per_example_grads_match_loop(name):
    loss_fn, params, batch = _setup(name)
    got = per_example_grads(loss_fn)(params, batch)
    for i, ref in enumerate(_loop_grads(loss_fn, params, batch)):
        _assert_tree_close(jax.tree_util.tree_map(lambda v, i=i: v[i], got), ref)


@pytest.mark.parametrize("method", ["vmap", "fast"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_clipped_sum_and_norms_match_loop(name, method):
    loss_fn, params, batch = _setup(name, scale=3.0)
    ref_norms = _reference(loss_fn, params, batch, 1.0)[1]
    clip_norm = float(np.median(ref_norms))  # about half the examples are clipped
    ref_total, ref_norms = _reference(loss_fn, params, batch, clip_norm)
    total, norms = clipped_grad(loss_fn, clip_norm, method=method)(params, batch)
    np.testing.assert_allclose(np.asarray(norms), ref_norms, rtol=RTOL)
    _assert_tree_close(total, ref_total)


@pytest.mark.parametrize("method", ["vmap", "fast"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_clipped_contribution_is_bounded(name, method):
    loss_fn, params, batch = _setup(name, scale=3.0)
    clip_norm = 0.5 * float(np.min(_reference(loss_fn, params, batch, 1.0)[1]))
    fn = clipped_grad(loss_fn, clip_norm, method=method)
    for i in range(B):
        single = jax.tree_util.tree_map(lambda v, i=i: v[i : i + 1], batch)
        total, norms = fn(params, single)
        assert float(norms[0]) > clip_norm  # clipping is active
        assert np.linalg.norm(_flat(total)) <= clip_norm * (1 + 1e-5)


@pytest.mark.parametrize("method", ["vmap", "fast"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "dpcnn"])
def test_nonfinite_example_contributes_zero(name, method):
    loss_fn, params, batch = _setup(name)
    x = np.array(batch["x"])
    x[2] = np.nan
    x[4].flat[0] = np.inf
    bad = {"x": jnp.asarray(x), "y": batch["y"]}
    keep = np.array([True, True, False, True, False, True])
    ref_total, ref_norms = _reference(loss_fn, params, batch, 0.5, keep=keep)
    total, norms = clipped_grad(loss_fn, 0.5, method=method)(params, bad)
    assert all(np.isfinite(_flat(total)))
    _assert_tree_close(total, ref_total)
    assert not np.isfinite(norms[2]) and not np.isfinite(norms[4])
    np.testing.assert_allclose(np.asarray(norms)[keep], ref_norms[keep], rtol=RTOL)


@pytest.mark.parametrize("method", ["vmap", "fast"])
@pytest.mark.parametrize("name", ["logistic", "cnn"])
def test_mask_zeroes_padded_examples(name, method):
    loss_fn, params, batch = _setup(name)
    mask = jnp.array([True, False, True, True, False, True])
    # Padding rows may hold anything, even NaN: they must not leak in.
    x = np.array(batch["x"])
    x[1] = np.nan
    padded = {"x": jnp.asarray(x), "y": batch["y"]}
    ref_total, _ = _reference(loss_fn, params, batch, 0.5, keep=np.asarray(mask))
    total, norms = clipped_grad(loss_fn, 0.5, method=method)(params, padded, mask)
    _assert_tree_close(total, ref_total)
    assert float(norms[1]) == 0.0 and float(norms[4]) == 0.0


@pytest.mark.parametrize("method", ["vmap", "fast"])
def test_microbatched_equals_unbatched(method):
    loss_fn, params, batch = _setup("cnn", size=7)
    mask = jnp.array([True] * 6 + [False])
    whole = clipped_grad(loss_fn, 0.3, method=method)(params, batch, mask)
    chunks = clipped_grad(loss_fn, 0.3, method=method, microbatch_size=3)(params, batch, mask)  # 7 -> 3 chunks
    _assert_tree_close(chunks[0], whole[0])
    np.testing.assert_allclose(np.asarray(chunks[1]), np.asarray(whole[1]), rtol=RTOL)
    assert chunks[1].shape == (7,)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_auto_picks_fast_for_spec_models(name):
    loss_fn, params, batch = _setup(name)
    plan = fast_clipping.plan(loss_fn, params, batch)
    assert plan.supported, plan.reason
    if name == "cnn":
        assert [layer.patches for layer in plan.layers if layer.kind == "conv"] == ["staged", "slice"]
    if name == "dpcnn":
        assert [layer.patches for layer in plan.layers if layer.kind == "conv"] == ["staged", "slice"]
        assert plan.layers[0].kernel_size == (4, 4) and plan.layers[0].strides == (2, 2)
    assert make_clipper(loss_fn, 1.0)(params, batch, None)[3] == "fast"


class _Tied(nn.Module):
    @nn.compact
    def __call__(self, x):
        layer = nn.Dense(5)
        return nn.Dense(3)(layer(jnp.tanh(layer(x[..., :5]))))


def _custom_loss(module, penalty=0.0):
    def loss_fn(params, batch):
        logits = module.apply({"params": params}, batch["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        if penalty:
            loss = loss + penalty * sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))
        return loss

    return loss_fn


@pytest.mark.parametrize("case", ["weight_sharing", "penalty"])
def test_auto_falls_back_to_vmap(case):
    _, params, batch = _setup("mlp")
    if case == "weight_sharing":
        module = _Tied()
        params = module.init(jax.random.key(0), batch["x"])["params"]
        loss_fn = _custom_loss(module)
    else:
        loss_fn = _custom_loss(nn.Sequential([nn.Dense(4), jnp.tanh, nn.Dense(3)]), penalty=0.1)
        params = nn.Sequential([nn.Dense(4), jnp.tanh, nn.Dense(3)]).init(jax.random.key(0), batch["x"])["params"]
    plan = fast_clipping.plan(loss_fn, params, batch)
    assert not plan.supported and plan.reason
    assert make_clipper(loss_fn, 0.5)(params, batch, None)[3] == "vmap"
    ref_total, ref_norms = _reference(loss_fn, params, batch, 0.5)
    total, norms = clipped_grad(loss_fn, 0.5)(params, batch)
    _assert_tree_close(total, ref_total)
    np.testing.assert_allclose(np.asarray(norms), ref_norms, rtol=RTOL)
    with pytest.raises(ConfigError, match="method='vmap'"):
        clipped_grad(loss_fn, 0.5, method="fast")(params, batch)


class _Sequence(nn.Module):
    """Dense over positions (B, T, d) and convolutions with unusual settings."""

    features: int

    @nn.compact
    def __call__(self, x):  # x: (B, T, d)
        h = jnp.tanh(nn.Dense(self.features)(x))  # per-example (1, T, d): gram or materialise
        h = nn.Conv(4, kernel_size=(3,), kernel_dilation=2, padding="VALID")(h)  # 1-D, dilated
        h = nn.Conv(2, kernel_size=(2,), strides=2, padding=((1, 0),), use_bias=False)(jnp.tanh(h))
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("features", [2, 40])
def test_fast_path_positions_and_conv_options(features, monkeypatch):
    # No memory allowance: the Gram trick whenever a per-example gradient is larger than P^2.
    monkeypatch.setattr(fast_clipping, "_MATERIALISE_FLOATS", 0)
    module = _Sequence(features)
    x = jax.random.normal(jax.random.key(3), (B, 8, 4))
    batch = {"x": x, "y": jnp.arange(B) % 3}
    params = module.init(jax.random.key(0), x)["params"]
    loss_fn = _custom_loss(module)
    plan = fast_clipping.plan(loss_fn, params, batch)
    assert plan.supported, plan.reason
    assert plan.layers[0].strategy == ("gram" if features == 40 else "materialise")
    assert {layer.patches for layer in plan.layers if layer.kind == "conv"} == (
        {"slice"} if features >= 4 else {"staged", "slice"}
    )
    ref_total, ref_norms = _reference(loss_fn, params, batch, 0.2)
    total, norms = clipped_grad(loss_fn, 0.2, method="fast")(params, batch)
    np.testing.assert_allclose(np.asarray(norms), ref_norms, rtol=RTOL)
    _assert_tree_close(total, ref_total)


class _FewChannels(nn.Module):
    """Convolutions over few channels (im2col one dimension at a time) and a dilated input (lax's im2col)."""

    @nn.compact
    def __call__(self, x):  # x: (B, 9, 8, 1)
        h = jnp.tanh(nn.Conv(2, kernel_size=(4, 2), strides=(2, 2), padding="SAME")(x))
        h = nn.max_pool(h, (2, 2), strides=(1, 1))
        h = jnp.tanh(
            nn.Conv(3, kernel_size=(2, 3), strides=(2, 1), padding=((1, 0), (0, 1)), kernel_dilation=(2, 1))(h)
        )
        h = nn.Conv(4, kernel_size=(2, 2), strides=1, padding="SAME")(h)
        h = nn.Conv(2, kernel_size=(2, 2), input_dilation=2, padding=((1, 1), (0, 1)))(h)  # transposed-style: lax
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("method", ["vmap", "fast"])
def test_few_channel_and_dilated_convolutions(method):
    module = _FewChannels()
    x = jax.random.normal(jax.random.key(4), (B, 9, 8, 1))
    batch = {"x": x, "y": jnp.arange(B) % 3}
    params = module.init(jax.random.key(0), x)["params"]
    loss_fn = _custom_loss(module)
    plan = fast_clipping.plan(loss_fn, params, batch)
    assert plan.supported, plan.reason
    assert [layer.patches for layer in plan.layers[:4]] == ["staged", "staged", "staged", "lax"]
    ref_total, ref_norms = _reference(loss_fn, params, batch, 0.3)
    total, norms = clipped_grad(loss_fn, 0.3, method=method)(params, batch)
    np.testing.assert_allclose(np.asarray(norms), ref_norms, rtol=RTOL)
    _assert_tree_close(total, ref_total)


def test_bad_arguments():
    loss_fn, params, batch = _setup("logistic")
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(ConfigError):
            clipped_grad(loss_fn, bad)
    with pytest.raises(ConfigError, match="method"):
        clipped_grad(loss_fn, 1.0, method="ghost")
    with pytest.raises(ConfigError, match="microbatch_size"):
        clipped_grad(loss_fn, 1.0, microbatch_size=0)
    with pytest.raises(ConfigError, match="mask"):
        clipped_grad(loss_fn, 1.0)(params, batch, jnp.ones(B + 1, bool))
    with pytest.raises(ConfigError, match="leading example axis"):
        clipped_grad(loss_fn, 1.0)(params, {"x": batch["x"], "y": batch["y"][:2]})
