"""The sidebar's live feed: ``/fedjax-room/events``, an authenticated websocket of typed JSON messages.

The server pushes (each a JSON object with a ``type``)::

    {"type": "hello", "version": ..., "limits": {...}}            once, first
    {"type": "rooms", "rooms": [room info], "active": bool}       the connected rooms changed
    {"type": "snapshot", "room": id, "info": room info, "sites", "runs", "budget", "audit", "errors", "active"}
                                                                  a whole room (on connect, on resync)
    {"type": "sites",  "room": id, "sites": [site]}               the room's site list changed
    {"type": "runs",   "room": id, "runs": [run]}                 the room's run list changed
    {"type": "budget", "room": id, "budget": [row]}               the sites' epsilon ledgers changed
    {"type": "audit",  "room": id, "audit": [record]}             new audit records
    {"type": "run",    "room": id, "run": run, "event": {...}}    one run event (analyst.events.to_json)
                                                                  (or "event": null: the run's state, asked for)
    {"type": "room_error", "room": id, "part": ..., "message": ...}  a poll of the room failed
    {"type": "error",  "message": ...}                            a message from this client was refused

and accepts ``{"type": "subscribe" | "unsubscribe", "room": id, "run": id}`` (follow a run that is not live,
to see its rounds) and ``{"type": "resync"}`` (send every room's snapshot again).

Run events are pushed end to end: the coordinator pushes them to the analyst client, whose
``Run.subscribe`` callback (the registry's) hands them to this hub. The coordinator pushes nothing
about sites, run lists, budgets or audit records, so while at least one sidebar is connected the hub
asks each room for its sites and runs every :data:`POLL_INTERVAL` seconds (two requests per room for
every sidebar together, instead of four per tab every second) and for the budget and audit after each
run event; it sends a message only when what it got differs from what it sent last.

Everything a client controls is bounded: a message over :data:`MAX_MESSAGE_BYTES` closes the socket
(1009), at most :data:`MAX_SUBSCRIPTIONS` runs per client, :data:`MAX_CLIENTS` sockets per server, a
resync at most every :data:`RESYNC_INTERVAL` seconds, and a client that stops reading is dropped once
:data:`MAX_PENDING_WRITES` messages wait for it (the sidebar reconnects and resyncs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from fedjax_room.jupyter.server.calls import in_daemon_thread
from fedjax_room.jupyter.server.registry import RoomRegistry, UnknownRoomError, _message
from fedjax_room.protocol.fields import is_id

__all__ = [
    "MAX_CLIENTS",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_WRITES",
    "MAX_SUBSCRIPTIONS",
    "POLL_INTERVAL",
    "EventHub",
    "EventsHandler",
]

MAX_MESSAGE_BYTES = 4096
MAX_SUBSCRIPTIONS = 32
MAX_CLIENTS = 32
MAX_PENDING_WRITES = 256
RESYNC_INTERVAL = 2.0
POLL_INTERVAL = 5.0
#: Seconds after a run event before the budget and audit are asked for (several events, one request).
LEDGER_DELAY = 0.5


class EventHub:
    """Fans the registry's changes out to the connected sockets, on the server's event loop."""

    def __init__(self, registry: RoomRegistry, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.registry = registry
        self.poll_interval = poll_interval
        self.clients: set[EventsHandler] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._last: dict[tuple[str, str], str] = {}  # (type, room) -> the JSON last sent
        self._poller: asyncio.Task[None] | None = None
        self._ledger_due: set[str] = set()
        self._rooms_sent: set[str] = set()  # the rooms the clients have had a snapshot of
        registry.listener = self.publish_threadsafe

    # ---------------------------------------------------------------- clients

    def add(self, client: EventsHandler) -> bool:
        if len(self.clients) >= MAX_CLIENTS:
            return False
        self.loop = asyncio.get_running_loop()
        self.clients.add(client)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        return True

    def remove(self, client: EventsHandler) -> None:
        self.clients.discard(client)
        for room_id, run_id in client.subscriptions:
            self.release(room_id, run_id)
        client.subscriptions.clear()
        if not self.clients and self._poller is not None:
            self._poller.cancel()
            self._poller = None
            self._last.clear()
            self._rooms_sent.clear()

    def wanted(self, room_id: str, run_id: str) -> bool:
        return any((room_id, run_id) in c.subscriptions for c in self.clients)

    def release(self, room_id: str, run_id: str) -> None:
        if not self.wanted(room_id, run_id):
            asyncio.ensure_future(self.call(self.registry.unwatch, room_id, run_id))

    # ---------------------------------------------------------------- sending

    def publish_threadsafe(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every client; callable from any thread (the registry's callbacks)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self.publish, message)

    def publish(self, message: dict[str, Any], *, dedupe: bool = False) -> None:
        """Send ``message`` to every client (on the loop); with ``dedupe`` only if it differs from the last one."""
        text = json.dumps(message, allow_nan=False)
        if dedupe:
            key = (str(message.get("type")), str(message.get("room", "")))
            if self._last.get(key) == text:
                return
            self._last[key] = text
        if message.get("type") == "run" and isinstance(message.get("event"), dict):
            if message["event"].get("kind") in ("round", "status", "refusal"):
                self._ledger_soon(str(message.get("room")))
        for client in list(self.clients):
            client.send_text(text)
        if message.get("type") == "rooms":
            known = {r["id"] for r in message.get("rooms") or []}
            self._last = {k: v for k, v in self._last.items() if not k[1] or k[1] in known}
            for room_id in known - self._rooms_sent:  # a room connected since: the sidebars need all of it
                asyncio.ensure_future(self.send_snapshot(room_id))
            self._rooms_sent = known

    async def call(self, fn: Any, *args: Any) -> Any:
        return await in_daemon_thread(fn, *args)

    async def send_snapshot(self, room_id: str, client: EventsHandler | None = None) -> None:
        try:
            snap = await self.call(self.registry.snapshot, room_id)
        except UnknownRoomError:
            return
        message = {"type": "snapshot", **snap, "room": room_id, "info": snap["room"]}
        if client is not None:
            client.send_text(json.dumps(message, allow_nan=False))
        else:
            self.publish(message)
        for part in ("sites", "runs", "budget", "audit"):  # what later diffs are against
            if part not in snap.get("errors", {}):
                self._last[(part, room_id)] = json.dumps(
                    {"type": part, "room": room_id, part: snap[part]}, allow_nan=False
                )

    async def greet(self, client: EventsHandler) -> None:
        from fedjax_room._version import __version__

        limits = {
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_subscriptions": MAX_SUBSCRIPTIONS,
            "poll_interval": self.poll_interval,
        }
        client.send_text(json.dumps({"type": "hello", "version": __version__, "limits": limits}))
        with contextlib.suppress(Exception):  # the notebooks' rooms (a failure is in the status's notices)
            await self.call(self.registry.discover)
        status = await self.call(self.registry.status)
        client.send_text(json.dumps({"type": "rooms", **status}, allow_nan=False))
        self._rooms_sent |= {room["id"] for room in status["rooms"]}
        for room in status["rooms"]:
            await self.send_snapshot(room["id"], client)

    # ---------------------------------------------------------------- what the coordinator does not push

    def _ledger_soon(self, room_id: str) -> None:
        if room_id in self._ledger_due or self.loop is None:
            return
        self._ledger_due.add(room_id)
        self.loop.call_later(LEDGER_DELAY, lambda: asyncio.ensure_future(self._ledger(room_id)))

    async def _ledger(self, room_id: str) -> None:
        self._ledger_due.discard(room_id)
        if not self.clients:
            return
        for part, fn in (("budget", self.registry.budget), ("audit", self.registry.audit)):
            try:
                rows = await self.call(fn, room_id)
            except Exception:  # the next poll or event tries again
                continue
            self.publish({"type": part, "room": room_id, part: rows}, dedupe=True)

    async def _poll(self) -> None:
        """Sites and runs of every room, every ``poll_interval`` s while a client is connected."""
        while self.clients:
            await asyncio.sleep(self.poll_interval)
            with contextlib.suppress(Exception):  # a room a notebook opened or closed since (sends "rooms")
                await self.call(self.registry.discover)
            for entry in self.registry.entries():
                for part, fn in (("sites", self.registry.sites), ("runs", self.registry.runs)):
                    try:
                        rows = await self.call(fn, entry.id)
                    except Exception as exc:  # said once; the sidebar shows the room's last good state
                        self.publish(
                            {"type": "room_error", "room": entry.id, "part": part, "message": _message(exc)},
                            dedupe=True,
                        )
                        continue
                    self.publish({"type": part, "room": entry.id, part: rows}, dedupe=True)


class EventsHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``GET /fedjax-room/events``: the websocket; 403 without the server's token or login cookie."""

    def initialize(self, hub: EventHub) -> None:
        self.hub = hub
        self.subscriptions: set[tuple[str, str]] = set()
        self.pending = 0
        self.last_resync = 0.0

    def set_default_headers(self) -> None:
        """Not JupyterHandler's (they make no sense for a websocket)."""

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE_BYTES

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # WebSocketMixin: the ping loop
        if not self.hub.add(self):
            self.close(1013, "too many Clean Room sidebars are connected to this server")
            return
        await self.hub.greet(self)

    def on_close(self) -> None:
        self.hub.remove(self)

    def send_text(self, text: str) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self.pending >= MAX_PENDING_WRITES:  # not reading: drop it; the sidebar reconnects and resyncs
            self.close(1008, "too many messages waiting for this client")
            return
        self.pending += 1
        try:
            future = self.write_message(text)
        except WebSocketClosedError:
            self.pending -= 1
            return
        future.add_done_callback(self._written)

    def _written(self, future: Any) -> None:
        self.pending -= 1
        with contextlib.suppress(BaseException):
            future.exception()  # a write to a closed socket: nothing to do

    def _refuse(self, message: str) -> None:
        self.send_text(json.dumps({"type": "error", "message": message}))

    async def on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            return self._refuse("not JSON")
        if not isinstance(data, dict):
            return self._refuse("a message is a JSON object with a 'type'")
        kind = data.get("type")
        if kind == "resync":
            now = time.monotonic()
            if now - self.last_resync < RESYNC_INTERVAL:
                return None
            self.last_resync = now
            return await self.hub.greet(self)
        if kind not in ("subscribe", "unsubscribe"):
            return self._refuse(f"unknown message type {str(kind)[:40]!r}")
        room_id, run_id = data.get("room"), data.get("run")
        if not isinstance(room_id, str) or not isinstance(run_id, str) or not is_id(run_id) or len(room_id) > 40:
            return self._refuse("'room' and 'run' must be a room id and a run id")
        key = (room_id, run_id)
        if kind == "unsubscribe":
            if key in self.subscriptions:
                self.subscriptions.discard(key)
                self.hub.release(room_id, run_id)
            return None
        if key in self.subscriptions:
            return None
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            return self._refuse(f"at most {MAX_SUBSCRIPTIONS} runs per sidebar; unsubscribe from one first")
        self.subscriptions.add(key)
        try:
            run = await self.hub.call(self.hub.registry.watch, room_id, run_id)
        except Exception as exc:
            self.subscriptions.discard(key)
            return self._refuse(_message(exc))
        self.send_text(json.dumps({"type": "run", "room": room_id, "run": run, "event": None}, allow_nan=False))
        return None
