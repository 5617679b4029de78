"""The single-site trainer: DP-SGD with Poisson sampling on one site's data, and evaluation.

:class:`LocalTrainer` is built once per (model spec, DP settings) and reused for
every round: its jitted DP step is compiled on first use and cached (one
compilation per padded batch shape, i.e. per dataset size). Each call of
:meth:`LocalTrainer.train` runs ``steps`` DP-SGD steps, each on a Poisson sample
with rate ``q = batch_size / N`` padded to a fixed size
(:func:`fedjax_room.dp.sampling.max_batch_size_for`), with gradient noise
``noise_multiplier * clip_norm`` on the clipped sum. The privacy spent by one call
is :meth:`LocalTrainer.event` ``(N, steps)``, a
``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)`` event to compose
into the site's ledger (:class:`fedjax_room.dp.accounting.Accountant`).

``seed`` drives both the batch sampler and the noise key. For real privacy it
must be secret and fresh per call; pass ``seed=None`` to draw one from
:mod:`secrets`. The per-step loss and clipping statistics in :class:`TrainStats`
come from un-noised values: they are for the data owner's eyes only.

:func:`evaluate` computes loss and accuracy counts (not private either: a site
noises them before release). :func:`train_central` is the non-private baseline
(Adam over shuffled mini-batches).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from dp_accounting import DpEvent, NonPrivateDpEvent

from fedjax_room.data.dataset import Dataset
from fedjax_room.dp.accounting import dpsgd_event
from fedjax_room.dp.optimizer import dpsgd, make_dp_train_step
from fedjax_room.dp.sampling import max_batch_size_for, poisson_sample
from fedjax_room.errors import ConfigError, DataError
from fedjax_room.local.features import head_spec as _head_spec
from fedjax_room.local.features import prepare
from fedjax_room.models import ModelSpec, init_params, make_loss_fn, make_predict_fn

__all__ = ["OPTIMIZERS", "EvalResult", "LocalTrainer", "TrainStats", "clipped_sum", "evaluate", "train_central"]

Params = Any

#: Local optimisers: plain SGD or heavy-ball momentum (0.9) after the DP noise.
OPTIMIZERS = ("sgd", "momentum")
_MOMENTUM = 0.9
_EVAL_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """What one :meth:`LocalTrainer.train` call did. ``loss`` and ``clipped_fraction`` are NOT private."""

    steps: int
    num_examples: int
    sampling_rate: float
    noise_multiplier: float
    clip_norm: float
    batch_size: int
    padded_batch_size: int
    loss: float
    clipped_fraction: float
    examples_seen: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean loss, number correct and number of examples. ``accuracy`` is ``correct / count``."""

    loss: float
    correct: int
    count: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "count": self.count, "accuracy": self.accuracy}


def _positive(value: Any, name: str, *, integer: bool = False) -> Any:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{name} must be a positive {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _check_compatible(spec: ModelSpec, dataset: Dataset) -> None:
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"expected a fedjax_room.data.Dataset, got {type(dataset).__name__}")
    if tuple(dataset.schema.feature_shape) != tuple(spec.input_shape):
        raise DataError(
            f"the model expects inputs of shape {list(spec.input_shape)} but the data has "
            f"{list(dataset.schema.feature_shape)}; build the model spec for this data"
        )
    if dataset.num_classes != spec.num_classes:
        raise DataError(
            f"the model has {spec.num_classes} outputs but the data has {dataset.num_classes} classes; "
            "build the model spec for this data"
        )


def _key(seed: int) -> jax.Array:
    """A threefry PRNG key from all 64 bits of ``seed`` (``jax.random.key`` keeps only 32 without x64)."""
    seed &= (1 << 64) - 1
    data = jnp.asarray(np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32))
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def _seed_or_fresh(seed: int | None) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed must be an integer (or None for a fresh secret seed), got {seed!r}")
    return int(seed)


#: jitted DP-SGD steps by (spec, settings, N), shared by the trainers of one process (bounded)
_SHARED_STEPS: dict[tuple[Any, ...], Callable[..., Any]] = {}
_MAX_SHARED_STEPS = 64


