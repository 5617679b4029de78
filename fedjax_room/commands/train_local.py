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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

__all__ = ["MODEL_DEFAULTS", "MODELS", "build_spec", "register", "run"]

MODELS = ("logistic", "mlp", "cnn")

#: Per-model defaults for batch size, clip norm and learning rate (DP-SGD with plain SGD).
MODEL_DEFAULTS: dict[str, dict[str, float]] = {
    "logistic": {"batch_size": 256, "clip_norm": 1.0, "lr": 8.0},
    "mlp": {"batch_size": 256, "clip_norm": 0.5, "lr": 8.0},
    "cnn": {"batch_size": 256, "clip_norm": 0.5, "lr": 4.0},
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
        "--dataset", default="digits", help="built-in name (digits, breast_cancer, mnist, fraud) or a data file"
    )
    parser.add_argument("--target-epsilon", type=float, default=3.0, help="epsilon to spend at most (default 3)")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta (default 1e-5; keep it below 1/N)")
    parser.add_argument("--epochs", type=float, default=15.0, help="expected passes over the data (default 15)")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="model family (default mlp: 64 tanh units)")
    parser.add_argument("--batch-size", type=int, default=None, help="expected batch size (Poisson q = batch / N)")
    parser.add_argument("--clip-norm", type=float, default=None, help="per-example gradient clip norm")
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, init, sampling and noise")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (default 0.2)")
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld", help="privacy accountant (default pld)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-private baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the results and settings")
    parser.set_defaults(func=run)


def _as_image(dataset: Any) -> Any:
    """A flat dataset whose size is a square, reshaped to ``(s, s, 1)`` for a CNN."""
    from fedjax_room.data import Dataset, Schema
    from fedjax_room.errors import ConfigError

    shape = dataset.schema.feature_shape
    if len(shape) == 3:
        return dataset
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if side * side != math.prod(shape) or side < 4:
        raise ConfigError(
            f"a CNN needs image data (height, width, channels); features of shape {list(shape)} are not a square "
            "image. Use --model mlp or logistic"
        )
    s = dataset.schema
    schema = Schema(features=s.features, feature_shape=(side, side, 1), label=s.label, classes=s.classes)
    return Dataset(dataset.x.reshape(len(dataset), side, side, 1), dataset.y, schema)


def build_spec(model: str, dataset: Any) -> tuple[Any, Any]:
    """``(spec, dataset)``: the model spec for ``dataset`` (reshaped to an image for a CNN if needed)."""
    from fedjax_room.models import cnn, logistic, mlp

    if model == "cnn":
        dataset = _as_image(dataset)
    shape, classes = list(dataset.schema.feature_shape), dataset.num_classes
    if model == "logistic":
        return logistic(shape, classes), dataset
    if model == "mlp":
        return mlp(shape, classes, hidden=[64], activation="tanh"), dataset
    return cnn(shape, classes, conv=[(16, 3, 1), (32, 3, 1)], dense=[32], activation="tanh"), dataset


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
    defaults = MODEL_DEFAULTS[args.model]
    batch_size = args.batch_size if args.batch_size is not None else int(defaults["batch_size"])
    clip_norm = args.clip_norm if args.clip_norm is not None else defaults["clip_norm"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    if not args.epochs > 0 or not math.isfinite(args.epochs):
        raise ConfigError(f"--epochs must be a positive number, got {args.epochs}")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")

    dataset = _load(args.dataset, args.seed)
    train, test = dataset.split(args.test_fraction, seed=args.seed)
    spec, train = build_spec(args.model, train)
    test = build_spec(args.model, test)[1]
    n = len(train)
    if args.delta >= 1.0 / n and not args.json:
        print(f"warning: delta {args.delta:g} is not below 1/N = {1.0 / n:.3g}; a weak guarantee", file=sys.stderr)

    q = min(1.0, batch_size / n)
    steps = max(1, round(args.epochs / q))
    sigma = calibrate_noise(
        target_epsilon=args.target_epsilon, delta=args.delta, sampling_rate=q, steps=steps, accountant=args.accountant
    )
    trainer = LocalTrainer(spec, clip_norm=clip_norm, noise_multiplier=sigma, batch_size=batch_size, learning_rate=lr)
    params = init_params(spec, jax.random.key(args.seed))
    params, stats = trainer.train(params, train, steps, args.seed, progress="DP-SGD")
    ledger = Accountant(args.accountant)
    ledger.compose(trainer.event(n, steps))
    spent = ledger.epsilon(args.delta)
    result = evaluate(spec, params, test)

    baseline = None
    if not args.no_baseline:
        baseline_params = train_central(
            spec, train, max(BASELINE_MIN_EPOCHS, math.ceil(args.epochs)), args.seed, batch_size=64, learning_rate=3e-3
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
        "seed": args.seed,
        "accountant": args.accountant,
        "target_epsilon": args.target_epsilon,
        "delta": args.delta,
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
        f"noise multiplier {sigma:.4g}, calibrated for epsilon {args.target_epsilon:g} at delta {args.delta:g} "
        f"({args.accountant.upper()})"
    )
    print(f"DP test accuracy:       {result.accuracy:.2%}")
    if baseline is not None:
        print(f"non-private baseline:   {baseline:.2%}")
    print(f"epsilon spent:          {spent:.6g} (delta {args.delta:g}) <= target {args.target_epsilon:g}")
    print(f"time:                   {out['seconds']:.1f} s (training {stats.seconds:.1f} s)")
    return 0
