"""A fixed scattering transform in front of a model: Tramer & Boneh's "better features" for DP-SGD.

Tramer and Boneh (ICLR 2021, "Differentially Private Learning Needs Better Features (or Much More Data)") show
that a linear model on the coefficients of a 2-D wavelet scattering transform (Bruna & Mallat 2013) beats an
end-to-end CNN under DP-SGD at the same epsilon: the transform is fixed (no parameters, nothing learnt from
data), so it costs no privacy, and the model on top needs far fewer steps to fit. The transform is kymatio's
(:class:`kymatio.scattering2d.frontend.jax_frontend.ScatteringJax2D`, Morlet wavelets, ``J`` scales, ``L``
orientations, order 2): for an ``h x w x c`` image it gives ``c * K`` channels of ``h / 2^J x w / 2^J``
coefficients, ``K = 1 + J L + L^2 J (J - 1) / 2`` (order 0, 1 and 2).

The coefficients of each order are then standardised with **fixed constants** (the layer's ``shift`` and
``scale``, one per order): ``(s - shift[o]) / scale[o]``. The paper standardises each channel with the training
data's statistics; per-order constants do as well on digits and MNIST (``benchmarks/README.md``). The defaults
(:data:`DEFAULT_SHIFT`, :data:`DEFAULT_SCALE`) are round figures for images with pixels in [0, 1], the same for
every dataset and not computed from any site's records: ``shift`` about each order's mean coefficient, ``scale``
about 2.5 times its spread, so the standardised coefficients spread about 0.4, where RunConfig's default step
(``learning_rate x server_learning_rate = 80`` on gradients clipped to 0.1) suits a linear head; with unit
spread the same step overshoots (digits 0.961 against 0.967, five seeds of central DP-SGD). They are part of the
model spec, which the sites approve, like any other hyperparameter (chosen, like the step size, on these
benchmarks: an assumption of the privacy claim, docs/privacy.md).

This module's spec-side helpers (:func:`check_layer`, :func:`output_size`) are plain Python; :func:`transform`
builds the JAX function (and imports kymatio) on first use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedjax_room.errors import ModelSpecError

__all__ = [
    "DEFAULT_SCALE",
    "DEFAULT_SHIFT",
    "LAYER_KEYS",
    "MAX_J",
    "MAX_ORIENTATIONS",
    "MAX_SIDE",
    "channel_orders",
    "check_layer",
    "image_dims",
    "num_channels",
    "output_size",
    "transform",
]

#: Largest number of scales, orientations and image side a spec may ask for (the site computes the transform).
MAX_J = 3
MAX_ORIENTATIONS = 8
MAX_SIDE = 256
#: Per-order (0, 1, 2) constants the coefficients are standardised with: ``(s - shift) / scale``.
DEFAULT_SHIFT = (0.2, 0.04, 0.004)
DEFAULT_SCALE = (0.5, 0.075, 0.01)
#: The keys a ``scattering`` layer may have.
LAYER_KEYS = frozenset({"type", "J", "orientations", "shift", "scale"})
_MAX_SHIFT = 1e4
_SCALES = (1e-4, 1e4)


def num_channels(J: int, L: int) -> int:
    """Scattering channels per input channel: ``1 + J L + L^2 J (J - 1) / 2`` (orders 0, 1, 2)."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def channel_orders(J: int, L: int) -> list[int]:
    """The order (0, 1 or 2) of each of the :func:`num_channels` channels, in kymatio's output order."""
    return [0] + [1] * (J * L) + [2] * (L * L * J * (J - 1) // 2)


def image_dims(input_shape: Sequence[int], *, min_side: int = 2) -> tuple[int, int, int] | None:
    """``input_shape`` as (height, width, channels): itself if 3-D, ``(s, s, 1)`` for ``s * s`` flat features
    (``s >= min_side``), else None."""
    dims = tuple(int(s) for s in input_shape)
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    side = math.isqrt(dims[0]) if len(dims) == 1 else 0
    return (side, side, 1) if side >= min_side and side * side == dims[0] else None


def _int_in(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ModelSpecError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _constants(value: Any, what: str, *, positive: bool) -> list[float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ModelSpecError(f"{what} must be a list of 3 numbers (orders 0, 1, 2), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ModelSpecError(f"{what} must hold finite numbers, got {v!r}")
        if positive and not _SCALES[0] <= v <= _SCALES[1]:
            raise ModelSpecError(f"{what} must hold numbers from {_SCALES[0]:g} to {_SCALES[1]:g}, got {v!r}")
        if not positive and abs(v) > _MAX_SHIFT:
            raise ModelSpecError(f"{what} must hold numbers of magnitude at most {_MAX_SHIFT:g}, got {v!r}")
        out.append(float(v))
    return out


def check_layer(layer: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A ``scattering`` layer's keys validated and filled with the defaults; raises :class:`ModelSpecError`."""
    where = f"layer {index} (scattering)"
    angles = layer.get("orientations", MAX_ORIENTATIONS)
    return {
        "type": "scattering",
        "J": _int_in(layer.get("J", 2), 1, MAX_J, f"{where} J"),
        "orientations": _int_in(angles, 1, MAX_ORIENTATIONS, f"{where} orientations"),
        "shift": _constants(layer.get("shift", DEFAULT_SHIFT), f"{where} shift", positive=False),
        "scale": _constants(layer.get("scale", DEFAULT_SCALE), f"{where} scale", positive=True),
    }


def output_size(input_shape: Sequence[int], layer: Mapping[str, Any], index: int) -> int:
    """The number of (flat) features a checked ``scattering`` layer makes of ``input_shape``."""
    dims = image_dims(input_shape)
    if dims is None:
        raise ModelSpecError(
            f"layer {index} (scattering) needs an (height, width, channels) input or square flat pixels (s * s), "
            f"got {list(input_shape)}"
        )
    h, w, c = dims
    step = 1 << layer["J"]
    if h > MAX_SIDE or w > MAX_SIDE or h % step or w % step:
        raise ModelSpecError(
            f"layer {index} (scattering) needs image sides of at most {MAX_SIDE} that 2^J = {step} divides, "
            f"got {h} x {w}"
        )
    return c * num_channels(layer["J"], layer["orientations"]) * (h // step) * (w // step)


@functools.lru_cache(maxsize=16)
def _operator(J: int, L: int, h: int, w: int) -> Any:
    from kymatio.scattering2d.frontend.jax_frontend import ScatteringJax2D

    return ScatteringJax2D(J=J, shape=(h, w), L=L, max_order=2)


def transform(input_shape: Sequence[int], layer: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The JAX function ``x [batch, *input_shape] -> features [batch, output_size]`` of a checked layer."""
    import jax.numpy as jnp

    dims = image_dims(input_shape)
    if dims is None:
        raise ModelSpecError(f"a scattering layer cannot take inputs of shape {list(input_shape)}")
    h, w, c = dims
    J, L = int(layer["J"]), int(layer["orientations"])
    op = _operator(J, L, h, w)
    orders = channel_orders(J, L)
    shift = jnp.asarray([layer["shift"][o] for o in orders], jnp.float32)[:, None, None]
    scale = jnp.asarray([layer["scale"][o] for o in orders], jnp.float32)[:, None, None]

    def apply(x: Any) -> Any:
        images = jnp.moveaxis(jnp.reshape(x, (x.shape[0], h, w, c)), -1, 1)  # [batch, c, h, w]
        coefs = op.scattering(images.astype(jnp.float32))  # [batch, c, K, h / 2^J, w / 2^J]
        return jnp.reshape((coefs - shift) / scale, (x.shape[0], -1))

    return apply
