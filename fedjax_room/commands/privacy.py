"""``fedjax-room privacy epsilon|noise``: DP-SGD accounting from the command line.

* ``privacy epsilon --sampling-rate Q --noise-multiplier S --steps T --delta D``
  prints the epsilon spent.
* ``privacy noise --target-epsilon E --delta D --sampling-rate Q --steps T``
  prints the smallest noise multiplier that meets the target.

Both take ``--accountant pld|rdp`` (default pld) and ``--json`` (one JSON line
with the result and every input).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["ACCOUNTANT_NAMES", "register", "run_epsilon", "run_noise"]

#: :data:`fedjax_room.dp.accounting.ACCOUNTANTS`, named here so that ``--help`` does not import dp-accounting
#: (and SciPy: about a second); tests/commands/test_early_validation.py checks that the two agree.
ACCOUNTANT_NAMES = ("pld", "rdp", "rdp_integer")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delta", type=float, required=True, help="target delta, e.g. 1e-5 (below 1/N)")
    parser.add_argument("--sampling-rate", type=float, required=True, help="Poisson sampling rate q = batch / N")
    parser.add_argument("--steps", type=int, required=True, help="number of DP-SGD steps")
    parser.add_argument(
        "--accountant",
        choices=ACCOUNTANT_NAMES,
        default="pld",
        help="privacy accountant (default: pld; rdp to cross-check)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line with the result and inputs")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``privacy`` command group."""
    parser = subparsers.add_parser(
        "privacy",
        help="compute DP-SGD epsilon or calibrate noise",
        description="Privacy accounting for DP-SGD with Poisson sampling (dp-accounting PLD or RDP).",
    )
    sub = parser.add_subparsers(dest="privacy_command", metavar="{epsilon,noise}", required=True)

    eps = sub.add_parser("epsilon", help="epsilon spent by a DP-SGD run", description="Print the epsilon spent.")
    eps.add_argument("--noise-multiplier", type=float, required=True, help="noise stddev / clip norm")
    _common(eps)
    eps.set_defaults(func=run_epsilon)

    noise = sub.add_parser(
        "noise", help="smallest noise multiplier for a target epsilon", description="Print the calibrated noise."
    )
    noise.add_argument("--target-epsilon", type=float, required=True, help="epsilon to meet (at most)")
    _common(noise)
    noise.set_defaults(func=run_noise)


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(text)


def run_epsilon(args: argparse.Namespace) -> int:
    """``privacy epsilon``: print epsilon for the given run."""
    from fedjax_room.dp.accounting import epsilon

    eps = epsilon(
        noise_multiplier=args.noise_multiplier,
        sampling_rate=args.sampling_rate,
        steps=args.steps,
        delta=args.delta,
        accountant=args.accountant,
    )
    result = {
        "epsilon": eps,
        "noise_multiplier": args.noise_multiplier,
        "sampling_rate": args.sampling_rate,
        "steps": args.steps,
        "delta": args.delta,
        "accountant": args.accountant,
    }
    _emit(args, result, f"epsilon = {eps:.6g} (delta = {args.delta:g}, {args.accountant.upper()} accountant)")
    return 0


def run_noise(args: argparse.Namespace) -> int:
    """``privacy noise``: print the smallest noise multiplier meeting the target."""
    from fedjax_room.dp.accounting import calibrate_noise, epsilon

    sigma = calibrate_noise(
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        sampling_rate=args.sampling_rate,
        steps=args.steps,
        accountant=args.accountant,
    )
    eps = epsilon(
        noise_multiplier=sigma,
        sampling_rate=args.sampling_rate,
        steps=args.steps,
        delta=args.delta,
        accountant=args.accountant,
    )
    result = {
        "noise_multiplier": sigma,
        "epsilon": eps,
        "target_epsilon": args.target_epsilon,
        "sampling_rate": args.sampling_rate,
        "steps": args.steps,
        "delta": args.delta,
        "accountant": args.accountant,
    }
    _emit(
        args,
        result,
        f"noise_multiplier = {sigma:.6g} (epsilon = {eps:.6g} <= {args.target_epsilon:g} "
        f"at delta = {args.delta:g}, {args.accountant.upper()} accountant)",
    )
    return 0
