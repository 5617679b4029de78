"""No record ever adds more than clip_norm to the clipped sum, on any path, for any finite parameters.

Issue 13 item 1: the Gram trick's float32 estimate of a per-example norm can be far below the
norm of what the book-keeping sums when the per-position terms cancel; crafted global parameters
then let one record add many times the clip bound. These tests measure each record's contribution
directly: the clipped sum of a batch holding that record alone (``||clipped_grad(params, [x])||``,
computed in float64 from the float32 result), against ``clip_norm * (1 + 1e-6)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_room.dp import fast_clipping
from fedjax_room.dp.clipping import clipped_grad, per_example_grads
from fedjax_room.models import ACTIVATIONS, LAYER_TYPES, ModelSpec, init_params, make_loss_fn

CLIP = 1.0
LIMIT = CLIP * (1 + 1e-6)


def _norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree_util.tree_leaves(tree))))


def _contribution(fn, params, record) -> tuple[float, float]:
    """(norm of the clipped sum of a batch holding only ``record``, the norm the path reported)."""
    batch = jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], record)
    total, norms = fn(params, batch)
    return _norm(total), float(norms[0])


def _custom_loss(module):
    def loss_fn(params, batch):
        logits = module.apply({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss_fn


# The attack of the issue: conv 3x3 32->64 on the 6x6x32 output of a first conv, for a blank record.
# The blank record makes every position's patch the same (tanh of the first conv's bias), and the
# logits' kernel gives the second conv's output gradients a large part +beta*v / -beta*v on
# alternating positions: it cancels exactly in the kernel gradient, but not in the Gram sum's float32.
ATTACK_SPEC = ModelSpec.from_dict(
    {
        "family": "cnn",
        "input_shape": [8, 8, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "features": 32, "kernel": 3, "stride": 1, "padding": "VALID"},
            {"type": "tanh"},
            {"type": "conv", "features": 64, "kernel": 3, "stride": 1, "padding": "VALID"},
            {"type": "flatten"},
            {"type": "dense", "features": 10},
        ],
    }
)
BLANK = {"x": np.zeros((8, 8, 1), np.float32), "y": np.int32(0)}


def _attack_params(beta: float, seed: int, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda v: np.array(v, np.float32), init_params(ATTACK_SPEC, jax.random.key(seed)))
    params["conv_0"]["bias"] = rng.choice([-3.0, 3.0], 32).astype(np.float32)
    signs = np.array([1.0, -1.0] * 8, np.float32)  # the 4x4 positions of the second conv's output
    v = rng.normal(size=64).astype(np.float32)
    kernel = noise * rng.normal(size=(16, 64, 10)).astype(np.float32)
    kernel[:, :, 1] += beta * signs[:, None] * v[None, :]
    params["dense_4"]["kernel"] = kernel.reshape(16 * 64, 10)
    return jax.tree_util.tree_map(jnp.asarray, params)


def test_crafted_cancellation_across_positions_is_clipped():
    """The reproduction: on the old code one of these records added 4.6x (and in the issue 40.7x) the bound."""
    loss_fn = make_loss_fn(ATTACK_SPEC)
    plan = fast_clipping.plan(loss_fn, _attack_params(1.0, 0), jax.tree_util.tree_map(lambda v: v[None], BLANK))
    assert [layer.strategy for layer in plan.layers] == ["materialise", "gram", "outer"]
    fast = clipped_grad(loss_fn, CLIP, method="fast")
    true_norms = per_example_grads(loss_fn)
    worst = 0.0
    for beta in (1e4, 1e5):
        for seed in range(4):
            params = _attack_params(beta, seed)
            contribution, reported = _contribution(fast, params, BLANK)
            true = _norm(true_norms(params, jax.tree_util.tree_map(lambda v: v[None], BLANK)))
            assert true > 100 * CLIP  # a record that must be clipped
            assert contribution <= LIMIT, (beta, seed, contribution, reported, true)
            assert reported >= true * (1 - 1e-6), (beta, seed, reported, true)  # a certified upper bound
            worst = max(worst, contribution)
    assert worst > 0.5 * CLIP  # not vacuous: the honest records here are clipped to about the bound


class _Underflow(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.sigmoid(nn.Dense(32)(x))
        h = nn.Dense(32, use_bias=False)(h)
        return nn.Dense(4)(h)


def test_underflowing_activations_cannot_hide_a_gradient():
    """Activations ~1e-19 square to a flushed denormal (0) in float32 while output gradients ~1e18 do
    not overflow: a norm computed as ||a||^2 ||g||^2 is then 0 while a g^T is not (old code: reported
    0.80, added 2.02)."""
    module = _Underflow()
    loss_fn = _custom_loss(module)
    params = module.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
    params = {
        "Dense_0": {"kernel": params["Dense_0"]["kernel"] * 1e-3, "bias": jnp.full((32,), -43.7)},
        "Dense_1": {"kernel": params["Dense_1"]["kernel"]},
        "Dense_2": {"kernel": params["Dense_2"]["kernel"] * 5e18, "bias": params["Dense_2"]["bias"]},
    }
    record = {"x": np.full(16, 0.01, np.float32), "y": np.int32(1)}
    true = _norm(per_example_grads(loss_fn)(params, jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], record)))
    assert true > 2 * CLIP
    for method in ("fast", "vmap"):
        contribution, reported = _contribution(clipped_grad(loss_fn, CLIP, method=method), params, record)
        assert contribution <= LIMIT, (method, contribution, reported)
        assert reported >= true * (1 - 1e-6)


# --- Property test: every layer type of models/spec.py, every strategy and im2col route. ---

SPEC_CNN = ModelSpec.from_dict(
    {
        "family": "cnn",
        "input_shape": [8, 8, 2],
        "num_classes": 3,
        "layers": [
            {"type": "conv", "features": 8, "kernel": 3, "stride": 1, "padding": "SAME"},  # cin 2: staged
            {"type": "elu"},
            {"type": "max_pool", "window": 2, "stride": 1},
            {"type": "conv", "features": 16, "kernel": 3, "stride": 2, "padding": "VALID"},  # cin 8: slice
            {"type": "silu"},
            {"type": "avg_pool", "window": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "features": 12},
            {"type": "gelu"},
            {"type": "dense", "features": 3},
        ],
    }
)
SPEC_MLP = ModelSpec.from_dict(
    {
        "family": "mlp",
        "input_shape": [3, 2],
        "num_classes": 3,
        "layers": [
            {"type": "flatten"},
            {"type": "dense", "features": 8},
            {"type": "sigmoid"},
            {"type": "dense", "features": 8},
            {"type": "tanh"},
            {"type": "dense", "features": 8},
            {"type": "relu"},
            {"type": "dense", "features": 3},
        ],
    }
)
# a fixed scattering transform (no parameters, FFTs of the record) before an mlp head
SPEC_SCATTER = ModelSpec.from_dict(
    {
        "family": "scatter",
        "input_shape": [8, 8, 1],
        "num_classes": 3,
        "layers": [
            {"type": "scattering", "J": 1, "orientations": 4},
            {"type": "dense", "features": 6},
            {"type": "tanh"},
            {"type": "dense", "features": 3},
        ],
    }
)


class _Positions(nn.Module):
    """A dense layer over positions (Gram or materialised) and an input-dilated conv (lax's im2col)."""

    @nn.compact
    def __call__(self, x):  # (B, 6, 4)
        h = nn.Dense(24)(x)  # (1, 6, 24) per example: K*O = 96 > P^2 = 36
        h = nn.Conv(3, kernel_size=(2,), input_dilation=2, padding=((1, 1),))(jnp.tanh(h))
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


def _models():
    for spec in (SPEC_CNN, SPEC_MLP, ATTACK_SPEC, SPEC_SCATTER):
        yield spec.input_shape, make_loss_fn(spec), init_params(spec, jax.random.key(1))
    module = _Positions()
    yield (6, 4), _custom_loss(module), module.init(jax.random.key(1), jnp.zeros((1, 6, 4)))["params"]


def _adversarial(params, rng: np.random.Generator, case: int):
    """Crafted parameters: per-leaf scales over 1e-20..1e18 with random signs; sign patterns that
    alternate along a leaf's leading axis (positions of a flattened map cancel); a few huge leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = []
    for leaf in leaves:
        v = np.asarray(leaf, np.float64) * rng.normal(size=leaf.shape)
        if case % 3 == 0:
            v = v * 10.0 ** rng.choice([-20, -10, -6, 0, 0, 3, 6, 12, 18])
        elif case % 3 == 1:
            alternating = np.where(np.arange(leaf.shape[0]) % 2 == 0, 1.0, -1.0).reshape((-1,) + (1,) * (leaf.ndim - 1))
            v = (10.0 ** rng.uniform(0, 6)) * alternating * np.abs(v).mean() + 1e-3 * v
        else:
            v = v * 10.0 ** rng.uniform(-3, 9)
        out.append(jnp.asarray(np.clip(v, -3e38, 3e38), jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


def _records(shape, rng: np.random.Generator):
    yield {"x": np.zeros(shape, np.float32), "y": np.int32(0)}  # blank
    yield {"x": rng.normal(size=shape).astype(np.float32), "y": np.int32(1)}
    yield {"x": (10.0 ** rng.uniform(6, 18) * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32), "y": np.int32(2)}


@pytest.mark.parametrize("allowance", ["default", "gram"])
def test_no_record_adds_more_than_the_clip_bound(allowance, monkeypatch):
    if allowance == "gram":  # the Gram trick wherever a per-example kernel gradient is larger than P^2
        monkeypatch.setattr(fast_clipping, "_MATERIALISE_FLOATS", 0)
    strategies, routes = set(), set()
    for model, (shape, loss_fn, params) in enumerate(_models()):
        batch = {"x": jnp.zeros((1, *shape)), "y": jnp.zeros((1,), jnp.int32)}
        plan = fast_clipping.plan(loss_fn, params, batch)
        assert plan.supported, plan.reason
        strategies |= {layer.strategy for layer in plan.layers}
        routes |= {layer.patches for layer in plan.layers if layer.kind == "conv"}
        rng = np.random.default_rng(model)
        crafted, records = [], []
        for case in range(6):
            theta = _adversarial(params, rng, case)
            for record in _records(shape, rng):
                crafted.append(theta)
                records.append(jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], record))
        crafted = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *crafted)
        records = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *records)
        for method in ("fast", "vmap"):
            # One record per batch (its contribution), many (params, record) pairs at once.
            totals, norms = jax.vmap(clipped_grad(loss_fn, CLIP, method=method))(crafted, records)
            leaves = [np.asarray(v, np.float64).reshape(v.shape[0], -1) for v in jax.tree_util.tree_leaves(totals)]
            contributions = np.sqrt(sum(np.sum(v**2, axis=1) for v in leaves))
            assert np.all(np.isfinite(contributions))
            worst = int(np.argmax(contributions))
            assert contributions[worst] <= LIMIT, (model, method, worst, contributions[worst], norms[worst])
    expected = {"outer", "materialise", "gram"} if allowance == "gram" else {"outer", "materialise"}
    assert strategies >= expected, strategies
    assert routes == {"slice", "staged", "lax"}, routes


def test_the_models_cover_every_layer_type():
    used = {layer["type"] for spec in (SPEC_CNN, SPEC_MLP, ATTACK_SPEC, SPEC_SCATTER) for layer in spec.layers}
    assert used == set(LAYER_TYPES) and set(ACTIVATIONS) <= used


@pytest.mark.parametrize("method", ["fast", "vmap"])
def test_non_finite_parameters_contribute_nothing(method):
    """Non-finite -> zero contribution, and the reported norm is not finite (documented in dp/clipping.py)."""
    loss_fn = make_loss_fn(SPEC_CNN)
    fn = clipped_grad(loss_fn, CLIP, method=method)
    params = init_params(SPEC_CNN, jax.random.key(1))
    record = {"x": np.ones(SPEC_CNN.input_shape, np.float32), "y": np.int32(0)}
    for bad in (np.nan, np.inf, -np.inf):
        for layer, name in (("conv_0", "kernel"), ("conv_3", "bias"), ("dense_9", "kernel")):
            crafted = jax.tree_util.tree_map(np.array, params)
            crafted[layer][name].reshape(-1)[0] = bad
            contribution, reported = _contribution(fn, crafted, record)
            assert contribution == 0.0 and not np.isfinite(reported), (bad, layer, contribution, reported)


def test_a_crafted_record_in_a_batch_adds_at_most_the_bound():
    """The bound covers the record's share of the batch sum's rounding too (gamma(B*P) in the bound)."""
    loss_fn = make_loss_fn(ATTACK_SPEC)
    fast = clipped_grad(loss_fn, CLIP, method="fast")
    rng = np.random.default_rng(5)
    x = np.concatenate([np.zeros((1, 8, 8, 1)), rng.normal(size=(5, 8, 8, 1))]).astype(np.float32)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(np.arange(6) % 10, jnp.int32)}
    for seed in range(4):
        params = _attack_params(1e4, seed)
        with_it, _ = fast(params, batch)
        without, _ = fast(params, batch, jnp.asarray([False] + [True] * 5))
        difference = _norm(
            jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), with_it, without)
        )
        assert difference <= LIMIT, (seed, difference)
