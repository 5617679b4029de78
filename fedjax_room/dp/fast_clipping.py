"""Fast per-example clipping without per-example gradients ("ghost norm" + book-keeping).

For a layer ``y = x @ W + b`` the gradient of example ``i``'s loss with respect to
``W`` is ``a_i^T g_i`` where ``a_i`` is the layer input and ``g_i = dl_i/dy_i`` the
output gradient of that example. So per-example norms and the clipped sum need
only ``a`` and ``g`` for each layer, which one forward and one backward pass give:

1. Every ``flax.linen.Dense`` / ``flax.linen.Conv`` call inside ``loss_fn`` is
   intercepted (:func:`flax.linen.intercept_methods`): its input ``a`` is
   recorded and a zero "perturbation" ``z`` is added to its output.
2. ``loss_fn`` runs on each example as a batch of one, vectorised with
   ``jax.vmap`` (XLA folds that back into batched matmuls / convolutions); the
   gradient of the *sum* of per-example losses with respect to the perturbations
   is every ``g_i`` at once. Parameter gradients are never formed.
3. Per-example squared norms per layer (Li et al. 2021, Bu et al. 2022):

   - dense on one position: ``||a_i||^2 ||g_i||^2`` (+ ``||g_i||^2`` for the bias);
   - dense over ``T`` positions or conv (``a`` = im2col patches, by strided
     slices; see :func:`_patch_method`): either the Gram trick
     ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` or the per-example kernel gradient
     ``a_i^T g_i``, whichever keeps the smaller per-example intermediate
     (decided statically in :func:`plan`, see :func:`_strategy`).
4. Book-keeping: with ``c_i = min(1, C / n_i)`` the clipped sum of a kernel
   is ``sum_i a_i^T (c_i g_i)``, one einsum, no second backward pass. Rows of
   examples that are masked or not finite are zeroed first (``0 * nan = nan``).

The clip factor's ``n_i`` is a *certified upper bound* on the norm of what example ``i``
actually adds to that float32 sum, never an estimate (issue 13): in float32 the Gram sum
can be far below the norm when the per-position terms cancel (crafted parameters made one
record add 40x the bound), and ``||a||^2`` can underflow to 0 while ``a g^T`` does not. So
``a`` and ``g`` are first scaled per example by a power of two to entries below 1 (exact;
the weight carries the scale back), the Gram estimate gets a rigorous error term
``gamma_S T^2 + delta_S`` with ``T = sum_t ||a_t|| ||g_t||`` (from the Gram diagonals), and
the book-keeping's own rounding, the record's share of the ``B*P``-term dot included, adds
``gamma(B*P + 1) T`` (:func:`_factored_bound`). Materialised per-example gradients and
biases are bounded from the materialised values themselves
(:func:`fedjax_room.dp.float_bounds.materialised_bound`). An example whose layer inputs or
output gradients are not finite or reach ``2**100`` contributes zero (reported norm ``nan``).
For ordinary data the bound is within about ``(K + O + 2P) u P`` of the norm (``u = 2**-24``);
for cancelling, crafted parameters it is far above it, so such a record is clipped harder,
never less.

When it applies (:func:`plan`): every parameter leaf is the kernel or bias of
exactly one plain ``nn.Dense`` / ``nn.Conv`` (``feature_group_count=1``, no
mask, no custom ``dot_general``/``conv_general_dilated``, zero/``SAME``/``VALID``
/explicit padding) called exactly once per example, the params reach the layers
unchanged (no casting, no copies), and the loss depends on the params only
through those layers (checked on the jaxpr, so e.g. an L2 penalty inside
``loss_fn`` or weight tying makes it fall back). Otherwise
:func:`fedjax_room.dp.clipping.clipped_grad` with ``method="auto"`` uses the vmap
path. Like the vmap path, each example is its own batch of one, so the result is
the same function of the data.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes
from flax.linen.linear import canonicalize_padding
from flax.linen.module import InterceptorContext
from jax.extend.core import Var

from fedjax_room.dp import float_bounds
from fedjax_room.models.conv import conv_general_dilated as space_to_depth_conv

__all__ = ["LayerPlan", "Plan", "clipped_chunk", "plan"]

Params = Any
Batch = Any

_SLICE_MIN_CHANNELS = 4
_MATERIALISE_FLOATS = 1 << 12


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One captured layer, as seen on a single example (shapes include the example's batch-of-one axis)."""

    kind: str  # "dense" | "conv"
    path: tuple[str, ...]
    kernel_leaf: int
    bias_leaf: int | None
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    y_dtype: Any
    strategy: str  # "outer" | "gram" | "materialise"
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: Any = None
    input_dilation: tuple[int, ...] = ()
    kernel_dilation: tuple[int, ...] = ()
    # conv only, how im2col patches are extracted and so how their features are ordered:
    # "slice" and "staged" (*kernel, cin); "lax" (cin, *kernel).
    patches: str = ""

    @property
    def positions(self) -> int:
        """Positions per example over which the kernel is shared (1 for a plain dense layer)."""
        if self.kind == "dense":
            return math.prod(self.x_shape[:-1])
        return math.prod(self.y_shape[:-1])


