"""The declared shape of a site's data: feature columns, their tensor shape, the label and its classes.

A :class:`Schema` is plain JSON-able data (it is what an analyst may see of a
site's data). ``features`` names one column per scalar feature, so
``len(features) == prod(feature_shape)``; image data keeps its tensor shape in
``feature_shape`` (e.g. ``(28, 28, 1)``) and names its pixels ``px_0 ...``.
``classes`` lists the label values in order; a dataset's ``y`` holds the index of
each example's class in this tuple.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedjax_room.errors import SchemaError

__all__ = ["Schema", "default_feature_names"]

#: Limits that keep a schema from a file or the wire small and sane.
_MAX_FEATURES = 1 << 20
_MAX_CLASSES = 1 << 16


def default_feature_names(feature_shape: Sequence[int], prefix: str = "px_") -> tuple[str, ...]:
    """``("px_0", "px_1", ...)``: one name per scalar of a tensor feature."""
    return tuple(f"{prefix}{i}" for i in range(math.prod(feature_shape)))


def _class_value(value: Any, where: str) -> int | str:
    if isinstance(value, bool):
        raise SchemaError(f"{where}: class values must be integers or strings, got a boolean {value!r}")
    if isinstance(value, int | str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    # numpy scalars
    if hasattr(value, "item"):
        return _class_value(value.item(), where)
    raise SchemaError(f"{where}: class values must be integers or strings, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Schema:
    """Declared layout of a dataset. Build one directly or with :meth:`from_dict` (validated either way)."""

    features: tuple[str, ...]
    feature_shape: tuple[int, ...]
    label: str
    classes: tuple[int | str, ...]

    def __post_init__(self) -> None:
        where = "schema"
        features = self.features
        if isinstance(features, str) or not isinstance(features, Sequence) or not features:
            raise SchemaError(f"{where}: 'features' must be a non-empty list of column names, got {features!r}")
        if len(features) > _MAX_FEATURES:
            raise SchemaError(f"{where}: {len(features)} features is more than the limit {_MAX_FEATURES}")
        for name in features:
            if not isinstance(name, str) or not name:
                raise SchemaError(f"{where}: feature names must be non-empty strings, got {name!r}")
        if len(set(features)) != len(features):
            dupes = sorted({n for n in features if features.count(n) > 1})
            raise SchemaError(f"{where}: duplicate feature names {dupes[:5]}; give each column a unique name")
        object.__setattr__(self, "features", tuple(features))

        shape = self.feature_shape
        if shape is None:
            shape = (len(features),)
        if isinstance(shape, int):
            shape = (shape,)
        if (
            isinstance(shape, str)
            or not isinstance(shape, Sequence)
            or not shape
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape)
        ):
            raise SchemaError(f"{where}: 'feature_shape' must be a non-empty list of positive integers, got {shape!r}")
        shape = tuple(shape)
        if math.prod(shape) != len(features):
            raise SchemaError(
                f"{where}: feature_shape {list(shape)} holds {math.prod(shape)} values but {len(features)} "
                "feature names are declared; name one column per value"
            )
        object.__setattr__(self, "feature_shape", shape)

        if not isinstance(self.label, str) or not self.label:
            raise SchemaError(f"{where}: 'label' must be a non-empty column name, got {self.label!r}")
        if self.label in features:
            raise SchemaError(f"{where}: the label column {self.label!r} is also listed as a feature; remove it")

        classes = self.classes
        if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2:
            raise SchemaError(f"{where}: 'classes' must list at least two label values, got {classes!r}")
        if len(classes) > _MAX_CLASSES:
            raise SchemaError(f"{where}: {len(classes)} classes is more than the limit {_MAX_CLASSES}")
        classes = tuple(_class_value(c, f"{where} classes") for c in classes)
        if len(set(classes)) != len(classes):
            raise SchemaError(f"{where}: duplicate values in 'classes' {list(classes)}")
        if len({type(c) for c in classes}) > 1:
            raise SchemaError(f"{where}: 'classes' mixes integers and strings {list(classes)}; use one kind")
        object.__setattr__(self, "classes", classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        return len(self.features)

    def class_index(self) -> dict[int | str, int]:
        """``{class value: index}``."""
        return {c: i for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists instead of tuples)."""
        return {
            "features": list(self.features),
            "feature_shape": list(self.feature_shape),
            "label": self.label,
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Schema) -> Schema:
        """Validate plain data into a schema. ``feature_shape`` defaults to ``[len(features)]``."""
        if isinstance(data, Schema):
            return data
        if not isinstance(data, Mapping):
            raise SchemaError(f"a schema must be a JSON object, got {type(data).__name__}")
        extra = set(data) - {"features", "feature_shape", "label", "classes"}
        if extra:
            raise SchemaError(
                f"unexpected keys in schema: {sorted(extra)}; allowed are features, feature_shape, label, classes"
            )
        missing = {"features", "label", "classes"} - set(data)
        if missing:
            raise SchemaError(f"schema is missing {sorted(missing)}")
        features = data["features"]
        if isinstance(features, str) or not isinstance(features, Sequence):
            raise SchemaError(f"schema: 'features' must be a list of column names, got {features!r}")
        classes = data["classes"]
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise SchemaError(f"schema: 'classes' must be a list of label values, got {classes!r}")
        return cls(
            features=tuple(features),
            # a list (or an int, or None for the default): __post_init__ checks it and makes it a tuple
            feature_shape=data["feature_shape"] if "feature_shape" in data else (len(features),),
            label=data["label"],
            classes=tuple(classes),
        )
