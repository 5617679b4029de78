"""``fedjax-room train-local``: DP-SGD on one dataset, calibrated to a target epsilon, against a baseline.

::

    fedjax-room train-local --dataset digits --target-epsilon 3 --epochs 15

splits the data (stratified, ``--test-fraction``), calibrates the noise multiplier
so that ``steps = epochs / q`` DP-SGD steps at sampling rate ``q = batch / N``
spend at most the target epsilon, trains with a progress bar, and prints the DP
test accuracy, the accuracy of the same model trained on the same split without
DP (Adam; ``--no-baseline`` skips it), and the epsilon spent, read from a ledger
(:class:`fedjax_room.dp.accounting.Accountant`) into which the run's event was
composed. ``--dataset`` is a built-in name or a ``.npz``/``.csv``/``.parquet`` file.

Defaults per model (measured on digits at epsilon 3): ``mlp`` is one hidden layer
of 64 tanh units (bounded activations suit DP-SGD), batch 256, clip 0.5, lr 8.

The options it shares with a room's runs (:data:`SHARED_OPTIONS`: ``--target-epsilon``, ``--delta``,
``--clip-norm``, ``--batch-size``, ``--learning-rate``, ``--seed``) are RunConfig's own flags, with its
bounds and help (:func:`fedjax_room.protocol.options.add_run_options`); the spec is built by
:func:`fedjax_room.models.from_schema.spec_from_schema`, as for a room.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from fedjax_room.data.builtin import BUILTIN_DATASETS
from fedjax_room.models.from_schema import FAMILIES as MODELS
from fedjax_room.models.from_schema import image_shape, spec_from_schema
from fedjax_room.protocol.config import run_option
from fedjax_room.protocol.options import add_run_options, given_options

__all__ = ["MODEL_DEFAULTS", "MODELS", "SHARED_OPTIONS", "build_spec", "register", "run"]

#: The run options (RunConfig fields) train-local takes, with RunConfig's flags, bounds and help.
SHARED_OPTIONS = ("target_epsilon", "delta", "clip_norm", "batch_size", "learning_rate", "seed")

#: Per-model defaults for batch size, clip norm and learning rate (DP-SGD with plain SGD).
MODEL_DEFAULTS: dict[str, dict[str, float]] = {
    "logistic": {"batch_size": 256, "clip_norm": 1.0, "learning_rate": 8.0},
    "mlp": {"batch_size": 256, "clip_norm": 0.5, "learning_rate": 8.0},
    "cnn": {"batch_size": 256, "clip_norm": 0.5, "learning_rate": 4.0},
}
#: The non-private baseline trains for at least this many epochs (Adam, lr 3e-3, batch 64).
BASELINE_MIN_EPOCHS = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-local`` command."""
    parser = subparsers.add_parser(
        "train-local",
        help="train one model with DP-SGD to a target epsilon and compare with a non-private baseline",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--dataset", default="digits", help=f"built-in name ({', '.join(BUILTIN_DATASETS)}) or a data file"
    )
    parser.add_argument("--epochs", type=float, default=15.0, help="expected passes over the data (default 15)")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="model family (default mlp: 64 tanh units)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (default 0.2)")
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld", help="privacy accountant (default pld)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-private baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the results and settings")
    per_model = "default: per --model (MODEL_DEFAULTS)"
    add_run_options(
        parser,
        only=SHARED_OPTIONS,
        notes={"batch_size": per_model, "clip_norm": per_model, "learning_rate": per_model},
        aliases={"learning_rate": ["--lr"]},
    )
    parser.set_defaults(func=run)


def _as_image(dataset: Any) -> Any:
    """A flat dataset whose size is a square, reshaped to ``(s, s, 1)`` for a CNN."""
    from fedjax_room.data import Dataset, Schema
    from fedjax_room.errors import ConfigError

    s = dataset.schema
    shape = image_shape(s.feature_shape)
    if shape is None:
        raise ConfigError(
            f"a CNN needs image data (height, width, channels); features of shape {list(s.feature_shape)} are not a "
            "square image. Use --model mlp or logistic"
        )
    if tuple(s.feature_shape) == shape:
        return dataset
    schema = Schema(features=s.features, feature_shape=shape, label=s.label, classes=s.classes)
    return Dataset(dataset.x.reshape(len(dataset), *shape), dataset.y, schema)


