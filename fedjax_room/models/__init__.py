"""Declarative model specs (JSON-able data) and their Flax modules."""

from fedjax_room.models.build import SpecModel, build_model, init_params, make_loss_fn, make_predict_fn
from fedjax_room.models.spec import (
    ACTIVATIONS,
    FAMILY_LAYERS,
    LAYER_TYPES,
    ModelSpec,
    cnn,
    logistic,
    mlp,
    spec_hash,
)

__all__ = [
    "ACTIVATIONS",
    "FAMILY_LAYERS",
    "LAYER_TYPES",
    "ModelSpec",
    "SpecModel",
    "build_model",
    "cnn",
    "init_params",
    "logistic",
    "make_loss_fn",
    "make_predict_fn",
    "mlp",
    "spec_hash",
]
