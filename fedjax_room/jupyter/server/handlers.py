"""REST routes under ``/fedjax-room/`` for the Clean Room sidebar; every one requires authentication.

=========================================  ======  =====================================================
route                                      method  does
=========================================  ======  =====================================================
``/fedjax-room/status``                    GET     version, connected rooms, whether a run is active
``/fedjax-room/options``                   GET     run options (RunConfig's schema), datasets, model families
``/fedjax-room/events``                    WS      live typed JSON messages (:mod:`.live`): rooms, sites, runs
``/fedjax-room/rooms``                     GET     connected rooms
``/fedjax-room/rooms``                     POST    connect ``{"url": ..., "key": path}`` -> 201 room
``/fedjax-room/rooms/demo``                POST    start a demo room ``{"sites": 3, "dataset": "digits"}``
``/fedjax-room/rooms/<id>``                GET     one call with all the sidebar shows (sites, runs, ...)
``/fedjax-room/rooms/<id>``                DELETE  disconnect (and stop a demo room) -> 204
``/fedjax-room/rooms/<id>/sites``          GET     sites: status, schema, coarse size, policy
``/fedjax-room/rooms/<id>/runs``           GET     runs with round history (DP-noised metrics), refusals
``/fedjax-room/rooms/<id>/runs``           POST    start a run ``{"model": "logistic", "rounds": 5, ...}``
``/fedjax-room/rooms/<id>/runs/<run>/cancel``  POST  cancel your run ``{"reason": "..."}`` -> the run
``/fedjax-room/rooms/<id>/budget``         GET     each site's epsilon spent against its cap
``/fedjax-room/rooms/<id>/audit?last=N``   GET     the latest coordinator audit records
``/fedjax-room/rooms/<id>/notebook``       POST    create (or reuse) a dashboard notebook ``{"run": id}``
``/fedjax-room/rooms/<id>/query``          POST    a DP query ``{"kind": "histogram", "feature": ..., "epsilon": 1}``
=========================================  ======  =====================================================

Each handler is a :class:`jupyter_server.base.handlers.APIHandler` whose methods carry
``@tornado.web.authenticated`` (no token: 403; POST/DELETE also need the XSRF token or the
``Authorization`` header, as JupyterLab sends). The analyst API blocks, so each call runs on a worker
thread. A :class:`~fedjax_room.errors.FedRoomError` answers 400 (404 for an unknown room) with
``{"code", "message"}``; an unexpected failure answers 500 with one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import ensure_async, url_path_join

from fedjax_room.errors import FedRoomError
from fedjax_room.jupyter.server.calls import in_daemon_thread
from fedjax_room.jupyter.server.live import EventHub, EventsHandler
from fedjax_room.jupyter.server.notebook import dashboard_notebook, notebook_path, pick_kernel
from fedjax_room.jupyter.server.registry import RoomRegistry, UnknownRoomError, _message, options_document
from fedjax_room.protocol.fields import ID_PATTERN

__all__ = ["NAMESPACE", "ROUTES", "in_daemon_thread", "route_patterns", "setup_handlers"]

NAMESPACE = "fedjax-room"
#: Seconds a route waits for the room before answering 504 (starting a demo room takes longer).
CALL_TIMEOUT = 30.0
DEMO_TIMEOUT = 300.0
QUERY_TIMEOUT = 120.0  # a secure query runs a SecAgg round across the sites
_ROOM = r"(?P<room_id>room-[0-9]+)"


class BaseHandler(APIHandler):
    """Shared plumbing: the registry, JSON in and out, errors as JSON."""

    def initialize(self, registry: RoomRegistry) -> None:
        self.registry = registry

    async def call(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, share: str | None = None
    ) -> Any:
        """Run a blocking registry call on a thread of its own, answering an error as JSON.

        ``share``: callers asking the same thing while it is still being answered (the sidebar polling
        from several tabs, or polling a room that is slow to answer) wait for that one call instead of
        each tying up a thread.
        """
        timeout = CALL_TIMEOUT if timeout is None else timeout
        inflight = self.registry.inflight
        future = inflight.get(share) if share else None
        if future is None or future.done():
            future = in_daemon_thread(fn, *args)
            if share:
                inflight[share] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            message = f"the room did not answer within {timeout:g} s; is its coordinator running and reachable?"
            raise _Reply(504, {"code": "timeout", "message": message}) from exc
        except UnknownRoomError as exc:
            raise _Reply(404, exc.to_dict()) from exc
        except FedRoomError as exc:
            raise _Reply(400, exc.to_dict()) from exc
        except Exception as exc:
            self.log.warning("fedjax-room: %s failed: %s", self.request.path, _message(exc))
            raise _Reply(500, {"code": "internal", "message": _message(exc)}) from exc

    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError as exc:
            raise _Reply(400, {"code": "config", "message": f"the body is not JSON: {exc}"}) from exc
        if not isinstance(data, dict):
            raise _Reply(400, {"code": "config", "message": "the body must be a JSON object"})
        return data

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, allow_nan=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, _Reply):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(exc.data))
            return
        super().write_error(status_code, **kwargs)


class _Reply(tornado.web.HTTPError):
    """An error answer with a JSON body."""

    def __init__(self, status: int, data: dict[str, Any]) -> None:
        super().__init__(status, reason=None, log_message=None)
        self.data = data


class StatusHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.call(self.registry.discover, share="discover")  # the notebooks' rooms, as they are now
        self.reply(await self.call(self.registry.status, share="status"))


class OptionsHandler(BaseHandler):
    """What the sidebar's forms are generated from (no room needed)::

        {"version": 1, "groups": ["privacy", "training", "aggregation", "room"],
         "one_of": [["target_epsilon", "noise_multiplier"]],
         "options": [{"name": "rounds", "type": "int", "default": 5, "help": "federated rounds",
                      "group": "training", "nullable": false, "minimum": 1, "maximum": 1000,
                      "exclusive_minimum": false, "choices": null, "basic": true}, ...],
         "datasets": ["digits", ...], "families": ["logistic", "mlp", "cnn"], "max_demo_sites": 16}

    ``options`` is every RunConfig field in order (``fedjax_room.protocol.config.options_schema``); a POST
    ``rooms/<id>/runs`` body takes any of them by ``name``; leave one out for its default (``one_of``: exactly
    one is non-null; sending only ``noise_multiplier`` switches the default target off). docs/protocol.md,
    "Run options".
    """

    @tornado.web.authenticated
    async def get(self) -> None:
        self.reply(options_document())


class RoomsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        status = await self.call(self.registry.status)
        self.reply({"rooms": status["rooms"]})

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.body()
        info = await self.call(self.registry.connect, body.get("url"), body.get("key"), timeout=DEMO_TIMEOUT)
        self.reply(info, 201)


class DemoHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.body()
        sites, dataset, non_iid = body.get("sites", 3), body.get("dataset", "digits"), body.get("non_iid")
        info = await self.call(self.registry.start_demo, sites, dataset, non_iid, timeout=DEMO_TIMEOUT)
        self.reply(info, 201)


class RoomHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, room_id: str) -> None:
        self.reply(await self.call(self.registry.snapshot, room_id, share=f"snapshot:{room_id}"))

    @tornado.web.authenticated
    async def delete(self, room_id: str) -> None:
        await self.call(self.registry.remove, room_id)
        self.set_status(204)
        self.finish()


class SitesHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, room_id: str) -> None:
        self.reply({"sites": await self.call(self.registry.sites, room_id)})


class RunsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, room_id: str) -> None:
        self.reply({"runs": await self.call(self.registry.runs, room_id)})

    @tornado.web.authenticated
    async def post(self, room_id: str) -> None:
        self.reply(await self.call(self.registry.start_run, room_id, self.body()), 201)


class CancelHandler(BaseHandler):
    """Cancel one of this analyst's runs: the room records ``run_cancelled`` and its sites stop."""

    @tornado.web.authenticated
    async def post(self, room_id: str, run_id: str) -> None:
        self.reply(await self.call(self.registry.cancel_run, room_id, run_id, self.body()))


class BudgetHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, room_id: str) -> None:
        self.reply({"sites": await self.call(self.registry.budget, room_id)})


class AuditHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, room_id: str) -> None:
        raw = self.get_argument("last", "20")
        try:
            last = int(raw)
        except ValueError as exc:
            raise _Reply(400, {"code": "config", "message": f"'last' must be a whole number, not {raw!r}"}) from exc
        self.reply({"records": await self.call(self.registry.audit, room_id, last)})


class NotebookHandler(BaseHandler):
    """Write ``clean-room-dashboard-<run>.ipynb`` (unless it exists) and answer its path and kernel.

    The notebook runs on the Clean Room kernel when it is installed (else the server's default) and attaches
    to the room by id (``fedjax_room.attach``): no key path is written into it. The sidebar opens it and runs it.
    """

    @tornado.web.authenticated
    async def post(self, room_id: str) -> None:
        body = self.body()
        entry = await self.call(self.registry.get, room_id)
        run_id = body.get("run")
        if run_id is not None and not isinstance(run_id, str):
            raise _Reply(400, {"code": "config", "message": "'run' must be a run id (a string) or null"})
        path = notebook_path(run_id)
        cm = self.contents_manager
        created = False
        if not await ensure_async(cm.file_exists(path)):
            ksm = self.kernel_spec_manager
            try:
                specs = {n: v.get("spec", {}) for n, v in (await ensure_async(ksm.get_all_specs())).items()}
            except Exception:  # no kernelspecs readable: the notebook still names python3
                specs = {}
            kernel, display = pick_kernel(specs, getattr(ksm, "default_kernel_name", None))
            # attached by the coordinator's room id (stable across server restarts), else the sidebar's
            room_ref = str(getattr(entry.room, "room_id", "") or "") or entry.id
            content = dashboard_notebook(
                room_ref, run_id, kernel_name=kernel, kernel_display_name=display, label=entry.label
            )
            await ensure_async(cm.save({"type": "notebook", "format": "json", "content": content}, path))
            created = True
        self.reply({"path": path, "created": created}, 201 if created else 200)


