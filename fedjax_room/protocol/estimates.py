"""The coordinator machine's side of ``room.estimate``: ask every connected site what it would do, spend nothing.

An ``estimate_run`` is bounded like a ``start_run`` (:func:`~fedjax_room.protocol.config.check_run_request`), then
sent to every connected, reported site as an ``estimate_offer``; each site runs its own plan, policy and budget
check (``fedjax_room.site.estimate``) and answers ``estimate_answer``. When every site has answered, or after
:data:`ESTIMATE_TIMEOUT` seconds, the analyst gets one ``estimate_reply`` with a record per site (an enrolled site
that is not connected is listed ``offline``, a silent one ``no_answer``). Nothing is written to the store, the audit
log or any ledger: an estimate is a question, not a release.

A hostile analyst cannot turn estimates into work for the sites: each analyst has at most one estimate in flight and
:data:`ESTIMATES_PER_WINDOW` per :data:`ESTIMATE_WINDOW` seconds (a further request gets a ``rate_limited``
refusal at once, nothing sent to any site), and a site runs at most a couple at a time
(:data:`fedjax_room.protocol.site.MAX_ESTIMATES_IN_FLIGHT`). What a site answers is only its claim about itself:
each field is type-checked and bounded here, and anything else is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from fedjax_room.errors import ProtocolError, RefusedError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunLimits
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.views import RunViews

__all__ = ["ESTIMATES_PER_WINDOW", "ESTIMATE_TIMEOUT", "ESTIMATE_WINDOW", "EstimateRequests"]

log = logging.getLogger("fedjax_room.coordinator")

#: seconds the sites have to answer an estimate (a site busy training a round may answer later: ``no_answer``)
ESTIMATE_TIMEOUT = 20.0
#: the rate limit on one analyst's estimates: this many per window
ESTIMATES_PER_WINDOW = 20
ESTIMATE_WINDOW = 60.0

_NUMBERS = (
    "epsilon_planned",
    "noise_multiplier",
    "eval_noise_multiplier",
    "ledger_epsilon",
    "ledger_after",
    "epsilon_cap",
    "remaining",
    "delta",
    "tune_epsilon",
    "tune_delta",
)
_INTS = ("min_sites", "tune_trials_left", "tune_k_max")
_WORDS = ("reason", "option", "approval")
_MAX_MESSAGE = 1000


def _clean(site: str, raw: Any) -> dict[str, Any]:
    """A site's estimate, each field checked (a wrong one dropped): what the analyst is shown of it."""
    d = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {"site": site, "status": "answered", "accept": d.get("accept") is True}
    out["cut_short"] = d.get("cut_short") is True
    for key in _NUMBERS:
        v = d.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and (math.isfinite(v) or v == math.inf):
            out[key] = float(v)
    for key in _INTS:
        v = d.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and -(2**31) < v < 2**31:
            out[key] = v
    for key in _WORDS:
        v = d.get(key)
        if isinstance(v, str) and len(v) <= 64:
            out[key] = v
    message = d.get("message")
    if isinstance(message, str):
        out["message"] = message[:_MAX_MESSAGE]
    return out


@dataclasses.dataclass
class _Estimate:
    """One estimate in flight: the analyst's connection and request, the sites still to answer, their answers."""

    conn: int
    analyst: str
    req: int
    deadline: float
    waiting: set[str]
    answers: dict[str, dict[str, Any]]


