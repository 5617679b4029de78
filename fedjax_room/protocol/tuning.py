"""The coordinator's side of a tuning session (``room.tune``): it, not the analyst, draws the number of trials.

Private selection (Papernot & Steinke, ICLR 2022; docs/privacy.md, "Hyperparameter tuning") holds only if the
number of trials is random, drawn from the distribution the sites account for (the session's mean
``tune_trials`` and shape ``tune_shape``), and not chosen by the analyst. At a session's first trial the
coordinator draws that number from the operating system's generator (:func:`~fedjax_room.dp.selection.draw_trials`)
and audits a commitment to it (``tune_session_drawn``: a SHA-256 of the session, the number and a secret nonce; the
number itself is not in the log the analyst may read); each further ``start_run`` of the session is one more trial
until the drawn number has started, and the next is refused (``RefusedError``, ``reason="tune_done"``): that is how
``room.tune`` learns the session is over. A trial that names a session started by another analyst, or another mean
or shape than its first trial, is refused (``tune_trials``), and so is a trial of a session this coordinator did not
draw (one begun before it restarted). The sites bound the number themselves (``k_max``) whatever the coordinator
does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from fedjax_room.dp.selection import DEFAULT_SHAPE, draw_trials
from fedjax_room.errors import RefusedError
from fedjax_room.protocol.config import RunConfig

__all__ = ["TuneDraws"]

log = logging.getLogger("fedjax_room.coordinator")


@dataclasses.dataclass
class _Session:
    analyst: str
    mean: float
    shape: float
    count: int
    started: int = 0


class TuneDraws:
    """The tuning sessions this coordinator has drawn: ``rng`` is the generator (the OS's unless a test gives one)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng: random.Random = rng or random.SystemRandom()
        self._sessions: dict[int, _Session] = {}

    def start_trial(
        self,
        analyst: str,
        config: RunConfig,
        runs: Iterable[Any],
        audit: Callable[..., Any],
    ) -> None:
        """Count one more trial of ``config``'s session (nothing outside tuning); refuse one past its drawn number.
        ``runs``: the room's stored runs (their ``config``), ``audit(kind, **fields)``: the room's audit log."""
        session = config.tune_session
        if session is None or config.tune_trials is None:
            return
        mean = float(config.tune_trials)
        shape = DEFAULT_SHAPE if config.tune_shape is None else float(config.tune_shape)
        entry = self._sessions.get(session)
        if entry is None:
            if any((getattr(r, "config", None) or {}).get("tune_session") == session for r in runs):
                raise RefusedError(
                    f"tuning session {session} began before this coordinator started, which did not draw its number "
                    "of trials; start a new room.tune",
                    party="coordinator",
                    reason="tune_trials",
                )
            count = draw_trials(mean, shape, self.rng)
            nonce = secrets.token_hex(16)
            commitment = hashlib.sha256(f"{session}:{count}:{nonce}".encode()).hexdigest()
            entry = _Session(analyst=analyst, mean=mean, shape=shape, count=count)
            self._sessions[session] = entry
            log.info("tuning session %s of %s: %d trials drawn (commitment nonce %s)", session, analyst, count, nonce)
            audit("tune_session_drawn", session=session, analyst=analyst, mean=mean, shape=shape, commitment=commitment)
        if entry.analyst != analyst or (entry.mean, entry.shape) != (mean, shape):
            raise RefusedError(
                f"tuning session {session} belongs to another analyst or was started with another mean or shape; "
                "start a new room.tune",
                party="coordinator",
                reason="tune_trials",
            )
        if entry.started >= entry.count:
            raise RefusedError(
                f"tuning session {session} has run the number of trials drawn for it",
                party="coordinator",
                reason="tune_done",
            )
        entry.started += 1