class QueryHandler(BaseHandler):
    """Run one DP query (``Room.query``): the body names its keywords, or ``{"query": "<one-line form>"}``.

    Answers the result (``QueryResult.to_dict()`` plus ``ci`` at ``level``, default 0.95); a query the body
    or a site's policy does not allow answers 400 with the typed reason, and spends nothing.
    """

    @tornado.web.authenticated
    async def post(self, room_id: str) -> None:
        body = self.body()
        asked = body.get("timeout")  # a query that may wait longer for its sites is waited for (the room caps it)
        wait = QUERY_TIMEOUT
        if isinstance(asked, int | float) and not isinstance(asked, bool) and 0 < asked <= 600:
            wait = max(wait, float(asked) + 30.0)
        self.reply(await self.call(self.registry.query, room_id, body, timeout=wait))


#: (pattern relative to /fedjax-room/, handler) — every route this extension registers.
ROUTES: list[tuple[str, type[BaseHandler] | type[EventsHandler]]] = [
    (r"status", StatusHandler),
    (r"options", OptionsHandler),
    (r"events", EventsHandler),
    (r"rooms", RoomsHandler),
    (r"rooms/demo", DemoHandler),
    (rf"rooms/{_ROOM}", RoomHandler),
    (rf"rooms/{_ROOM}/sites", SitesHandler),
    (rf"rooms/{_ROOM}/runs", RunsHandler),
    (rf"rooms/{_ROOM}/runs/(?P<run_id>{ID_PATTERN.pattern})/cancel", CancelHandler),
    (rf"rooms/{_ROOM}/budget", BudgetHandler),
    (rf"rooms/{_ROOM}/audit", AuditHandler),
    (rf"rooms/{_ROOM}/notebook", NotebookHandler),
    (rf"rooms/{_ROOM}/query", QueryHandler),
]


def route_patterns(base_url: str = "/") -> list[str]:
    """The full URL patterns, as registered with tornado."""
    return [url_path_join(base_url, NAMESPACE, pattern) for pattern, _ in ROUTES]


def setup_handlers(web_app: Any, registry: RoomRegistry) -> None:
    """Register every route on the server's tornado application."""
    base_url = web_app.settings["base_url"]
    hub = EventHub(registry)
    handlers = [
        (full, handler, {"hub": hub} if handler is EventsHandler else {"registry": registry})
        for full, (_, handler) in zip(route_patterns(base_url), ROUTES, strict=True)
    ]
    web_app.add_handlers(".*$", handlers)
