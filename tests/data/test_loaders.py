import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedjax_room.data import Dataset, Schema, load_dataset, save_dataset, schema_sidecar
from fedjax_room.errors import DataError, SchemaError

FORMATS = [".npz", ".csv", ".parquet"]


def tabular(classes=(0, 1)):
    rng = np.random.default_rng(1)
    schema = Schema(features=("amount", "hour", "risk"), feature_shape=(3,), label="is_fraud", classes=classes)
    return Dataset(rng.normal(size=(30, 3)), rng.integers(0, len(classes), 30), schema)


def image():
    rng = np.random.default_rng(2)
    names = tuple(f"px_{i}" for i in range(12))
    schema = Schema(features=names, feature_shape=(2, 3, 2), label="digit", classes=tuple(range(10)))
    return Dataset(rng.random((8, 2, 3, 2)), rng.integers(0, 10, 8), schema)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("make", [tabular, image, lambda: tabular(("legit", "fraud"))], ids=["tab", "img", "str"])
def test_round_trip(tmp_path, suffix, make):
    ds = make()
    path = tmp_path / f"data{suffix}"
    save_dataset(ds, path)
    for schema in (None, ds.schema, ds.schema.to_dict()):
        back = load_dataset(path, schema)
        assert back.schema == ds.schema
        np.testing.assert_array_equal(back.x, ds.x)
        np.testing.assert_array_equal(back.y, ds.y)


def write_csv(path, text):
    path.write_text(text)
    return path


SCHEMA = {"features": ["a", "b"], "label": "y", "classes": [0, 1]}


def test_csv_with_declared_schema_and_extra_columns(tmp_path):
    p = write_csv(tmp_path / "d.csv", "id,a,b,y\n1,0.5,2,1\n2,1.5,3,0\n")
    ds = load_dataset(p, SCHEMA)
    np.testing.assert_allclose(ds.x, [[0.5, 2], [1.5, 3]])
    assert list(ds.y) == [1, 0]


def test_csv_schema_inferred_without_sidecar(tmp_path):
    p = write_csv(tmp_path / "d.csv", "a,b,label\n0.5,2,cat\n1.5,3,dog\n2.5,3,cat\n")
    ds = load_dataset(p)
    assert ds.schema.features == ("a", "b") and ds.schema.label == "label"
    assert ds.schema.classes == ("cat", "dog") and list(ds.y) == [0, 1, 0]


@pytest.mark.parametrize(
    "text, match",
    [
        ("a,y\n1,0\n2,1\n", r"d\.csv: missing column\(s\) 'b'"),
        ("a,b,y\n1,x,0\n2,y,1\n", r"d\.csv: feature column 'b' has type string"),
        ("a,b,y\n1,,0\n2,3,1\n", r"d\.csv: feature column 'b' has 1 missing value\(s\) \(first at row 0\)"),
        ("a,b,y\n1,nan,0\n2,3,1\n", r"feature column 'b' has (NaN|1 missing)"),
        ("a,b,y\n1,2,0\n2,3,7\n", r"d\.csv: label column 'y' has values \[7\] that are not among"),
        ("a,b,y\n1,2,0\n2,3,\n", r"d\.csv: label column 'y' has 1 missing"),
    ],
)
def test_csv_errors_name_file_and_column(tmp_path, text, match):
    p = write_csv(tmp_path / "d.csv", text)
    with pytest.raises(SchemaError, match=match):
        load_dataset(p, SCHEMA)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(tmp_path / "data.xlsx")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet"):
        load_dataset(bad)
    badz = tmp_path / "bad.npz"
    badz.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"bad\.npz: not a readable"):
        load_dataset(badz)


def test_npz_refuses_pickled_objects(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([[1.0], [2.0]]), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_dataset(p)


def test_npz_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 2)), y=np.array([0, 1, 5]))
    with pytest.raises(SchemaError, match=r"label column 'y' has values \[5\]"):
        load_dataset(p, SCHEMA)
    np.savez(p, x=np.zeros((3, 4)), y=np.array([0, 1, 1]))
    with pytest.raises(SchemaError, match="example shape"):
        load_dataset(p, SCHEMA)
    x = np.zeros((3, 2))
    x[1, 1] = np.nan
    np.savez(p, x=x, y=np.array([0, 1, 1]))
    with pytest.raises(SchemaError, match="feature 'b' has a NaN or infinite value at row 1"):
        load_dataset(p, SCHEMA)
    np.savez(p, x=np.array([["a", "b"]] * 3), y=np.array([0, 1, 1]))
    with pytest.raises(SchemaError, match="dtype"):
        load_dataset(p, SCHEMA)
    np.savez(p, x=np.zeros((3, 2)))
    with pytest.raises(SchemaError, match="no label array"):
        load_dataset(p, SCHEMA)


def test_npz_columns_and_flat_images(tmp_path):
    p = tmp_path / "cols.npz"
    np.savez(p, a=np.array([1.0, 2.0]), b=np.array([3.0, 4.0]), y=np.array([1, 0]))
    ds = load_dataset(p, SCHEMA)
    np.testing.assert_allclose(ds.x, [[1, 3], [2, 4]])
    p = tmp_path / "flat.npz"
    np.savez(p, x=np.ones((5, 4)), y=np.arange(5) % 2)
    schema = {"features": ["p0", "p1", "p2", "p3"], "feature_shape": [2, 2, 1], "label": "y", "classes": [0, 1]}
    assert load_dataset(p, schema).x.shape == (5, 2, 2, 1)


def test_parquet_errors(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1.0, None], "b": [1, 2], "y": [0, 1]}), p)
    match = r"d\.parquet: feature column 'a' has 1 missing value\(s\) \(first at row 1\)"
    with pytest.raises(SchemaError, match=match):
        load_dataset(p, SCHEMA)
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1]}), p)
    with pytest.raises(SchemaError, match=r"missing column\(s\) 'b'"):
        load_dataset(p, SCHEMA)


def test_bad_sidecar(tmp_path):
    p = write_csv(tmp_path / "d.csv", "a,b,y\n1,2,0\n")
    schema_sidecar(p).write_text(json.dumps({"features": ["a"], "label": "a", "classes": [0, 1]}))
    with pytest.raises(SchemaError, match=r"schema\.json"):
        load_dataset(p)
