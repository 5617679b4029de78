"""Read and write datasets as ``.npz``, ``.csv`` or ``.parquet``, checked against a declared schema.

Formats (chosen by the file suffix):

* **npz** — array ``x`` of shape ``[N, *feature_shape]`` (or ``[N, num_features]``) and
  the labels under the schema's label name or ``y``, holding class *values*. Without
  ``x``, one 1-D array per feature column is accepted. :func:`save_dataset` also
  stores the schema as JSON text under ``schema``. Loaded with
  ``allow_pickle=False``: object arrays are refused.
* **csv** / **parquet** — one column per feature plus the label column, read with
  pyarrow. The schema travels as a sidecar ``<file>.schema.json`` (CSV) or in the
  Parquet file metadata (key ``fedjax_room.schema``).

``load_dataset(path, schema)`` with a declared schema checks every declared column
exists, features are numeric without missing values or NaN, and every label is one
of the declared classes; anything else raises :class:`SchemaError` (or
:class:`DataError` for an unreadable file) naming the file and the column. With no
schema, the one stored with the file is used, else one is inferred (label column
``label``/``y``/``target``/``class``, or the last column) — except with ``infer=False``, which a site uses:
its class list leaves it, so it must be declared, never read off the data.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from fedjax_room.data.dataset import Dataset
from fedjax_room.data.schema import Schema, default_feature_names
from fedjax_room.errors import DataError, SchemaError

__all__ = [
    "FORMATS",
    "PARQUET_SCHEMA_KEY",
    "load_dataset",
    "load_schema",
    "save_dataset",
    "schema_sidecar",
    "undeclared_schema_error",
]

#: Supported suffixes.
FORMATS = (".npz", ".csv", ".parquet")
#: Parquet metadata key holding the schema JSON.
PARQUET_SCHEMA_KEY = b"fedjax_room.schema"
_LABEL_GUESSES = ("label", "y", "target", "class")


def schema_sidecar(path: str | os.PathLike[str]) -> Path:
    """The schema file that accompanies a CSV: ``<path>.schema.json``."""
    path = Path(path)
    return path.with_name(path.name + ".schema.json")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
    return suffix


def undeclared_schema_error(path: str | os.PathLike[str]) -> SchemaError:
    """The error of a site whose data comes without a declared schema (its class list would be read off the data)."""
    path = Path(path)
    return SchemaError(
        f"{path}: no declared schema. A site's class list must be declared, never read off its data (one record "
        "with a rare label would show in it). Declare it with --schema FILE (JSON: features, feature_shape, label, "
        f"classes), or store it with the data: {schema_sidecar(path).name} next to a CSV, the 'schema' array of a "
        ".npz or the Parquet metadata (Dataset.save writes it)"
    )


def _coerce_schema(schema: Schema | Mapping[str, Any] | None, path: Path) -> Schema | None:
    if schema is None:
        return None
    try:
        return Schema.from_dict(schema)
    except SchemaError as exc:
        raise SchemaError(f"{path}: bad declared schema: {exc.message}") from None


# ----------------------------------------------------------------------------- labels


def _label_array(values: Any, path: Path, column: str) -> np.ndarray:
    """Labels as a NumPy array of numbers or strings (pyarrow gives object arrays for strings)."""
    values = np.asarray(values)
    if values.dtype == object:
        if not all(isinstance(v, str) for v in values.tolist()):
            raise SchemaError(f"{path}: label column {column!r} mixes types; use all integers or all strings")
        values = values.astype(str)
    return values


def _encode_labels(values: np.ndarray, schema: Schema, path: Path, column: str) -> np.ndarray:
    """Map label values to class indices, or raise naming the unknown values."""
    values = _label_array(values, path, column)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise SchemaError(f"{path}: label column {column!r} has a missing or NaN value at row {row}")
        if not (values == np.round(values)).all():
            raise SchemaError(f"{path}: label column {column!r} has non-integer numbers; labels must be class values")
        values = values.astype(np.int64)
    elif values.dtype.kind == "b":
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iuUS":
        raise SchemaError(f"{path}: label column {column!r} has unsupported type {values.dtype}")
    uniq, inverse = np.unique(values, return_inverse=True)
    index = schema.class_index()
    as_str = isinstance(schema.classes[0], str)
    codes = np.empty(len(uniq), dtype=np.int32)
    unknown = []
    for i, value in enumerate(uniq.tolist()):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        key: Any = str(value) if as_str else value
        if not as_str and isinstance(value, str):
            try:
                key = int(value)
            except ValueError:
                key = value
        if key not in index:
            unknown.append(value)
        else:
            codes[i] = index[key]
    if unknown:
        raise SchemaError(
            f"{path}: label column {column!r} has values {unknown[:5]} that are not among the declared classes "
            f"{list(schema.classes)[:20]}; fix the data or declare those classes"
        )
    return codes[inverse.reshape(-1)]


def _infer_classes(values: np.ndarray, path: Path, column: str) -> tuple[Any, ...]:
    values = _label_array(values, path, column)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not (values == np.round(values)).all():
            raise SchemaError(f"{path}: label column {column!r} must hold integers or strings; declare a schema")
        values = values.astype(np.int64)
    uniq = np.unique(values).tolist()
    if len(uniq) < 2:
        raise SchemaError(f"{path}: label column {column!r} has fewer than two distinct values; declare a schema")
    return tuple(uniq)


# ----------------------------------------------------------------------------- tables (csv, parquet)


def _table_schema_metadata(table: pa.Table, path: Path) -> Schema | None:
    meta = table.schema.metadata or {}
    raw = meta.get(PARQUET_SCHEMA_KEY)
    if raw is None:
        return None
    try:
        return Schema.from_dict(json.loads(raw.decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: the schema stored in the file metadata is invalid: {exc}") from None


def _infer_table_schema(table: pa.Table, path: Path) -> Schema:
    names = list(table.column_names)
    if len(names) < 2:
        raise SchemaError(f"{path}: needs at least one feature column and a label column, found {names}")
    label = next((n for n in names if n.lower() in _LABEL_GUESSES), names[-1])
    features = tuple(n for n in names if n != label)
    column = table.column(label)
    if column.null_count:
        raise SchemaError(f"{path}: label column {label!r} has {column.null_count} missing values")
    classes = _infer_classes(column.to_numpy(zero_copy_only=False), path, label)
    return Schema(features=features, feature_shape=(len(features),), label=label, classes=classes)


def _first_null(column: pa.ChunkedArray) -> int:
    mask = column.is_null().to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(mask)[0])


def _table_to_dataset(table: pa.Table, schema: Schema, path: Path) -> Dataset:
    names = set(table.column_names)
    missing = [c for c in (*schema.features, schema.label) if c not in names]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise SchemaError(
            f"{path}: missing column(s) {shown} declared in the schema; the file has columns "
            f"{sorted(names)[:20]}{' ...' if len(names) > 20 else ''}"
        )
    n = table.num_rows
    flat = np.empty((n, schema.num_features), dtype=np.float32)
    for j, name in enumerate(schema.features):
        column = table.column(name)
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise SchemaError(
                f"{path}: feature column {name!r} has type {kind}, expected numbers; "
                "encode categorical features as numbers first"
            )
        if column.null_count:
            raise SchemaError(
                f"{path}: feature column {name!r} has {column.null_count} missing value(s) "
                f"(first at row {_first_null(column)}); clean or impute them"
            )
        values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        bad = ~np.isfinite(values)
        if bad.any():
            raise SchemaError(
                f"{path}: feature column {name!r} has NaN or infinite value(s) (first at row "
                f"{int(np.flatnonzero(bad)[0])}); clean or impute them"
            )
        flat[:, j] = values
    label = table.column(schema.label)
    if label.null_count:
        raise SchemaError(
            f"{path}: label column {schema.label!r} has {label.null_count} missing value(s) "
            f"(first at row {_first_null(label)})"
        )
    y = _encode_labels(label.to_numpy(zero_copy_only=False), schema, path, schema.label)
    return Dataset(flat.reshape((n, *schema.feature_shape)), y, schema)


def _read_csv(path: Path) -> pa.Table:
    try:
        return pa_csv.read_csv(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); check the delimiter, header and encoding") from None


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_sidecar(path: Path) -> Schema | None:
    sidecar = schema_sidecar(path)
    if not sidecar.exists():
        return None
    return load_schema(sidecar)


# ----------------------------------------------------------------------------- npz


def _load_npz(path: Path, schema: Schema | None, infer: bool = True) -> Dataset:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (not a zip archive); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: contains pickled object arrays, which are refused; save plain arrays") from None
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None

    if schema is None and "schema" in arrays:
        stored = arrays["schema"]
        if stored.dtype.kind != "U" or stored.ndim != 0:
            raise SchemaError(f"{path}: array 'schema' must be JSON text")
        try:
            schema = Schema.from_dict(json.loads(str(stored)))
        except ValueError as exc:
            raise SchemaError(f"{path}: the stored schema is invalid: {exc}") from None

    label_key = schema.label if schema is not None and schema.label in arrays else "y"
    if label_key not in arrays:
        want = f"{schema.label!r} or 'y'" if schema is not None else "'y'"
        raise SchemaError(f"{path}: no label array {want}; the file has arrays {sorted(arrays)}")
    labels = arrays[label_key]
    if labels.ndim != 1:
        raise SchemaError(f"{path}: label array {label_key!r} must be 1-D, got shape {list(labels.shape)}")

    if "x" in arrays:
        x = arrays["x"]
        if x.ndim < 1:
            raise SchemaError(f"{path}: array 'x' must have a leading example axis, got shape {list(x.shape)}")
        if schema is None:
            if not infer:
                raise undeclared_schema_error(path)
            shape = x.shape[1:] or (1,)
            schema = Schema(
                features=default_feature_names(shape),
                feature_shape=tuple(shape),
                label=label_key,
                classes=_infer_classes(labels, path, label_key),
            )
        if x.ndim == 1:
            x = x.reshape(-1, 1)
    else:
        if schema is None:
            if not infer:
                raise undeclared_schema_error(path)
            raise SchemaError(f"{path}: no array 'x'; declare a schema naming the feature arrays")
        missing = [f for f in schema.features if f not in arrays]
        if missing:
            raise SchemaError(
                f"{path}: missing array(s) {missing[:10]} declared in the schema; the file has {sorted(arrays)[:20]}"
            )
        for name in schema.features:
            if arrays[name].shape != labels.shape:
                raise SchemaError(
                    f"{path}: feature array {name!r} has shape {list(arrays[name].shape)}, "
                    f"expected [{labels.shape[0]}] like the labels"
                )
        x = np.stack([arrays[name] for name in schema.features], axis=1)

    if x.dtype.kind not in "iufb":
        raise SchemaError(f"{path}: array 'x' has dtype {x.dtype}, expected numbers")
    if x.shape[0] != labels.shape[0]:
        raise SchemaError(f"{path}: 'x' has {x.shape[0]} rows but {label_key!r} has {labels.shape[0]}")
    expected = schema.feature_shape
    if x.shape[1:] != expected:
        if int(np.prod(x.shape[1:])) == schema.num_features:
            x = x.reshape((x.shape[0], *expected))
        else:
            raise SchemaError(
                f"{path}: array 'x' has example shape {list(x.shape[1:])}, the schema declares {list(expected)}"
            )
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise SchemaError(
            f"{path}: feature {schema.features[col]!r} has a NaN or infinite value at row {row}; clean or impute it"
        )
    y = _encode_labels(labels, schema, path, label_key)
    return Dataset(x, y, schema)


# ----------------------------------------------------------------------------- public


def load_dataset(
    path: str | os.PathLike[str], schema: Schema | Mapping[str, Any] | None = None, *, infer: bool = True
) -> Dataset:
    """Load a ``.npz``, ``.csv`` or ``.parquet`` file, checked against ``schema`` (see the module docstring).

    With ``infer=False`` (what a site does) a file without a declared schema — neither ``schema`` nor one stored
    with the file — is refused (:func:`undeclared_schema_error`) instead of having its classes read off the data.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths are from {Path.cwd()})")
    declared = _coerce_schema(schema, path)
    if suffix == ".npz":
        return _load_npz(path, declared, infer)
    table = _read_csv(path) if suffix == ".csv" else _read_parquet(path)
    if declared is None:
        declared = _read_sidecar(path) if suffix == ".csv" else _table_schema_metadata(table, path)
    if declared is None:
        if not infer:
            raise undeclared_schema_error(path)
        declared = _infer_table_schema(table, path)
    return _table_to_dataset(table, declared, path)


