"""An in-memory labelled dataset: ``x`` float32 ``[N, *feature_shape]``, ``y`` int32 class indices ``[N]``.

Arrays are NumPy (host memory); trainers move batches to the device. A
:class:`Dataset` is immutable by convention and validated on construction:
features finite, labels within the schema's classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedjax_room.data.schema import Schema
from fedjax_room.errors import ConfigError, DataError, SchemaError

__all__ = ["Dataset"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32, ``[N, *schema.feature_shape]``), labels ``y`` (int32 class indices), ``schema``."""

    x: np.ndarray
    y: np.ndarray
    schema: Schema

    def __post_init__(self) -> None:
        schema = Schema.from_dict(self.schema)
        object.__setattr__(self, "schema", schema)
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise SchemaError(f"dataset features must be numeric, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[1:] != schema.feature_shape:
            raise SchemaError(
                f"dataset features have shape {list(x.shape)}, but the schema declares "
                f"[N, {', '.join(map(str, schema.feature_shape))}]"
            )
        if y.shape != (x.shape[0],):
            raise SchemaError(f"dataset has {x.shape[0]} feature rows but labels of shape {list(y.shape)}")
        if not np.issubdtype(y.dtype, np.integer):
            raise SchemaError(f"dataset labels must be integer class indices, got dtype {y.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.size and not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0])
            raise DataError(f"dataset features contain NaN or infinity (first at row {row}); clean or impute them")
        if y.size and (y.min() < 0 or y.max() >= schema.num_classes):
            raise DataError(
                f"dataset labels must be class indices in [0, {schema.num_classes}), got values from "
                f"{int(y.min())} to {int(y.max())}"
            )
        y = np.ascontiguousarray(y, dtype=np.int32)
        x.flags.writeable = False
        y.flags.writeable = False
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"Dataset(n={len(self)}, feature_shape={self.schema.feature_shape}, classes={self.schema.num_classes})"

    @property
    def num_classes(self) -> int:
        return self.schema.num_classes

    def class_counts(self) -> np.ndarray:
        """Examples per class, int64 ``[num_classes]``."""
        return np.bincount(self.y, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The examples at ``indices`` (in that order; repeats allowed)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise ConfigError(f"a boolean mask must have length {len(self)}, got shape {list(idx.shape)}")
            idx = np.flatnonzero(idx)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise ConfigError("subset indices must be a 1-D list of integers (or a boolean mask)")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ConfigError(f"subset indices out of range for a dataset of {len(self)} examples")
        return Dataset(self.x[idx], self.y[idx], self.schema)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """``(train, test)``, stratified by class and shuffled; deterministic in ``seed``.

        Adding one record can move others between the sides: a site splits with :meth:`split_by_key` instead.
        """
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        rng = np.random.default_rng(seed)
        train_idx: list[np.ndarray] = []
        test_idx: list[np.ndarray] = []
        for c in range(self.num_classes):
            members = np.flatnonzero(self.y == c)
            rng.shuffle(members)
            n_test = int(round(test_fraction * len(members)))
            test_idx.append(members[:n_test])
            train_idx.append(members[n_test:])
        train = np.concatenate(train_idx)
        test = np.concatenate(test_idx)
        if len(train) == 0 or len(test) == 0:
            raise DataError(
                f"cannot split {len(self)} examples with test_fraction={test_fraction}: one side would be empty; "
                "use more data or another fraction"
            )
        rng.shuffle(train)
        rng.shuffle(test)
        return self.subset(train), self.subset(test)

    def split_by_key(self, test_fraction: float, key: bytes) -> tuple[Dataset, Dataset]:
        """``(train, test)`` where each record's side depends on that record alone (and ``key``).

        A record is held out when a BLAKE2b hash, keyed with ``key`` (a secret: whoever knows it could tell the
        sides apart), of its content (feature values and label) falls below ``test_fraction``. Adding or removing
        one record moves no other record between the sides, so neighbouring datasets give neighbouring
        ``(train, test)`` pairs. Identical records land on the same side. Order within each side is kept.
        """
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            raise ConfigError("the split key must be 16 to 64 secret bytes")
        flat = self.x.reshape(len(self), -1)
        labels = [str(c).encode() for c in self.schema.classes]
        threshold = int(test_fraction * 2**64)
        held = np.zeros(len(self), dtype=bool)
        for i in range(len(self)):
            h = hashlib.blake2b(flat[i].tobytes(), digest_size=8, key=key, person=b"fedjax-heldout")
            h.update(b"\x00" + labels[int(self.y[i])])
            held[i] = int.from_bytes(h.digest(), "big") < threshold
        if held.all() or not held.any():
            raise DataError(
                f"cannot split {len(self)} examples with test_fraction={test_fraction}: one side would be empty; "
                "use more data, another fraction, or a separate held-out file"
            )
        return self.subset(np.flatnonzero(~held)), self.subset(np.flatnonzero(held))

    def describe(self) -> dict[str, Any]:
        """What may be shown about this dataset: its schema and its size."""
        return {"schema": self.schema.to_dict(), "count": len(self)}
