"""Poisoning: test accuracy per aggregator per attack, clean vs attacked, and the detector's flag rates.

    python benchmarks/poisoning.py                 # digits, 10 sites, 2 attackers, 15 rounds, every rule x attack
    python benchmarks/poisoning.py --quick         # 8 rounds, fewer rules and attacks
    python benchmarks/poisoning.py --noise-multiplier 1.0 --clip-norm 1.0   # sites train with more DP-SGD noise
    python benchmarks/poisoning.py --quick --alpha 0.5   # label-skewed sites (Dirichlet 0.5)
    python benchmarks/poisoning.py --json          # one JSON document instead of the tables

Every cell is one in-process room run (fedjax_room.sim.run_simulation on the room's round engine, LoopbackRoom:
the sites train with DP-SGD and account, the coordinator defends and aggregates) with the same data split,
initial model and seeds; only the aggregator and the attack change. "clean" has no attacker; the other
columns have ``--malicious`` sites (0, 1, ...) running the attack every round:

  boost       train on flipped labels (y -> 9 - y), send 10x the update
  sign_flip   send -4x the honest update
  label_flip  train on flipped labels, send the update as is
  gaussian    send N(0, 1) noise instead of an update

The peer in every row is the "clean" column of the same rule and the "fedavg / clean" cell.
"fedavg+trust" is FedAvg with the detector's trust exclusion on (exclude_below=0.5); every other row
flags but never excludes, so the rules are compared on their own. The second table gives, per cell,
the fraction of (round, attacker) pairs flagged and of (round, honest site) pairs falsely flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fedjax_room.robust import AnomalyConfig
from fedjax_room.sim import SimSpec, run_simulation

ATTACKS = {
    "clean": (None, {}),
    "boost": ("boost", {"factor": 10.0}),
    "sign_flip": ("sign_flip", {"scale": 4.0}),
    "label_flip": ("label_flip", {}),
    "gaussian": ("gaussian", {"stddev": 1.0}),
}
# (aggregator, trust exclusion); the room picks each rule's options (trimmed_mean: beta 0.2 for 10 sites)
ROWS = {
    "fedavg": ("fedavg", False),
    "fedavg+trust": ("fedavg", True),
    "median": ("median", False),
    "trimmed_mean": ("trimmed_mean", False),
    "krum": ("krum", False),
    "multi_krum": ("multi_krum", False),
    "norm_bound": ("norm_bound", False),
}
QUICK_ROWS = ("fedavg", "fedavg+trust", "median", "trimmed_mean", "multi_krum")
QUICK_ATTACKS = ("clean", "boost", "sign_flip")


def run(args: argparse.Namespace) -> dict:
    base = SimSpec(
        dataset=args.dataset,
        num_sites=args.sites,
        alpha=args.alpha,
        rounds=args.rounds,
        learning_rate=args.learning_rate,
        clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    rows = QUICK_ROWS if args.quick else tuple(ROWS)
    attacks = QUICK_ATTACKS if args.quick else tuple(ATTACKS)
    malicious = tuple(range(args.malicious))
    cells = []
    started = time.perf_counter()
    for row in rows:
        aggregator, trust = ROWS[row]
        for column in attacks:
            attack, attack_options = ATTACKS[column]
            spec = base.replace(
                aggregator=aggregator,
                attack=attack,
                attack_options=attack_options,
                malicious=malicious if attack else (),
                anomaly=AnomalyConfig(exclude_below=0.5 if trust else None),
            )
            result = run_simulation(spec)
            cells.append(
                {
                    "row": row,
                    "attack": column,
                    "final_accuracy": result.final_accuracy,
                    "best_accuracy": max(result.accuracy),
                    "detection_rate": result.detection_rate,
                    "false_flag_rate": result.false_flag_rate,
                    "seconds": result.seconds,
                }
            )
            if not args.json:
                line = f"  {row:>13} / {column:<10} {result.final_accuracy:.3f} ({result.seconds:.1f}s)"
                print(line, file=sys.stderr)
    return {
        "setting": {
            "dataset": args.dataset,
            "sites": args.sites,
            "alpha": args.alpha,
            "malicious": list(malicious),
            "rounds": args.rounds,
            "local_steps": base.local_steps,
            "batch_size": base.batch_size,
            "learning_rate": args.learning_rate,
            "clip_norm": args.clip_norm,
            "noise_multiplier": args.noise_multiplier,
            "model": f"mlp{list(base.hidden)}",
            "seed": args.seed,
        },
        "rows": list(rows),
        "attacks": list(attacks),
        "cells": cells,
        "seconds": time.perf_counter() - started,
    }


def _fmt(x: float, pct: bool = True) -> str:
    if x != x:  # NaN
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def print_tables(report: dict) -> None:
    s = report["setting"]
    split = "IID" if s["alpha"] is None else f"Dirichlet alpha={s['alpha']}"
    print(
        f"{s['dataset']}: {s['sites']} sites ({split}), attackers {s['malicious']}, {s['rounds']} rounds x "
        f"{s['local_steps']} local steps, {s['model']}, noise_multiplier {s['noise_multiplier']}, seed {s['seed']}"
    )
    cell = {(c["row"], c["attack"]): c for c in report["cells"]}
    attacks, rows = report["attacks"], report["rows"]
    peer = cell.get(("fedavg", "clean"))
    width = max(len(r) for r in rows) + 2
    print("\nfinal test accuracy" + (f" (fedavg / clean = {peer['final_accuracy']:.3f})" if peer else ""))
    print("".ljust(width) + "".join(a.rjust(12) for a in attacks))
    for row in rows:
        print(row.ljust(width) + "".join(_fmt(cell[(row, a)]["final_accuracy"], pct=False).rjust(12) for a in attacks))
    print("\nflag rates: attackers flagged / honest sites falsely flagged (per round and site)")
    print("".ljust(width) + "".join(a.rjust(12) for a in attacks))
    for row in rows:
        vals = [cell[(row, a)] for a in attacks]
        print(
            row.ljust(width)
            + "".join(f"{_fmt(v['detection_rate'])}/{_fmt(v['false_flag_rate'])}".rjust(12) for v in vals)
        )
    print(f"\n{len(report['cells'])} runs in {report['seconds']:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 rounds, fewer rules and attacks")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet label skew (default: IID)")
    parser.add_argument("--malicious", type=int, default=2, help="attacking sites: 0 .. N-1")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=0.3, help="sites' local learning rate")
    parser.add_argument("--clip-norm", type=float, default=10.0, help="per-example clip norm of local DP-SGD")
    parser.add_argument(
        "--noise-multiplier", type=float, default=0.3, help="local DP-SGD noise (the room's bound: at least 0.3)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sites' expected DP-SGD batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 8 if args.quick else 15
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