@dataclasses.dataclass(frozen=True)
class Plan:
    """Whether the fast path applies, why not, and the captured layers in call order."""

    supported: bool
    reason: str = ""
    layers: tuple[LayerPlan, ...] = ()


def _is_target(context: Any) -> bool:
    return context.method_name == "__call__" and type(context.module) in (nn.Dense, nn.Conv)


def _unsupported_config(module: nn.Module) -> str:
    if module.promote_dtype is not flax_dtypes.promote_dtype:
        return "a custom promote_dtype"
    if isinstance(module, nn.Dense):
        if module.dot_general is not None or module.dot_general_cls is not None:
            return "a custom dot_general"
        return ""
    if module.feature_group_count != 1:
        return "feature_group_count != 1"
    if module.mask is not None:
        return "a kernel mask"
    custom = module.conv_general_dilated
    if custom not in (None, space_to_depth_conv) or module.conv_general_dilated_cls is not None:
        return "a custom conv_general_dilated"
    kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
    padding = canonicalize_padding(module.padding, len(kernel_size))
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        return f"{padding} padding"
    return ""


def _broadcast(value: Any, n: int) -> tuple[int, ...]:
    if value is None:
        value = 1
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def _strategy(kind: str, positions: int, fan_in: int, fan_out: int) -> str:
    """How to get a layer's per-example norms.

    Materialising the per-example kernel gradients ``a_i^T g_i`` costs ``P*K*O`` flops per
    example and then makes the clipped sum nearly free; the Gram trick costs ``P^2*(K+O)``
    *plus* a book-keeping einsum of ``P*K*O``. Materialising needs fewer flops, but it writes and
    reads back ``B*K*O`` floats in small batched matmuls, which on CPU costs more than the flops
    (the DP MNIST CNN's second conv, ``P=25, K=256, O=32``: the whole DP step is 1.5x its
    non-private step with the Gram trick, 2.0x materialising; one core). So the Gram trick is
    used whenever a per-example kernel gradient (``K*O`` floats) is larger than both the Gram
    matrices (``P^2``) and a 4k-float (16 KiB) allowance.
    """
    if kind == "dense" and positions == 1:
        return "outer"
    if fan_in * fan_out > max(positions * positions, _MATERIALISE_FLOATS):
        return "gram"
    return "materialise"


def _patch_method(cin: int, input_dilation: tuple[int, ...]) -> str:
    """The fastest im2col on XLA:CPU that applies (measured on one core, see the patch functions).

    ``prod(kernel)`` strided slices for four or more input channels; one dimension at a time
    for fewer (a single slice would then be a thin gather); lax's identity convolution when
    the input is dilated (transposed convolutions).
    """
    if set(input_dilation) != {1}:
        return "lax"
    return "slice" if cin >= _SLICE_MIN_CHANNELS else "staged"


