"""A site's answers to DP exploration queries: policy first, then the true vector, its noise, the ledger, the release.

:class:`QueryAnswerer` answers one ``query_ask`` (a :class:`~fedjax_room.protocol.query_spec.QuerySpec`) over this
site's records (training and held-out split together). In order, the way every release of the site is made:

1. **checks that read no data** (nothing spent on a refusal, each a typed
   :class:`~fedjax_room.errors.PolicyViolation` with a ``reason``): the query is well formed and bounded
   (``bad_query``); its kind is in the policy's ``[queries] allowed`` (``query_kind``); its epsilon is within
   ``min_epsilon .. max_epsilon`` (``query_epsilon``); a site whose policy requires it answers only secure queries
   (``secure_aggregation``); the answer is at most ``max_bins`` values (``query_size``); the feature, group-by
   column and keys exist in its declared schema (``schema``); the query id was never answered before
   (``query_replay``: a replayed query is refused, never answered again with new or reused noise); the query's
   epsilon, added to every earlier query's, fits the queries' share of the cap (``query_budget``), and its event
   fits the ledger's cap (``epsilon_cap``);
2. **the true integer vector** of the query's :func:`~fedjax_room.protocol.query_spec.layout` (counts per bin /
   class / key, fixed-point sums of values clamped to the declared bounds), and its noise:

   * plain: each block through an OpenDP measurement (``make_count_by_categories`` or ``clamp >> sum``, then
     ``then_laplace`` on the integers: OpenDP's exact discrete Laplace sampler); OpenDP's own map of the
     measurement is checked to be within the block's epsilon before it runs;
   * secure: the true vector plus this site's Pólya share of the same discrete Laplace noise
     (:mod:`fedjax_room.secagg.dlaplace`), as a ring vector that leaves only masked;

   any failure here is paid for (its cost committed) and refused with a data-independent message;
3. the release is **stored** (``STATE/releases/@queries/<id>/``), its event **committed** to the ledger under
   ``@queries/<id>/query`` (fsynced; ``ComposedDpEvent`` of one ``DiscreteLaplaceDpEvent(epsilon_block, 1)`` per
   block, :func:`query_event`), audited
   (``query_released``), and only then does the answer leave.

An ``estimate`` ask (``room.estimate_query``) runs step 1 only (:meth:`QueryAnswerer.preflight`, the very function
the answer calls) and composes the event on a copy of the ledger: nothing is spent, stored, read or audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedjax_room.data import Dataset
from fedjax_room.errors import (
    BudgetExceededError,
    ConfigError,
    FedRoomError,
    PolicyViolation,
    ProtocolError,
    RefusedError,
)
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import digest
from fedjax_room.protocol.query_spec import FIXED_UNITS, QUANTILE_GRID, Block, QuerySpec, layout
from fedjax_room.protocol.query_tasks import SecureQuery, SecureQueryRelease
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.policy import Policy
from fedjax_room.site.releases import ReleaseStore

__all__ = ["QUERIES_RUN", "QueryAnswerer", "query_event", "query_key", "record_columns", "true_vector"]

log = logging.getLogger("fedjax_room.site")

#: The ledger "run" every query release is tagged under (``@queries/<query id>/query``).
QUERIES_RUN = "@queries"


def query_key(query_id: str) -> str:
    """The ledger key of a query's release."""
    return f"{QUERIES_RUN}/{query_id}/query"


def query_event(blocks: Sequence[Block]) -> Any:
    """The DP event of a query's release: ``ComposedDpEvent`` of one ``DiscreteLaplaceDpEvent(epsilon_block, 1)``
    per block.

    For a count block (sensitivity 1, scale ``1 / epsilon_block``) that is the mechanism's exact privacy-loss
    distribution. A fixed-point sum block (sensitivity ``FIXED_UNITS``, scale ``FIXED_UNITS / epsilon_block``) is
    ``epsilon_block``-DP too, and the discrete Laplace of sensitivity 1 has the PLD of binary randomized response,
    the worst case of every ``epsilon_block``-DP mechanism: an upper bound, with a PLD as small as a count's (the
    exact one, of sensitivity 4096, would slow every later composition of the ledger)."""
    from dp_accounting import dp_event

    return dp_event.ComposedDpEvent([dp_event.DiscreteLaplaceDpEvent(float(b.epsilon), 1) for b in blocks])