def load_schema(path: str | os.PathLike[str]) -> Schema:
    """A declared schema from a JSON file (``features``, ``feature_shape``, ``label``, ``classes``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path}: schema file not found") from None
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: schema file is not valid JSON ({exc})") from None
    try:
        return Schema.from_dict(data)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc.message}") from None


def _label_values(dataset: Dataset) -> np.ndarray:
    classes = dataset.schema.classes
    if isinstance(classes[0], str):
        return np.asarray(classes, dtype=str)[dataset.y]
    return np.asarray(classes, dtype=np.int64)[dataset.y]


def save_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` with its schema to ``path`` (format by suffix; see the module docstring)."""
    path = Path(path)
    suffix = _suffix(path)
    schema = dataset.schema
    schema_json = json.dumps(schema.to_dict(), sort_keys=True)
    labels = _label_values(dataset)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".npz":
            from fedjax_room.files import open_private

            with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:  # records: 0600
                np.savez_compressed(f, x=dataset.x, y=labels, schema=np.array(schema_json))
            return
        flat = dataset.x.reshape(len(dataset), -1)
        columns = {name: pa.array(flat[:, j]) for j, name in enumerate(schema.features)}
        columns[schema.label] = pa.array(labels.tolist())
        table = pa.table(columns)
        if suffix == ".csv":
            pa_csv.write_csv(table, path)
            schema_sidecar(path).write_text(schema_json + "\n", encoding="utf-8")
        else:
            table = table.replace_schema_metadata({PARQUET_SCHEMA_KEY: schema_json.encode("utf-8")})
            pq.write_table(table, path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the dataset ({exc}); check the directory is writable") from None
