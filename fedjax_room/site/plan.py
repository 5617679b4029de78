"""A site's privacy plan for a run: the noise it will add, calibrated to its PUBLIC data size.

Per round a site makes two releases: a DP-SGD update (``local_steps`` steps, Poisson sampling at
``q = batch_size / public_size``, noise multiplier ``sigma``) and an evaluation (Gaussian noise on the
vector ``(count, correct, loss_sum / LOSS_CLIP)``, whose L2 sensitivity is ``sqrt(3)``, with noise
multiplier ``eval_sigma`` relative to that sensitivity; per-example losses are clipped to
``[0, LOSS_CLIP]``).

With a ``target_epsilon`` the site first splits it (``EVAL_SHARE`` for evaluation, the rest for
training, each at ``delta / 2``) and calibrates both noises with
:func:`~fedjax_room.dp.accounting.calibrate_noise`; because composing them with the PLD accountant
is tighter than adding, it then scales both noises down together as far as the *composed* epsilon
of the whole run (all rounds, training and evaluation) stays within the target. With a fixed
``noise_multiplier`` it uses that for training and :data:`FIXED_EVAL_NOISE` for evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dp_accounting import DpEvent, GaussianDpEvent, NoOpDpEvent

from fedjax_room.dp.accounting import Accountant, calibrate_noise, dpsgd_event
from fedjax_room.errors import ConfigError, PrivacyError, RefusedError
from fedjax_room.protocol.config import RunConfig

__all__ = ["EVAL_SHARE", "FIXED_EVAL_NOISE", "LOSS_CLIP", "Plan", "coarse_count", "make_plan", "site_eval_event"]

#: Share of a run's target epsilon spent on evaluation releases.
EVAL_SHARE = 0.25
#: Evaluation noise multiplier in fixed-noise runs.
FIXED_EVAL_NOISE = 10.0
#: Per-example losses are clipped to [0, LOSS_CLIP] before summing (bounds the sensitivity).
LOSS_CLIP = 5.0
#: L2 sensitivity of (count, correct, loss_sum / LOSS_CLIP) to adding or removing one example.
EVAL_SENSITIVITY = math.sqrt(3.0)


def coarse_count(n: int) -> int:
    """``n`` rounded to two significant digits (what a site shares instead of its exact size)."""
    if n <= 0:
        return 0
    digits = int(math.floor(math.log10(n)))
    step = 10 ** max(0, digits - 1)
    return max(1, int(round(n / step)) * step)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a site will take part in one run."""

    mode: str  # "target" | "noise"
    noise_multiplier: float
    eval_noise_multiplier: float
    sampling_rate: float
    local_steps: int
    rounds: int
    delta: float
    epsilon_planned: float
    min_sites: int
    weight: int
    #: the public training size the plan was made for (0: a plan stored by an older version, made from N)
    public_size: int = 0

    def train_event(self) -> DpEvent:
        """The event of one round's training release."""
        return dpsgd_event(self.noise_multiplier, self.sampling_rate, self.local_steps)

    def eval_event(self) -> DpEvent:
        """The event of one round's evaluation release (a Gaussian mechanism)."""
        return dpsgd_event(self.eval_noise_multiplier, 1.0, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        try:
            fields = [f.name for f in dataclasses.fields(cls)]
            return cls(**{name: data[name] for name in fields if name in data or name != "public_size"})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"stored plan is malformed ({exc})") from None

    def check_round(self, round: Any, *, run_id: str, party: str, phase: str) -> None:
        """Only the rounds ``1..rounds`` of the accepted plan are ever trained or evaluated (each once: the ledger
        key ``run/round/phase`` is spent at most once); anything else is refused before anything is computed."""
        if isinstance(round, bool) or not isinstance(round, int) or not 1 <= round <= self.rounds:
            raise RefusedError(
                f"{party}: round {round!r} of run {run_id} is outside its accepted plan (rounds 1..{self.rounds}); "
                f"refusing to {phase} it, nothing spent",
                party=party,
                reason="round_range",
            )

    def public(self) -> dict[str, Any]:
        """What the site tells the coordinator about its plan."""
        return {
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "eval_noise_multiplier": self.eval_noise_multiplier,
            "epsilon_planned": self.epsilon_planned,
            "min_sites": self.min_sites,
            "weight": self.weight,
        }