class LocalTrainer:
    """DP-SGD on one site's data with fixed model and privacy settings; reusable across rounds.

    Args:
      spec: the model spec (or its dict).
      clip_norm: per-example gradient clip bound ``C``.
      noise_multiplier: ``sigma`` (noise std ``sigma * C``); ``0`` trains without privacy
        (then :meth:`event` is a ``NonPrivateDpEvent``).
      batch_size: the *expected* batch size; the sampling rate is ``batch_size / N``.
      learning_rate: local learning rate.
      optimizer: ``"sgd"`` or ``"momentum"`` (0.9).
      method: per-example clipping implementation, ``"auto" | "vmap" | "fast"``.
      public_size: a PUBLIC training size (a site's declared or DP-counted size): then the sampling rate is
        ``min(1, batch_size / public_size)`` and the update is normalised by ``q * public_size`` whatever the
        real ``N`` is, so nothing released depends on ``N`` (Poisson sampling at a fixed ``q`` is private for
        any ``N``). None: both come from the real ``N`` (local, non-released use).
    """

    def __init__(
        self,
        spec: ModelSpec | Mapping[str, Any],
        *,
        clip_norm: float,
        noise_multiplier: float,
        batch_size: int,
        learning_rate: float,
        optimizer: str = "sgd",
        method: str = "auto",
        public_size: int | None = None,
    ) -> None:
        self.spec = ModelSpec.from_dict(spec)
        self.public_size = None if public_size is None else _positive(public_size, "public_size", integer=True)
        self.clip_norm = _positive(clip_norm, "clip_norm")
        if (
            isinstance(noise_multiplier, bool)
            or not isinstance(noise_multiplier, int | float | np.integer | np.floating)
            or not math.isfinite(noise_multiplier)
            or noise_multiplier < 0
        ):
            raise ConfigError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.batch_size = _positive(batch_size, "batch_size", integer=True)
        self.learning_rate = _positive(learning_rate, "learning_rate")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown local optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.optimizer = optimizer
        self.method = method
        # a fixed first layer (a scatter model's scattering) is computed once per dataset (local/features.py):
        # the jitted step trains the layers after it
        self._train_spec = _head_spec(self.spec)
        self._loss_fn = make_loss_fn(self._train_spec)
        self._step_cache: dict[int, Callable[..., Any]] = {}

    # ------------------------------------------------------------------ privacy

    def sampling_rate(self, num_examples: int) -> float:
        """``q = min(1, batch_size / public_size)``, or ``min(1, batch_size / num_examples)`` without a public size."""
        num_examples = _positive(num_examples, "num_examples", integer=True)
        return min(1.0, self.batch_size / (self.public_size or num_examples))

    def event(self, num_examples: int, steps: int) -> DpEvent:
        """The DP event of one :meth:`train` call with ``steps`` steps on ``num_examples`` examples."""
        if self.noise_multiplier == 0:
            return NonPrivateDpEvent()
        return dpsgd_event(self.noise_multiplier, self.sampling_rate(num_examples), steps)

    # ------------------------------------------------------------------ training

    def _make_optimizer(self, num_examples: int, key: jax.Array) -> optax.GradientTransformation:
        q = self.sampling_rate(num_examples)
        return dpsgd(
            self.learning_rate,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=q * (self.public_size or num_examples),
            key=key,
            momentum=_MOMENTUM if self.optimizer == "momentum" else None,
        )

    def _step(self, num_examples: int) -> Callable[..., Any]:
        # The optimiser's update depends on N only through the expected batch size; its noise
        # key lives in the optimiser *state*, so one jitted step per N serves every seed. Steps are shared
        # by every trainer with the same settings in the process (many sites of a simulation compile once).
        step = self._step_cache.get(num_examples)
        if step is None:
            key = (
                self._train_spec.to_json(),
                self.clip_norm,
                self.noise_multiplier,
                self.batch_size,
                self.learning_rate,
                self.optimizer,
                self.method,
                self.public_size,
                num_examples,
            )
            step = _SHARED_STEPS.get(key)
            if step is None:
                optimizer = self._make_optimizer(num_examples, _key(0))
                step = make_dp_train_step(self._loss_fn, optimizer, clip_norm=self.clip_norm, method=self.method)
                if len(_SHARED_STEPS) >= _MAX_SHARED_STEPS:
                    _SHARED_STEPS.pop(next(iter(_SHARED_STEPS)))
                _SHARED_STEPS[key] = step
            self._step_cache[num_examples] = step
        return step

    def train(
        self, params: Params, dataset: Dataset, steps: int, seed: int | None, *, progress: bool | str = False
    ) -> tuple[Params, TrainStats]:
        """Run ``steps`` DP-SGD steps from ``params`` on ``dataset``; returns ``(params, stats)``.

        ``seed`` (secret; ``None`` draws a fresh one) seeds the Poisson sampler and the
        noise. ``progress`` shows a tqdm bar on stderr (a string sets its label).
        Compose :meth:`event` ``(len(dataset), steps)`` into the site's accountant.
        """
        _check_compatible(self.spec, dataset)
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
        n = len(dataset)
        if n == 0:
            raise DataError("cannot train on an empty dataset")
        seed = _seed_or_fresh(seed)
        q = self.sampling_rate(n)
        padded = max_batch_size_for(n, q)
        step = self._step(n)
        rng = np.random.default_rng([seed, 0])
        noise_key = _key(seed)
        prepared = prepare(self.spec, dataset)
        params = prepared.to_head(params)
        opt_state = self._make_optimizer(n, noise_key).init(params)
        x, y = prepared.dataset.x, prepared.dataset.y

        started = time.perf_counter()
        loss_sum, clipped_sum, seen, counted = 0.0, 0.0, 0, 0
        metrics_log: list[dict[str, jax.Array]] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=progress if isinstance(progress, str) else "DP-SGD", unit="step", leave=False)
        for _ in range(int(steps)):
            idx, mask = poisson_sample(rng, n, q, padded)
            batch = {"x": jnp.asarray(x[idx]), "y": jnp.asarray(y[idx])}
            params, opt_state, metrics = step(params, opt_state, batch, jnp.asarray(mask))
            metrics_log.append(metrics)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        for metrics in jax.device_get(metrics_log):
            count = int(metrics["num_examples"])
            seen += count
            if count:
                loss_sum += float(metrics["loss"]) * count
                clipped_sum += float(metrics["clipped_fraction"]) * count
                counted += count
        params = prepared.to_model(jax.block_until_ready(params))
        stats = TrainStats(
            steps=int(steps),
            num_examples=n,
            sampling_rate=q,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            batch_size=self.batch_size,
            padded_batch_size=padded,
            loss=loss_sum / counted if counted else float("nan"),
            clipped_fraction=clipped_sum / counted if counted else 0.0,
            examples_seen=seen,
            seconds=time.perf_counter() - started,
        )
        return params, stats

    def __repr__(self) -> str:
        return (
            f"LocalTrainer(family={self.spec.family!r}, clip_norm={self.clip_norm}, "
            f"noise_multiplier={self.noise_multiplier}, batch_size={self.batch_size}, "
            f"learning_rate={self.learning_rate}, optimizer={self.optimizer!r})"
        )


