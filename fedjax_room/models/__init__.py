"""Declarative model specs (JSON-able data) and their Flax modules.

The specs (:mod:`.spec`, :mod:`.from_schema`) are plain Python and light to import; the Flax side
(:mod:`.build`: ``build_model``, ``init_params``, ...) and the model files (:mod:`.export`: ``load``,
``export_model``, docs/export.md) are imported on first use, so a client that only
handles specs (the analyst API, the Jupyter server's routes) never loads JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedjax_room._lazy import lazy_names
from fedjax_room.models.from_schema import FAMILIES, spec_from_schema
from fedjax_room.models.spec import (
    ACTIVATIONS,
    FAMILY_LAYERS,
    LAYER_TYPES,
    ModelSpec,
    cnn,
    logistic,
    mlp,
    scatter,
    spec_hash,
)

if TYPE_CHECKING:
    from fedjax_room.models.build import SpecModel, build_model, init_params, make_loss_fn, make_predict_fn
    from fedjax_room.models.export import LoadedModel, export_model, load, param_shapes

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "FAMILY_LAYERS",
    "LAYER_TYPES",
    "LoadedModel",
    "ModelSpec",
    "SpecModel",
    "build_model",
    "cnn",
    "export_model",
    "init_params",
    "load",
    "logistic",
    "make_loss_fn",
    "make_predict_fn",
    "mlp",
    "param_shapes",
    "scatter",
    "spec_from_schema",
    "spec_hash",
]

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        **dict.fromkeys(("SpecModel", "build_model", "init_params", "make_loss_fn", "make_predict_fn"), "build"),
        **dict.fromkeys(("LoadedModel", "export_model", "load", "param_shapes"), "export"),
    },
)
