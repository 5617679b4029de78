import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema, default_feature_names
from fedjax_room.errors import ConfigError, DataError, SchemaError


def small(n=40, classes=(0, 1, 2)):
    rng = np.random.default_rng(0)
    schema = Schema(features=("a", "b", "c"), feature_shape=(3,), label="y", classes=classes)
    return Dataset(rng.normal(size=(n, 3)), np.arange(n) % len(classes), schema)


def test_schema_round_trip_and_defaults():
    s = Schema.from_dict({"features": ["a", "b"], "label": "t", "classes": ["no", "yes"]})
    assert s.feature_shape == (2,) and s.num_classes == 2 and s.num_features == 2
    assert Schema.from_dict(s.to_dict()) == s
    img = Schema(default_feature_names((2, 2, 1)), (2, 2, 1), "digit", tuple(range(10)))
    assert img.features == ("px_0", "px_1", "px_2", "px_3")
    assert Schema.from_dict(img.to_dict()) == img


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"features": [], "label": "y", "classes": [0, 1]}, "non-empty"),
        ({"features": ["a", "a"], "label": "y", "classes": [0, 1]}, "duplicate feature"),
        ({"features": ["a"], "label": "a", "classes": [0, 1]}, "also listed"),
        ({"features": ["a"], "label": "y", "classes": [0]}, "at least two"),
        ({"features": ["a"], "label": "y", "classes": [0, 0]}, "duplicate values"),
        ({"features": ["a"], "label": "y", "classes": [0, "x"]}, "mixes"),
        ({"features": ["a", "b"], "feature_shape": [3], "label": "y", "classes": [0, 1]}, "holds 3 values"),
        ({"features": ["a"], "label": "y", "classes": [0, 1], "extra": 1}, "unexpected keys"),
        ({"features": ["a"], "classes": [0, 1]}, "missing"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_schema(bad, match):
    with pytest.raises(SchemaError, match=match):
        Schema.from_dict(bad)


def test_dataset_validates():
    ds = small()
    assert len(ds) == 40 and ds.x.dtype == np.float32 and ds.y.dtype == np.int32
    assert list(ds.class_counts()) == [14, 13, 13]
    schema = ds.schema
    with pytest.raises(SchemaError, match="shape"):
        Dataset(np.zeros((4, 2)), np.zeros(4, int), schema)
    with pytest.raises(SchemaError, match="labels"):
        Dataset(np.zeros((4, 3)), np.zeros(5, int), schema)
    with pytest.raises(DataError, match="NaN"):
        Dataset(np.full((4, 3), np.nan), np.zeros(4, int), schema)
    with pytest.raises(DataError, match="class indices"):
        Dataset(np.zeros((4, 3)), np.array([0, 1, 2, 3]), schema)
    with pytest.raises(SchemaError, match="integer"):
        Dataset(np.zeros((4, 3)), np.zeros(4), schema)


def test_split_is_stratified_deterministic_and_disjoint():
    ds = small(100)
    train, test = ds.split(0.2, seed=3)
    assert len(train) + len(test) == 100 and 19 <= len(test) <= 21
    again, _ = ds.split(0.2, seed=3)
    np.testing.assert_array_equal(train.x, again.x)
    other, _ = ds.split(0.2, seed=4)
    assert not np.array_equal(train.x, other.x)
    rows = {tuple(r) for r in train.x} | {tuple(r) for r in test.x}
    assert len(rows) == 100
    assert min(test.class_counts()) >= 6
    with pytest.raises(ConfigError):
        ds.split(1.0)


def test_subset():
    ds = small()
    sub = ds.subset([3, 1, 3])
    np.testing.assert_array_equal(sub.x, ds.x[[3, 1, 3]])
    assert len(ds.subset(np.zeros(40, bool))) == 0
    with pytest.raises(ConfigError):
        ds.subset([40])
    assert ds.describe() == {"schema": ds.schema.to_dict(), "count": 40}
