"""A site's held-out split moves no other record when one is added (item 5); a site's schema is declared (item 9)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema, load_dataset, save_dataset
from fedjax_room.errors import ConfigError, DataError, SchemaError

SCHEMA = Schema(features=("a", "b", "c"), feature_shape=(3,), label="y", classes=(0, 1))
KEY = bytes(range(32))


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return Dataset(x, (x[:, 0] > 0).astype(np.int32), SCHEMA)


def _rows(ds):
    return {(r.tobytes(), int(c)) for r, c in zip(ds.x, ds.y, strict=True)}


def test_adding_one_record_moves_no_other_record():
    base = _data(1000)
    extra = _data(1, seed=99)
    grown = Dataset(
        np.concatenate([base.x[:500], extra.x, base.x[500:]]),
        np.concatenate([base.y[:500], extra.y, base.y[500:]]),
        SCHEMA,
    )
    train, held = base.split_by_key(0.2, KEY)
    train2, held2 = grown.split_by_key(0.2, KEY)
    assert _rows(train) <= _rows(train2) and _rows(held) <= _rows(held2)
    assert len(train2) + len(held2) == 1001 and (_rows(train2) | _rows(held2)) - (_rows(train) | _rows(held)) == _rows(
        extra
    )
    assert 150 <= len(held) <= 250  # about the fraction asked for


def test_the_side_depends_on_the_key():
    base = _data(400)
    a = _rows(base.split_by_key(0.3, KEY)[1])
    b = _rows(base.split_by_key(0.3, bytes(32))[1])
    assert a != b


def test_split_by_key_errors():
    with pytest.raises(ConfigError, match="test_fraction"):
        _data(10).split_by_key(1.5, KEY)
    with pytest.raises(ConfigError, match="secret bytes"):
        _data(10).split_by_key(0.2, b"short")
    with pytest.raises(DataError, match="one side would be empty"):
        _data(1).split_by_key(0.2, KEY)


def test_a_site_load_refuses_an_undeclared_schema(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "plain.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(SchemaError, match="declare") as info:
        load_dataset(tmp_path / "plain.npz", infer=False)
    assert "--schema" in info.value.message and "never read off" in info.value.message
    # without infer=False (analysis tools), inference still works
    assert load_dataset(tmp_path / "plain.npz").schema.classes == (0, 1)
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(SchemaError, match=r"t\.csv\.schema\.json"):
        load_dataset(csv, infer=False)


def test_a_declared_schema_does_not_follow_the_data(tmp_path):
    declared = Schema(features=("a", "b", "c"), feature_shape=(3,), label="y", classes=(0, 1, 7))
    base = _data(50)
    rare = Dataset(np.concatenate([base.x, base.x[:1]]), np.concatenate([base.y, [2]]), declared)
    save_dataset(Dataset(base.x, base.y, declared), tmp_path / "a.csv")
    save_dataset(rare, tmp_path / "b.csv")
    a = load_dataset(tmp_path / "a.csv", infer=False)
    b = load_dataset(tmp_path / "b.csv", infer=False)
    assert a.schema == b.schema == declared
    sidecar = json.loads((tmp_path / "a.csv.schema.json").read_text())
    assert sidecar["classes"] == [0, 1, 7]
