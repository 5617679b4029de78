"""A site's privacy plan for a run: the noise it will add, calibrated to its PUBLIC data size.

A run makes two kinds of release: each round a DP-SGD update (``local_steps`` steps, Poisson sampling at
``q = batch_size / public_size``, noise multiplier ``sigma``), and on the run's evaluation schedule
(:func:`~fedjax_room.protocol.evaluation.eval_rounds`: every ``eval_every`` rounds and after the last; unset,
halfway and after the last) an evaluation: the integer vector of
:mod:`fedjax_room.protocol.evaluation` with Skellam noise of standard deviation ``eval_sigma * SCALE`` in every
sum the site is in, a Gaussian-like mechanism whose event is :meth:`Plan.eval_event`.

**Evaluation costs at most** :data:`EVAL_SHARE` **(10%) of the run's epsilon**, measured as what it adds: the
run's composed epsilon (PLD, at the run's delta) minus the epsilon of its training releases alone, over the
run's composed epsilon (:func:`eval_cost`). With a ``target_epsilon`` ``T``:

1. the evaluation noise *floor* comes from the config alone (:func:`eval_floor`: an exact Gaussian mechanism of
   epsilon ``T`` is one of ``0.9 T`` composed with the evaluations, split evenly over the schedule), so every
   site of a run shares it and secure aggregation can split it between them
   (:func:`~fedjax_room.protocol.evaluation.share_variance`);
2. the training noise is calibrated to ``0.9 T``; if evaluation at the floor would add more than 10% (or pass
   ``T``), this site raises its own evaluation noise above the floor (it adds that extra itself);
3. while there is budget left, the training noise is lowered as far as the composed epsilon stays within ``T``
   and evaluation within 10% of it.

With a fixed ``noise_multiplier`` training uses that, and evaluation the larger of :data:`FIXED_EVAL_NOISE`
and what keeps it within 10% of the run's epsilon.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dp_accounting import DpEvent, GaussianDpEvent, NoOpDpEvent

from fedjax_room.dp.accounting import Accountant, calibrate_noise, dpsgd_event
from fedjax_room.errors import ConfigError, PrivacyError, RefusedError
from fedjax_room.protocol import evaluation as ev
from fedjax_room.protocol.config import RunConfig
from fedjax_room.secagg.ddp import skellam_gaussian_multiplier

__all__ = [
    "EVAL_SENSITIVITY",
    "EVAL_SHARE",
    "FIXED_EVAL_NOISE",
    "LOSS_CLIP",
    "Plan",
    "coarse_count",
    "eval_cost",
    "eval_floor",
    "make_plan",
    "site_eval_event",
    "skellam_multiplier",
]

#: The most of a run's epsilon its evaluations may add (:func:`eval_cost`).
EVAL_SHARE = 0.10
#: Evaluation noise multiplier (per release) in fixed-noise runs, at least.
FIXED_EVAL_NOISE = 10.0
#: Per-example losses are clipped to [0, LOSS_CLIP] before summing (bounds the sensitivity).
LOSS_CLIP = ev.LOSS_CLIP
#: L2 sensitivity of the evaluation vector in units of its noise scale (``DELTA2 / SCALE``, just under 1).
EVAL_SENSITIVITY = ev.DELTA2 / ev.SCALE


def coarse_count(n: int) -> int:
    """``n`` rounded to two significant digits (what a site shares instead of its exact size)."""
    if n <= 0:
        return 0
    digits = int(math.floor(math.log10(n)))
    step = 10 ** max(0, digits - 1)
    return max(1, int(round(n / step)) * step)


def skellam_multiplier(eval_noise_multiplier: float) -> float:
    """The Gaussian noise multiplier whose RDP bounds the Skellam evaluation release at every integer order
    (Agarwal, Kairouz & Liu 2021, Thm 3.5, as in :mod:`fedjax_room.secagg.ddp`): variance ``mu = (sigma *
    SCALE)^2`` against sensitivities ``DELTA2`` / ``DELTA1``, ``1/s^2 = 1/mu + (1 + 3 DELTA1 / DELTA2^2) / mu^2``."""
    return skellam_gaussian_multiplier((float(eval_noise_multiplier) * ev.SCALE) ** 2, ev.DELTA2, ev.DELTA1)


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
    #: the config-derived evaluation noise every site of the run shares (0: an older plan, which shares none)
    eval_noise_floor: float = 0.0
    #: the rounds after which the global model is evaluated (empty: an older plan, which evaluated every round)
    eval_rounds: tuple[int, ...] = ()

    def train_event(self) -> DpEvent:
        """The event of one round's training release."""
        return dpsgd_event(self.noise_multiplier, self.sampling_rate, self.local_steps)

    def eval_event(self) -> DpEvent:
        """The event of one evaluation release (Skellam, bounded by a Gaussian: :func:`skellam_multiplier`)."""
        return dpsgd_event(skellam_multiplier(self.eval_noise_multiplier), 1.0, 1)

    @property
    def schedule(self) -> tuple[int, ...]:
        """The evaluated rounds (an older plan's: every round)."""
        return tuple(self.eval_rounds) or tuple(range(1, self.rounds + 1))

    def evaluates(self, round: int) -> bool:
        """Whether this plan evaluates the model of ``round``."""
        return round in self.schedule

    def eval_events(self, rounds: int | None = None) -> DpEvent:
        """The evaluation releases of the first ``rounds`` rounds (all of them: None) composed; a fixed-noise
        run's check of "one round" counts one evaluation."""
        count = len(self.schedule) if rounds is None else max(1, sum(1 for r in self.schedule if r <= rounds))
        return dpsgd_event(skellam_multiplier(self.eval_noise_multiplier), 1.0, count)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["eval_rounds"] = list(self.eval_rounds)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        optional = {"public_size", "eval_noise_floor", "eval_rounds"}
        try:
            fields = [f.name for f in dataclasses.fields(cls)]
            values = {name: data[name] for name in fields if name in data or name not in optional}
            if "eval_rounds" in values:
                values["eval_rounds"] = tuple(int(r) for r in values["eval_rounds"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"stored plan is malformed ({exc})") from None

    def check_round(self, round: Any, *, run_id: str, party: str, phase: str) -> None:
        """Only the rounds ``1..rounds`` of the accepted plan are ever trained, and only its scheduled rounds
        evaluated (each once: the ledger key ``run/round/phase`` is spent at most once); anything else is refused
        before anything is computed."""
        if isinstance(round, bool) or not isinstance(round, int) or not 1 <= round <= self.rounds:
            raise RefusedError(
                f"{party}: round {round!r} of run {run_id} is outside its accepted plan (rounds 1..{self.rounds}); "
                f"refusing to {phase} it, nothing spent",
                party=party,
                reason="round_range",
            )
        if phase == "eval" and not self.evaluates(round):
            raise RefusedError(
                f"{party}: round {round} of run {run_id} is not on its evaluation schedule (rounds "
                f"{list(self.schedule)}); refusing to evaluate it, nothing spent",
                party=party,
                reason="round_range",
            )

    def public(self) -> dict[str, Any]:
        """What the site tells the coordinator about its plan."""
        return {
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "eval_noise_multiplier": self.eval_noise_multiplier,
            "eval_noise_floor": self.eval_noise_floor or self.eval_noise_multiplier,
            "epsilon_planned": self.epsilon_planned,
            "min_sites": self.min_sites,
            "weight": self.weight,
        }


def _epsilons(sigma: float, eval_sigma: float, q: float, steps: int, evals: int, delta: float) -> tuple[float, float]:
    """``(training alone, training and evaluation)`` epsilon of a whole run (PLD, at ``delta``)."""
    train = Accountant("pld")
    train.compose(dpsgd_event(sigma, q, steps))
    both = Accountant("pld")
    both.compose(dpsgd_event(sigma, q, steps))
    if evals:
        both.compose(dpsgd_event(skellam_multiplier(eval_sigma), 1.0, evals))
    return train.epsilon(delta), both.epsilon(delta)


def eval_cost(sigma: float, eval_sigma: float, q: float, steps: int, evals: int, delta: float) -> float:
    """The share of a run's epsilon its evaluations add: ``(eps(train + eval) - eps(train)) / eps(train + eval)``."""
    train, both = _epsilons(sigma, eval_sigma, q, steps, evals, delta)
    return (both - train) / both if both > 0 else 0.0


def _gaussian_delta(z: float, epsilon: float) -> float:
    """The exact delta of a Gaussian mechanism with noise multiplier ``z`` at ``epsilon`` (Balle & Wang 2018)."""
    a, b = 1.0 / (2.0 * z), epsilon * z

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return phi(a - b) - math.exp(epsilon) * phi(-a - b)


def _gaussian_z(epsilon: float, delta: float) -> float:
    """The noise multiplier of a Gaussian mechanism with exactly ``(epsilon, delta)``."""
    lo, hi = 1e-3, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if _gaussian_delta(mid, epsilon) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return hi


def eval_floor(config: RunConfig) -> float:
    """The evaluation noise multiplier (per release) every site of a run with ``config`` shares: from the config
    alone, so that the sites' noise shares add up (:mod:`fedjax_room.protocol.evaluation`).

    Target mode: a Gaussian mechanism of epsilon ``T`` minus one of ``(1 - EVAL_SHARE) T`` (Gaussians compose
    exactly: ``1/z^2`` adds), split evenly over the evaluation schedule. Fixed noise: :data:`FIXED_EVAL_NOISE`.
    """
    evals = len(ev.eval_rounds(config.rounds, config.eval_every))
    if config.target_epsilon is None:
        return FIXED_EVAL_NOISE
    total = _gaussian_z(config.target_epsilon, config.delta)
    train = _gaussian_z((1 - EVAL_SHARE) * config.target_epsilon, config.delta)
    inv = 1.0 / total**2 - 1.0 / train**2
    z = math.sqrt(evals / inv)
    return z * ev.DELTA2 / ev.SCALE  # skellam_multiplier(floor) ~ z


def site_eval_event(eval_noise_multiplier: float, heldout_bound: int) -> DpEvent:
    """The site-level event of one evaluation release when at most ``heldout_bound`` records are evaluated.

    Zeroing out the whole site moves the evaluation vector by at most ``heldout_bound * DELTA2`` in L2, against
    noise ``eval_noise_multiplier * SCALE >= eval_noise_multiplier * DELTA2``: a Gaussian mechanism with noise
    multiplier at least ``eval_noise_multiplier / heldout_bound``. Per-site evaluation is therefore *weak* at the
    site level (that is the honest figure). ``heldout_bound = 0`` releases noise only.
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
    # distributed noise: every round is one step on all of the site's records (q = 1), so the plan, and the noise
    # multiplier whose share each site adds, come from the config alone and are the same at every site
    q = 1.0 if config.distributed_noise else min(1.0, config.batch_size / public_size)
    steps, rounds, delta = config.local_steps * config.rounds, config.rounds, config.delta
    schedule = ev.eval_rounds(rounds, config.eval_every)
    evals = len(schedule)
    floor = eval_floor(config)

    def fits(sigma: float, eval_sigma: float, goal: float) -> bool:
        train, both = _epsilons(sigma, eval_sigma, q, steps, evals, delta)
        return both <= goal and both - train <= EVAL_SHARE * both * (1 - 1e-6)

    def raise_eval(sigma: float, goal: float) -> float:
        """The smallest evaluation noise >= floor that keeps evaluation within its share (bisection)."""
        if fits(sigma, floor, goal):
            return floor
        lo, hi = floor, floor * 2
        while not fits(sigma, hi, goal):
            lo, hi = hi, hi * 2
            if hi > floor * 1e4:
                raise PrivacyError("no evaluation noise keeps evaluation within its share of this run")
        for _ in range(8):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if fits(sigma, mid, goal) else (mid, hi)
        return hi

    if config.target_epsilon is None:
        if config.noise_multiplier is None:  # RunConfig sets one of the two
            raise ConfigError("the run sets neither target_epsilon nor noise_multiplier")
        sigma = float(config.noise_multiplier)
        eval_sigma = raise_eval(sigma, math.inf)
        mode = "noise"
    else:
        target = config.target_epsilon
        mode = "target"
        goal = target * (1 - 1e-4)  # a hair of margin: the ledger composes round by round
        try:
            sigma = calibrate_noise(target_epsilon=(1 - EVAL_SHARE) * target, delta=delta, sampling_rate=q, steps=steps)
        except PrivacyError as exc:
            raise PrivacyError(f"cannot plan a run with target epsilon {target}: {exc.message}") from None
        eval_sigma = raise_eval(sigma, goal)
        # what is left of the target (more than 1% of it): lower the training noise as far as both rules hold
        if _epsilons(sigma, eval_sigma, q, steps, evals, delta)[1] < 0.99 * goal:
            lo, hi = 0.7, 1.0
            for _ in range(6):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if fits(sigma * mid, eval_sigma, goal) else (mid, hi)
            sigma *= hi
    _, planned = _epsilons(sigma, eval_sigma, q, steps, evals, delta)
    return Plan(
        mode=mode,
        noise_multiplier=float(sigma),
        eval_noise_multiplier=float(eval_sigma),
        sampling_rate=q,
        local_steps=config.local_steps,
        rounds=rounds,
        delta=delta,
        epsilon_planned=planned,
        min_sites=min_sites,
        weight=coarse_count(public_size),
        public_size=public_size,
        eval_noise_floor=float(floor),
        eval_rounds=tuple(schedule),
    )