# ---------------------------------------------------------------------------------- the true answer


def _column(spec_name: str, x: np.ndarray, y: np.ndarray, features: Sequence[str], label: str) -> np.ndarray:
    if spec_name == label:
        return y.astype(np.float64)
    return x[:, list(features).index(spec_name)].astype(np.float64)


def _group_index(spec: QuerySpec, x: np.ndarray, y: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Each record's group (the position of its key in ``spec.keys``; -1: no declared key, not counted)."""
    n = len(y)
    if spec.by is None or spec.keys is None:
        return np.zeros(n, np.int64)
    schema = dataset.schema
    out = np.full(n, -1, np.int64)
    if spec.by == schema.label:
        classes = [str(c) for c in schema.classes]
        for g, key in enumerate(spec.keys):
            if str(key) in classes:
                out[y == classes.index(str(key))] = g
        return out
    col = _column(spec.by, x, y, schema.features, schema.label)
    for g, key in enumerate(spec.keys):
        out[col == float(key)] = g
    return out


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value (values outside the edges count in the end bins; NaN: -1, not counted)."""
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2).astype(np.int64)
    return np.where(np.isnan(values), -1, idx)


def _fixed(spec: QuerySpec, values: np.ndarray) -> np.ndarray:
    """Clamped values in fixed point (sum: the value; mean: its offset from the middle), in
    ``[-FIXED_UNITS, FIXED_UNITS]``; a missing value contributes 0."""
    assert spec.bounds is not None
    v = np.clip(values, spec.bounds[0], spec.bounds[1])
    if spec.kind == "mean":
        v = v - spec.middle
    q = np.rint(np.nan_to_num(v, nan=0.0) * spec.fixed_scale)
    return np.clip(q, -FIXED_UNITS, FIXED_UNITS).astype(np.int64)


def record_columns(spec: QuerySpec, dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per block of the layout: each record's entry (-1: none) and, for a sum block, its fixed-point value."""
    n = len(dataset)
    x = np.asarray(dataset.x, np.float64).reshape(n, -1)
    y = np.asarray(dataset.y, np.int64)
    schema = dataset.schema
    group = _group_index(spec, x, y, dataset)
    kind = spec.kind
    if kind == "count":
        return [(group, None)]
    if kind == "count_by_label":
        return [(y, None)]
    values = _column(str(spec.feature), x, y, schema.features, schema.label)
    if kind == "histogram":
        assert spec.bins is not None
        return [(_bin_index(values, np.asarray(spec.bins)), None)]
    if kind == "missing":
        return [(np.where(np.isnan(values), 0, 1).astype(np.int64), None)]
    if kind == "quantiles":
        assert spec.bounds is not None
        edges = np.linspace(spec.bounds[0], spec.bounds[1], QUANTILE_GRID + 1)
        return [(_bin_index(np.clip(values, spec.bounds[0], spec.bounds[1]), edges), None)]
    fixed = _fixed(spec, values)
    present = np.where(np.isnan(values), -1, group)
    if kind == "sum":
        return [(group, fixed)]
    return [(group, fixed), (present, None)]  # mean: the offsets' sum, and the count of present values


def true_vector(spec: QuerySpec, datasets: Sequence[Dataset]) -> np.ndarray:
    """The un-noised integer vector of ``spec`` over ``datasets`` (never released: tests and the secure path)."""
    blocks = layout(spec, classes=len(datasets[0].schema.classes))
    out = [np.zeros(b.size, np.int64) for b in blocks]
    for data in datasets:
        for i, (entry, fixed) in enumerate(record_columns(spec, data)):
            keep = entry >= 0
            weights = fixed[keep] if fixed is not None else None
            out[i] += np.bincount(entry[keep], weights=weights, minlength=blocks[i].size)[: blocks[i].size].astype(
                np.int64
            )
    return np.concatenate(out)


def _opendp_release(spec: QuerySpec, datasets: Sequence[Dataset]) -> np.ndarray:
    """The noised vector through OpenDP measurements (discrete Laplace on the integers), block by block."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    blocks = layout(spec, classes=len(datasets[0].schema.classes))
    columns = [record_columns(spec, d) for d in datasets]
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
    out: list[np.ndarray] = []
    for i, block in enumerate(blocks):
        entries = np.concatenate([c[i][0] for c in columns])
        if block.name == "count":
            meas = (
                space
                >> dp.t.then_count_by_categories(categories=list(range(block.size)), null_category=False)
                >> dp.m.then_laplace(scale=block.scale)
            )
            _check_map(meas, block)
            out.append(np.asarray(meas(entries.tolist()), np.int64))
            continue
        fixed = np.concatenate([c[i][1] for c in columns if c[i][1] is not None])
        meas = (
            space
            >> dp.t.then_clamp((-block.sensitivity, block.sensitivity))
            >> dp.t.then_sum()
            >> dp.m.then_laplace(scale=block.scale)
        )
        _check_map(meas, block)
        # one record is in one group: the groups' releases compose in parallel (the block's epsilon in all)
        out.append(np.array([meas(fixed[entries == g].tolist()) for g in range(block.size)], np.int64))
    return np.concatenate(out)


def _check_map(meas: Any, block: Block) -> None:
    spent = float(meas.map(1))  # OpenDP's own privacy map: epsilon for one record added or removed
    if not spent <= block.epsilon * (1 + 1e-9):
        raise ConfigError(f"OpenDP maps this {block.name} block to epsilon {spent:g}, over its {block.epsilon:g}")


# ---------------------------------------------------------------------------------- the answerer

#: The query option to change for each refusal reason (an estimate's ``option``).
_OPTION = {
    "query_kind": "kind",
    "query_epsilon": "epsilon",
    "query_budget": "epsilon",
    "epsilon_cap": "epsilon",
    "secure_aggregation": "secure",
    "query_size": "bins",
    "schema": "feature",
}


class QueryAnswerer:
    """Answers the queries of the site ``name`` over ``datasets`` under ``policy``, spending from ``ledger``."""

    def __init__(
        self,
        *,
        name: str,
        datasets: Sequence[Dataset],
        policy: Policy,
        ledger: Ledger,
        releases: ReleaseStore,
        audit: Callable[..., None],
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.datasets = list(datasets)
        self.policy = policy
        self.ledger = ledger
        self.releases = releases
        self._audit = audit
        self._on_commit = on_commit

    @property
    def _schema(self) -> Any:
        return self.datasets[0].schema

    def answer(self, job: object) -> m.QueryAnswer | m.QueryRefuse | SecureQueryRelease:
        """Answer one query (a ``query_ask`` or a :class:`SecureQuery`; see the module docstring); every refusal is
        a ``query_refuse`` frame."""
        if not isinstance(job, m.QueryAsk | SecureQuery):
            raise ProtocolError(f"a query job carries a query ask, not {type(job).__name__}")
        secure = job if isinstance(job, SecureQuery) else None
        ask = job.ask if isinstance(job, SecureQuery) else job
        if ask.estimate:  # nothing spent, stored or read (the same preflight as the answer below)
            try:
                return self.estimate(ask)
            except Exception as exc:  # a bug or a broken environment: refuse, say so, keep the agent alive
                log.exception("%s failed to estimate query %s", self.name, ask.query_id)
                err = RefusedError(f"{self.name} failed: {type(exc).__name__}", party=self.name, reason="site_error")
                return m.QueryRefuse(query_id=ask.query_id, error=err.to_dict())
        try:
            return self._answer(ask, secure)
        except FedRoomError as exc:
            log.warning("%s refuses query %s: %s", self.name, ask.query_id, exc.message)
            reason = getattr(exc, "reason", "") or exc.code
            self._audit("query_refused", query_id=ask.query_id, reason=reason)
            return m.QueryRefuse(query_id=ask.query_id, error=exc.to_dict())
        except Exception as exc:  # a bug or a broken environment: refuse, say so, keep the agent alive
            log.exception("%s failed on query %s", self.name, ask.query_id)
            err = RefusedError(f"{self.name} failed: {type(exc).__name__}", party=self.name, reason="site_error")
            return m.QueryRefuse(query_id=ask.query_id, error=err.to_dict())

    def _refuse(self, reason: str, message: str) -> PolicyViolation:
        return PolicyViolation(f"{self.name}: {message}", party=self.name, reason=reason)

    def check(self, spec: QuerySpec, *, secure: bool) -> list[Block]:
        """The checks that read no data; the layout of the answer."""
        rules = self.policy.queries
        if spec.kind not in rules.allowed:
            allowed = ", ".join(rules.allowed) or "none"
            raise self._refuse("query_kind", f"this site does not answer {spec.kind} queries (allowed: {allowed})")
        if not rules.min_epsilon <= spec.epsilon <= rules.max_epsilon:
            raise self._refuse(
                "query_epsilon",
                f"epsilon {spec.epsilon:g} is outside what this site allows per query "
                f"({rules.min_epsilon:g} to {rules.max_epsilon:g}); ask within it",
            )
        if (rules.require_secure or self.policy.require_secure_aggregation) and not secure:
            raise self._refuse(
                "secure_aggregation", "this site answers only secure queries (secure=True: summed across sites)"
            )
        schema = self._schema
        blocks = layout(spec, classes=len(schema.classes))
        size = max(b.size for b in blocks)
        if size > rules.max_bins:
            raise self._refuse(
                "query_size", f"the answer has {size} values; this site answers at most {rules.max_bins}"
            )
        columns = set(schema.features) | {schema.label}
        for what, col in (("feature", spec.feature), ("by", spec.by)):
            if col is not None and col not in columns:
                raise self._refuse("schema", f"{what} {col!r} is not a column of this site's declared schema")
        if spec.feature == schema.label and spec.kind != "missing":
            raise self._refuse("schema", f"{spec.feature!r} is the label; use count_by_label for it")
        if spec.by is not None and spec.by != schema.label:
            for key in spec.keys or ():
                try:
                    float(key)
                except ValueError:
                    raise self._refuse("schema", f"the keys of column {spec.by!r} are numbers, not {key!r}") from None
        return blocks

    def preflight(self, query_id: str, spec: QuerySpec, *, secure: bool) -> tuple[list[Block], Any]:
        """Every check a query passes before any data is read (policy, schema, replay, the queries' share and the
        cap): its layout and DP event, or the typed refusal. The real answer and the estimate both call this one
        function, so they cannot disagree; it spends, stores and reads nothing."""
        blocks = self.check(spec, secure=secure)
        if self.ledger.released(query_key(query_id)) is not None:
            raise self._refuse(
                "query_replay", f"query {query_id} was answered already; it is never answered again (ask anew)"
            )
        event = query_event(blocks)
        self._check_budget(event, spec)
        return blocks, event

    def estimate(self, ask: m.QueryAsk) -> m.QueryAnswer:
        """What this site would do with ``ask`` now (an ``estimate`` ask): :meth:`preflight` only, then the ledger
        composed with the query's event on a copy. Spends nothing, stores nothing, reads no record, writes no audit
        record and does not mark the query id answered. The answer carries no values, only ``estimate``: the
        fields of a run estimate (``accept``, ``epsilon_planned``, ``ledger_epsilon``, ``ledger_after``,
        ``epsilon_cap``, ``remaining``, ``delta``; a refusal's ``reason``, ``message`` and ``option``)."""
        cap = float(self.ledger.epsilon_cap)
        now = float(self.ledger.epsilon())
        out: dict[str, Any] = {"accept": False, "ledger_epsilon": now, "epsilon_cap": cap, "delta": self.ledger.delta}
        epsilon = 0.0
        try:
            try:
                spec = QuerySpec.from_dict(ask.query)
            except ConfigError as exc:
                raise self._refuse("bad_query", exc.message) from None
            epsilon = float(spec.epsilon)
            out["epsilon_planned"] = epsilon
            _, event = self.preflight(ask.query_id, spec, secure=spec.secure)
            after = float(self.ledger.epsilon_after(event))
        except FedRoomError as exc:
            reason = getattr(exc, "reason", "") or exc.code
            out.update(reason=reason, message=exc.message, option=_OPTION.get(reason, ""), remaining=cap - now)
        else:
            out.update(accept=True, ledger_after=after, remaining=cap - after)
        return m.QueryAnswer(
            query_id=ask.query_id, values=[], epsilon=epsilon, ledger_epsilon=now, delta=0.0, estimate=out
        )

    def _answer(self, ask: m.QueryAsk, secure: SecureQuery | None) -> m.QueryAnswer | SecureQueryRelease:
        try:
            spec = QuerySpec.from_dict(ask.query)
        except ConfigError as exc:
            raise self._refuse("bad_query", exc.message) from None
        if spec.secure and secure is None:
            raise self._refuse(
                "secure_aggregation", "the query was asked secure, but no secure-aggregation round came with it"
            )
        blocks, event = self.preflight(ask.query_id, spec, secure=secure is not None)
        key = query_key(ask.query_id)
        try:
            if secure is None:
                noised, vector = _opendp_release(spec, self.datasets), None
            else:
                from fedjax_room.secagg.dlaplace import DistributedDiscreteLaplace

                mech = DistributedDiscreteLaplace(
                    tuple(float(s) for b in blocks for s in [b.scale] * b.size), int(secure.min_sites)
                )
                noised, vector = None, mech.encode(true_vector(spec, self.datasets))
        except Exception:
            log.exception("%s: query %s failed; spending its cost and refusing", self.name, ask.query_id)
            self._commit(key, event, {"round": 0, "phase": "query", "failed": True, "query_epsilon": spec.epsilon})
            raise RefusedError(
                f"{self.name}: query {ask.query_id} failed on this site (see its log); its privacy cost is spent and "
                "nothing is released",
                party=self.name,
                reason="site_error",
            ) from None
        values = [] if noised is None else [float(v) for v in noised]
        release = self.releases.store(f"{QUERIES_RUN}/{ask.query_id}", 0, "query", {"values": values}, vector)
        record = {
            "round": 0,
            "phase": "query",
            "release": release,
            "query": spec.to_dict(),
            "query_epsilon": spec.epsilon,
        }
        queries_eps, total = self._commit(key, event, record)
        self._audit(
            "query_released",
            query_id=ask.query_id,
            query_kind=spec.kind,
            epsilon=spec.epsilon,
            ledger_epsilon=total,
            secure=secure is not None,
            digest=digest(
                m.encode(
                    m.QueryAnswer(
                        query_id=ask.query_id, values=values, epsilon=spec.epsilon, ledger_epsilon=total, delta=0.0
                    )
                )
            ),
        )
        answer = m.QueryAnswer(
            query_id=ask.query_id,
            values=values,
            epsilon=spec.epsilon,
            ledger_epsilon=total,
            delta=0.0,
            queries_epsilon=queries_eps,
        )
        log.info(
            "%s answered query %s (%s, epsilon %g, ledger %.3f)",
            self.name,
            ask.query_id,
            spec.kind,
            spec.epsilon,
            total,
        )
        if vector is not None:
            return SecureQueryRelease(answer=answer, vector=vector)
        return answer

    def queries_epsilon(self) -> float:
        """The epsilons of every query this site has released (or paid for), summed: what counts against the
        queries' share of the cap (basic composition, an upper bound of their composed epsilon)."""
        total = 0.0
        for tag in self.ledger.tags:
            if tag.split("/", 1)[0] == QUERIES_RUN:
                record = self.ledger.released(tag) or {}
                total += float(record.get("query_epsilon", 0.0))
        return total

    def _check_budget(self, event: Any, spec: QuerySpec) -> None:
        rules = self.policy.queries
        share_cap = rules.epsilon_share * self.ledger.epsilon_cap
        spent = self.queries_epsilon()
        if spent + spec.epsilon > share_cap * (1 + 1e-9):
            raise self._refuse(
                "query_budget",
                f"this query (epsilon {spec.epsilon:g}) would take the queries' spend past their share of the cap "
                f"({spent:.3g} of {share_cap:.3g} spent); ask with a smaller epsilon",
            )
        if self.ledger.would_exceed(event):
            raise self._refuse(
                "epsilon_cap",
                f"this query would take the ledger past its cap ({self.ledger.epsilon():.3g} of "
                f"{self.ledger.epsilon_cap:g} spent)",
            )

    def _commit(self, key: str, event: Any, record: dict[str, Any]) -> tuple[float, float]:
        try:
            out = self.ledger.commit(key, event, record, run_delta=self.ledger.delta)
        except BudgetExceededError as exc:
            raise self._refuse("epsilon_cap", exc.message) from None
        if self._on_commit is not None:
            self._on_commit()
        return out
