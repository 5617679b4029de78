"""A trained model on disk: its spec and parameters in a documented, pickle-free file, and loading it back.

Two formats, chosen by the file's suffix (docs/export.md describes both byte for byte):

* ``.msgpack`` — one flax msgpack document (:func:`flax.serialization.msgpack_serialize`, the encoding
  :func:`flax.serialization.to_bytes` writes) holding ``{"format", "version", "spec", "spec_hash",
  "metadata", "params"}``: ``spec`` is the model spec's canonical JSON text, ``params`` the nested
  ``{"dense_0": {"kernel": ndarray, "bias": ndarray}, ...}`` tree.
* ``.npz`` — a numpy zip archive (:func:`numpy.savez`, no object arrays): the header as UTF-8 JSON bytes
  in the ``uint8`` array ``fedjax_room_model`` and one array per parameter named by its path
  (``params/dense_0/kernel``).

:func:`load` reads either with bounds first and trusts nothing in the file: the size on disk, the number and
size of archive members, the spec (validated by :meth:`ModelSpec.from_dict` and held to the analyst's run
limits: parameters, layers, activations), and every parameter's name, shape, dtype and finiteness against
the shapes the spec implies. A file that breaks any of them raises :class:`~fedjax_room.errors.ModelFileError`
(or :class:`~fedjax_room.errors.ModelSpecError` for the spec) and nothing is built. It never unpickles.

The returned :class:`LoadedModel` predicts with the same Flax module the sites trained
(:func:`fedjax_room.models.build.build_model`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError, FedRoomError, ModelFileError, ModelSpecError
from fedjax_room.models.spec import ModelSpec, spec_hash
from fedjax_room.tree import flatten_tree, unflatten_tree

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "MAX_MODEL_BYTES",
    "SUFFIXES",
    "LoadedModel",
    "export_model",
    "load",
    "param_shapes",
]

log = logging.getLogger("fedjax_room.models")

#: The ``format`` field of every exported model.
FORMAT = "fedjax-room-model"
#: The version of the layout described in docs/export.md; :func:`load` refuses any other.
FORMAT_VERSION = 1
#: Name of the ``.npz`` member holding the JSON header.
HEADER_KEY = "fedjax_room_model"
#: The suffixes :func:`export_model` writes and :func:`load` reads.
SUFFIXES = (".msgpack", ".npz")
#: Largest file :func:`load` reads by default (a 4,000,000-parameter float32 model is 16 MB).
MAX_MODEL_BYTES = 64 * 1024 * 1024
_MAX_HEADER_BYTES = 1024 * 1024
_MAX_MEMBERS = 1024

# The analyst's run limits (fedjax_room.protocol.limits.RunLimits; tests/models/test_export.py checks they agree):
# a model no room would train is not loaded either.
_MAX_PARAMS = 4_000_000
_MAX_LAYERS = 64
_MAX_ACTIVATIONS = 16_000_000


def param_shapes(spec: ModelSpec | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{"dense_0/kernel": (64, 10), "dense_0/bias": (10,), ...}``: every parameter the spec's module has.

    Computed from the spec alone (the names and shapes :class:`~fedjax_room.models.build.SpecModel` creates).
    """
    model = ModelSpec.from_dict(spec)
    shapes: dict[str, tuple[int, ...]] = {}
    shape = model.input_shape
    for i, (layer, out) in enumerate(zip(model.layers, model.output_shapes(), strict=True)):
        if layer["type"] == "dense":
            shapes[f"dense_{i}/kernel"] = (shape[0], layer["features"])
            shapes[f"dense_{i}/bias"] = (layer["features"],)
        elif layer["type"] == "conv":
            kh, kw = layer["kernel"]
            shapes[f"conv_{i}/kernel"] = (kh, kw, shape[2], layer["features"])
            shapes[f"conv_{i}/bias"] = (layer["features"],)
        shape = out
    return shapes


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: a model file ends in {' or '.join(SUFFIXES)} (the suffix picks the format)")
    return suffix


