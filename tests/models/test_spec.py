import jax
import jax.numpy as jnp
import pytest

from fedjax_room.errors import ModelSpecError
from fedjax_room.models import ModelSpec, cnn, init_params, logistic, make_loss_fn, mlp, spec_hash


def test_param_count_matches_flax_for_each_family():
    for spec in (
        logistic([30], 2),
        mlp([64], 10, hidden=[32, 16]),
        cnn([28, 28, 1], 10, conv=[(16, 8, 2), (32, 4, 2)], dense=[32], activation="tanh", pool=None),
        cnn([8, 8, 1], 10),
    ):
        params = init_params(spec, jax.random.key(0))
        assert sum(p.size for p in jax.tree.leaves(params)) == spec.param_count()


def test_hash_is_stable_and_sensitive():
    a = mlp([64], 10, hidden=[32])
    b = ModelSpec.from_json(a.to_json())
    assert spec_hash(a) == spec_hash(b) == spec_hash(a.to_dict())
    assert len(spec_hash(a)) == 64
    assert spec_hash(mlp([64], 10, hidden=[33])) != spec_hash(a)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"family": "mlp", "input_shape": [4], "num_classes": 2, "layers": [{"type": "lambda"}]}, "unknown layer"),
        (
            {"family": "mlp", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 3}]},
            "last layer",
        ),
        (
            {"family": "mlp", "input_shape": [4, 4, 1], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]},
            "flatten",
        ),
        (
            {"family": "mlp", "input_shape": [4], "num_classes": 2, "layers": [{"type": "conv", "features": 2}]},
            "not allowed",
        ),
        (
            {
                "family": "cnn",
                "input_shape": [2, 2, 1],
                "num_classes": 2,
                "layers": [{"type": "conv", "features": 2, "kernel": 3, "padding": "VALID"}],
            },
            "nothing",
        ),
        ({"family": "rnn", "input_shape": [4], "num_classes": 2, "layers": []}, "unknown model family"),
        (
            {
                "family": "mlp",
                "input_shape": [4],
                "num_classes": 2,
                "layers": [{"type": "dense", "features": 2, "code": "import os"}],
            },
            "unexpected keys",
        ),
    ],
)
def test_bad_specs_are_clear_errors(bad, match):
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec.from_dict(bad)


def test_loss_is_mean_cross_entropy():
    spec = logistic([3], 2)
    params = jax.tree.map(jnp.zeros_like, init_params(spec, jax.random.key(1)))
    loss = make_loss_fn(spec)(params, {"x": jnp.ones((5, 3)), "y": jnp.zeros((5,), jnp.int32)})
    assert jnp.allclose(loss, jnp.log(2.0))
