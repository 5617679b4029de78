"""A scatter model's fixed first layer is computed once per dataset; what the trainer computes on the head is
exactly what the whole model gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.data import Dataset, load_builtin
from fedjax_room.dp.clipping import make_clipper
from fedjax_room.local import LocalTrainer, clipped_sum, evaluate, train_central
from fedjax_room.local.features import head_spec, prepare
from fedjax_room.models import init_params, make_loss_fn, make_predict_fn, mlp, scatter
from fedjax_room.models.scattering import transform


def _digits(n: int = 200, seed: int = 0) -> Dataset:
    return load_builtin("digits", seed=seed).subset(np.arange(n))


def test_the_clipped_sum_on_the_head_is_the_whole_models():
    data = _digits()
    for spec in (scatter([64], 10, J=1), scatter([64], 10, J=1, hidden=[8])):
        params = init_params(spec, jax.random.key(3))
        got = clipped_sum(spec, params, data, clip_norm=0.1, chunk=64)
        whole = make_clipper(make_loss_fn(spec), 0.1)  # per-example gradients through the scattering itself
        want, _, _, _ = whole(params, {"x": jnp.asarray(data.x), "y": jnp.asarray(data.y)}, jnp.ones(len(data), bool))
        assert jax.tree.structure(got) == jax.tree.structure(dict(want))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(dict(want)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_evaluation_and_training_give_the_whole_models_parameters_and_figures():
    data = _digits()
    spec = scatter([64], 10, J=1)
    params = train_central(spec, data, 3, seed=0)
    assert set(params) == {"dense_1"}  # the whole model's names, not the head's
    logits = make_predict_fn(spec)(params, jnp.asarray(data.x))
    correct = int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(data.y)))
    assert evaluate(spec, params, data).correct == correct
    trainer = LocalTrainer(spec, clip_norm=0.1, noise_multiplier=0.5, batch_size=64, learning_rate=1.0)
    new, stats = trainer.train(params, data, 2, seed=1)
    assert jax.tree.structure(new) == jax.tree.structure(params) and stats.steps == 2
    assert not np.allclose(new["dense_1"]["kernel"], params["dense_1"]["kernel"])


def test_features_are_computed_once_per_dataset_and_never_served_for_another():
    spec = scatter([64], 10, J=1)
    a, b = _digits(100, seed=0), _digits(100, seed=1)
    first = prepare(spec, a)
    assert prepare(spec, a).dataset is first.dataset  # cached: the transform ran once
    other = prepare(spec, b)
    assert other.dataset is not first.dataset
    fresh = Dataset(np.array(b.x), np.array(b.y), b.schema)  # equal contents, another object
    np.testing.assert_allclose(prepare(spec, fresh).dataset.x, other.dataset.x, rtol=1e-6)
    del a, first
    fn = transform([64], spec.layers[0])
    for seed in range(12):  # more datasets than the cache holds, some perhaps at a freed id
        d = _digits(50, seed=seed)
        np.testing.assert_allclose(prepare(spec, d).dataset.x, np.asarray(fn(jnp.asarray(d.x))), rtol=1e-5, atol=1e-5)


def test_other_models_are_trained_as_they_are():
    spec = mlp([64], 10, hidden=[8])
    data = _digits(50)
    prepared = prepare(spec, data)
    assert prepared.spec is spec and prepared.dataset is data and prepared.offset == 0
    assert head_spec(spec) is spec
    head = head_spec(scatter([64], 10, J=1))
    assert head.family == "logistic" and head.input_shape == (144,)
    assert head_spec(scatter([64], 10, J=1, hidden=[8])).family == "mlp"