def _plain_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        text = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model metadata must be plain JSON data: {exc}") from None
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def export_model(
    path: str | os.PathLike[str],
    spec: ModelSpec | Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``spec`` and ``params`` to ``path`` (``.msgpack`` or ``.npz``, see docs/export.md); returns the path.

    ``params`` must be exactly the spec's parameters (:func:`param_shapes`); ``metadata`` is plain JSON data kept
    in the header (:meth:`fedjax_room.analyst.run.Run.export` records the run, its rounds and privacy spend).
    The file is written next to its final name and renamed into place, so a reader never sees half a model.
    """
    target = Path(path)
    suffix = _suffix(target)
    model = ModelSpec.from_dict(spec)
    flat = _check_params(model, flatten_tree(dict(params)), str(target))
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": model.to_json(),
        "spec_hash": spec_hash(model),
        "metadata": _plain_metadata(metadata),
    }
    if suffix == ".npz":
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {HEADER_KEY: np.frombuffer(json.dumps(header).encode(), np.uint8)}
        arrays.update({f"params/{name}": value for name, value in flat.items()})
        np.savez(buffer, allow_pickle=False, **arrays)
        data = buffer.getvalue()
    else:
        from flax import serialization

        data = serialization.msgpack_serialize({**header, "params": unflatten_tree(flat)})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)
    return target


def _check_spec(spec: Any, where: str, *, max_params: int, max_layers: int, max_activations: int) -> ModelSpec:
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{where}: the spec is not JSON ({exc})") from None
    if isinstance(spec, Mapping) and isinstance(spec.get("layers"), list) and len(spec["layers"]) > max_layers:
        raise ModelSpecError(f"{where}: a spec of {len(spec['layers'])} layers is over the bound of {max_layers}")
    try:
        model = ModelSpec.from_dict(spec)
    except ModelSpecError as exc:
        raise ModelSpecError(f"{where}: {exc.message}") from None
    if len(model.layers) > max_layers:
        raise ModelSpecError(f"{where}: a spec of {len(model.layers)} layers is over the bound of {max_layers}")
    count = model.param_count()
    if count > max_params:
        raise ModelSpecError(f"{where}: the model has {count:,} parameters, over the bound of {max_params:,}")
    activations = math.prod(model.input_shape) + sum(math.prod(s) for s in model.output_shapes())
    if activations > max_activations:
        raise ModelSpecError(
            f"{where}: the model has {activations:,} activations per example, over the bound of {max_activations:,}"
        )
    return model


def _check_params(model: ModelSpec, flat: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """Exactly the spec's parameters, each of its shape, floating point and finite; as float32 arrays."""
    expected = param_shapes(model)
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{where}: the parameters do not match the spec (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        value = flat[name]
        array = value if isinstance(value, np.ndarray) else np.asarray(value) if hasattr(value, "__array__") else None
        if array is None or array.dtype.kind != "f":
            kind = type(value).__name__ if array is None else str(array.dtype)
            raise ModelFileError(f"{where}: parameter {name} must be a floating-point array, got {kind}")
        if tuple(array.shape) != shape:
            raise ModelFileError(
                f"{where}: parameter {name} has shape {list(array.shape)}, the spec says {list(shape)}"
            )
        if not np.isfinite(array).all():
            raise ModelFileError(f"{where}: parameter {name} holds NaN or infinite values")
        out[name] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def _check_header(header: Any, where: str) -> dict[str, Any]:
    if not isinstance(header, Mapping):
        raise ModelFileError(f"{where}: not a fedjax-room model (no header object)")
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{where}: not a fedjax-room model (format {str(header.get('format'))[:40]!r})")
    version = header.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ModelFileError(
            f"{where}: model format version {str(version)[:20]!r}; this fedjax-room reads version {FORMAT_VERSION}"
        )
    metadata = header.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise ModelFileError(f"{where}: the model's metadata must be an object")
    return dict(header)


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelFileError(f"{path}: {size:,} bytes, over the bound of {max_bytes:,} (load(..., max_bytes=N))")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ModelFileError(f"{path}: over the bound of {max_bytes:,} bytes")
    return data


def _load_msgpack(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from flax import serialization

    try:
        document = serialization.msgpack_restore(data)
    except FedRoomError:
        raise
    except Exception as exc:  # msgpack and numpy raise many types on a malformed document
        raise ModelFileError(
            f"{where}: not a readable msgpack model ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    header = _check_header(document, where)
    params = header.pop("params", None)
    if not isinstance(params, Mapping):
        raise ModelFileError(f"{where}: the model has no parameter tree")
    try:
        flat = flatten_tree(params)
    except FedRoomError as exc:
        raise ModelFileError(f"{where}: bad parameter tree ({exc.message})") from None
    return header, flat


def _load_npz(data: bytes, where: str, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    buffer = io.BytesIO(data)
    try:
        with zipfile.ZipFile(buffer) as archive:
            members = archive.infolist()
            if len(members) > _MAX_MEMBERS:
                raise ModelFileError(f"{where}: {len(members)} archive members, over the bound of {_MAX_MEMBERS}")
            unpacked = sum(m.file_size for m in members)
            if unpacked > max_bytes:  # a zip bomb: small on disk, huge once inflated
                raise ModelFileError(
                    f"{where}: its arrays unpack to {unpacked:,} bytes, over the bound of {max_bytes:,}"
                )
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as npz:
            names = list(npz.files)
            if HEADER_KEY not in names:
                raise ModelFileError(f"{where}: not a fedjax-room model (no {HEADER_KEY!r} array)")
            raw = npz[HEADER_KEY]
            if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER_BYTES:
                raise ModelFileError(f"{where}: the {HEADER_KEY!r} array must be UTF-8 JSON bytes (uint8, 1-D)")
            try:
                header = json.loads(raw.tobytes().decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelFileError(f"{where}: the header is not JSON ({exc})") from None
            checked = _check_header(header, where)
            flat: dict[str, Any] = {}
            for name in names:
                if name == HEADER_KEY:
                    continue
                if not name.startswith("params/"):
                    raise ModelFileError(f"{where}: unexpected array {name[:80]!r} (parameters are params/<path>)")
                flat[name.removeprefix("params/")] = npz[name]
    except FedRoomError:
        raise
    except Exception as exc:  # zipfile, numpy's format reader and zlib raise many types on a malformed file
        message = "it holds pickled object arrays, which are refused" if "pickle" in str(exc) else str(exc)[:200]
        raise ModelFileError(f"{where}: not a readable .npz model ({type(exc).__name__}: {message})") from None
    return checked, flat


def load(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_params: int = _MAX_PARAMS,
    max_layers: int = _MAX_LAYERS,
    max_activations: int = _MAX_ACTIVATIONS,
) -> LoadedModel:
    """Read a model written by :func:`export_model` (or ``run.export``); returns a :class:`LoadedModel`.

    Everything is checked before anything is built (see the module docstring); the bounds default to the
    analyst's run limits. Raises :class:`~fedjax_room.errors.ModelFileError` for a file that is too large,
    malformed, of another format or version, or whose parameters do not fit its spec, and
    :class:`~fedjax_room.errors.ModelSpecError` for a spec that is invalid or over the bounds.
    """
    target = Path(path)
    suffix = _suffix(target)
    where = str(target)
    data = _read_bounded(target, max_bytes)
    try:
        header, flat = _load_npz(data, where, max_bytes) if suffix == ".npz" else _load_msgpack(data, where)
        model = _check_spec(
            header.get("spec"), where, max_params=max_params, max_layers=max_layers, max_activations=max_activations
        )
        stored_hash = header.get("spec_hash")
        if stored_hash is not None and stored_hash != spec_hash(model):
            raise ModelFileError(f"{where}: the spec_hash in the file is not the hash of its spec")
        params = unflatten_tree(_check_params(model, flat, where))
    except FedRoomError as exc:
        log.warning("refused model file %s: %s", where, exc.message)
        raise
    return LoadedModel(model, params, dict(header.get("metadata") or {}), target)


class LoadedModel:
    """A model read by :func:`load`: its ``spec``, ``params`` (nested dict of float32 arrays) and ``metadata``.

    :meth:`logits`, :meth:`predict` (class indices) and :meth:`predict_proba` (softmax probabilities) take a
    batch ``x`` of shape ``[N, *spec.input_shape]`` (or ``[N, prod(input_shape)]``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        params: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        self.spec = spec
        self.params = dict(params)
        self.metadata = dict(metadata or {})
        self.path = path
        self._apply: Any = None

    def _inputs(self, x: Any) -> np.ndarray:
        array = np.asarray(x, dtype=np.float32)
        shape = self.spec.input_shape
        if array.ndim >= 1 and array.shape[1:] != shape and array.size == array.shape[0] * math.prod(shape):
            array = array.reshape((array.shape[0], *shape))
        if array.ndim < 1 or array.shape[1:] != shape:
            raise ConfigError(
                f"inputs of shape {list(array.shape)} do not fit the model's input_shape {list(shape)} "
                "(expected [N, *input_shape])"
            )
        return array

    def logits(self, x: Any, *, batch_size: int = 4096) -> np.ndarray:
        """The model's logits, ``[N, num_classes]`` float32."""
        array = self._inputs(x)
        if self._apply is None:
            import jax

            from fedjax_room.models.build import make_predict_fn

            self._apply = jax.jit(make_predict_fn(self.spec))
        chunks = [
            np.asarray(self._apply(self.params, array[i : i + batch_size])) for i in range(0, len(array), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.spec.num_classes), np.float32)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Softmax probabilities, ``[N, num_classes]``."""
        logits = self.logits(x).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, x: Any) -> np.ndarray:
        """The most likely class index of each example, ``[N]``."""
        return self.logits(x).argmax(axis=1)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"LoadedModel(family={self.spec.family!r}, params={self.spec.param_count()}{where})"
