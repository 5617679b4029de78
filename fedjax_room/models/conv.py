"""A drop-in ``conv_general_dilated`` that is faster on CPU for strided convolutions of few channels.

XLA:CPU computes a strided convolution over one or two input channels (the first layer of
an image model: ``8x8/2`` over a grey image) about 3.5x slower than the same arithmetic
as a stride-1 convolution over more channels. :func:`conv_general_dilated` rewrites such a
convolution by space-to-depth: the input is cut into ``stride``-sized blocks that become
channels, the kernel is rearranged to match, and a stride-1 ``VALID`` convolution of
``kernel // stride`` computes exactly the same sums (same products, in another order).
Everything else goes to :func:`jax.lax.conv_general_dilated` unchanged.

The DP MNIST CNN's first layer at batch 256, one core: 10.6 ms -> 2.9 ms forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["conv_general_dilated", "uses_space_to_depth"]

_MAX_CHANNELS = 4


def _channels_last(dimension_numbers: Any, nd: int) -> bool:
    """Whether the layout is (N, *spatial, C) input, (*spatial, I, O) kernel, (N, *spatial, C) output."""
    if not isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return False
    lhs, rhs, out = dimension_numbers
    spatial = tuple(range(1, nd + 1))
    return (
        tuple(lhs) == (0, nd + 1, *spatial)
        and tuple(out) == (0, nd + 1, *spatial)
        and tuple(rhs) == (nd + 1, nd, *range(nd))
    )


def uses_space_to_depth(
    in_channels: int,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    feature_group_count: int = 1,
) -> bool:
    """Whether :func:`conv_general_dilated` takes the space-to-depth route for these settings."""
    nd = len(kernel_size)
    return (
        in_channels < _MAX_CHANNELS
        and feature_group_count == 1
        and tuple(lhs_dilation or (1,) * nd) == (1,) * nd
        and tuple(rhs_dilation or (1,) * nd) == (1,) * nd
        and math.prod(strides) > 1
        and all(k % s == 0 for k, s in zip(kernel_size, strides, strict=True))
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Same signature and result as :func:`jax.lax.conv_general_dilated` (up to float rounding)."""
    nd = lhs.ndim - 2
    kernel = tuple(rhs.shape[:nd])
    strides = tuple(window_strides)
    if not (
        batch_group_count == 1
        and _channels_last(dimension_numbers, nd)
        and uses_space_to_depth(lhs.shape[-1], kernel, strides, lhs_dilation, rhs_dilation, feature_group_count)
    ):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    spatial = lhs.shape[1 : nd + 1]
    pads = jax.lax.padtype_to_pads(spatial, kernel, strides, padding) if isinstance(padding, str) else padding
    x = jnp.pad(lhs, ((0, 0), *[tuple(p) for p in pads], (0, 0)))
    out = tuple((n - k) // s + 1 for n, k, s in zip(x.shape[1 : nd + 1], kernel, strides, strict=True))
    covered = tuple(s * (o - 1) + k for o, k, s in zip(out, kernel, strides, strict=True))  # multiples of s
    x = jax.lax.slice(x, (0,) * (nd + 2), (x.shape[0], *covered, x.shape[-1]))
    split: list[int] = []
    for c, s in zip(covered, strides, strict=True):
        split += [c // s, s]
    # (N, m1, s1, m2, s2, ..., C) -> (N, m1, m2, ..., s1, s2, ..., C) -> (N, m1, m2, ..., s1*s2*...*C)
    x = x.reshape((x.shape[0], *split, x.shape[-1]))
    x = jnp.transpose(x, (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1))
    x = x.reshape((x.shape[0], *x.shape[1 : nd + 1], -1))
    # Kernel (k1, k2, ..., I, O) with k = block * s + phase -> (b1, b2, ..., s1*s2*...*I, O).
    ksplit: list[int] = []
    for k, s in zip(kernel, strides, strict=True):
        ksplit += [k // s, s]
    w = rhs.reshape((*ksplit, *rhs.shape[nd:]))
    w = jnp.transpose(w, (*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd, 2 * nd + 1))
    w = w.reshape((*w.shape[:nd], -1, rhs.shape[-1]))
    return jax.lax.conv_general_dilated(
        x,
        w,
        (1,) * nd,
        "VALID",
        dimension_numbers=dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