# ---------------------------------------------------------------------- clipped gradient sums


def _chunks(dataset: Dataset, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``dataset`` in chunks of ``size`` records, ``(x, y, mask)``; the last one padded with zeros and masked, so
    every call of a jitted function on them has one shape."""
    n = len(dataset)
    for start in range(0, n, size):
        x, y = dataset.x[start : start + size], dataset.y[start : start + size]
        real = len(y)
        if real < size:
            x = np.concatenate([x, np.zeros((size - real, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(size - real, y.dtype)])
        yield x, y, np.arange(size) < real


@functools.lru_cache(maxsize=32)
def _sum_fn(spec_json: str, clip_norm: float) -> Callable[[Params, dict[str, jax.Array], jax.Array], Params]:
    from fedjax_room.dp.clipping import make_clipper

    run = make_clipper(make_loss_fn(ModelSpec.from_json(spec_json)), clip_norm)

    @jax.jit
    def fn(params: Params, batch: dict[str, jax.Array], mask: jax.Array) -> Params:
        total, _, _, _ = run(params, batch, mask)
        return total

    return fn


def clipped_sum(
    spec: ModelSpec | Mapping[str, Any], params: Params, dataset: Dataset, *, clip_norm: float, chunk: int
) -> Params:
    """The sum over every record of ``dataset`` of its loss gradient at ``params`` clipped to ``clip_norm`` in L2,
    computed ``chunk`` records at a time (memory bound; the last chunk is padded and masked). No noise: the caller
    adds it (a distributed-noise round adds its share after encoding, :mod:`fedjax_room.secagg.record_noise`).
    Not private by itself."""
    spec = ModelSpec.from_dict(spec)
    _check_compatible(spec, dataset)
    clip_norm = _positive(clip_norm, "clip_norm")
    n = len(dataset)
    if n == 0:
        raise DataError("cannot compute gradients of an empty dataset")
    size = min(_positive(chunk, "chunk", integer=True), n)
    prepared = prepare(spec, dataset)
    fn = _sum_fn(prepared.spec.to_json(), clip_norm)
    head = prepared.to_head(params)
    total = None
    for x, y, mask in _chunks(prepared.dataset, size):
        part = fn(head, {"x": jnp.asarray(x), "y": jnp.asarray(y)}, jnp.asarray(mask))
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return prepared.to_model(jax.tree.map(lambda t: np.asarray(t, np.float64), jax.block_until_ready(total)))


# ---------------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=32)
def _eval_fn(spec_json: str) -> Callable[[Params, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    predict = make_predict_fn(ModelSpec.from_json(spec_json))

    @jax.jit
    def fn(params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = predict(params, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == y) & mask
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

    return fn


def evaluate(spec: ModelSpec | Mapping[str, Any], params: Params, dataset: Dataset) -> EvalResult:
    """Mean cross-entropy, number correct and count of ``params`` on ``dataset`` (not private)."""
    spec = ModelSpec.from_dict(spec)
    _check_compatible(spec, dataset)
    n = len(dataset)
    if n == 0:
        return EvalResult(loss=float("nan"), correct=0, count=0)
    prepared = prepare(spec, dataset)
    fn = _eval_fn(prepared.spec.to_json())
    head = prepared.to_head(params)
    chunk = min(_EVAL_CHUNK, n)
    loss_total, correct = 0.0, 0
    for x, y, mask in _chunks(prepared.dataset, chunk):
        loss, right = fn(head, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
        loss_total += float(loss)
        correct += int(right)
    return EvalResult(loss=loss_total / n, correct=correct, count=n)


# ---------------------------------------------------------------------- non-private baseline


def train_central(
    spec: ModelSpec | Mapping[str, Any],
    train: Dataset,
    epochs: int,
    seed: int,
    *,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    params: Params | None = None,
) -> Params:
    """Non-private baseline: Adam over shuffled mini-batches for ``epochs`` epochs; returns the params.

    Starts from fresh ``init_params`` keyed by ``seed`` unless ``params`` is given.
    """
    spec = ModelSpec.from_dict(spec)
    _check_compatible(spec, train)
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    batch_size = _positive(batch_size, "batch_size", integer=True)
    learning_rate = _positive(learning_rate, "learning_rate")
    seed = _seed_or_fresh(seed)
    n = len(train)
    if n == 0:
        raise DataError("cannot train on an empty dataset")
    batch_size = min(batch_size, n)
    if params is None:
        params = init_params(spec, _key(seed))
    prepared = prepare(spec, train)
    params = prepared.to_head(params)
    train = prepared.dataset
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)
    loss_fn = make_loss_fn(prepared.spec)

    @jax.jit
    def step(params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array) -> tuple[Params, Any]:
        grads = jax.grad(loss_fn)(params, {"x": x, "y": y})
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng([seed, 1])
    per_epoch = n // batch_size  # drop the ragged last batch: one compiled shape
    for _ in range(int(epochs)):
        order = rng.permutation(n)
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            params, opt_state = step(params, opt_state, jnp.asarray(train.x[idx]), jnp.asarray(train.y[idx]))
    return prepared.to_model(jax.block_until_ready(params))
