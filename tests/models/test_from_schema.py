"""One spec-from-schema builder: the class count comes from the schema, never a guess."""

from __future__ import annotations

import pytest

from fedjax_room.data import Schema
from fedjax_room.errors import ModelSpecError
from fedjax_room.models.from_schema import FAMILIES, image_shape, schema_dims, spec_from_schema

DIGITS = {"features": [f"p{i}" for i in range(64)], "feature_shape": [64], "label": "digit", "classes": list(range(10))}


def _out(spec):
    return [layer["features"] for layer in spec.layers if layer["type"] in ("dense", "conv")]


def test_the_class_count_and_input_come_from_the_schema():
    assert schema_dims(DIGITS) == ((64,), 10)
    assert schema_dims({"features": ["a", "b", "c"], "classes": ["no", "yes", "maybe"]}) == ((3,), 3)
    obj = Schema(features=("a", "b"), feature_shape=(2,), label="y", classes=(0, 1, 2, 3))
    assert schema_dims(obj) == ((2,), 4)
    spec = spec_from_schema(DIGITS, "logistic")
    assert spec.input_shape == (64,) and spec.num_classes == 10 and _out(spec) == [10]
    assert _out(spec_from_schema(DIGITS)) == [64, 10]  # mlp by default
    assert _out(spec_from_schema(DIGITS, "mlp", hidden=[8, 4])) == [8, 4, 10]


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"feature_shape": [4]}, "no classes"),  # the REST route used to assume 2 here
        ({"feature_shape": [4], "classes": [1]}, "fewer than two"),
        ({"classes": [0, 1]}, "no feature_shape"),
        ({"feature_shape": ["x"], "classes": [0, 1]}, "not a list of integers"),
        (None, "no data schema"),
    ],
)
def test_a_schema_without_its_dims_is_refused(schema, words):
    with pytest.raises(ModelSpecError, match=words):
        spec_from_schema(schema, "logistic")


def test_cnn_needs_images_and_families_are_checked():
    image = {"feature_shape": [8, 8, 1], "classes": list(range(10))}
    spec = spec_from_schema(image, "cnn", conv=[4, 8], hidden=[16])
    assert spec.family == "cnn" and _out(spec) == [4, 8, 16, 10]
    with pytest.raises(ModelSpecError, match=r"cnn needs \(height, width, channels\)"):
        spec_from_schema(DIGITS, "cnn")
    with pytest.raises(ModelSpecError, match="rnn"):
        spec_from_schema(DIGITS, "rnn")
    assert set(FAMILIES) == {"logistic", "mlp", "cnn", "scatter"}
    assert image_shape([64]) == (8, 8, 1) and image_shape([28, 28, 1]) == (28, 28, 1) and image_shape([30]) is None