def _run_epsilon(sigma: float, eval_sigma: float, q: float, steps: int, rounds: int, delta: float) -> float:
    acc = Accountant("pld")
    acc.compose(dpsgd_event(sigma, q, steps * rounds))
    acc.compose(dpsgd_event(eval_sigma, 1.0, rounds))
    return acc.epsilon(delta)


def site_eval_event(eval_noise_multiplier: float, heldout_bound: int) -> DpEvent:
    """The site-level event of one evaluation release when at most ``heldout_bound`` records are evaluated.

    Zeroing out the whole site moves ``(count, correct, loss_sum / LOSS_CLIP)`` by at most
    ``sqrt(3) * heldout_bound`` in L2 (each coordinate is at most the count), and each coordinate carries
    Gaussian noise ``eval_noise_multiplier * sqrt(3)``: a Gaussian mechanism with noise multiplier
    ``eval_noise_multiplier / heldout_bound``. Per-site evaluation is therefore *weak* at the site level
    (that is the honest figure). ``heldout_bound = 0`` releases noise only.
    """
    if isinstance(heldout_bound, bool) or not isinstance(heldout_bound, int) or heldout_bound < 0:
        raise ConfigError(f"heldout_bound must be a non-negative integer, got {heldout_bound!r}")
    if not (math.isfinite(eval_noise_multiplier) and eval_noise_multiplier > 0):
        raise PrivacyError(f"evaluation noise multiplier must be positive, got {eval_noise_multiplier!r}")
    if heldout_bound == 0:
        return NoOpDpEvent()
    return GaussianDpEvent(eval_noise_multiplier / heldout_bound)


def make_plan(config: RunConfig, *, public_size: int, min_sites: int) -> Plan:
    """Calibrate this site's noise for ``config`` on a PUBLIC training size ``public_size``.

    Never pass the exact record count: every field of the plan is a function of ``config``,
    ``public_size`` and ``min_sites`` only (see the module docstring).
    """
    if isinstance(public_size, bool) or not isinstance(public_size, int):
        raise ConfigError(f"public_size must be an integer, got {public_size!r}")
    if public_size <= 0:
        raise ConfigError("this site has no (public) training examples")
    q = min(1.0, config.batch_size / public_size)
    steps, rounds, delta = config.local_steps, config.rounds, config.delta
    if config.target_epsilon is None:
        if config.noise_multiplier is None:  # RunConfig sets one of the two
            raise ConfigError("the run sets neither target_epsilon nor noise_multiplier")
        sigma = float(config.noise_multiplier)
        eval_sigma = FIXED_EVAL_NOISE
        mode = "noise"
    else:
        target = config.target_epsilon
        mode = "target"
        try:
            sigma = calibrate_noise(
                target_epsilon=(1 - EVAL_SHARE) * target, delta=delta / 2, sampling_rate=q, steps=steps * rounds
            )
            eval_sigma = calibrate_noise(
                target_epsilon=EVAL_SHARE * target, delta=delta / 2, sampling_rate=1.0, steps=rounds
            )
        except PrivacyError as exc:
            raise PrivacyError(f"cannot plan a run with target epsilon {target}: {exc.message}") from None
        # Composed epsilon is below the target; shrink both noises together while it stays within
        # (with a hair of margin: the ledger composes round by round, which may differ in the 1e-9s).
        goal = target * (1 - 1e-4)
        lo, hi = 0.5, 1.0
        if _run_epsilon(sigma * lo, eval_sigma * lo, q, steps, rounds, delta) <= goal:
            hi = lo
        else:
            for _ in range(7):
                mid = (lo + hi) / 2
                if _run_epsilon(sigma * mid, eval_sigma * mid, q, steps, rounds, delta) <= goal:
                    hi = mid
                else:
                    lo = mid
        sigma, eval_sigma = sigma * hi, eval_sigma * hi
    planned = _run_epsilon(sigma, eval_sigma, q, steps, rounds, delta)
    return Plan(
        mode=mode,
        noise_multiplier=float(sigma),
        eval_noise_multiplier=float(eval_sigma),
        sampling_rate=q,
        local_steps=steps,
        rounds=rounds,
        delta=delta,
        epsilon_planned=planned,
        min_sites=min_sites,
        weight=coarse_count(public_size),
        public_size=public_size,
    )
