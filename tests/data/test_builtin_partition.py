import numpy as np
import pytest

from fedjax_room.data import BUILTIN_DATASETS, FRAUD_FEATURES, load_builtin, partition
from fedjax_room.errors import ConfigError


@pytest.mark.parametrize(
    "name, n, shape, classes",
    [
        ("digits", 1797, (64,), 10),
        ("breast_cancer", 569, (30,), 2),
        ("mnist", 5000, (28, 28, 1), 10),
        ("fraud", 20000, (10,), 2),
    ],  # fmt: skip
)
def test_builtin_shapes(name, n, shape, classes):
    ds = load_builtin(name)
    assert len(ds) == n and ds.x.shape[1:] == shape and ds.num_classes == classes
    assert ds.x.dtype == np.float32 and np.isfinite(ds.x).all()
    assert (ds.class_counts() > 0).all()
    if name in ("digits", "mnist"):
        assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    else:
        np.testing.assert_allclose(ds.x.mean(axis=0), 0, atol=1e-4)


def test_builtin_deterministic_and_names():
    assert set(BUILTIN_DATASETS) == {"digits", "breast_cancer", "mnist", "fraud"}
    a, b, c = load_builtin("fraud", seed=1), load_builtin("fraud", seed=1), load_builtin("fraud", seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.schema.features == FRAUD_FEATURES and a.schema.label == "is_fraud"
    with pytest.raises(ConfigError, match="unknown built-in"):
        load_builtin("imagenet")


def test_fraud_is_imbalanced_and_learnable():
    ds = load_builtin("fraud")
    rate = ds.y.mean()
    assert 0.015 <= rate <= 0.025
    # A single feature direction already separates fraud somewhat: a weak linear signal exists.
    train, test = ds.split(0.25, seed=0)
    w = np.linalg.lstsq(np.c_[train.x, np.ones(len(train))], train.y - train.y.mean(), rcond=None)[0]
    score = np.c_[test.x, np.ones(len(test))] @ w
    top = np.argsort(-score)[: int(test.y.sum())]
    assert test.y[top].mean() > 0.3  # precision at k far above the 2% base rate


def test_iid_partition():
    ds = load_builtin("digits")
    sites = partition(ds, 4, seed=0)
    assert [len(s) for s in sites] == [450, 449, 449, 449]
    rows = np.concatenate([s.x for s in sites])
    assert len(np.unique(rows, axis=0)) == len(np.unique(ds.x, axis=0))
    again = partition(ds, 4, seed=0)
    for s, t in zip(sites, again, strict=True):
        np.testing.assert_array_equal(s.x, t.x)


def dominance(sites, k=2):
    return np.mean([np.sort(s.class_counts())[::-1][:k].sum() / len(s) for s in sites])


def test_dirichlet_skew():
    ds = load_builtin("digits")
    skewed = partition(ds, 5, alpha=0.1, seed=0)
    near_iid = partition(ds, 5, alpha=100.0, seed=0)
    assert sum(len(s) for s in skewed) == len(ds)
    assert dominance(skewed) > 0.7  # two labels dominate each site
    assert dominance(near_iid) < 0.3
    assert min(len(s) for s in skewed) >= 10


def test_dirichlet_min_size_fallback_and_determinism():
    ds = load_builtin("breast_cancer")
    sites = partition(ds, 20, alpha=0.01, seed=1, min_size=15)
    assert min(len(s) for s in sites) >= 15 and sum(len(s) for s in sites) == len(ds)
    again = partition(ds, 20, alpha=0.01, seed=1, min_size=15)
    for s, t in zip(sites, again, strict=True):
        np.testing.assert_array_equal(s.y, t.y)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_sites=0),
        dict(num_sites=10_000),
        dict(num_sites=3, alpha=0.0),
        dict(num_sites=3, alpha=-1),
        dict(num_sites=3, min_size=1000),
    ],  # fmt: skip
)
def test_partition_bad_args(kwargs):
    with pytest.raises(ConfigError):
        partition(load_builtin("breast_cancer"), **kwargs)
