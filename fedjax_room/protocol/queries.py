"""The coordinator's routing of DP exploration queries: ask the sites, collect their answers, reply to the analyst.

A ``query`` from an analyst (a :class:`~fedjax_room.protocol.query_spec.QuerySpec`, checked and bounded here before
anything is sent) goes, as ``query_ask`` frames, to the sites it names (default: every connected site). Queries run
beside training runs, each with its own id (``q-<16 hex>``, never reused) and deadline (its ``timeout``); at most
:data:`MAX_OPEN_QUERIES` are open at once.

* **plain**: each site answers a ``query_answer`` with its noised vector (or a typed ``query_refuse``); the
  coordinator replies ``query_reply`` with every site's vector and the refusals once all have answered or the
  deadline passed. The analyst's client sums and finishes them (:func:`~fedjax_room.protocol.query_spec.finish`).
* **secure** (the analyst asked, or a queried site's policy requires it; two sites at least): one SecAgg round
  (:mod:`fedjax_room.secagg`) among the queried sites, ``round_id = "<query id>/1"``, 64-bit ring. Each site gets a
  ``secagg_setup`` (checked against its room manifest and policy like a training round's) and then the
  ``query_ask``; its ``query_answer`` carries only the accounting, the vector travels masked. The coordinator's
  :class:`~fedjax_room.secagg.SecAggServer` holds masked vectors and their running sum only; when the round is done
  it unmasks the **sum**, which already carries the full discrete Laplace noise (each site added a share for the
  round's ``min_clients``, :mod:`fedjax_room.secagg.dlaplace`), with any site dropped. Nothing per site is replied.

An **estimate** (``query`` with ``estimate``: ``room.estimate_query``) is checked and bounded the same way and goes as
``query_ask`` frames with ``estimate`` set; each site answers a ``query_answer`` with no values and its
``estimate`` (what its checks decide; nothing spent); the reply's ``result`` is ``{"estimate": true, "sites": [...]}``.
No audit record, no secure-aggregation round.

Audit records: ``query_requested`` (id, analyst, query, sites, secure), ``masked_input_received`` (digests only,
secure), ``query_answered`` (who answered, who refused and why; no values).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from fedjax_room.errors import ConfigError, FedRoomError, ProtocolError, RefusedError, RoundError, error_from_dict
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import digest
from fedjax_room.protocol.connections import Conn
from fedjax_room.protocol.query_spec import QuerySpec, layout
from fedjax_room.protocol.query_tasks import QUERY_ROUND
from fedjax_room.protocol.secure import SecureDriver, site_ids

__all__ = ["MAX_OPEN_QUERIES", "QUERIES_SPEND", "QueryRouter"]

log = logging.getLogger("fedjax_room.coordinator")

#: The spend row under which the coordinator keeps each site's composed query epsilon (``budget``'s "queries").
QUERIES_SPEND = "queries"
#: Most queries open at once (a further one is refused with reason ``busy``).
MAX_OPEN_QUERIES = 16


@dataclasses.dataclass
class _OpenQuery:
    id: str
    conn: int
    req: int
    analyst: str
    spec: QuerySpec
    sites: list[str]
    classes: list[Any]
    deadline: float
    answers: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    accounted: set[str] = dataclasses.field(default_factory=set)
    refused: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    server: Any = None  # the SecAggServer of a secure query
    ids: dict[str, int] = dataclasses.field(default_factory=dict)
    estimate: bool = False  # an estimate: the sites' estimates, nothing spent or released
    estimates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def waiting(self) -> set[str]:
        done = set(self.refused) | (self.accounted if self.server is not None else set(self.answers))
        done |= set(self.estimates)
        return set(self.sites) - done


def _site_requires_secure(info: dict[str, Any]) -> bool:
    policy = info.get("policy") if isinstance(info.get("policy"), dict) else {}
    assert isinstance(policy, dict)
    queries = policy.get("queries") if isinstance(policy.get("queries"), dict) else {}
    assert isinstance(queries, dict)
    return policy.get("require_secure_aggregation") is True or queries.get("require_secure") is True


def _site_min_sites(info: dict[str, Any]) -> int:
    policy = info.get("policy") if isinstance(info.get("policy"), dict) else {}
    assert isinstance(policy, dict)
    value = policy.get("min_sites", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64 else 1


def _refusal(q: _OpenQuery) -> RefusedError:
    """The typed refusal of a query nobody answered (the first site's reason; every site's in the message)."""
    first = next(iter(sorted(q.refused.items())), ("", {"reason": "no_sites", "message": "no site answered"}))[1]
    detail = "; ".join(f"{s}: {r.get('reason')}: {r.get('message')}" for s, r in sorted(q.refused.items()))
    return RefusedError(
        f"query {q.id} was not answered: {detail or 'no site answered'}",
        party="room" if len(q.refused) != 1 else next(iter(q.refused)),
        reason=str(first.get("reason") or "refused"),
    )


class QueryRouter(SecureDriver):
    """The query handlers (``_on_query``, ``_on_query_answer``, ``_on_query_refuse``), mixed into the machine."""

    _queries: dict[str, _OpenQuery]

    # ------------------------------------------------------------------ the analyst's query

    def _on_query(self, c: Conn, msg: m.Query, now: float) -> None:
        spec = QuerySpec.from_dict(msg.query)
        queries = self._queries
        if len(queries) >= MAX_OPEN_QUERIES:
            raise RefusedError(
                f"{len(queries)} queries are open in this room; wait for one to finish", party="room", reason="busy"
            )
        known = self.store.sites()
        connected = [n for n in self.connected_sites if n in known]
        if spec.sites is not None:
            unknown = [s for s in spec.sites if s not in known]
            if unknown:
                raise ConfigError(f"no site {unknown[0]!r} in this room; room.sites() lists them")
            names = [s for s in spec.sites if s in connected]
            offline = [s for s in spec.sites if s not in connected]
        else:
            names, offline = connected, []
        if not names:
            raise RefusedError("no queried site is connected; try again when one is", party="room", reason="no_sites")
        secure = spec.secure or any(_site_requires_secure(dict(known[n])) for n in names)
        spec = spec.with_secure(secure)
        if secure and len(names) < 2:
            raise RefusedError(
                "a secure query sums at least two sites' answers; name more sites or ask without secure",
                party="room",
                reason="too_few_sites",
            )
        schema = dict(known[names[0]]).get("schema") or {}
        classes = list(schema.get("classes") or []) if isinstance(schema, dict) else []
        qid = "q-" + os.urandom(8).hex()
        q = _OpenQuery(
            id=qid,
            conn=c.id,
            req=msg.req,
            analyst=c.name,
            spec=spec,
            sites=names,
            classes=classes,
            deadline=now + spec.timeout,
            estimate=msg.estimate,
        )
        for name in offline:
            q.refused[name] = {"code": "refused", "reason": "offline", "message": f"{name} is not connected"}
        if msg.estimate:  # the same checks and bounds as the query; no audit record, no secagg round, no values
            queries[qid] = q
            for name in names:
                self._send(self._site_conns[name], m.QueryAsk(query_id=qid, query=spec.to_dict(), estimate=True))
            log.info("query estimate %s (%s) asked of %s", qid, spec.kind, names)
            return
        self.audit.append(
            "query_requested", query_id=qid, analyst=c.name, query=spec.to_dict(), sites=names, secure=secure
        )
        queries[qid] = q
        ask = m.QueryAsk(query_id=qid, query=spec.to_dict())
        if secure:
            try:
                self._query_secagg(q, known, now)
            except FedRoomError:
                del queries[qid]
                raise
        for name in names:
            if q.server is not None:
                self._send(self._site_conns[name], self._query_setup(q, name))
            self._send(self._site_conns[name], ask)
        log.info("query %s (%s%s) asked of %s", qid, spec.kind, ", secure" if secure else "", names)

    def _query_secagg(self, q: _OpenQuery, known: dict[str, Any], now: float) -> None:
        from fedjax_room.secagg import SecAggConfig, SecAggServer
        from fedjax_room.secagg.dlaplace import MODULUS_BITS

        roster = {}
        for name in q.sites:
            ident = self.store.identity(name)
            if ident is None or ident.revoked:
                raise RefusedError(f"site {name} has no enrolled key", party="room", reason="no_sites")
            roster[name] = ident.public_key
        q.ids = site_ids(roster)
        n = len(roster)
        least = max(n // 2 + 1, 2, *(_site_min_sites(dict(known[s])) for s in roster))
        config = SecAggConfig(
            f"{q.id}/{QUERY_ROUND}",
            {q.ids[s]: bytes(k) for s, k in roster.items()},
            vector_length=sum(b.size for b in layout(q.spec, classes=max(1, len(q.classes)))),
            modulus_bits=MODULUS_BITS,
            min_clients=min(n, least),
        )
        q.server = SecAggServer(config, stage_timeout=q.spec.timeout, now=now)
        q.deadline = q.server.deadline if q.server.deadline is not None else q.deadline

    def _query_setup(self, q: _OpenQuery, name: str) -> m.SecAggSetup:
        return m.SecAggSetup(
            run_id=q.id, round=QUERY_ROUND, config=q.server.config.to_dict(), id=q.ids[name], fraction=1.0
        )

    # ------------------------------------------------------------------ the sites' answers

    def _open_query(self, c: Conn, query_id: str, what: str) -> _OpenQuery | None:
        q = self._queries.get(query_id)
        if q is None or c.name not in q.sites or c.name in q.refused:
            log.info("ignored %s from %s for %s (not open)", what, c.name, query_id)
            err = ProtocolError(f"{what} for {query_id} ignored: that query is not open for this site")
            self._send(c.id, m.Error.of(err, run_id=query_id))
            return None
        return q

    def _on_query_answer(self, c: Conn, msg: m.QueryAnswer, now: float) -> None:
        if not all(math.isfinite(v) for v in (msg.epsilon, msg.ledger_epsilon, msg.delta, *msg.values)):
            raise ProtocolError("query_answer: every value must be a finite number")
        q = self._open_query(c, msg.query_id, "query_answer")
        if q is None or c.name in q.answers or c.name in q.accounted or c.name in q.estimates:
            return
        if q.estimate:  # an estimate's answer: its checked fields only; the site's ledger view is left as it was
            from fedjax_room.protocol.estimates import _clean

            q.estimates[c.name] = _clean(c.name, msg.estimate)
            self._query_maybe_done(q, now)
            return
        expected = 0 if q.server is not None else sum(b.size for b in layout(q.spec, classes=max(1, len(q.classes))))
        self.store.update_site_ledger(c.name, {"epsilon": msg.ledger_epsilon})  # what the site says it has spent
        if msg.queries_epsilon is not None and math.isfinite(msg.queries_epsilon):  # the budget's "queries" line
            self.store.record_spend(
                c.name,
                QUERIES_SPEND,
                0,
                "query",
                epsilon=msg.queries_epsilon,
                ledger_epsilon=msg.ledger_epsilon,
                delta=self.store.sites().get(c.name, {}).get("ledger", {}).get("delta", 0.0) or 0.0,
            )
        if len(msg.values) != expected:  # e.g. a site whose schema has other classes: left out, not disconnected
            why = f"{len(msg.values)} values where the query releases {expected}" + (
                " (a secure query's values travel masked)" if q.server is not None else ""
            )
            log.warning("query %s: %s's answer left out: %s", q.id, c.name, why)
            q.refused[c.name] = {"code": "protocol", "reason": "bad_answer", "message": why}
            self._send(c.id, m.Error.of(ProtocolError(f"query_answer: {why}"), run_id=q.id))
            if q.server is not None and c.name in q.ids:
                self._query_deliver(q, q.server.drop(q.ids[c.name], now), now)
            if q.id in self._queries:
                self._query_maybe_done(q, now)
            return
        if q.server is not None:
            q.accounted.add(c.name)
        else:
            q.answers[c.name] = [float(v) for v in msg.values]
        self._query_maybe_done(q, now)

    def _on_query_refuse(self, c: Conn, msg: m.QueryRefuse, now: float) -> None:
        q = self._open_query(c, msg.query_id, "query_refuse")
        if q is None:
            return
        err = error_from_dict(msg.error if isinstance(msg.error, dict) else {})
        q.refused[c.name] = {"code": err.code, "reason": getattr(err, "reason", "") or err.code, "message": err.message}
        q.answers.pop(c.name, None)
        if q.server is not None and c.name in q.ids:
            self._query_deliver(q, q.server.drop(q.ids[c.name], now), now)
        if q.id in self._queries:
            self._query_maybe_done(q, now)

    def _on_secagg(self, c: Conn, msg: m.SecAgg, now: float) -> None:
        q = self._queries.get(msg.run_id)
        if q is None:
            super()._on_secagg(c, msg, now)
            return
        if q.server is None or c.name not in q.ids or msg.round != QUERY_ROUND:
            self._stale(c, msg.run_id, "secagg for a query")
            return
        from fedjax_room.secagg import MaskedInput, message_from_dict

        try:
            body = message_from_dict(msg.body)
            if getattr(body, "sender", None) != q.ids[c.name]:
                raise ProtocolError(f"site {c.name} sent a secagg message in another site's name")
            out = q.server.receive(body, now)
        except FedRoomError as exc:
            log.warning("query %s: secagg message from %s refused: %s", q.id, c.name, exc.message)
            self._send(c.id, m.Error.of(exc, run_id=msg.run_id))
            return
        if msg.body.get("t") == MaskedInput.type:
            self.audit.append(
                "masked_input_received", run_id=q.id, round=QUERY_ROUND, site=c.name, digest=digest(msg.body["data"])
            )
        self._query_deliver(q, out, now)

    def _query_deliver(self, q: _OpenQuery, envelopes: list[Any], now: float) -> None:
        names = {i: n for n, i in q.ids.items()}
        for e in envelopes:
            cid = self._site_conns.get(names.get(e.recipient, ""))
            if cid is not None:
                self._send(cid, m.SecAgg(run_id=q.id, round=QUERY_ROUND, body=e.message.to_dict()))
        if q.server is not None:
            d = q.server.deadline
            q.deadline = d if d is not None else q.deadline
            if q.server.state.value in ("done", "aborted"):
                self._query_finish(q, now)

    def _secure_dropped(self, name: str, now: float) -> None:
        super()._secure_dropped(name, now)
        for q in list(self._queries.values()):
            if name not in q.sites or name in q.refused:
                continue
            if q.server is not None:
                if name in q.ids:
                    self._query_deliver(q, q.server.drop(q.ids[name], now), now)
            elif name not in q.answers and name not in q.estimates:
                q.refused[name] = {"code": "refused", "reason": "offline", "message": f"{name} disconnected"}
                self._query_maybe_done(q, now)

    # ------------------------------------------------------------------ deadlines and the reply

    def _query_deadlines(self) -> list[float]:
        return [q.deadline for q in self._queries.values()]

    def _query_tick(self, now: float) -> None:
        for q in list(self._queries.values()):
            if now < q.deadline:
                continue
            try:
                self._query_expire(q, now)
            except Exception:  # one query's trouble never stops the scheduler or a run: drop it, say so
                log.exception("query %s could not be closed; dropping it", q.id)
                self._queries.pop(q.id, None)
                if q.conn in self._conns:
                    self._send(q.conn, m.Error.of(RoundError(f"query {q.id} failed in the room"), req=q.req))

    def _query_expire(self, q: _OpenQuery, now: float) -> None:
        if q.server is not None:
            self._query_deliver(q, q.server.tick(now), now)
            if q.id in self._queries and q.server.deadline is None:
                self._query_finish(q, now)
        else:
            for name in q.waiting:
                q.refused[name] = {"code": "refused", "reason": "timeout", "message": f"{name} did not answer"}
            self._query_finish(q, now)

    def _query_maybe_done(self, q: _OpenQuery, now: float) -> None:
        if q.server is None and not q.waiting:
            self._query_finish(q, now)

    def _query_estimate_reply(self, q: _OpenQuery) -> None:
        """An estimate's reply: one row per queried site (``fedjax_room.analyst.results.SiteEstimate``)."""
        rows = []
        for name in [*q.sites, *(n for n in q.refused if n not in q.sites)]:
            if name in q.estimates:
                rows.append(q.estimates[name])
                continue
            r = q.refused.get(name, {})
            status = {"offline": "offline", "timeout": "no_answer"}.get(str(r.get("reason")), "answered")
            rows.append(
                {
                    "site": name,
                    "status": status,
                    "accept": False,
                    "reason": str(r.get("reason", "")),
                    "message": str(r.get("message", "")),
                }
            )
        result = {"estimate": True, "query_id": q.id, "query": q.spec.to_dict(), "sites": rows}
        if q.conn in self._conns:
            self._send(q.conn, m.QueryReply(req=q.req, result=result))

    def _query_finish(self, q: _OpenQuery, now: float) -> None:
        if self._queries.pop(q.id, None) is None:
            return
        if q.estimate:
            self._query_estimate_reply(q)
            return
        result: dict[str, Any] = {
            "query_id": q.id,
            "query": q.spec.to_dict(),
            "classes": [str(x) for x in q.classes],
            "secure": q.server is not None,
            "refused": q.refused,
        }
        error: FedRoomError | None = None
        if q.server is not None:
            from fedjax_room.secagg.dlaplace import DistributedDiscreteLaplace

            try:
                ring = q.server.result()
            except FedRoomError as exc:
                error = (
                    _refusal(q)
                    if q.refused
                    else RoundError(f"secure query {q.id} aborted, nothing released: {exc.message}")
                )
            else:
                survivors = sorted(n for n, i in q.ids.items() if i in q.server.survivors)
                total = DistributedDiscreteLaplace((1.0,) * len(ring), 1).decode(ring)
                m_clients = q.server.config.min_clients
                result.update(
                    sites=survivors,
                    per_site={},
                    total=[float(v) for v in total],
                    noise_shares=max(1.0, len(survivors) / m_clients),
                    min_sites=m_clients,
                )
        else:
            answered = sorted(q.answers)
            if not answered:
                error = _refusal(q)
            else:
                per_site = {s: q.answers[s] for s in answered}
                size = len(per_site[answered[0]])
                summed = [math.fsum(per_site[s][i] for s in answered) for i in range(size)]
                result.update(sites=answered, per_site=per_site, total=summed, noise_shares=float(len(answered)))
        self.audit.append(
            "query_answered",
            query_id=q.id,
            sites=list(result.get("sites", [])),
            refused={s: str(r.get("reason", "")) for s, r in q.refused.items()},
            secure=q.server is not None,
            released=error is None,
        )
        if q.conn not in self._conns:
            return
        if error is not None:
            self._send(q.conn, m.Error.of(error, req=q.req))
        else:
            self._send(q.conn, m.QueryReply(req=q.req, result=result))
