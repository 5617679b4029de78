"""What K trials of a tuning session cost a site, by the bound its ledger charges and by the alternatives.

For one trial of epsilon ~1 (a run of DP-SGD: q=0.05, 200 steps, calibrated to epsilon 1 at delta 1e-5), and K
trials, prints: the sum of the trials' epsilons (no composition theorem), their PLD composition (what the ledger
charges: every trial's releases reach the coordinator), and Papernot & Steinke's (2022) random-stopping bound for
releasing only the best of a random number of trials with mean K (dp-accounting's ``RepeatAndSelectDpEvent`` over
RDP; shape 1: geometric; shape inf: Poisson), which holds only if nobody sees the other trials.

    python benchmarks/tuning_accounting.py
"""

from __future__ import annotations

import math

import dp_accounting as dpa

from fedjax_room.dp.accounting import Accountant, calibrate_noise, dpsgd_event

DELTA, Q, STEPS = 1e-5, 0.05, 200


def main() -> None:
    sigma = calibrate_noise(target_epsilon=1.0, delta=DELTA, sampling_rate=Q, steps=STEPS)
    trial = dpsgd_event(sigma, Q, STEPS)
    one = Accountant("pld").compose(trial).epsilon(DELTA)
    print(f"one trial: sigma {sigma:.4f}, epsilon {one:.3f} at delta {DELTA:g}")
    print("K  | sum of trials | PLD composition (ledger) | P&S best-of-random geometric | P&S Poisson")
    for k in (2, 4, 8, 16, 32):
        composed = Accountant("pld").compose(dpa.SelfComposedDpEvent(trial, k)).epsilon(DELTA)
        ps = {}
        for shape in (1.0, math.inf):
            rdp = dpa.rdp.RdpAccountant()
            rdp.compose(dpa.dp_event.RepeatAndSelectDpEvent(trial, float(k), shape))
            ps[shape] = rdp.get_epsilon(DELTA)
        print(f"{k:<3}| {k * one:13.3f} | {composed:24.3f} | {ps[1.0]:28.3f} | {ps[math.inf]:.3f}")


if __name__ == "__main__":
    main()
