"""The one way to build a model spec for a data schema: the launch form, the REST route and the CLI use it.

A schema declares its input and its labels: ``feature_shape`` (or ``features``, the column names of flat
data) and ``classes``. :func:`schema_dims` reads ``(input_shape, num_classes)`` from it — a plain mapping
(the JSON a site reports) or an object with those attributes (:class:`fedjax_room.data.Schema`) — and
refuses a schema that does not declare them, never guessing a class count. :func:`spec_from_schema` builds
one of :data:`FAMILIES` for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedjax_room.errors import ModelSpecError
from fedjax_room.models.scattering import image_dims
from fedjax_room.models.spec import ModelSpec, cnn, logistic, mlp, scatter

__all__ = ["DEFAULT_CONV", "DEFAULT_HIDDEN", "FAMILIES", "image_shape", "schema_dims", "spec_from_schema"]

#: Model families a spec can be built for from a schema alone.
FAMILIES = ("logistic", "mlp", "cnn", "scatter")
#: Hidden widths when none are given: an mlp's hidden layers, a cnn's dense layers after the convolutions.
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn": (32,)}
#: A cnn's convolution channels when none are given (3x3 kernels, stride 1, each followed by a 2x2 max-pool).
DEFAULT_CONV = (16, 32)


def _field(schema: Any, name: str) -> Any:
    return schema.get(name) if isinstance(schema, Mapping) else getattr(schema, name, None)


def schema_dims(schema: Any) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` a schema declares; :class:`ModelSpecError` if it declares no input or classes."""
    if schema is None:
        raise ModelSpecError("no data schema to build a model for; give a model spec")
    shape = _field(schema, "feature_shape")
    features = _field(schema, "features")
    if not shape and features:
        shape = [len(features)]
    classes = _field(schema, "classes")
    if not shape:
        raise ModelSpecError("the data schema declares no feature_shape or features; give a model spec")
    if not classes or isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or len(classes) < 2:
        raise ModelSpecError(
            f"the data schema declares {'no' if not classes else 'fewer than two'} classes, so the number of "
            "outputs is unknown; give a model spec"
        )
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ModelSpecError(f"the data schema's feature_shape {shape!r} is not a list of integers") from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelSpecError(f"the data schema's feature_shape {list(dims)} must be positive integers")
    return dims, len(classes)


def image_shape(shape: Sequence[int]) -> tuple[int, int, int] | None:
    """``shape`` as (height, width, channels): itself if 3-D, ``(s, s, 1)`` for ``s * s`` flat features
    (``s >= 4``), else None."""
    return image_dims(shape, min_side=4)


def spec_from_schema(
    schema: Any,
    family: str = "mlp",
    *,
    hidden: Sequence[int] | None = None,
    conv: Sequence[int] | None = None,
    activation: str = "relu",
    J: int | None = None,
    orientations: int | None = None,
) -> ModelSpec:
    """A ``family`` model for data of ``schema``: its input shape and its number of classes from the schema.

    ``hidden``: an mlp's hidden widths, or a cnn's dense widths (default :data:`DEFAULT_HIDDEN`), or a scatter
    model's head (default none: logistic regression on the coefficients); ``conv``: a cnn's channels (default
    :data:`DEFAULT_CONV`). A cnn needs (height, width, channels) inputs: reshape flat image data first
    (:func:`image_shape`). A scatter model takes images or square flat pixels; ``J``, its number of scales,
    defaults to 2 for images of side 16 or more and 1 below, ``orientations`` to 8. Raises :class:`ModelSpecError`.
    """
    if family not in FAMILIES:
        raise ModelSpecError(f"model family must be one of {', '.join(FAMILIES)} (or give a spec), not {family!r}")
    shape, classes = schema_dims(schema)
    if family == "logistic":
        return logistic(shape, classes)
    if family == "scatter":
        dims = image_dims(shape)
        if dims is None:
            raise ModelSpecError(
                f"a scatter model needs images or square flat pixels but the data has shape {list(shape)}; "
                "choose mlp or logistic"
            )
        scales = J if J is not None else (2 if min(dims[:2]) >= 16 else 1)
        angles = 8 if orientations is None else orientations
        return scatter(shape, classes, J=scales, hidden=tuple(hidden or ()), activation=activation, orientations=angles)
    widths = tuple(DEFAULT_HIDDEN[family] if hidden is None else hidden)
    if family == "mlp":
        return mlp(shape, classes, hidden=widths, activation=activation)
    if len(shape) != 3:
        raise ModelSpecError(
            f"a cnn needs (height, width, channels) inputs but the data has shape {list(shape)}; choose mlp or logistic"
        )
    channels = tuple(conv) if conv else DEFAULT_CONV
    return cnn(shape, classes, conv=[(int(c), 3, 1) for c in channels], dense=widths, activation=activation)
