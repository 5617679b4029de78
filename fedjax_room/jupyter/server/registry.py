"""The rooms one Jupyter server is connected to, and their state as JSON for the sidebar.

:class:`RoomRegistry` holds the ``Room`` objects the analyst API returns (``fedjax_room.analyst.connect``
for a remote coordinator, ``fedjax_room.sim.demo.start_room`` for an embedded demo room), the runs
started through this server (so their round history, refusals and errors are known), and turns what the
analyst API returns into plain JSON: dataclasses become dicts, NaN and infinities become ``null`` (the
browser's ``JSON.parse`` rejects them), numpy scalars become numbers.

Everything here is synchronous and blocking (the analyst API is a sync face over async); the tornado
handlers in :mod:`.handlers` call it on a worker thread. A lock guards the registry's own dicts; the
analyst objects are thread-safe by contract.

Nothing here ever returns more than the analyst API shows an analyst: schemas, coarse record counts,
policies, DP-noised metrics, privacy spent, audit records.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedjax_room.data.builtin import BUILTIN_DATASETS as DATASETS
from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.jupyter.server.jsonify import (
    _get,
    _message,
    jsonable,
    policy_items,
    policy_summary,
    schema_summary,
)
from fedjax_room.models.from_schema import FAMILIES
from fedjax_room.protocol.config import options_schema, protections, run_options

__all__ = [
    "ACTIVE_STATUSES",
    "DATASETS",
    "QUERY_FIELDS",
    "TRAIN_OPTIONS",
    "query_keywords",
    "options_document",
    "RoomEntry",
    "RoomRegistry",
    "UnknownRoomError",
    "jsonable",
    "policy_summary",
    "schema_summary",
]

ACTIVE_STATUSES = ("pending", "running")
MAX_DEMO_SITES = 16

#: Options a POST /runs body may carry through to ``Room.train`` (besides ``spec`` / ``model``): every
#: RunConfig field with its type, generated from RunConfig (fedjax_room.protocol.config.run_options).
TRAIN_OPTIONS: dict[str, type] = {o.name: o.python_type for o in run_options()}


#: A POST /rooms/<id>/query body: ``Room.query``'s keywords and their JSON types (``query``: the one-line
#: form instead, as ``%room query`` takes it; ``level``: the confidence level of the ``ci`` answered).
QUERY_FIELDS: dict[str, str] = {
    "kind": "str",
    "feature": "str",
    "epsilon": "number",
    "bins": "numbers",
    "bounds": "numbers",
    "quantiles": "numbers",
    "by": "str",
    "keys": "keys",
    "sites": "strs",
    "secure": "bool",
    "timeout": "number",
}
#: The most values one list in a query body may hold, and the longest one-line query (checked before
#: anything else reads them; the room's own limits on bins, keys and quantiles are tighter).
MAX_QUERY_LIST = 1024
MAX_QUERY_TEXT = 4096


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def query_keywords(body: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """A query body as ``Room.query`` keywords and the confidence level; every type checked, else ConfigError."""
    if not isinstance(body, Mapping):
        raise ConfigError("the body must be a JSON object such as {'kind': 'count_by_label', 'epsilon': 0.5}")
    level = body.get("level", 0.95)
    if not _is_number(level) or not 0 < float(level) < 1:
        raise ConfigError(f"'level' is a confidence level strictly between 0 and 1, not {level!r}")
    if body.get("query") is not None:
        text = body["query"]
        extra = set(body) - {"query", "level"}
        if extra:
            raise ConfigError(f"give either 'query' (the one-line form) or the fields, not both: {sorted(extra)}")
        if not isinstance(text, str) or len(text) > MAX_QUERY_TEXT:
            raise ConfigError(f"'query' must be a string of at most {MAX_QUERY_TEXT} characters")
        from fedjax_room.analyst.queries import parse_query

        return parse_query(text), float(level)
    unknown = set(body) - set(QUERY_FIELDS) - {"level", "query"}
    if unknown:
        raise ConfigError(f"unknown query field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(QUERY_FIELDS)}")
    if not isinstance(body.get("kind"), str):
        raise ConfigError("'kind' is required: count, count_by_label, histogram, mean, sum, quantiles or missing")
    if body.get("epsilon") is None:
        raise ConfigError("'epsilon' is required: the privacy this query may spend at each site")
    out: dict[str, Any] = {}
    for name, kind in QUERY_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if kind == "str":
            ok = isinstance(value, str) and 0 < len(value) <= 200
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "number":
            ok = _is_number(value)
        else:
            ok = isinstance(value, list) and len(value) <= MAX_QUERY_LIST
            if ok and kind == "numbers":
                ok = all(_is_number(v) for v in value)
            elif ok and kind == "strs":
                ok = all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
            elif ok:  # keys: declared category values, strings or whole numbers
                ok = all(
                    (isinstance(v, str) and len(v) <= 200) or (isinstance(v, int) and not isinstance(v, bool))
                    for v in value
                )
        if not ok:
            what = {
                "str": "a non-empty string",
                "bool": "true or false",
                "number": "a finite number",
                "numbers": f"a list of at most {MAX_QUERY_LIST} finite numbers",
                "strs": f"a list of at most {MAX_QUERY_LIST} names",
                "keys": f"a list of at most {MAX_QUERY_LIST} strings or whole numbers",
            }[kind]
            raise ConfigError(f"query field {name!r} must be {what}, not {_clip(value)}")
        out[name] = [float(v) for v in value] if kind == "numbers" else float(value) if kind == "number" else value
    kind_ = out.pop("kind")
    return {"kind": kind_, **out}, float(level)


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def options_document() -> dict[str, Any]:
    """``GET /fedjax-room/options``: RunConfig's :func:`~fedjax_room.protocol.config.options_schema` plus
    ``datasets`` (what a demo room can serve), ``families`` (models built from the sites' schema for a POST
    /runs ``{"model": family}``) and ``max_demo_sites``. The JSON shape is in docs/protocol.md, "Run options"."""
    return {
        **options_schema(),
        "datasets": list(DATASETS),
        "families": list(FAMILIES),
        "max_demo_sites": MAX_DEMO_SITES,
    }


class UnknownRoomError(ConfigError):
    """No room with that id is connected to this server."""


@dataclasses.dataclass
class RoomEntry:
    """One connected room: the ``Room``, the embedded room behind it (demo), runs started here."""

    id: str
    url: str
    kind: str  # "demo" | "remote"
    room: Any
    key: str = ""
    embedded: Any = None
    dataset: str | None = None
    created: float = dataclasses.field(default_factory=time.time)
    #: the runs this server follows (started here, live, or asked for by a sidebar): run id -> ``Run``
    runs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: run id -> the function that ends this registry's subscription to that run's events
    unsubscribe: dict[str, Callable[[], None]] = dataclasses.field(default_factory=dict)
    #: runs started through this server (always followed)
    started: set[str] = dataclasses.field(default_factory=set)
    #: "sidebar" (connected or started here; ✕ closes it) or "notebook" (a kernel's room, shown while it is open)
    origin: str = "sidebar"
    #: the kernels' presence records naming this room (notebook_rooms.py): record file name -> record
    records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: how the server connected (the coordinator pin's path, TLS), for the record attach() reads
    coordinator_key: str | None = None
    tls_ca: str | None = None
    insecure: bool = False

    @property
    def room_kind(self) -> str:
        """``demo`` or ``remote`` (a notebook's room: as its kernel described it)."""
        if self.origin == "notebook" and any(r.get("kind") == "demo" for r in self.records.values()):
            return "demo"
        return self.kind

    @property
    def label(self) -> str:
        if self.room_kind == "demo":
            dataset = self.dataset or next((r.get("dataset") for r in self.records.values() if r.get("dataset")), None)
            return f"Demo room ({dataset or 'data'}, {len(self.site_names)} sites)"
        return f"Room {self.url}"

    @property
    def site_names(self) -> list[str]:
        names = getattr(self.embedded, "site_names", None)
        if not names:
            names = next((r.get("site_names") for r in self.records.values() if r.get("site_names")), None)
        return [str(n) for n in (names if isinstance(names, list | tuple) else [])]

    @property
    def notebooks(self) -> list[str]:
        """The notebooks whose kernels are connected to this room (their paths, as the server named them)."""
        return sorted({str(r["notebook"]) for r in self.records.values() if isinstance(r.get("notebook"), str)})

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "kind": self.room_kind,
            "label": self.label,
            "site_names": self.site_names,
            "dataset": self.dataset,
            "created": self.created,
            # where a demo room keeps its keys, ledgers and process logs (on this server's machine)
            "state_dir": str(getattr(self.embedded, "state_dir", "") or "") or None,
            "origin": self.origin,
            # the notebooks (kernels) connected to this room, and the line that connects one more
            "notebooks": self.notebooks,
            "kernels": len(self.records),
            "room_id": str(getattr(self.room, "room_id", "") or "") or None,
            "attach": f"room = fedjax_room.attach({self.id!r})",
        }


