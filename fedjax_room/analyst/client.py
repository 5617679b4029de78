"""The analyst's client: a synchronous :class:`Room` over an asyncio core on a background thread.

``room = fedjax_room.connect(url, key="analyst.key")`` connects and authenticates (a refused
identity raises at once), then keeps the connection up, reconnecting with backoff if the coordinator
restarts, re-sending idempotent requests and re-watching live runs. Every public method blocks the
calling thread only, so it works in a plain script and inside a running event loop (a Jupyter
kernel) alike. Callbacks given to :meth:`Run.subscribe` run on a dedicated thread, so they may call
the room.

What comes back is only what the room lets an analyst see (:mod:`fedjax_room.analyst.results`):
schemas and coarse counts, DP-noised metrics, per-site privacy spend, the global model, audit
records.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from fedjax_room.analyst import presence
from fedjax_room.analyst.queries import QueryResult
from fedjax_room.analyst.results import (
    BudgetReport,
    EstimateReport,
    RunSummary,
    SiteInfo,
    SiteList,
)
from fedjax_room.analyst.run import Run
from fedjax_room.errors import (
    AuthError,
    ConfigError,
    FedRoomError,
    PolicyViolation,
    RefusedError,
    VersionError,
    error_from_dict,
)
from fedjax_room.models import ModelSpec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import unpack
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.options import options_doc, train_signature
from fedjax_room.protocol.query_spec import QuerySpec
from fedjax_room.transport.client import Backoff, open_connection

__all__ = ["Room", "Run", "connect"]

log = logging.getLogger("fedjax_room.analyst")

_RESULT_TYPES = (
    m.RunCancelled,
    m.SitesReply,
    m.RunsReply,
    m.RunCreated,
    m.RunSnapshot,
    m.ModelReply,
    m.BudgetReply,
    m.AuditReply,
    m.EstimateReply,
    m.QueryReply,
    m.TuneStarted,
    m.TuneReply,
)


def connect(
    url: str,
    key: str | Path | Any,
    *,
    name: str = "",
    tls_ca: str | Path | None = None,
    timeout: float = 30.0,
    coordinator_key: Any = None,
    insecure: bool = False,
) -> Room:
    """Connect to the room at ``url`` as the analyst whose private key is ``key`` (a path or a key object).

    ``coordinator_key`` pins the coordinator's room key: its ``coordinator.key.pub``, the room manifest, or
    raw key bytes, given to you out of band (default: ``$FEDJAX_ROOM_COORDINATOR_KEY``, else
    ``room-manifest.json`` or ``coordinator.key.pub`` next to your key file). Without a pin, or when the
    coordinator cannot prove it, nothing is sent. ``insecure`` allows plain ``ws://`` off loopback.

    Raises :class:`~fedjax_room.errors.AuthError` if the room refuses the identity and
    :class:`ConnectionError` if it cannot be reached within ``timeout`` seconds.
    """
    return Room(url, key, name=name, tls_ca=tls_ca, timeout=timeout, coordinator_key=coordinator_key, insecure=insecure)


class _Core:
    """The asyncio side: one event loop thread, one connection, request/response by ``req`` id."""

    def __init__(
        self, url: str, key: Any, *, name: str, tls_ca: Any, timeout: float, pin: Any = None, insecure: bool = False
    ) -> None:
        self.url, self.key, self.name, self.tls_ca, self.timeout = url, key, name, tls_ca, timeout
        self.pin, self.insecure = pin, insecure
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fedjax-room-analyst", daemon=True)
        self.thread.start()
        self.callbacks = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fedjax-room-callbacks")
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[asyncio.Future[Any], Callable[[int], m.Message], bool]] = {}
        self.runs: dict[str, Run] = {}
        self.ws: Any = None
        self.fatal: FedRoomError | None = None
        self.closing = False
        self.room_id = ""
        self.connected: asyncio.Event = self.call(self._make_event())
        try:
            self.call(self._connect(), timeout=timeout + 5)
        except BaseException:
            self.shutdown()
            raise
        self.maintainer = asyncio.run_coroutine_threadsafe(self._maintain(), self.loop)

    async def _make_event(self) -> asyncio.Event:
        return asyncio.Event()

    # -------------------------------------------------------------- sync bridge

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the core's loop and wait for its result from this (other) thread."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the room's blocking API cannot be called from its own event loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():  # the coroutine's own TimeoutError (the same class since Python 3.11)
                raise
            fut.cancel()
            raise TimeoutError(f"the room did not answer within {timeout:g}s") from None

    # -------------------------------------------------------------- connection

    async def _connect(self) -> None:
        try:
            ws, welcome = await asyncio.wait_for(
                open_connection(
                    self.url,
                    self.key,
                    role="analyst",
                    name=self.name,
                    cafile=self.tls_ca,
                    coordinator_key=self.pin,
                    insecure=self.insecure,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise ConnectionError(f"could not reach the room at {self.url} within {self.timeout:g}s") from None
        except OSError as exc:
            raise ConnectionError(f"could not reach the room at {self.url}: {exc}") from None
        self.ws, self.room_id = ws, welcome.room_id
        self.connected.set()

    async def _maintain(self) -> None:
        backoff = Backoff()
        while not self.closing:
            ws = self.ws
            if ws is not None:
                try:
                    async for data in ws:
                        self._dispatch(data)
                except ConnectionClosed:
                    pass
                except Exception:  # pragma: no cover - keep the client alive, say why
                    log.exception("analyst client failed on a frame")
                self.connected.clear()
                self.ws = None
                self._connection_lost()
            if self.closing:
                return
            await asyncio.sleep(backoff.next())
            try:
                await self._connect()
            except (AuthError, VersionError) as exc:
                self._fail_all(exc)
                self.fatal = exc
                return
            except (ConnectionError, OSError) as exc:
                log.info("room at %s unreachable (%s); retrying", self.url, exc)
                continue
            backoff.reset()
            await self._resume()

    def _connection_lost(self) -> None:
        for req, (fut, _, resend) in list(self.pending.items()):
            if not resend and not fut.done():
                fut.set_exception(
                    ConnectionError("the connection to the room dropped before it answered; check room.runs()")
                )
                self.pending.pop(req, None)

    async def _resume(self) -> None:
        for req, (fut, build, _) in list(self.pending.items()):
            if not fut.done():
                await self._send(build(req))
        for run in list(self.runs.values()):
            if not run.done:
                asyncio.ensure_future(self._rewatch(run))

    async def _rewatch(self, run: Run) -> None:
        with contextlib.suppress(Exception):
            await self.request(lambda req: m.WatchRun(req=req, run_id=run.id))

    def _fail_all(self, exc: BaseException) -> None:
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()

    async def _send(self, msg: m.Message) -> None:
        ws = self.ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(m.encode(msg))

    async def request(
        self, build: Callable[[int], m.Message], *, resend: bool = True, timeout: float | None = None
    ) -> Any:
        """Send a request and wait for its reply (re-sent after a reconnect when ``resend``; ``timeout``: how long,
        default the room's)."""
        if self.fatal is not None:
            raise self.fatal
        try:
            await asyncio.wait_for(self.connected.wait(), self.timeout)
        except TimeoutError:
            raise ConnectionError(f"not connected to the room at {self.url}; is the coordinator running?") from None
        req = next(self.ids)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending[req] = (fut, build, resend)
        try:
            await self._send(build(req))
            return await asyncio.wait_for(fut, timeout or self.timeout)
        except TimeoutError:
            raise TimeoutError(f"the room did not answer within {timeout or self.timeout:g}s") from None
        finally:
            self.pending.pop(req, None)

    # -------------------------------------------------------------- incoming

    def _dispatch(self, data: bytes | str) -> None:
        try:
            msg = m.decode(data) if isinstance(data, bytes) else None
        except FedRoomError as exc:
            log.warning("ignoring a bad frame from the coordinator: %s", exc.message)
            self._fail_request(data, exc)
            return
        if isinstance(msg, _RESULT_TYPES):
            if isinstance(msg, m.RunSnapshot):  # applied here, in frame order with the run's events
                run = self.runs.get(str(msg.run.get("id")))
                if run is not None:
                    run._apply_snapshot(msg.run)
            entry = self.pending.get(msg.req)
            if entry and not entry[0].done():
                entry[0].set_result(msg)
        elif isinstance(msg, m.Error):
            entry = self.pending.get(msg.req) if msg.req is not None else None
            if entry and not entry[0].done():
                entry[0].set_exception(error_from_dict(msg.error_dict()))
            else:
                log.warning("room says %s: %s", msg.code, msg.message)
        elif isinstance(msg, m.RunEvent):
            run = self.runs.get(msg.run_id)
            if run is not None:
                run._on_event(msg.kind, msg.data)

    def _fail_request(self, data: bytes | str, exc: FedRoomError) -> None:
        """A reply refused at decode fails its request with that typed error at once (not with a timeout)."""
        try:
            body = unpack(data) if isinstance(data, bytes) else None
        except FedRoomError:
            return
        req = body.get("req") if isinstance(body, dict) else None
        entry = self.pending.get(req) if isinstance(req, int) and not isinstance(req, bool) else None
        if entry and not entry[0].done():
            entry[0].set_exception(exc)

    # -------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        self.closing = True

        async def close() -> None:
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await self.ws.close()
            self._fail_all(ConnectionError("the room connection was closed"))

        if self.loop.is_running() and threading.current_thread() is not self.thread:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.callbacks.shutdown(wait=False)


class Room:
    """A connection to a room as an analyst. Use :func:`connect`; close with :meth:`close` (or ``with``)."""

    def __init__(
        self,
        url: str,
        key: str | Path | Any,
        *,
        name: str = "",
        tls_ca: Any = None,
        timeout: float = 30.0,
        coordinator_key: Any = None,
        insecure: bool = False,
    ) -> None:
        from fedjax_room.identity import load_private_key
        from fedjax_room.transport.client import default_pin_path, load_coordinator_pin

        signing_key = load_private_key(key) if isinstance(key, str | Path) else key
        source = coordinator_key if coordinator_key is not None else default_pin_path(key)
        if source is None:
            raise ConfigError(
                "cannot authenticate the room's coordinator: pass coordinator_key= (its coordinator.key.pub or "
                "the room manifest, from the operator), or put coordinator.key.pub next to your key file"
            )
        pin = load_coordinator_pin(source)
        self.url = url
        self._core = _Core(url, signing_key, name=name, tls_ca=tls_ca, timeout=timeout, pin=pin, insecure=insecure)
        # in a Jupyter kernel: tell the server's Clean Room sidebar (analyst/presence.py; paths only, no keys)
        presence.announce(self, url, key, coordinator_key=source, tls_ca=tls_ca, insecure=insecure)

    @property
    def room_id(self) -> str:
        """The room's id."""
        return self._core.room_id

    def _ask(self, build: Callable[[int], m.Message], *, resend: bool = True) -> Any:
        return self._core.call(self._core.request(build, resend=resend))

    def sites(self) -> SiteList:
        """Every site that has reported to the room: name, schema, coarse record count, status, policy."""
        reply = self._ask(lambda req: m.ListSites(req=req))
        return SiteList(SiteInfo.from_dict(s) for s in reply.sites)

    def runs(self) -> list[RunSummary]:
        """Every run in the room, oldest first."""
        reply = self._ask(lambda req: m.ListRuns(req=req))
        return [RunSummary.from_dict(r) for r in reply.runs]

    def train(self, spec: ModelSpec | Mapping[str, Any], /, **options: Any) -> Run:
        """Start a federated run of ``spec``; returns at once (the run goes on in the background).

        ``options`` are :class:`~fedjax_room.protocol.config.RunConfig`'s fields (listed below, generated from
        it); one not given takes its default. With ``target_epsilon`` each site calibrates its own noise so
        the whole run stays within it; give ``noise_multiplier`` instead for fixed noise (then the default
        target is off; giving both is a :class:`ConfigError`). ``aggregator`` is ``fedavg``, ``mean`` or a
        robust rule; ``exclude_below`` leaves out sites whose trust falls below it (docs/robustness.md).
        ``secure_aggregation=True`` shows the coordinator only the sum of the sites' (masked) updates;
        ``site_noise_multiplier`` (with it) adds distributed DP for site-level privacy:
        ``run.privacy[site].site_epsilon``. An unknown or out-of-bounds option raises :class:`ConfigError`.

        Options:
        """
        model = ModelSpec.from_dict(spec)
        config = RunConfig.from_dict(options).to_dict()
        # what the sites would say, first (nothing spent): a run they would refuse is refused here, once, at once
        try:
            estimate: EstimateReport | None = self._estimate(model, config)
        except RefusedError as exc:  # estimates rate-limited (a launch form asking live): the sites still check
            if exc.reason != "rate_limited":
                raise
            estimate = None
        if estimate is not None and not estimate.can_start:
            first = estimate.refusing[0]
            party = first.site if len(estimate.refusing) == 1 else "room"
            raise PolicyViolation(estimate.problem(), party=party, reason=first.reason or "too_few_sites")
        created = self._ask(lambda req: m.StartRun(req=req, spec=model.to_dict(), config=config), resend=False)
        return self.run(created.run_id)

    # generated from RunConfig: help(Room.train) and inspect.signature list every run option with its default
    train.__signature__ = train_signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
            inspect.Parameter("spec", inspect.Parameter.POSITIONAL_ONLY, annotation="ModelSpec | Mapping[str, Any]"),
        ]
    ).replace(return_annotation="Run")
    train.__doc__ = (train.__doc__ or "") + "\n" + options_doc(" " * 12) + "\n"

    def estimate(self, spec: ModelSpec | Mapping[str, Any], /, **options: Any) -> EstimateReport:
        """What each site would plan and decide for ``train(spec, **options)`` now, spending nothing.

        Each connected site runs its real plan, policy and budget check (the ones its offer runs) and answers:
        ``report["site-a"].epsilon_planned`` (the run's epsilon it plans), ``.ledger_after`` (its composed ledger
        after the run), ``.accept``, and for a refusal ``.reason``, ``.message`` and ``.option`` (what to change);
        ``report.can_start`` is False when the run would be refused (then :meth:`train` refuses it at once).
        Rate-limited by the room (a ``rate_limited`` :class:`~fedjax_room.errors.RefusedError` past it).
        """
        return self._estimate(ModelSpec.from_dict(spec), RunConfig.from_dict(options).to_dict())

    estimate.__signature__ = train.__signature__.replace(  # type: ignore[attr-defined]
        return_annotation="EstimateReport"
    )

    def _estimate(self, model: ModelSpec, config: dict[str, Any]) -> EstimateReport:
        reply = self._ask(lambda req: m.EstimateRun(req=req, spec=model.to_dict(), config=config))
        return EstimateReport.from_list(list(reply.sites), min_sites=config.get("min_sites"))

    def tune(
        self,
        spec: ModelSpec | Mapping[str, Any],
        /,
        space: Mapping[str, Any],
        *,
        trials: int,
        shape: float = 1.0,
        metric: str = "accuracy",
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Hyperparameter tuning: a random number of trials (mean ``trials``), each a configuration drawn from
        ``space``, only the best released.

        ``space`` maps run options to a list of values (drawn uniformly) or a ``(low, high)`` range (drawn
        log-uniformly for rates and norms, uniformly otherwise); ``options`` are fixed for every trial. One request
        hands the session to the coordinator: it draws the number of trials (Papernot & Steinke's truncated
        negative binomial distribution of mean ``trials`` and ``shape``; 1, the default: geometric) and every
        trial's options, runs the trials hidden from every analyst and publishes only the best; every site bounds
        the number and accounts the session as its policy says (``tuning_selection``: one private-selection charge
        for the best trial, checked against its cap at the first trial, or every trial composed). Returns a
        :class:`~fedjax_room.analyst.tune.TuneResult` with the best trial's configuration, run and metric. See
        :mod:`fedjax_room.analyst.tune` and docs/privacy.md, "Hyperparameter tuning".
        """
        from fedjax_room.analyst.tune import tune

        return tune(self, spec, space, trials=trials, shape=shape, metric=metric, timeout=timeout, **options)

    def run(self, run_id: str) -> Run:
        """Follow an existing run (yours or another analyst's)."""
        core = self._core
        existing = core.runs.get(run_id)
        if existing is not None:
            return existing
        run = Run(core, run_id)
        core.runs[run_id] = run  # registered first: events that follow the snapshot reach it
        try:
            self._ask(lambda req: m.WatchRun(req=req, run_id=run_id))
        except BaseException:
            core.runs.pop(run_id, None)
            raise
        return run

    def query(
        self,
        kind: str,
        feature: str | None = None,
        *,
        epsilon: float,
        bins: Sequence[float] | None = None,
        bounds: tuple[float, float] | None = None,
        quantiles: Sequence[float] | None = None,
        by: str | None = None,
        keys: Sequence[str | int] | None = None,
        sites: Sequence[str] | None = None,
        secure: bool = False,
        timeout: float | None = None,
    ) -> QueryResult:
        """A differentially private look at the sites' data: ``kind`` is ``count``, ``count_by_label``,
        ``histogram`` (``bins``: declared edges), ``sum`` / ``mean`` (``bounds``: declared, values are clamped to
        them), ``quantiles`` (``bounds``, ``quantiles`` levels) or ``missing``; ``by`` + ``keys`` group a count, sum
        or mean by a declared column's declared values. Each site (``sites``: a subset) answers what its policy
        allows, spending ``epsilon`` from the same ledger as training; ``secure=True`` sums the answers under
        secure aggregation (the room sees only the noised sum). Returns a
        :class:`~fedjax_room.analyst.queries.QueryResult` (values per site and summed, with confidence intervals);
        a query no site answers raises its typed refusal. See ``docs/queries.md``."""
        options = {
            "kind": kind,
            "feature": feature,
            "epsilon": epsilon,
            "bins": None if bins is None else list(bins),
            "bounds": None if bounds is None else list(bounds),
            "quantiles": None if quantiles is None else list(quantiles),
            "by": by,
            "keys": None if keys is None else list(keys),
            "sites": None if sites is None else list(sites),
            "secure": secure,
            "timeout": timeout,
        }
        return QueryResult(self._query(options, estimate=False))

    def estimate_query(self, kind: str, feature: str | None = None, **options: Any) -> EstimateReport:
        """What each site would do with ``query(kind, feature, **options)`` now, spending nothing.

        Each queried site runs exactly the checks its answer runs before reading any record (the same function:
        allowed kinds, epsilon range, secure requirement, schema, declared bounds and keys, replay, the queries'
        share of the cap and the cap) and answers: ``report["site-a"].accept``, ``.epsilon_planned`` (the query's
        epsilon), ``.ledger_epsilon`` / ``.ledger_after`` (its composed ledger now and after the query, composed
        like the real release), ``.remaining``, and for a refusal ``.reason`` (the real query's reason),
        ``.message`` and ``.option``. Nothing is spent, stored, read or audited, and no query id is used up. The
        room bounds it like a query (open queries, timeout). See ``docs/queries.md``."""
        return EstimateReport.from_list(
            list(self._query({"kind": kind, "feature": feature, **options}, estimate=True)["sites"])
        )

    def _query(self, options: Mapping[str, Any], *, estimate: bool) -> dict[str, Any]:
        seqs = ("bins", "bounds", "quantiles", "keys", "sites")
        clean = {k: (list(v) if k in seqs else v) for k, v in options.items() if v is not None}
        spec = QuerySpec.from_dict(clean)
        # the room replies within the timeout (plain), or within it per stage of a secure round (five stages; a
        # site's policy may make a query secure)
        wait = spec.timeout * 5 + self._core.timeout
        reply = self._core.call(
            self._core.request(
                lambda req: m.Query(req=req, query=spec.to_dict(), estimate=estimate), resend=False, timeout=wait
            )
        )
        return dict(reply.result)

    estimate_query.__signature__ = inspect.signature(query).replace(  # type: ignore[attr-defined]
        return_annotation="EstimateReport"
    )

    def budget(self) -> BudgetReport:
        """Each site's whole ledger: the composed epsilon spent, delta, cap, remaining, and each run's own epsilon
        (``report["site-a"].runs``; ``report.notes``: composition is tighter than the sum of the runs)."""
        return BudgetReport.from_list(self._ask(lambda req: m.GetBudget(req=req)).sites)

    def audit(self, last: int = 20) -> list[dict[str, Any]]:
        """The coordinator's last ``last`` audit records as the analyst may see them: without the records of hidden
        tuning trials, hence without the chain's index, links and signatures (the operator verifies the signed
        chain on disk: ``fedjax-room audit verify``)."""
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise ConfigError(f"last must be a non-negative integer, got {last!r}")
        return list(self._ask(lambda req: m.GetAudit(req=req, last=last)).records)

    def close(self) -> None:
        """Disconnect (runs go on in the room)."""
        presence.withdraw(self)
        self._core.shutdown()

    def __enter__(self) -> Room:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Room(url={self.url!r}, room_id={self._core.room_id!r})"
