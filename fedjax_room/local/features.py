"""A model's fixed first layer, computed once per dataset: the trainer then trains only the layers after it.

A ``scatter`` model (:mod:`fedjax_room.models.scattering`) starts with a scattering transform that has no
parameters and never changes, so its output on a site's records is the same every round. :func:`prepare`
computes it once per (model, dataset) and returns the *head* — the rest of the spec, on those features — with
the dataset of features and the renaming between the head's parameters (``dense_0``, ...) and the whole
model's (``dense_1``, ...). Per-example gradients, clipping and noise are those of the whole model: the fixed
layer has no parameters to differentiate, so the head's per-example gradients are exactly the whole model's.

For any other model :func:`prepare` returns the spec and the dataset unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedjax_room.data.dataset import Dataset
from fedjax_room.data.schema import Schema
from fedjax_room.models.spec import ModelSpec

__all__ = ["Prepared", "head_spec", "prepare"]

_CHUNK = 512
_MAX_CACHED = 8
#: (prefix layer JSON, id(dataset)) -> (dataset, features); the dataset is held, so its id is not reused
_CACHE: dict[tuple[str, int], tuple[Dataset, Dataset]] = {}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What to train: ``spec`` on ``dataset``; ``offset`` layers of the whole model were computed ahead."""

    spec: ModelSpec
    dataset: Dataset
    offset: int = 0

    def _rename(self, tree: Mapping[str, Any], shift: int) -> dict[str, Any]:
        out = {}
        for name, value in tree.items():
            kind, _, index = name.rpartition("_")
            out[f"{kind}_{int(index) + shift}"] = value
        return out

    def to_head(self, params: Any) -> Any:
        """The whole model's parameters (or gradients) as the head's."""
        return self._rename(params, -self.offset) if self.offset else params

    def to_model(self, params: Any) -> Any:
        """The head's parameters (or gradients) as the whole model's."""
        return self._rename(params, self.offset) if self.offset else params


def _fixed_prefix(spec: ModelSpec) -> bool:
    return bool(spec.layers) and spec.layers[0]["type"] == "scattering"


def head_spec(spec: ModelSpec) -> ModelSpec:
    """The spec the trainer trains: the layers after a fixed first layer, on its output; else ``spec`` itself."""
    if not _fixed_prefix(spec):
        return spec
    layers = [dict(layer) for layer in spec.layers[1:]]
    shape = spec.output_shapes()[0]
    dense = sum(1 for layer in layers if layer["type"] == "dense")
    plain = all(layer["type"] in ("dense", "flatten") for layer in layers)
    family = "logistic" if dense == 1 and plain else "mlp"
    return ModelSpec.from_dict(
        {"family": family, "input_shape": list(shape), "num_classes": spec.num_classes, "layers": layers}
    )


@functools.lru_cache(maxsize=_MAX_CACHED)
def _prefix_fn(prefix: str) -> Callable[[Any], Any]:
    """The jitted fixed layer of ``prefix`` (``[input_shape, layer]`` as JSON): compiled once, for every dataset."""
    import jax

    from fedjax_room.models.scattering import transform

    shape, layer = json.loads(prefix)
    return jax.jit(transform(shape, layer))


def _features(spec: ModelSpec, prefix: str, dataset: Dataset) -> Dataset:
    import jax.numpy as jnp

    fn = _prefix_fn(prefix)
    n = len(dataset)
    size = spec.output_shapes()[0][0]
    out = np.empty((n, size), np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk = dataset.x[start:stop]
        if stop - start < _CHUNK and n > _CHUNK:  # one compiled shape: pad the last chunk
            chunk = np.concatenate([chunk, np.zeros((_CHUNK - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out[start:stop] = np.asarray(fn(jnp.asarray(chunk)))[: stop - start]
    schema = Schema(
        features=tuple(f"scattering_{i}" for i in range(size)),
        feature_shape=(size,),
        label=dataset.schema.label,
        classes=dataset.schema.classes,
    )
    return Dataset(out, dataset.y, schema)


def prepare(spec: ModelSpec, dataset: Dataset) -> Prepared:
    """``spec`` and ``dataset`` as the trainer should see them: the head on the fixed layer's features when
    ``spec`` starts with one (computed once per dataset and cached), else both as they are."""
    if not _fixed_prefix(spec):
        return Prepared(spec, dataset)
    prefix = json.dumps([list(spec.input_shape), spec.layers[0]], sort_keys=True)
    key = (prefix, id(dataset))
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not dataset:
        if len(_CACHE) >= _MAX_CACHED:
            _CACHE.pop(next(iter(_CACHE)))
        hit = (dataset, _features(spec, prefix, dataset))
        _CACHE[key] = hit
    return Prepared(head_spec(spec), hit[1], offset=1)
