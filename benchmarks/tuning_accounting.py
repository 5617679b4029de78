"""What a tuning session of mean K trials costs a site: the ledger's private-selection charge against composition.

For one trial of epsilon ~1 (a run of DP-SGD: q=0.05, 200 steps, calibrated to epsilon 1 at delta 1e-5) and a
session of mean K trials, prints: the sum of K trials' epsilons (no composition theorem); their PLD composition
(what a site with ``tuning_selection = "compose"`` charges for K trials); Papernot & Steinke's (ICLR 2022) bound
for releasing only the best of a random number of trials (dp-accounting's ``RepeatAndSelectDpEvent`` over RDP at
delta/2, geometric K of mean K: shape 1, the room's default), as the ledger of a site with
``tuning_selection = "private"`` holds it (that bound's (epsilon, delta), the tail past ``k_max`` added to delta,
composed as a privacy-loss distribution, read at the site's delta: ``fedjax_room.dp.selection.selection_bound``);
``k_max``, the most trials such a site takes part in; and the same bound for a Poisson number of trials.

    PYTHONPATH=. python benchmarks/tuning_accounting.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import dp_accounting as dpa

from fedjax_room.dp.accounting import Accountant, calibrate_noise, dpsgd_event, event_to_dict
from fedjax_room.dp.selection import selection_bound
from fedjax_room.site.ledger import Ledger

DELTA, Q, STEPS = 1e-5, 0.05, 200


def ledger_figure(trial: dpa.DpEvent, mean: int, shape: float) -> tuple[float, int]:
    """The epsilon a fresh site ledger shows after a private session's one charge, and the session's k_max."""
    bound = selection_bound(trial, mean, shape, DELTA)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.json", epsilon_cap=math.inf, delta=DELTA)
        charge = {k: bound[k] for k in ("epsilon", "delta", "delta_rdp", "tail")}
        record = {"mode": "private", "mean": float(mean), "shape": shape, "delta": DELTA, "k_max": bound["k_max"]}
        ledger.admit(1, "run-1", {**record, "event": event_to_dict(trial), "charge": charge})
        return ledger.epsilon(), int(bound["k_max"])


def main() -> None:
    sigma = calibrate_noise(target_epsilon=1.0, delta=DELTA, sampling_rate=Q, steps=STEPS)
    trial = dpsgd_event(sigma, Q, STEPS)
    one = Accountant("pld").compose(trial).epsilon(DELTA)
    print(f"one trial: sigma {sigma:.4f}, epsilon {one:.3f} at delta {DELTA:g}")
    print("mean K | sum of K trials | PLD composition of K | ledger, private (P&S geometric) | k_max | P&S Poisson")
    for k in (2, 4, 8, 16, 32):
        composed = Accountant("pld").compose(dpa.SelfComposedDpEvent(trial, k)).epsilon(DELTA)
        private, k_max = ledger_figure(trial, k, 1.0)
        rdp = dpa.rdp.RdpAccountant()
        rdp.compose(dpa.dp_event.RepeatAndSelectDpEvent(trial, float(k), math.inf))
        poisson = rdp.get_epsilon(DELTA / 2)
        print(f"{k:<7}| {k * one:15.3f} | {composed:20.3f} | {private:31.3f} | {k_max:5d} | {poisson:.3f}")


if __name__ == "__main__":
    main()
