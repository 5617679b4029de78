"""Declarative model specs: plain JSON-able data, validated, hashed; never code.

A spec is a dict (or :class:`ModelSpec`) like::

    {"family": "mlp", "input_shape": [64], "num_classes": 10,
     "layers": [{"type": "dense", "features": 64}, {"type": "relu"},
                {"type": "dense", "features": 10}]}

Layer types come from an allow-list (:data:`LAYER_TYPES`); each family allows a
subset (:data:`FAMILY_LAYERS`). The last layer must be a dense layer with
``num_classes`` features (the logits). Normalisation layers that mix examples
(batch norm) are deliberately absent: they break per-example privacy.

:func:`spec_hash` is the sha256 of the canonical JSON (sorted keys, no spaces),
the identity a site approves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedjax_room.errors import ModelSpecError
from fedjax_room.models import scattering as _scatter

__all__ = [
    "ACTIVATIONS",
    "FAMILY_LAYERS",
    "LAYER_TYPES",
    "ModelSpec",
    "cnn",
    "logistic",
    "mlp",
    "scatter",
    "spec_hash",
]

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu", "silu")
LAYER_TYPES = ("dense", "conv", "max_pool", "avg_pool", "flatten", "scattering", *ACTIVATIONS)
FAMILY_LAYERS: dict[str, frozenset[str]] = {
    "logistic": frozenset({"dense", "flatten"}),
    "mlp": frozenset({"dense", "flatten", *ACTIVATIONS}),
    "cnn": frozenset({"dense", "conv", "max_pool", "avg_pool", "flatten", *ACTIVATIONS}),
    #: a fixed scattering transform (models/scattering.py, no parameters) first, then a logistic or mlp head
    "scatter": frozenset({"scattering", "dense", "flatten", *ACTIVATIONS}),
}
_LAYER_KEYS: dict[str, frozenset[str]] = {
    "scattering": _scatter.LAYER_KEYS,
    "dense": frozenset({"type", "features"}),
    "conv": frozenset({"type", "features", "kernel", "stride", "padding"}),
    "max_pool": frozenset({"type", "window", "stride"}),
    "avg_pool": frozenset({"type", "window", "stride"}),
}
_MAX_FEATURES = 1 << 16


def _pos_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelSpecError(f"{what} must be a positive integer, got {value!r}")
    if value > _MAX_FEATURES:
        raise ModelSpecError(f"{what} = {value} is larger than the limit {_MAX_FEATURES}")
    return value


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (_pos_int(value, what), _pos_int(value, what))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return (_pos_int(value[0], what), _pos_int(value[1], what))
    raise ModelSpecError(f"{what} must be an integer or a pair of integers, got {value!r}")


def _normalise_layer(layer: Any, index: int) -> dict[str, Any]:
    if not isinstance(layer, Mapping):
        raise ModelSpecError(f"layer {index} must be an object like {{'type': 'dense', ...}}, got {layer!r}")
    kind = layer.get("type")
    if kind not in LAYER_TYPES:
        raise ModelSpecError(f"layer {index}: unknown layer type {kind!r}; allowed types are {', '.join(LAYER_TYPES)}")
    allowed = _LAYER_KEYS.get(kind, frozenset({"type"}))
    extra = set(layer) - allowed
    if extra:
        raise ModelSpecError(f"layer {index} ({kind}): unexpected keys {sorted(extra)}; allowed {sorted(allowed)}")
    out: dict[str, Any] = {"type": kind}
    if kind == "scattering":
        return _scatter.check_layer(layer, index)
    if kind == "dense":
        out["features"] = _pos_int(layer.get("features"), f"layer {index} (dense) features")
    elif kind == "conv":
        out["features"] = _pos_int(layer.get("features"), f"layer {index} (conv) features")
        out["kernel"] = list(_pair(layer.get("kernel", 3), f"layer {index} (conv) kernel"))
        out["stride"] = list(_pair(layer.get("stride", 1), f"layer {index} (conv) stride"))
        padding = layer.get("padding", "SAME")
        if padding not in ("SAME", "VALID"):
            raise ModelSpecError(f"layer {index} (conv) padding must be 'SAME' or 'VALID', got {padding!r}")
        out["padding"] = padding
    elif kind in ("max_pool", "avg_pool"):
        window = _pair(layer.get("window", 2), f"layer {index} ({kind}) window")
        out["window"] = list(window)
        out["stride"] = list(_pair(layer.get("stride", list(window)), f"layer {index} ({kind}) stride"))
    return out


def _conv_out(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "SAME":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. Build one with :meth:`from_dict`, :func:`mlp`, :func:`cnn`, :func:`logistic` or
    :func:`scatter`."""

    family: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | ModelSpec) -> ModelSpec:
        """Validate plain data (e.g. parsed JSON) into a spec; raises :class:`ModelSpecError`."""
        if isinstance(data, ModelSpec):
            return data
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"a model spec must be a JSON object, got {type(data).__name__}")
        extra = set(data) - {"family", "input_shape", "num_classes", "layers"}
        if extra:
            raise ModelSpecError(f"unexpected keys in model spec: {sorted(extra)}")
        family = data.get("family")
        if family not in FAMILY_LAYERS:
            raise ModelSpecError(f"unknown model family {family!r}; choose one of {', '.join(FAMILY_LAYERS)}")
        shape = data.get("input_shape")
        if not isinstance(shape, Sequence) or isinstance(shape, str) or not shape:
            raise ModelSpecError(f"input_shape must be a non-empty list of positive integers, got {shape!r}")
        input_shape = tuple(_pos_int(s, "input_shape entry") for s in shape)
        num_classes = _pos_int(data.get("num_classes"), "num_classes")
        if num_classes < 2:
            raise ModelSpecError("num_classes must be at least 2")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, Sequence) or isinstance(raw_layers, str) or not raw_layers:
            raise ModelSpecError("layers must be a non-empty list of layer objects")
        layers = tuple(_normalise_layer(layer, i) for i, layer in enumerate(raw_layers))
        allowed = FAMILY_LAYERS[family]
        for i, layer in enumerate(layers):
            if layer["type"] not in allowed:
                raise ModelSpecError(
                    f"layer {i}: a {layer['type']!r} layer is not allowed in the {family!r} family "
                    f"(allowed: {', '.join(sorted(allowed))})"
                )
        if family == "scatter" and [layer["type"] == "scattering" for layer in layers].count(True) != 1:
            raise ModelSpecError("a 'scatter' model has exactly one scattering layer, its first")
        if family == "scatter" and layers[0]["type"] != "scattering":
            raise ModelSpecError("a 'scatter' model's first layer is its scattering layer")
        spec = cls(family=family, input_shape=input_shape, num_classes=num_classes, layers=layers)
        spec.output_shapes()  # raises on a bad shape
        if family == "logistic" and sum(1 for layer in layers if layer["type"] == "dense") != 1:
            raise ModelSpecError("a 'logistic' model has exactly one dense layer (the logits)")
        if family == "cnn" and not any(layer["type"] == "conv" for layer in layers):
            raise ModelSpecError("a 'cnn' model needs at least one conv layer")
        last = layers[-1]
        if last["type"] != "dense" or last["features"] != num_classes:
            raise ModelSpecError(
                f"the last layer must be {{'type': 'dense', 'features': {num_classes}}} (the logits), got {last}"
            )
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelSpecError(f"model spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [dict(layer) for layer in self.layers],
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace. Equal specs give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return spec_hash(self)

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Per-layer output shapes (without the batch axis); raises on an impossible shape."""
        shape = self.input_shape
        shapes = []
        for i, layer in enumerate(self.layers):
            kind = layer["type"]
            if kind == "dense":
                if len(shape) != 1:
                    raise ModelSpecError(
                        f"layer {i} (dense) needs a flat input but gets shape {list(shape)}; add a flatten layer"
                    )
                shape = (layer["features"],)
            elif kind in ("conv", "max_pool", "avg_pool"):
                if len(shape) != 3:
                    raise ModelSpecError(
                        f"layer {i} ({kind}) needs an (height, width, channels) input, got {list(shape)}"
                    )
                kh, kw = layer["kernel"] if kind == "conv" else layer["window"]
                sh, sw = layer["stride"]
                padding = layer["padding"] if kind == "conv" else "VALID"
                h, w = _conv_out(shape[0], kh, sh, padding), _conv_out(shape[1], kw, sw, padding)
                if h <= 0 or w <= 0:
                    raise ModelSpecError(f"layer {i} ({kind}) shrinks the input {list(shape)} to nothing")
                shape = (h, w, layer["features"] if kind == "conv" else shape[2])
            elif kind == "flatten":
                shape = (math.prod(shape),)
            elif kind == "scattering":
                shape = (_scatter.output_size(shape, layer, i),)
                if shape[0] > _MAX_FEATURES:
                    raise ModelSpecError(
                        f"layer {i} (scattering) makes {shape[0]} features, more than the limit {_MAX_FEATURES}"
                    )
            shapes.append(shape)
        return shapes

    def param_count(self) -> int:
        """Number of trainable parameters, computed from the spec alone."""
        shape = self.input_shape
        total = 0
        for layer, out in zip(self.layers, self.output_shapes(), strict=True):
            if layer["type"] == "dense":
                total += shape[0] * layer["features"] + layer["features"]
            elif layer["type"] == "conv":
                kh, kw = layer["kernel"]
                total += kh * kw * shape[2] * layer["features"] + layer["features"]
            shape = out
        return total


def spec_hash(spec: ModelSpec | Mapping[str, Any]) -> str:
    """sha256 hex digest of the spec's canonical JSON (validated first)."""
    return hashlib.sha256(ModelSpec.from_dict(spec).to_json().encode()).hexdigest()


def logistic(input_shape: Sequence[int], num_classes: int) -> ModelSpec:
    """Multinomial logistic regression: flatten (if needed) then one dense layer."""
    layers: list[dict[str, Any]] = [{"type": "flatten"}] if len(input_shape) > 1 else []
    layers.append({"type": "dense", "features": num_classes})
    return ModelSpec.from_dict(
        {"family": "logistic", "input_shape": list(input_shape), "num_classes": num_classes, "layers": layers}
    )


def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,), activation: str = "relu"
) -> ModelSpec:
    """A multi-layer perceptron with the given hidden widths."""
    layers: list[dict[str, Any]] = [{"type": "flatten"}] if len(input_shape) > 1 else []
    for width in hidden:
        layers += [{"type": "dense", "features": width}, {"type": activation}]
    layers.append({"type": "dense", "features": num_classes})
    return ModelSpec.from_dict(
        {"family": "mlp", "input_shape": list(input_shape), "num_classes": num_classes, "layers": layers}
    )


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    conv: Sequence[tuple[int, int, int]] = ((16, 3, 1), (32, 3, 1)),
    dense: Sequence[int] = (32,),
    activation: str = "relu",
    pool: int | None = 2,
) -> ModelSpec:
    """A small CNN: ``conv`` is a list of (features, kernel, stride); optional max-pool after each conv."""
    layers: list[dict[str, Any]] = []
    for features, kernel, stride in conv:
        layers += [{"type": "conv", "features": features, "kernel": kernel, "stride": stride}, {"type": activation}]
        if pool:
            layers.append({"type": "max_pool", "window": pool, "stride": pool})
    layers.append({"type": "flatten"})
    for width in dense:
        layers += [{"type": "dense", "features": width}, {"type": activation}]
    layers.append({"type": "dense", "features": num_classes})
    return ModelSpec.from_dict(
        {"family": "cnn", "input_shape": list(input_shape), "num_classes": num_classes, "layers": layers}
    )


def scatter(
    input_shape: Sequence[int],
    num_classes: int,
    J: int = 2,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    orientations: int = _scatter.MAX_ORIENTATIONS,
) -> ModelSpec:
    """A fixed scattering transform (:mod:`fedjax_room.models.scattering`: ``J`` scales, ``orientations`` angles,
    the default per-order standardisation) and a head on its coefficients: logistic regression, or an mlp with
    ``hidden`` widths."""
    layers: list[dict[str, Any]] = [{"type": "scattering", "J": J, "orientations": orientations}]
    for width in hidden:
        layers += [{"type": "dense", "features": width}, {"type": activation}]
    layers.append({"type": "dense", "features": num_classes})
    return ModelSpec.from_dict(
        {"family": "scatter", "input_shape": list(input_shape), "num_classes": num_classes, "layers": layers}
    )
