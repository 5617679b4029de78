import jax
import numpy as np
import pytest
from dp_accounting import NonPrivateDpEvent

from fedjax_room.data import Dataset, Schema, load_builtin
from fedjax_room.dp.accounting import dpsgd_event
from fedjax_room.errors import ConfigError, DataError
from fedjax_room.local import EvalResult, LocalTrainer, evaluate, train_central
from fedjax_room.models import init_params, logistic, make_predict_fn, mlp


@pytest.fixture(scope="module")
def digits():
    return load_builtin("digits").split(0.2, seed=0)


SPEC = mlp([64], 10, hidden=[32], activation="tanh")


def trainer(noise=1.0, **kw):
    args = dict(clip_norm=0.5, noise_multiplier=noise, batch_size=128, learning_rate=4.0)
    args.update(kw)
    return LocalTrainer(SPEC, **args)


def test_dp_training_learns_and_reuses_the_compiled_step(digits):
    train, test = digits
    t = trainer()
    params0 = init_params(SPEC, jax.random.key(0))
    before = evaluate(SPEC, params0, test).accuracy
    params, stats = t.train(params0, train, 60, seed=1)
    after = evaluate(SPEC, params, test).accuracy
    assert before < 0.3 and after > 0.75
    assert stats.steps == 60 and stats.num_examples == len(train)
    assert stats.sampling_rate == pytest.approx(128 / len(train))
    assert stats.padded_batch_size >= 128 and 0 <= stats.clipped_fraction <= 1
    assert 0.8 * 60 * 128 < stats.examples_seen < 1.2 * 60 * 128  # Poisson batches average 128
    # A second round (another seed) reuses the jitted step: one compilation.
    params, _ = t.train(params, train, 5, seed=2)
    (step,) = t._step_cache.values()
    assert step._cache_size() == 1


def test_deterministic_in_seed(digits):
    train, _ = digits
    t = trainer()
    p0 = init_params(SPEC, jax.random.key(0))
    a, _ = t.train(p0, train, 3, seed=7)
    b, _ = t.train(p0, train, 3, seed=7)
    c, _ = t.train(p0, train, 3, seed=8)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True))
    fresh, _ = t.train(p0, train, 1, seed=None)  # a secret seed
    assert jax.tree.structure(fresh) == jax.tree.structure(p0)


def test_zero_steps_is_identity(digits):
    train, _ = digits
    p0 = init_params(SPEC, jax.random.key(0))
    p, stats = trainer().train(p0, train, 0, seed=0)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(p0), strict=True):
        np.testing.assert_array_equal(x, y)
    assert stats.examples_seen == 0


def test_event():
    t = trainer(noise=1.3)
    assert t.event(1280, 50) == dpsgd_event(1.3, 0.1, 50)
    assert t.event(100, 5) == dpsgd_event(1.3, 1.0, 5)  # batch larger than the data: q = 1
    assert trainer(noise=0.0).event(1000, 5) == NonPrivateDpEvent()


def test_evaluate_matches_numpy(digits):
    _, test = digits
    params = init_params(SPEC, jax.random.key(3))
    result = evaluate(SPEC, params, test)
    logits = np.asarray(make_predict_fn(SPEC)(params, test.x))
    assert isinstance(result, EvalResult)
    assert result.count == len(test)
    assert result.correct == int((logits.argmax(-1) == test.y).sum())
    shifted = logits - logits.max(-1, keepdims=True)
    nll = -(shifted[np.arange(len(test)), test.y] - np.log(np.exp(shifted).sum(-1)))
    assert result.loss == pytest.approx(nll.mean(), rel=1e-4)
    assert result.accuracy == result.correct / result.count
    assert result.to_dict()["accuracy"] == result.accuracy


def test_train_central_baseline(digits):
    train, test = digits
    spec = logistic([64], 10)
    params = train_central(spec, train, 5, seed=0)
    assert evaluate(spec, params, test).accuracy > 0.85


def test_mismatches_and_bad_args(digits):
    train, _ = digits
    other = logistic([30], 2)
    with pytest.raises(DataError, match="shape"):
        LocalTrainer(other, clip_norm=1, noise_multiplier=1, batch_size=8, learning_rate=0.1).train(
            init_params(other, jax.random.key(0)), train, 1, 0
        )
    wrong_classes = Dataset(train.x[:20], train.y[:20] % 2, Schema(train.schema.features, (64,), "d", (0, 1)))
    with pytest.raises(DataError, match="classes"):
        evaluate(SPEC, init_params(SPEC, jax.random.key(0)), wrong_classes)
    for kw in (dict(clip_norm=0), dict(noise=-1.0), dict(batch_size=0), dict(learning_rate=float("nan")),
               dict(optimizer="adam")):  # fmt: skip
        with pytest.raises(ConfigError):
            trainer(**kw)
    with pytest.raises(ConfigError):
        trainer().train(init_params(SPEC, jax.random.key(0)), train, -1, 0)
    with pytest.raises(ConfigError):
        trainer().train(init_params(SPEC, jax.random.key(0)), train, 1, seed="abc")