def _default_connect(url: str, key: str, **options: Any) -> Any:
    from fedjax_room import analyst

    return analyst.connect(url, key=key, **options)


def _default_start_room(**kwargs: Any) -> Any:
    from fedjax_room.sim.demo import start_room

    return start_room(**kwargs)


class RoomRegistry:
    """The rooms this server is connected to; every method returns JSON-able data."""

    def __init__(
        self,
        *,
        connect_fn: Callable[..., Any] = _default_connect,
        start_room_fn: Callable[..., Any] = _default_start_room,
        state_root: str | None = None,
        presence_dir: str | Path | None = None,
        root_dir: str | Path | None = None,
    ) -> None:
        from fedjax_room.jupyter.server.notebook_rooms import NotebookRooms

        self.connect_fn = connect_fn
        #: the kernels' rooms (and this server's records for fedjax_room.attach), in the presence folder
        self.notebook_rooms = NotebookRooms(Path(presence_dir) if presence_dir is not None else None, root_dir)
        self.start_room_fn = start_room_fn
        self.state_root = state_root
        self._rooms: dict[str, RoomEntry] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        #: Calls in flight that later identical requests share (see handlers.BaseHandler.call).
        self.inflight: dict[str, Any] = {}
        #: Where changes go as JSON messages (the websocket hub sets it; called from any thread).
        self.listener: Callable[[dict[str, Any]], None] | None = None

    def _emit(self, message: dict[str, Any]) -> None:
        listener = self.listener
        if listener is not None:
            try:
                listener(message)
            except Exception:  # a listener must not break the call that changed something
                pass

    def _emit_rooms(self) -> None:
        self._emit({"type": "rooms", **self.status()})

    # -- rooms -------------------------------------------------------------------------------

    def _add(self, **fields: Any) -> RoomEntry:
        with self._lock:
            entry = RoomEntry(id=f"room-{next(self._ids)}", **fields)
            self._rooms[entry.id] = entry
        self.notebook_rooms.publish(entry)
        self._emit_rooms()
        return entry

    def discover(self) -> bool:
        """Show the rooms this server's notebooks are connected to (:mod:`.notebook_rooms`); True if changed."""
        changed = self.notebook_rooms.sync(self)
        if changed:
            self._emit_rooms()
        return changed

    def add_notebook_room(self, name: str, record: Mapping[str, Any]) -> RoomEntry:
        """Connect the server's own analyst client to a kernel's room (``record``: analyst/presence.py)."""
        options: dict[str, Any] = {}
        for option in ("coordinator_key", "tls_ca"):
            if isinstance(record.get(option), str):
                options[option] = record[option]
        if record.get("insecure") is True:
            options["insecure"] = True
        room = self.connect_fn(record["url"], record["key"], **options)
        dataset = record.get("dataset")
        return self._add(
            url=record["url"],
            kind="remote",
            room=room,
            key=record["key"],
            dataset=dataset if isinstance(dataset, str) else None,
            origin="notebook",
            records={name: dict(record)},
            coordinator_key=options.get("coordinator_key"),
            tls_ca=options.get("tls_ca"),
            insecure=bool(options.get("insecure")),
        )

    def forget(self, room_id: str) -> None:
        """Drop a notebook's room (its kernel closed it): close this server's connection, stop nothing else."""
        with self._lock:
            entry = self._rooms.pop(room_id, None)
        if entry is not None:
            self.notebook_rooms.unpublish(room_id)
            entry.embedded = None  # never the server's to stop
            self._close(entry)

    def connect(self, url: str, key: str) -> dict[str, Any]:
        """Connect to a coordinator at ``url`` with the analyst key at path ``key``."""
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("give the coordinator's URL, e.g. {'url': 'ws://host:8765', 'key': 'analyst.key'}")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError("give the path of the analyst's private key on this server, e.g. 'analyst.key'")
        room = self.connect_fn(url.strip(), key.strip())
        return self._add(url=url.strip(), kind="remote", room=room, key=key.strip()).info()

    def start_demo(self, sites: Any = 3, dataset: Any = "digits", non_iid: Any = None) -> dict[str, Any]:
        """Start an embedded demo room (``start_room``) and connect to it as its analyst."""
        if isinstance(sites, bool) or not isinstance(sites, int) or not 1 <= sites <= MAX_DEMO_SITES:
            raise ConfigError(f"'sites' must be a whole number from 1 to {MAX_DEMO_SITES}, not {sites!r}")
        if dataset not in DATASETS:
            raise ConfigError(f"'dataset' must be one of {', '.join(DATASETS)}, not {dataset!r}")
        kwargs: dict[str, Any] = {"sites": sites, "dataset": dataset}
        if non_iid is not None:
            if isinstance(non_iid, bool) or not isinstance(non_iid, int | float) or non_iid <= 0:
                raise ConfigError(f"'non_iid' is a Dirichlet alpha > 0 (or null for IID), not {non_iid!r}")
            kwargs["non_iid"] = float(non_iid)
        embedded = self.start_room_fn(**kwargs)
        try:
            room = embedded.connect()
        except BaseException:
            embedded.stop()
            raise
        return self._add(
            url=str(getattr(embedded, "url", "")),
            kind="demo",
            room=room,
            key=str(getattr(embedded, "analyst_key", "") or ""),
            embedded=embedded,
            dataset=dataset,
            coordinator_key=str(getattr(embedded, "manifest_path", "") or "") or None,
        ).info()

    def get(self, room_id: str) -> RoomEntry:
        with self._lock:
            entry = self._rooms.get(room_id)
        if entry is None:
            raise UnknownRoomError(
                f"no room {room_id!r} is connected to this server; GET /fedjax-room/status lists them"
            )
        return entry

    def entries(self) -> list[RoomEntry]:
        with self._lock:
            return list(self._rooms.values())

    def remove(self, room_id: str) -> None:
        """Close the connection (and stop the embedded room, for a demo). A notebook's room is not the
        sidebar's to close: ``%room stop`` or ``room.close()`` in that notebook does it."""
        entry = self.get(room_id)
        if entry.origin == "notebook":
            where = ", ".join(entry.notebooks) or "the notebook that opened it"
            raise ConfigError(f"{room_id} belongs to {where}; close it there (`%room stop` or `room.close()`)")
        with self._lock:
            self._rooms.pop(room_id, None)
        self.notebook_rooms.unpublish(room_id)
        self._close(entry)
        self._emit_rooms()

    @staticmethod
    def _close(entry: RoomEntry) -> None:
        for stop in list(entry.unsubscribe.values()):
            stop()
        entry.unsubscribe.clear()
        for obj, method in ((entry.room, "close"), (entry.embedded, "stop")):
            if obj is not None:
                try:
                    getattr(obj, method)()
                except Exception:  # keep going: the other one must still be released
                    pass

    def close_all(self) -> None:
        with self._lock:
            entries, self._rooms = list(self._rooms.values()), {}
        for entry in entries:
            self.notebook_rooms.unpublish(entry.id)
            if entry.origin == "notebook":
                entry.embedded = None
            self._close(entry)

    # -- what the sidebar shows ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        from fedjax_room._version import __version__

        entries = self.entries()
        active = any(_get(run, "status") in ACTIVE_STATUSES for e in entries for run in list(e.runs.values()))
        return {
            "version": __version__,
            "rooms": [e.info() for e in entries],
            "active": active,
            "notices": self.notebook_rooms.notices(),
        }

    def sites(self, room_id: str) -> list[dict[str, Any]]:
        rows = []
        for site in self.get(room_id).room.sites():
            row = jsonable(site)
            if not isinstance(row, dict):
                row = {"name": str(row)}
            row.setdefault("name", "?")
            row.setdefault("status", "unknown")
            row.setdefault("record_count", "?")
            row["schema_summary"] = schema_summary(row.get("schema"))
            row["policy_summary"] = policy_summary(row.get("policy"))
            row["policy_items"] = policy_items(row.get("policy"))
            rows.append(row)
        return rows

    def runs(self, room_id: str) -> list[dict[str, Any]]:
        """Every run the room knows; round history, refusals and errors for those this server follows.

        A run is followed (watched, its events pushed to the sidebars) while it is live, when it was started
        here, or when a sidebar asked for it (:meth:`watch`); the others are their one-line summary
        (``"followed": false``), so listing a room with many old runs costs one request, not one per run.
        """
        entry = self.get(room_id)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for summary in entry.room.runs():
            run_id = str(_get(summary, "id"))
            seen.add(run_id)
            if run_id not in entry.runs and _get(summary, "status") in ACTIVE_STATUSES:
                self._handle(entry, run_id)
            out.append(self._run_dict(entry, run_id, summary))
        for run_id in list(entry.runs):
            if run_id not in seen:  # started here, not yet listed by the coordinator
                out.append(self._run_dict(entry, run_id, None))
        return out

    def _handle(self, entry: RoomEntry, run_id: str) -> Any:
        """The followed run ``run_id`` (watched now if it was not), or None if the room has no such run."""
        run = entry.runs.get(run_id)
        if run is not None:
            return run
        lookup = getattr(entry.room, "run", None)  # a handle on a run started elsewhere, if the API offers one
        if callable(lookup):
            try:
                run = lookup(run_id)
            except (FedRoomError, KeyError, LookupError):
                return None
            if run is not None:
                self._follow(entry, run_id, run)
        return run

    def _follow(self, entry: RoomEntry, run_id: str, run: Any) -> None:
        """Keep ``run`` and forward each of its events (``Run.subscribe``) as a ``run`` message."""
        entry.runs[run_id] = run
        subscribe = getattr(run, "subscribe", None)
        if run_id in entry.unsubscribe or not callable(subscribe):
            return

        def on_event(event: Any) -> None:
            from fedjax_room.analyst import events

            data = events.to_json(event) if isinstance(event, events.RunEvent) else jsonable(event)
            self._emit({"type": "run", "room": entry.id, "run": self._run_dict(entry, run_id, None), "event": data})

        stop = subscribe(on_event)
        entry.unsubscribe[run_id] = stop if callable(stop) else (lambda: None)

    def watch(self, room_id: str, run_id: str) -> dict[str, Any]:
        """Follow run ``run_id`` (a sidebar asked for its details); answers the run."""
        from fedjax_room.protocol.fields import is_id

        entry = self.get(room_id)
        if not is_id(run_id):
            raise ConfigError(f"{run_id!r} is not a run id")
        if self._handle(entry, run_id) is None:
            raise ConfigError(f"no run {run_id!r} in this room")
        return self._run_dict(entry, run_id, None)

    def unwatch(self, room_id: str, run_id: str) -> None:
        """Stop following ``run_id`` unless it was started here or is still live (no sidebar wants it)."""
        try:
            entry = self.get(room_id)
        except UnknownRoomError:
            return
        run = entry.runs.get(run_id)
        if run is None or run_id in entry.started or _get(run, "status") in ACTIVE_STATUSES:
            return
        entry.runs.pop(run_id, None)
        stop = entry.unsubscribe.pop(run_id, None)
        if stop is not None:
            stop()

    def _run_dict(self, entry: RoomEntry, run_id: str, summary: Any) -> dict[str, Any]:
        run = entry.runs.get(run_id)  # followed runs only: looking a run up here must not start watching it
        history = [jsonable(r) for r in (list(_get(run, "history", None) or []) if run is not None else [])]
        history = [h for h in history if isinstance(h, dict) and isinstance(h.get("round"), int)]
        for h in history:
            for name in ("sites", "dropped"):
                value = h.get(name)
                h[name] = (
                    [str(v) for v in value]
                    if isinstance(value, list)
                    else list(value)
                    if isinstance(value, dict)
                    else []
                )
            h["epsilon"] = {k: v for k, v in (h.get("epsilon") or {}).items() if isinstance(v, int | float)}
        status = _get(run, "status", None) if run is not None else None
        status = status or _get(summary, "status", "pending")
        rounds_done = max(
            [int(_get(summary, "rounds_done", 0) or 0), int(_get(run, "rounds_done", 0) or 0)]
            + [h["round"] for h in history]
        )
        rounds = int(_get(summary, "rounds", 0) or 0) or int(getattr(run, "rounds_total", 0) or 0)
        if not rounds and run is not None:
            config = getattr(run, "config", None)
            if isinstance(config, Mapping):
                rounds = int(config.get("rounds", 0) or 0)
        refusals = jsonable(list(_get(run, "refusals", None) or [])) if run is not None else []
        error = _get(run, "error", None) if run is not None else None
        waiting = _get(run, "waiting", None) if run is not None else None
        waiting = waiting if waiting is not None else _get(summary, "waiting", None)
        return {
            "id": run_id,
            "spec_hash": str(_get(summary, "spec_hash", "") or _get(_get(run, "spec", None), "hash", "") or ""),
            "status": str(status),
            "rounds_done": rounds_done,
            "rounds": rounds,
            "history": sorted(history, key=lambda h: h["round"]),
            "refusals": [
                r if isinstance(r, dict) else {"site": "?", "reason": "", "message": str(r)} for r in refusals
            ],
            "error": None if error is None else str(error),
            "started_here": run_id in entry.started,
            "followed": run is not None,
            # "waiting for approval by <site>": sites whose data owner has not approved the model yet
            "waiting": [str(s) for s in (waiting or ())] if isinstance(waiting, list | tuple) else [],
            # which protections the run has (protocol.config.protections), when its config is known here
            "protections": protections(config) if isinstance(config := getattr(run, "config", None), Mapping) else [],
        }

    def start_run(self, room_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start a run from a JSON body: ``spec`` (a model spec dict) or ``model`` (a family name), options."""
        from fedjax_room.models import ModelSpec, spec_from_schema

        entry = self.get(room_id)
        if not isinstance(body, Mapping):
            raise ConfigError("the body must be a JSON object such as {'model': 'logistic', 'rounds': 5}")
        unknown = set(body) - set(TRAIN_OPTIONS) - {"spec", "model", "hidden", "room"}
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(sorted(unknown))}; allowed: spec, model, hidden, "
                + ", ".join(TRAIN_OPTIONS)
            )
        if body.get("spec") is not None:
            spec = ModelSpec.from_dict(body["spec"])
        else:
            family = body.get("model", "logistic")
            sites = entry.room.sites()
            if not sites:
                raise ConfigError("the room has no sites yet, so no schema to build a model for; give a 'spec'")
            if family not in FAMILIES:
                names = f"{', '.join(FAMILIES[:-1])} or {FAMILIES[-1]}"
                raise ConfigError(f"'model' must be {names} (or give a 'spec'), not {family!r}")
            hidden = body.get("hidden")
            if hidden is not None and (
                not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hidden)
            ):
                raise ConfigError(f"'hidden' must be a list of layer widths such as [64, 32], not {hidden!r}")
            # the class count and input shape come from the sites' schema (refused if it does not declare them)
            spec = spec_from_schema(jsonable(_get(sites[0], "schema")), family, hidden=hidden)
        options: dict[str, Any] = {}
        for name, kind in TRAIN_OPTIONS.items():
            value = body.get(name)
            if value is None:
                continue
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is str:
                ok = isinstance(value, str)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                if ok and not math.isfinite(float(value)):
                    ok = False
                if ok and kind is int:
                    ok = float(value).is_integer()
            if not ok:
                raise ConfigError(f"option {name!r} must be a {kind.__name__}, not {value!r}")
            options[name] = kind(value)
        run = entry.room.train(spec, **options)
        run_id = str(_get(run, "id"))
        entry.started.add(run_id)
        self._follow(entry, run_id, run)
        out = self._run_dict(entry, run_id, {"id": run_id, "rounds": options.get("rounds", 0)})
        self._emit({"type": "run", "room": entry.id, "run": out, "event": None})  # the sidebars show it at once
        return out

    def cancel_run(self, room_id: str, run_id: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Cancel one of this analyst's runs (``Run.cancel``); ``body`` may give a ``reason``. Answers the run."""
        from fedjax_room.protocol.fields import is_id

        entry = self.get(room_id)
        if not is_id(run_id):
            raise ConfigError(f"{run_id!r} is not a run id")
        reason = (body or {}).get("reason", "")
        if not isinstance(reason, str):
            raise ConfigError("'reason' must be a string")
        run = self._handle(entry, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id!r} in this room")
        run.cancel(reason)
        return self._run_dict(entry, run_id, None)

    def budget(self, room_id: str) -> list[dict[str, Any]]:
        from fedjax_room.analyst.views import records

        rows = []
        report = self.get(room_id).room.budget()
        sites = getattr(report, "sites", None)  # a BudgetReport: each site's composition note
        sites = sites if isinstance(sites, dict) else {}
        notes = {str(k): getattr(v, "composition_note", "") for k, v in sites.items()}
        if getattr(report, "sites", None) == {}:
            return []  # no site has reported yet: no row (not one named "sites")
        for row in records(report):
            row = jsonable(row)
            site = str(row.get("site") or row.get("name") or "?")
            runs = row.get("runs")
            rows.append(
                {
                    "site": site,
                    "epsilon_spent": row.get("epsilon_spent", row.get("epsilon")),
                    "epsilon_cap": row.get("epsilon_cap", row.get("cap")),
                    "delta": row.get("delta"),
                    "remaining": row.get("remaining"),
                    # each run's own epsilon, and the line saying composition is tighter than their sum
                    "runs": dict(runs) if isinstance(runs, dict) else {},
                    "note": notes.get(site, ""),
                }
            )
        return rows

    def audit(self, room_id: str, last: int = 20) -> list[dict[str, Any]]:
        if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= 1000:
            raise ConfigError(f"'last' must be a whole number from 1 to 1000, not {last!r}")
        records = jsonable(list(self.get(room_id).room.audit(last=last)))
        return [r if isinstance(r, dict) else {"kind": "?", "value": r} for r in records]

    def query(self, room_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /rooms/<id>/query``: one DP query (``Room.query``); answers ``to_dict()`` plus ``ci`` at ``level``.

        The body is checked before the room is asked (:func:`query_keywords`); a refusal is the room's typed
        error, unchanged. After an answer the sidebars get the sites' budgets (the query spent from them).
        """
        entry = self.get(room_id)
        keywords, level = query_keywords(body)
        result = entry.room.query(**keywords)
        data = jsonable(result.to_dict() if hasattr(result, "to_dict") else result)
        if not isinstance(data, dict):
            raise ConfigError("the room answered the query with something that is not a result")
        lo, hi = result.ci(level)
        data["ci"] = {"level": float(level), "lo": jsonable(lo), "hi": jsonable(hi)}
        data.setdefault("kind", keywords["kind"])
        try:
            self._emit({"type": "budget", "room": entry.id, "budget": self.budget(room_id)})
        except Exception:  # the answer stands; the sidebars read the budget on their next refresh
            pass
        return data

    def snapshot(self, room_id: str, audit_last: int = 15) -> dict[str, Any]:
        """Everything the sidebar shows for one room, in one call; a part that fails is named in ``errors``."""
        entry = self.get(room_id)
        out: dict[str, Any] = {"room": entry.info(), "sites": [], "runs": [], "budget": [], "audit": [], "errors": {}}
        parts: dict[str, Callable[[], Any]] = {
            "sites": lambda: self.sites(room_id),
            "runs": lambda: self.runs(room_id),
            "budget": lambda: self.budget(room_id),
            "audit": lambda: self.audit(room_id, audit_last),
        }
        for name, fn in parts.items():
            try:
                out[name] = fn()
            except Exception as exc:  # one failing part must not blank the whole panel
                out["errors"][name] = _message(exc)
        out["active"] = any(r["status"] in ACTIVE_STATUSES for r in out["runs"])
        return out