def _depends_on_inputs(closed: Any, num_inputs: int) -> bool:
    """Whether any output of the jaxpr depends (data flow) on its first ``num_inputs`` inputs."""
    jaxpr = closed.jaxpr
    tainted = set(jaxpr.invars[:num_inputs])
    for eqn in jaxpr.eqns:
        if any(isinstance(v, Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return any(isinstance(v, Var) and v in tainted for v in jaxpr.outvars)


def _example_struct(batch: Batch) -> Batch:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((1, *jnp.shape(x)[1:]), jnp.result_type(x)), batch)


def plan(loss_fn: Callable[[Params, Batch], jax.Array], params: Params, batch: Batch) -> Plan:
    """Analyse ``loss_fn`` on one example of ``batch`` (abstractly, nothing is computed).

    Returns a :class:`Plan`; ``plan.supported`` is ``False`` with a ``reason`` when
    the fast path does not apply.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaf_structs = [jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]
    example = _example_struct(batch)
    found: list[dict[str, Any]] = []
    problems: list[str] = []

    def discover(leaf_values: list[Any], ex: Batch) -> jax.Array:
        index = {id(leaf): i for i, leaf in enumerate(leaf_values)}

        def interceptor(
            next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], context: InterceptorContext
        ) -> Any:
            if not _is_target(context):
                return next_fun(*args, **kwargs)
            module = context.module
            x = args[0] if args else kwargs.get("inputs")
            y = next_fun(*args, **kwargs)
            name = "/".join(module.path) or type(module).__name__
            bad = _unsupported_config(module)
            if bad:
                problems.append(f"layer {name} uses {bad}")
            kernel: object = module.get_variable("params", "kernel")  # compared by identity only
            bias: object = module.get_variable("params", "bias") if module.use_bias else None
            kernel_leaf = index.get(id(kernel))
            bias_leaf = index.get(id(bias)) if bias is not None else None
            if kernel_leaf is None or (bias is not None and bias_leaf is None):
                problems.append(f"the parameters of layer {name} are not the params passed to loss_fn unchanged")
            found.append(
                {"module": module, "name": name, "x": x, "y": y, "kernel_leaf": kernel_leaf, "bias_leaf": bias_leaf}
            )
            return y

        with nn.intercept_methods(interceptor):
            return loss_fn(jax.tree_util.tree_unflatten(treedef, leaf_values), ex)

    try:
        out = jax.eval_shape(discover, leaf_structs, example)
    except Exception as exc:  # noqa: BLE001 - any failure to trace means "not supported"
        return Plan(False, f"loss_fn could not be traced on a single example ({type(exc).__name__}: {exc})")
    if jnp.shape(out) != ():
        return Plan(False, f"loss_fn must return a scalar, got shape {jnp.shape(out)}")
    if not found:
        return Plan(False, "no flax.linen.Dense or Conv layer is called by loss_fn")
    if problems:
        return Plan(False, problems[0])

    owners: dict[int, str] = {}
    layers: list[LayerPlan] = []
    for rec in found:
        for leaf in (rec["kernel_leaf"], rec["bias_leaf"]):
            if leaf is None:
                continue
            if leaf in owners:
                return Plan(False, f"parameters used by more than one layer call ({owners[leaf]} and {rec['name']})")
            owners[leaf] = rec["name"]
        module, x, y = rec["module"], rec["x"], rec["y"]
        x_shape, y_shape = tuple(x.shape), tuple(y.shape)
        if isinstance(module, nn.Dense):
            fan_in, fan_out = x_shape[-1], y_shape[-1]
            positions = math.prod(x_shape[:-1])
            layers.append(
                LayerPlan(
                    kind="dense",
                    path=tuple(module.path),
                    kernel_leaf=rec["kernel_leaf"],
                    bias_leaf=rec["bias_leaf"],
                    x_shape=x_shape,
                    y_shape=y_shape,
                    y_dtype=y.dtype,
                    strategy=_strategy("dense", positions, fan_in, fan_out),
                )
            )
        else:
            kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
            nd = len(kernel_size)
            if len(x_shape) < nd + 2:
                return Plan(False, f"layer {rec['name']} is called without a batch axis")
            fan_in = math.prod(kernel_size) * x_shape[-1]
            fan_out = y_shape[-1]
            positions = math.prod(y_shape[:-1])
            input_dilation = _broadcast(module.input_dilation, nd)
            layers.append(
                LayerPlan(
                    kind="conv",
                    path=tuple(module.path),
                    kernel_leaf=rec["kernel_leaf"],
                    bias_leaf=rec["bias_leaf"],
                    x_shape=x_shape,
                    y_shape=y_shape,
                    y_dtype=y.dtype,
                    strategy=_strategy("conv", positions, fan_in, fan_out),
                    kernel_size=kernel_size,
                    strides=_broadcast(module.strides, nd),
                    padding=canonicalize_padding(module.padding, nd),
                    input_dilation=input_dilation,
                    kernel_dilation=_broadcast(module.kernel_dilation, nd),
                    patches=_patch_method(x_shape[-1], input_dilation),
                )
            )
    missing = [i for i in range(len(leaves)) if i not in owners]
    if missing:
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        return Plan(False, f"parameter {paths[missing[0]]} is not the kernel or bias of a Dense/Conv layer")

    # The loss must depend on the params only through the captured layers: replace
    # every captured layer by zeros and check that the params drop out of the jaxpr.
    def detached(leaf_values: list[Any], ex: Batch) -> jax.Array:
        counter = iter(layers)

        def interceptor(
            next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], context: InterceptorContext
        ) -> Any:
            if not _is_target(context):
                return next_fun(*args, **kwargs)
            layer = next(counter)
            return jnp.zeros(layer.y_shape, layer.y_dtype)

        with nn.intercept_methods(interceptor):
            return loss_fn(jax.tree_util.tree_unflatten(treedef, leaf_values), ex)

    try:
        closed = jax.make_jaxpr(detached)(leaf_structs, example)
    except Exception as exc:  # noqa: BLE001
        return Plan(False, f"loss_fn could not be traced with detached layers ({type(exc).__name__}: {exc})")
    if _depends_on_inputs(closed, len(leaves)):
        return Plan(False, "loss_fn uses parameters outside their Dense/Conv layer (e.g. a penalty or weight tying)")
    return Plan(True, "", tuple(layers))


def _padded(layer: LayerPlan, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    """``x`` (``(N, *spatial, cin)``) padded as the layer pads it, and the layer's output spatial shape."""
    nd = len(layer.kernel_size)
    dilated = tuple((k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.kernel_dilation, strict=True))
    if isinstance(layer.padding, str):
        pads = jax.lax.padtype_to_pads(x.shape[1 : nd + 1], dilated, layer.strides, layer.padding)
    else:
        pads = layer.padding
    x = jnp.pad(x, ((0, 0), *[tuple(p) for p in pads], (0, 0)))
    return x, tuple((n - k) // s + 1 for n, k, s in zip(x.shape[1 : nd + 1], dilated, layer.strides, strict=True))


def _slice_patches(layer: LayerPlan, x: jax.Array) -> jax.Array:
    """im2col by strided slices: ``(N, *spatial, cin) -> (N, P, prod(kernel) * cin)``, ordered (*kernel, cin)."""
    x, out = _padded(layer, x)
    cols = []
    for offset in itertools.product(*[range(k) for k in layer.kernel_size]):
        start = tuple(o * d for o, d in zip(offset, layer.kernel_dilation, strict=True))
        stop = tuple(b + s * (n - 1) + 1 for b, s, n in zip(start, layer.strides, out, strict=True))
        cols.append(jax.lax.slice(x, (0, *start, 0), (x.shape[0], *stop, x.shape[-1]), (1, *layer.strides, 1)))
    patches = jnp.stack(cols, axis=-2)
    return patches.reshape(x.shape[0], -1, len(cols) * x.shape[-1])


def _staged_patches(layer: LayerPlan, x: jax.Array) -> jax.Array:
    """im2col one spatial dimension at a time, ordered (*kernel, cin) like :func:`_slice_patches`.

    For few input channels, ``prod(kernel)`` slices of ``x`` are each a thin strided gather;
    taking the ``kernel[d]`` strided slices of one dimension at a time, stacking them next to
    that dimension and transposing once at the end moves rows of contiguous memory instead
    (the 8x8/2 one-channel conv of the DP MNIST CNN at batch 256: 1.5 ms against 18.7 ms for
    64 slices, one core).
    """
    nd = len(layer.kernel_size)
    x, out = _padded(layer, x)
    # After dimension d the layout is (N, o_0, k_0, ..., o_d, k_d, spatial_{d+1}, ..., cin).
    for d in range(nd):
        axis = 1 + 2 * d
        cols = []
        for i in range(layer.kernel_size[d]):
            start = [0] * x.ndim
            limit = list(x.shape)
            strides = [1] * x.ndim
            start[axis] = i * layer.kernel_dilation[d]
            limit[axis] = start[axis] + layer.strides[d] * (out[d] - 1) + 1
            strides[axis] = layer.strides[d]
            cols.append(jax.lax.slice(x, start, limit, strides))
        x = jnp.stack(cols, axis=axis + 1)
    x = jnp.transpose(x, (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1))
    return x.reshape(x.shape[0], math.prod(out), -1)


def _kernel_to_patch_order(layer: LayerPlan, kernel: jax.Array) -> jax.Array:
    """Flax conv kernel ``(*kernel, cin, cout)`` -> ``(fan_in, cout)`` in this layer's patch order."""
    nd = len(layer.kernel_size)
    cout = kernel.shape[-1]
    if layer.patches == "lax":
        kernel = jnp.moveaxis(kernel, nd, 0)
    return kernel.reshape(-1, cout)


def _kernel_from_patch_order(layer: LayerPlan, kernel: jax.Array) -> jax.Array:
    """Inverse of :func:`_kernel_to_patch_order`: ``(fan_in, cout)`` -> flax ``(*kernel, cin, cout)``."""
    nd = len(layer.kernel_size)
    cin, cout = layer.x_shape[-1], kernel.shape[-1]
    if layer.patches == "lax":
        kernel = kernel.reshape((cin, *layer.kernel_size, cout))
        return jnp.moveaxis(kernel, 0, nd)
    return kernel.reshape((*layer.kernel_size, cin, cout))


def _conv_patches(layer: LayerPlan, x: jax.Array) -> jax.Array:
    """im2col: ``(N, *spatial, cin) -> (N, P, cin * prod(kernel))``, features ordered as ``layer.patches`` says."""
    if layer.patches == "slice":
        return _slice_patches(layer, x)
    if layer.patches == "staged":
        return _staged_patches(layer, x)
    nd = len(layer.kernel_size)
    spec = (0, nd + 1, *range(1, nd + 1))
    numbers = jax.lax.ConvDimensionNumbers(spec, (nd + 1, nd, *range(nd)), spec)
    patches = jax.lax.conv_general_dilated_patches(
        x,
        filter_shape=layer.kernel_size,
        window_strides=layer.strides,
        padding=layer.padding,
        lhs_dilation=layer.input_dilation,
        rhs_dilation=layer.kernel_dilation,
        dimension_numbers=numbers,
        precision=jax.lax.Precision.HIGHEST,
    )
    return patches.reshape(patches.shape[0], -1, patches.shape[-1])


def _layer_terms(layer: LayerPlan, x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example activations ``a: (B, P, fan_in)`` and output gradients ``g: (B, P, fan_out)``."""
    batch = x.shape[0]
    if layer.kind == "dense":
        return x.reshape(batch, -1, x.shape[-1]), g.reshape(batch, -1, g.shape[-1])
    nd = len(layer.kernel_size)
    flat = x.reshape((-1,) + x.shape[-(nd + 1) :])
    patches = _conv_patches(layer, flat)
    return patches.reshape(batch, -1, patches.shape[-1]), g.reshape(batch, -1, g.shape[-1])


def _kernel_layout(layer: LayerPlan, kernel: jax.Array) -> jax.Array:
    """``(fan_in, cout)`` in patch order -> the flax kernel layout."""
    if layer.kind == "dense":
        return kernel
    return _kernel_from_patch_order(layer, kernel)


_HIGHEST = jax.lax.Precision.HIGHEST
_MAX_EXPONENT = 100  # activations / output gradients of magnitude >= 2**100 make a record unusable


def _normalise(v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(v * 2**-e, e, finite)`` per example (leading axis): a float32 copy whose entries are ``< 1``.

    ``e`` is the binary exponent of the example's largest ``|v|`` (clamped to ``[-100, 100]``), so the
    scaling is exact except for entries that underflow. ``finite`` is ``False`` for an example with a
    non-finite entry or one of magnitude ``>= 2**100``; its copy is all zeros (finite).
    """
    rows = v.shape[0]
    # A flat copy first: reducing and scaling v in whatever layout the vmapped forward/backward left it
    # in costs XLA:CPU about 15 ms per step on the DP MNIST CNN (6 ms for the whole conv layer otherwise).
    flat = jax.lax.optimization_barrier(v.reshape(rows, -1).astype(jnp.float32))
    alpha = jnp.max(jnp.abs(flat), axis=1)  # NaN propagates
    finite = alpha < 2.0**_MAX_EXPONENT  # False for NaN and inf too
    _, e = jnp.frexp(alpha)
    e = jnp.clip(e, -_MAX_EXPONENT, _MAX_EXPONENT).astype(jnp.int32)
    scale = jnp.ldexp(jnp.ones((rows,), jnp.float32), -e)
    scaled = jnp.where(finite[:, None], flat * scale[:, None], 0.0)
    return scaled.reshape(v.shape), e, finite


def _factored_bound(a: jax.Array, g: jax.Array, batch: int) -> tuple[jax.Array, float]:
    """``(bound, slack)`` for a layer whose clipped kernel sum is ``sum_{b,p} a_bp (c_b g_bp)^T``.

    ``a`` ``(B, P, K)`` has entries ``<= 2`` and ``g`` ``(B, P, O)`` entries ``< 1`` (scaled copies, see
    :func:`_normalise`). With ``M = a^T g`` (exact) and ``T = sum_p ||a_p|| ||g_p||``, record ``b``'s
    computed share of the book-keeping sum ``v`` satisfies ``||v - c M|| <= c (gamma(BP+1) T + d) + e``
    (rounding of ``c g``, of the ``B*P``-term dot, underflow scaled by ``c``: ``d``; underflow not
    scaled: ``e``, returned as ``slack``). ``||M||^2`` is estimated by the Gram trick
    ``S = sum_{p,q} (a_p.a_q)(g_p.g_q)``, whose float32 value can be far off under cancellation
    across positions; its error is at most ``gamma_S T^2 + delta_S`` (dot products of length ``K``
    and ``O``, the products, a two-stage ``P + P`` sum, underflow). So
    ``bound = sqrt(max(S, 0) + gamma_S T^2 + delta_S) + gamma(BP+1) T + d`` (T itself from the
    Gram diagonals, bounded above) is ``>= ||M|| + gamma(BP+1) T + d`` after the final rounding
    factor, whatever the parameters. For one position (a dense layer) ``T^2 = S``: the bound is
    the norm to within about ``(K + O) u``.
    """
    gamma = float_bounds.gamma
    u, tiny = float_bounds.U, float_bounds.TINY
    f32 = float_bounds.f32_up
    positions, fan_in, fan_out = a.shape[1], a.shape[2], g.shape[2]
    if positions == 1:
        da = jnp.sum(jnp.square(a), axis=(1, 2))
        dg = jnp.sum(jnp.square(g), axis=(1, 2))
        sq = da * dg
        t = jnp.sqrt(da + f32(4 * fan_in * tiny)) * jnp.sqrt(dg + f32(4 * fan_out * tiny))
    else:
        ga = jnp.einsum("bpi,bqi->bpq", a, a, precision=_HIGHEST)
        gg = jnp.einsum("bpo,bqo->bpq", g, g, precision=_HIGHEST)
        inner = jax.lax.optimization_barrier(jnp.sum(ga * gg, axis=2))
        sq = jnp.sum(inner, axis=1)
        da = jnp.diagonal(ga, axis1=1, axis2=2)
        dg = jnp.diagonal(gg, axis1=1, axis2=2)
        t = jnp.sum(jnp.sqrt(da + f32(4 * fan_in * tiny)) * jnp.sqrt(dg + f32(4 * fan_out * tiny)), axis=1)
    g_k, g_o = gamma(fan_in), gamma(fan_out)
    # T_exact <= rho_t * t: the diagonals, the sqrt and products, the P-term sum.
    rho_t = 1.0 / ((1.0 - gamma(positions)) * (1.0 - u) ** 4 * math.sqrt((1.0 - g_k) * (1.0 - g_o)))
    eps_product = (g_k + g_o + g_k * g_o) * (1.0 + u) + u
    gamma_s = eps_product + gamma(2 * positions) * (1.0 + eps_product)
    delta_s = positions**2 * (22.0 * fan_in * fan_out + 4.0) * tiny
    gamma_bk = gamma(batch * positions + 1)
    delta_bk = positions * math.sqrt(fan_in * fan_out) * 2.0**-124
    y = jnp.maximum(sq, 0.0) + jnp.float32(f32(gamma_s * rho_t**2)) * jnp.square(t) + jnp.float32(f32(delta_s))
    bound = jnp.sqrt(y) + jnp.float32(f32(gamma_bk * rho_t)) * t + jnp.float32(f32(delta_bk))
    bound = bound * jnp.float32(f32(1.0 / (1.0 - u) ** 12))
    return bound, positions * math.sqrt(fan_in * fan_out) * 2.0**-123


def clipped_chunk(
    loss_fn: Callable[[Params, Batch], jax.Array],
    clip_norm: float,
    the_plan: Plan,
    params: Params,
    batch: Batch,
    mask: jax.Array,
) -> tuple[Params, jax.Array, jax.Array]:
    """``(clipped_sum, norms, per_example_losses)`` for one chunk, by the fast path.

    Same contract as the vmap path in :mod:`fedjax_room.dp.clipping` (masked rows
    report norm 0, non-finite rows contribute zero and report their norm).
    ``the_plan`` must come from :func:`plan` on the same loss, params and batch shapes.
    """
    layers = the_plan.layers
    leaves, treedef = jax.tree_util.tree_flatten(params)
    size = mask.shape[0]
    perturb = [jnp.zeros((size, *layer.y_shape), layer.y_dtype) for layer in layers]

    def one_example(perts: list[jax.Array], example: Batch) -> tuple[jax.Array, list[jax.Array]]:
        acts: list[jax.Array] = []

        def interceptor(
            next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], context: InterceptorContext
        ) -> Any:
            if not _is_target(context):
                return next_fun(*args, **kwargs)
            k = len(acts)
            x = args[0] if args else kwargs["inputs"]
            acts.append(x)
            return next_fun(*args, **kwargs) + perts[k]

        single = jax.tree_util.tree_map(lambda v: jnp.expand_dims(v, 0), example)
        with nn.intercept_methods(interceptor):
            loss = loss_fn(jax.tree_util.tree_unflatten(treedef, leaves), single)
        if len(acts) != len(layers):
            raise RuntimeError("loss_fn called its layers differently than when it was planned")
        return loss, acts

    def summed(perts: list[jax.Array]) -> tuple[jax.Array, tuple[jax.Array, list[jax.Array]]]:
        losses, acts = jax.vmap(one_example)(perts, batch)
        return jnp.sum(losses), (losses, acts)

    grads, (losses, acts) = jax.grad(summed, has_aux=True)(perturb)

    # Per-example upper bounds on the norm of what each layer adds to the sum (see _factored_bound).
    # each layer's kernel term (the per-example gradients, or the scaled factors a, gg and their
    # exponent) and its per-example bias gradient
    terms: list[tuple[jax.Array | tuple[jax.Array, jax.Array, jax.Array], jax.Array | None]] = []
    bounds: list[jax.Array] = []
    slack = 0.0
    for layer, x, g in zip(layers, acts, grads, strict=True):
        fan_out = layer.y_shape[-1]
        g_rows = g.reshape(size, -1, fan_out)
        if layer.strategy == "materialise":
            a, gg = _layer_terms(layer, x, g)
            per_example = jnp.einsum("bpi,bpo->bio", a, gg, precision=_HIGHEST)
            n = per_example.shape[1] * fan_out
            sq, n_eff = float_bounds.sum_squares_rows(per_example.reshape(size, n))
            bounds.append(float_bounds.materialised_bound(sq, n, n_eff, size))
            slack += float_bounds.materialised_slack(n)
            kernel_term: jax.Array | tuple[jax.Array, jax.Array, jax.Array] = per_example
        else:
            xs, ea, fin_a = _normalise(x)
            gs, eg, fin_g = _normalise(g)
            a, gg = _layer_terms(layer, xs, gs)
            finite = jnp.logical_and(fin_a, fin_g)
            bound_a = 1.0
            if layer.kind == "conv" and layer.patches == "lax":
                # lax's im2col is a convolution: only trust it to copy within a factor 2, and check that.
                bound_a = 2.0
                finite = jnp.logical_and(finite, jnp.max(jnp.abs(a), axis=(1, 2)) <= bound_a)
            unit_bound, layer_slack = _factored_bound(a, gg, size)
            scale_exp = ea + eg
            bounds.append(jnp.where(finite, jnp.ldexp(unit_bound, scale_exp), jnp.nan))
            slack += layer_slack
            kernel_term = (a, gg, scale_exp)
        bias_grad: jax.Array | None = None
        if layer.bias_leaf is not None:
            bias_grad = jnp.sum(g_rows.astype(jnp.float32), axis=1)
            sq, n_eff = float_bounds.sum_squares_rows(bias_grad)
            bounds.append(float_bounds.materialised_bound(sq, fan_out, n_eff, size))
            slack += float_bounds.materialised_slack(fan_out)
        terms.append((kernel_term, bias_grad))
    norms, total_slack = float_bounds.total_bound(bounds)
    effective = float_bounds.effective_clip_norm(clip_norm, slack + total_slack)
    weights, ok = float_bounds.clip_weights(norms, effective, mask)

    # Book-keeping: the clipped sum without a second backward pass.
    out: list[Any] = [None] * len(leaves)
    for layer, (kernel_term, bias_grad) in zip(layers, terms, strict=True):
        kernel_dtype = leaves[layer.kernel_leaf].dtype
        if not isinstance(kernel_term, tuple):
            per_example = kernel_term
            rows = jnp.where(ok[:, None, None], per_example, jnp.zeros((), per_example.dtype))
            kernel = jnp.einsum("b,bio->io", weights.astype(rows.dtype), rows, precision=_HIGHEST)
        else:
            # a and gg are the scaled (entries <= 1), finite arrays the bound was computed from; the
            # weight carries the scales back. Rows that are not ok get h = 0 (a is finite: 0 * a = 0).
            a, gg, scale_exp = kernel_term
            factor = jnp.ldexp(weights, scale_exp)
            h = jnp.where(ok[:, None, None], gg * factor[:, None, None], jnp.zeros((), gg.dtype))
            kernel = jnp.einsum("bpi,bpo->io", a, h, precision=_HIGHEST)
        out[layer.kernel_leaf] = _kernel_layout(layer, kernel).astype(kernel_dtype)
        if bias_grad is not None and layer.bias_leaf is not None:  # one is set when the other is
            rows = jnp.where(ok[:, None], bias_grad, jnp.zeros((), bias_grad.dtype))
            bias = jnp.einsum("b,bo->o", weights, rows, precision=_HIGHEST)
            out[layer.bias_leaf] = bias.astype(leaves[layer.bias_leaf].dtype)
    total = jax.tree_util.tree_unflatten(treedef, out)
    norms = jnp.where(mask, norms, 0.0)
    return total, norms, losses