def build_spec(model: str, dataset: Any) -> tuple[Any, Any]:
    """``(spec, dataset)``: the model spec for ``dataset`` (reshaped to an image for a CNN if needed), from its
    schema with :func:`~fedjax_room.models.from_schema.spec_from_schema` (tanh: bounded activations suit DP-SGD)."""
    if model == "cnn":
        dataset = _as_image(dataset)
    return spec_from_schema(dataset.schema, model, activation="tanh"), dataset


def _load(name: str, seed: int) -> Any:
    from fedjax_room.data import BUILTIN_DATASETS, load_builtin, load_dataset

    if name in BUILTIN_DATASETS:
        return load_builtin(name, seed=seed)
    return load_dataset(name)


def run(args: argparse.Namespace) -> int:
    """Run ``train-local``; prints the results (text or one JSON line)."""
    import jax

    from fedjax_room.dp.accounting import Accountant, calibrate_noise
    from fedjax_room.errors import ConfigError
    from fedjax_room.local import LocalTrainer, evaluate, train_central
    from fedjax_room.models import init_params

    started = time.perf_counter()
    given, defaults = given_options(args), MODEL_DEFAULTS[args.model]

    def value(name: str) -> Any:  # given, else the model's default, else RunConfig's
        return given.get(name, defaults.get(name, run_option(name).default))

    target_epsilon, delta, seed = value("target_epsilon"), value("delta"), value("seed")
    batch_size, clip_norm, lr = int(value("batch_size")), value("clip_norm"), value("learning_rate")
    if target_epsilon is None:
        raise ConfigError("train-local calibrates its noise to --target-epsilon; give a number")
    if not args.epochs > 0 or not math.isfinite(args.epochs):
        raise ConfigError(f"--epochs must be a positive number, got {args.epochs}")

    dataset = _load(args.dataset, seed)
    train, test = dataset.split(args.test_fraction, seed=seed)
    spec, train = build_spec(args.model, train)
    test = build_spec(args.model, test)[1]
    n = len(train)
    if delta >= 1.0 / n and not args.json:
        print(f"warning: delta {delta:g} is not below 1/N = {1.0 / n:.3g}; a weak guarantee", file=sys.stderr)

    q = min(1.0, batch_size / n)
    steps = max(1, round(args.epochs / q))
    sigma = calibrate_noise(
        target_epsilon=target_epsilon, delta=delta, sampling_rate=q, steps=steps, accountant=args.accountant
    )
    trainer = LocalTrainer(spec, clip_norm=clip_norm, noise_multiplier=sigma, batch_size=batch_size, learning_rate=lr)
    params = init_params(spec, jax.random.key(seed))
    params, stats = trainer.train(params, train, steps, seed, progress="DP-SGD")
    ledger = Accountant(args.accountant)
    ledger.compose(trainer.event(n, steps))
    spent = ledger.epsilon(delta)
    result = evaluate(spec, params, test)

    baseline = None
    if not args.no_baseline:
        baseline_params = train_central(
            spec, train, max(BASELINE_MIN_EPOCHS, math.ceil(args.epochs)), seed, batch_size=64, learning_rate=3e-3
        )
        baseline = evaluate(spec, baseline_params, test).accuracy

    out = {
        "dataset": args.dataset,
        "model": args.model,
        "spec_hash": spec.hash,
        "param_count": spec.param_count(),
        "num_train": n,
        "num_test": len(test),
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": batch_size,
        "sampling_rate": q,
        "clip_norm": clip_norm,
        "learning_rate": lr,
        "seed": seed,
        "accountant": args.accountant,
        "target_epsilon": target_epsilon,
        "delta": delta,
        "noise_multiplier": sigma,
        "epsilon": spent,
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "baseline_accuracy": baseline,
        "seconds": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"dataset {args.dataset}: {n} train / {len(test)} test examples, {dataset.num_classes} classes")
    print(
        f"model {args.model} ({spec.param_count()} parameters); DP-SGD {steps} steps ({args.epochs:g} epochs), "
        f"batch {batch_size} (q = {q:.4g}), clip {clip_norm:g}, lr {lr:g}"
    )
    print(
        f"noise multiplier {sigma:.4g}, calibrated for epsilon {target_epsilon:g} at delta {delta:g} "
        f"({args.accountant.upper()})"
    )
    print(f"DP test accuracy:       {result.accuracy:.2%}")
    if baseline is not None:
        print(f"non-private baseline:   {baseline:.2%}")
    print(f"epsilon spent:          {spent:.6g} (delta {delta:g}) <= target {target_epsilon:g}")
    print(f"time:                   {out['seconds']:.1f} s (training {stats.seconds:.1f} s)")
    return 0