class EstimateRequests(RunViews):
    """``estimate_run`` (analyst) and ``estimate_answer`` (site), mixed into the machine."""

    max_frame: int
    limits: RunLimits
    _site_conns: dict[str, int]
    _estimates: dict[int, _Estimate]
    _estimate_times: dict[str, list[float]]
    _estimate_seq: int = 0

    @property
    def connected_sites(self) -> list[str]:  # pragma: no cover - provided by the machine
        raise NotImplementedError

    def _estimate_state(self) -> tuple[dict[int, _Estimate], dict[str, list[float]]]:
        """(the estimates in flight by id, each analyst's recent request times)."""
        return self._estimates, self._estimate_times

    def _refuse_known_session(self, config: Any) -> None:  # pragma: no cover - protocol/requests.py overrides it
        return None

    def _on_estimate_run(self, c: Conn, msg: m.EstimateRun, now: float) -> None:
        flight, recent = self._estimate_state()
        if any(e.analyst == c.name for e in flight.values()):
            raise RefusedError(
                "an estimate of yours is still waiting for the sites; wait for its answer before asking again",
                party="room",
                reason="rate_limited",
            )
        times = [t for t in recent.get(c.name, []) if t > now - ESTIMATE_WINDOW]
        if len(times) >= ESTIMATES_PER_WINDOW:
            raise RefusedError(
                f"at most {ESTIMATES_PER_WINDOW} estimates per {ESTIMATE_WINDOW:g}s per analyst; try again in "
                f"{max(1.0, times[0] + ESTIMATE_WINDOW - now):.0f}s",
                party="room",
                reason="rate_limited",
            )
        spec, config = self._check_request(msg.spec, msg.config)  # the bounds of a start_run, before any site
        self._refuse_known_session(config)  # a session's sites would say how many of its trials ran
        recent[c.name] = [*times, now]
        for name in [n for n, ts in recent.items() if not ts or ts[-1] <= now - ESTIMATE_WINDOW]:
            del recent[name]  # forget analysts idle for a window
        self._estimate_seq += 1  # never reused: a late answer to an old estimate cannot count for a new one
        est = self._estimate_seq
        connected = set(self.connected_sites)
        offline = {
            n: {"site": n, "status": "offline", "accept": False} for n in self.store.sites() if n not in connected
        }
        e = _Estimate(
            conn=c.id,
            analyst=c.name,
            req=msg.req,
            deadline=now + ESTIMATE_TIMEOUT,
            waiting=set(connected),
            answers=offline,
        )
        flight[est] = e
        offer = m.EstimateOffer(est=est, spec=spec.to_dict(), config=config.to_dict())
        for name in sorted(connected):
            self._send(self._site_conns[name], offer)
        log.info("estimate %d for %s asked of %s", est, c.name, sorted(connected))
        self._estimate_done(est)

    def _on_estimate_answer(self, c: Conn, msg: m.EstimateAnswer, now: float) -> None:
        flight, _ = self._estimate_state()
        e = flight.get(msg.est)
        if e is None or c.name not in e.waiting:
            log.info("ignored an estimate answer from %s (estimate %d is not waiting for it)", c.name, msg.est)
            return
        from fedjax_room.protocol.codec import pack

        if len(pack(msg.estimate)) > 8192:
            raise ProtocolError("estimate_answer is over 8192 bytes; an estimate is a few figures")
        e.waiting.discard(c.name)
        e.answers[c.name] = _clean(c.name, msg.estimate)
        self._estimate_done(msg.est)

    def _estimate_done(self, est: int, *, timed_out: bool = False) -> None:
        flight, _ = self._estimate_state()
        e = flight.get(est)
        if e is None or (e.waiting and not timed_out):
            return
        for name in e.waiting:
            e.answers[name] = {"site": name, "status": "no_answer", "accept": False}
        del flight[est]
        if e.conn in self._conns:
            self._send(e.conn, m.EstimateReply(req=e.req, sites=[e.answers[n] for n in sorted(e.answers)]))

    def _estimates_tick(self, now: float) -> None:
        """Answer the estimates whose sites did not all answer in time."""
        flight, _ = self._estimate_state()
        for est in [k for k, e in flight.items() if now >= e.deadline]:
            self._estimate_done(est, timed_out=True)

    def _estimates_deadline(self) -> float | None:
        flight, _ = self._estimate_state()
        return min((e.deadline for e in flight.values()), default=None)
