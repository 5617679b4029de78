"""``%room``, ``%%room train|estimate|tune`` and ``%%room query``: IPython magics over the analyst API, and nothing
more.

Each magic parses its arguments with :mod:`fedjax_room.jupyter.args` (pure), calls one method of the
analyst API (``fedjax_room.connect``, ``fedjax_room.sim.demo.start_room``,
``Room.sites/runs/budget/audit/train/estimate/tune/query``) and shows the result with
:mod:`fedjax_room.jupyter.display`, a widget or, for a query, its plot (:mod:`fedjax_room.jupyter.query_plots`:
error bars at the result's interval). Any :class:`~fedjax_room.errors.FedRoomError` (bad arguments, a refusal, a
budget that would be exceeded) and any failure to reach the room becomes one line — IPython's ``UsageError: ...``
— never a traceback; the cell still counts as failed, so papermill stops on it.

The connected ``Room`` is put in the user namespace as ``room`` (``--as NAME`` to rename), a started run as
``run``, a tuning session's best trial as ``tune`` and a query's result as ``query``, so Python cells can go on
from there.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from fedjax_room.analyst.views import records
from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.jupyter import args as room_args
from fedjax_room.jupyter.dashboard import RunDashboard, field
from fedjax_room.jupyter.display import Table

__all__ = ["RoomMagics", "one_line"]

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _line_cell_magic(name: str) -> Callable[[_Method], _Method]:
    """IPython's ``@line_cell_magic(name)``, typed (IPython types both forms of the decorator as one union)."""
    return cast(Callable[[_Method], _Method], line_cell_magic(name))


def one_line(exc: BaseException) -> str:
    """The message a magic shows for an error: class name (unless a usage mistake) and message, one line."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = " ".join(str(message).split())
    if isinstance(exc, ConfigError) and message.startswith("%"):
        return message
    return f"{type(exc).__name__}: {message}"


def _default_connect(url: str, key: str, **options: Any) -> Any:
    from fedjax_room import analyst

    return analyst.connect(url, key=key, **options)


def _default_start_room(**kwargs: Any) -> Any:
    from fedjax_room.sim.demo import start_room

    return start_room(**kwargs)


def _total_rounds(run: Any, options: dict[str, Any]) -> int:
    if options.get("rounds"):
        return int(options["rounds"])
    for name in ("num_rounds", "total_rounds"):
        value = getattr(run, name, None)
        if isinstance(value, int):
            return value
    config = getattr(run, "config", None)
    if isinstance(config, dict) and isinstance(config.get("rounds"), int):
        return int(config["rounds"])
    return 0


@magics_class
class RoomMagics(Magics):
    """The ``%room`` line magic and ``%%room train`` cell magic; holds the connected room."""

    #: How to connect and how to start an embedded room (swappable in tests).
    connect_fn: Callable[..., Any] = staticmethod(_default_connect)
    start_room_fn: Callable[..., Any] = staticmethod(_default_start_room)

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.room: Any = None
        self.embedded: Any = None
        self.room_var: str | None = None
        self.dashboard: RunDashboard | None = None
        self.run: Any = None
        self._last_spec: Any = None  # the last spec %%room train ran (what %room estimate uses without --spec)
        self._atexit = False

    # ---- entry point ----------------------------------------------------------------------------
    @_line_cell_magic("room")  # the method has its own name: self.room is the connected room
    def room_magic(self, line: str, cell: str | None = None) -> Any:
        """Work with a fedjax_room clean room. ``%room --help`` lists the commands."""
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except (FedRoomError, OSError, TimeoutError) as exc:
            raise UsageError(one_line(exc)) from None

    def _line(self, line: str) -> Any:
        parsed = room_args.parse_line(line)
        if isinstance(parsed, room_args.HelpArgs):
            print(room_args.help_text(parsed.topic), end="")
            return None
        if isinstance(parsed, room_args.DemoArgs):
            return self.demo(parsed)
        if isinstance(parsed, room_args.ConnectArgs):
            return self.connect(parsed)
        if isinstance(parsed, room_args.AttachArgs):
            return self.attach(parsed)
        if parsed.name == "stop":
            return self.stop()
        if isinstance(parsed, room_args.WatchArgs):
            return self.watch(parsed)
        if isinstance(parsed, room_args.CancelArgs):
            return self.cancel(parsed)
        if isinstance(parsed, room_args.QueryArgs):
            return self.query(parsed)
        if isinstance(parsed, room_args.EstimateArgs):
            return self.estimate(self._spec_of(parsed.spec_var), parsed)
        room = self.require_room(parsed.name)
        if parsed.name == "sites":
            return Table(room.sites(), "sites")
        if parsed.name == "runs":
            return Table(room.runs(), "runs")
        if parsed.name == "budget":
            report = room.budget()
            return Table(records(report), "budget", source=report)
        if isinstance(parsed, room_args.AuditArgs):
            entries = room.audit(last=parsed.last)
            return Table(entries, "audit")
        if parsed.name == "launch":
            from fedjax_room.jupyter.launch import LaunchForm

            form = LaunchForm(room, on_launch=self._launched)
            return form
        raise ConfigError(f"%room: unhandled command {parsed.name!r}")  # pragma: no cover

    def _cell(self, line: str, cell: str) -> Any:
        tokens = line.split()
        if tokens and tokens[0] == "query":
            query = room_args.parse_query_cell(line, cell)
            if isinstance(query, room_args.HelpArgs):
                print(room_args.help_text("query"), end="")
                return None
            return self.query(query, cell=True)
        # the cell magics whose body is the model spec: how each parses its line, and what runs it
        spec_cells: dict[str, tuple[Callable[[str], Any], Callable[[Any, Any], Any]]] = {
            "train": (room_args.parse_train_line, self.train),
            "estimate": (room_args.parse_estimate_line, self.estimate),
            "tune": (room_args.parse_tune_line, self.tune),
        }
        if not tokens or tokens[0] not in spec_cells:
            raise ConfigError(
                "%%room: the only cell magics are `%%room train|estimate|tune [options]` (model spec as the body) "
                "and `%%room query [options]` (one query per line)"
            )
        parse, handle = spec_cells[tokens[0]]
        parsed = parse(line)
        if isinstance(parsed, room_args.HelpArgs):
            print(room_args.help_text(tokens[0]), end="")
            return None
        return handle(room_args.parse_spec_body(cell), parsed)

    # ---- commands -------------------------------------------------------------------------------
    def require_room(self, command: str) -> Any:
        if self.room is None:
            raise ConfigError(
                f"%room {command}: not connected to a room; run `%room demo` or `%room connect URL --key PATH` first"
            )
        return self.room

    def _publish(self, var: str, value: Any) -> None:
        if self.shell is not None:
            self.shell.user_ns[var] = value

    def demo(self, parsed: room_args.DemoArgs) -> None:
        self.stop(quiet=True)
        kwargs: dict[str, Any] = {"sites": parsed.sites, "dataset": parsed.dataset}
        if parsed.non_iid is not None:
            kwargs["non_iid"] = parsed.non_iid
        if parsed.state_dir is not None:
            kwargs["state_dir"] = parsed.state_dir
        embedded = self.start_room_fn(**kwargs)
        self.embedded = embedded
        self._register_atexit()
        try:
            self.room = embedded.connect()
        except BaseException:
            self.stop(quiet=True)
            raise
        self.room_var = parsed.var
        self._publish(parsed.var, self.room)
        names = ", ".join(str(n) for n in (getattr(embedded, "site_names", None) or []))
        print(
            f"Demo room at {getattr(embedded, 'url', '?')}: {parsed.sites} sites ({names}) with {parsed.dataset} data; "
            f"connected as analyst. The Room is `{parsed.var}`; `%room stop` shuts it down."
        )

    def connect(self, parsed: room_args.ConnectArgs) -> None:
        options = {"coordinator_key": parsed.coordinator_key} if parsed.coordinator_key else {}
        if parsed.tls_ca:
            options["tls_ca"] = parsed.tls_ca
        room = self.connect_fn(parsed.url, parsed.key, **options)
        self.stop(quiet=True)
        self.room = room
        self.room_var = parsed.var
        self._publish(parsed.var, room)
        print(f"Connected to {parsed.url}. The Room is `{parsed.var}`.")

    def attach(self, parsed: room_args.AttachArgs) -> None:
        """``%room attach room-1``: the room the Clean Room sidebar shows (fedjax_room.analyst.attach)."""
        from fedjax_room.analyst.attach import attach

        room = attach(parsed.room_id)
        self.stop(quiet=True)
        self.room = room
        self.room_var = parsed.var
        self._publish(parsed.var, room)
        print(f"Attached to {parsed.room_id} ({room.url}). The Room is `{parsed.var}`.")

    def stop(self, *, quiet: bool = False) -> None:
        """Close the connection and stop an embedded room, if any."""
        room, embedded = self.room, self.embedded
        self.room, self.embedded = None, None
        errors = []
        for obj, method in ((room, "close"), (embedded, "stop")):
            if obj is not None:
                try:
                    getattr(obj, method)()
                except Exception as exc:  # keep going: the other one must still be released
                    errors.append(one_line(exc))
        if self.shell is not None and self.room_var and self.shell.user_ns.get(self.room_var) is room:
            self.shell.user_ns.pop(self.room_var, None)
        if not quiet:
            what = "stopped the demo room" if embedded is not None else "disconnected" if room is not None else None
            print(f"%room: {what}." if what else "%room: no room to stop.")
            if errors:
                raise ConfigError("; ".join(errors))

    def _register_atexit(self) -> None:
        if not self._atexit:
            atexit.register(self.stop, quiet=True)
            self._atexit = True

    def _caps(self) -> dict[str, float]:
        caps: dict[str, float] = {}
        try:
            report = self.room.budget()
        except Exception:  # the gauges fall back to the target epsilon
            return caps
        for row in records(report):
            site, cap = row.get("site") or row.get("name"), row.get("epsilon_cap", row.get("cap"))
            if site and isinstance(cap, int | float) and cap > 0:
                caps[str(site)] = float(cap)
        return caps

    def _spec_of(self, var: str | None) -> Any:
        """The model spec of ``%room estimate``: the variable ``var``, or the last spec ``%%room train`` ran."""
        if var is None:
            spec = self._last_spec
            if spec is None:
                raise ConfigError(
                    "%room estimate: give --spec VAR (a ModelSpec or dict in the notebook), or use "
                    "`%%room estimate [options]` with the model spec as the cell body"
                )
            return spec
        namespace = getattr(self.shell, "user_ns", None) or {}
        if var not in namespace:
            raise ConfigError(f"%room estimate: no variable {var!r} in the notebook")
        return namespace[var]

    def estimate(self, spec: Any, parsed: room_args.EstimateArgs) -> Any:
        """Each site's planned epsilon and verdict for the run, nothing spent (``room.estimate``)."""
        report = self.require_room("estimate").estimate(spec, **parsed.options)
        return Table(records(report), "estimate", source=report)

    def train(self, spec: Any, parsed: room_args.TrainArgs) -> Any:
        room = self.require_room("train")
        self._last_spec = spec
        run = room.train(spec, **parsed.options)
        self.run = run
        self._publish(parsed.var, run)
        if parsed.dashboard:
            # The live dashboard is the cell's output; returning the run too would print a second, static
            # summary frozen at "pending" under it. The run is bound to ``run`` (or ``--as``) either way.
            self._show_dashboard(run, parsed.options)
            return None
        return run

    def tune(self, spec: Any, parsed: room_args.TuneArgs) -> Any:
        """A tuning session (``room.tune``): blocks until the coordinator publishes the best trial, which it binds
        to ``tune`` (or ``--as``) and shows; nothing of the other trials reaches the notebook."""
        room = self.require_room("tune")
        self._last_spec = spec
        print(
            f"Tuning over {', '.join(parsed.space)} (a random number of trials, mean {parsed.trials}); only the best "
            "trial will be released ...",
            flush=True,
        )
        result = room.tune(
            spec, parsed.space, trials=parsed.trials, shape=parsed.shape, metric=parsed.metric, **parsed.options
        )
        self.run = getattr(result, "run", None)
        self._publish(parsed.var, result)
        return result

    def _show_dashboard(self, run: Any, options: dict[str, Any]) -> RunDashboard:
        caps = self._caps()
        dashboard = RunDashboard(
            run_id=str(field(run, "id", "")),
            rounds=_total_rounds(run, options),
            sites=caps.keys(),
            caps=caps,
            target_epsilon=options.get("target_epsilon") or (getattr(run, "config", None) or {}).get("target_epsilon"),
        )
        dashboard.room = self.room  # at the run's end it shows the budget's composition lines
        display(dashboard)
        dashboard.attach(run)
        self.dashboard = dashboard
        return dashboard

    def watch(self, parsed: room_args.WatchArgs) -> None:
        room = self.require_room("watch")
        run = room.run(parsed.run_id)
        self.run = run
        self._publish(parsed.var, run)
        self._show_dashboard(run, {})

    def cancel(self, parsed: room_args.CancelArgs) -> None:
        """``%room cancel RUN_ID``: stop one of your runs (``Run.cancel``); the room records who and why."""
        room = self.require_room("cancel")
        run = room.run(parsed.run_id)
        run.cancel(parsed.reason)
        print(f"{parsed.run_id} cancelled: {run.status}")

    def query(self, parsed: room_args.QueryArgs, *, cell: bool = False) -> Any:
        """``%room query ...``: ``Room.query`` with the parsed keywords; shows its plot, returns the result.

        A ``%%room query`` cell runs its queries in order (one failing stops the rest: what was answered
        stays bound), shows each result's table and plot, and binds the list of results.
        """
        from fedjax_room.jupyter.query_plots import plot_query

        room = self.require_room("query")
        results: list[Any] = []
        if cell:
            self._publish(parsed.var, results)
        for keywords in parsed.queries:
            if parsed.estimate:  # --estimate: each site's verdict and ledger after, nothing spent
                report = room.estimate_query(**keywords)
                results.append(Table(records(report), "estimate", source=report))
                if cell:
                    display(results[-1])
                continue
            result = room.query(**keywords)
            results.append(result)
            if cell:
                display(result)
            if parsed.plot:
                display(plot_query(result))
        if cell:
            return None
        self._publish(parsed.var, results[0])
        return results[0]

    def _launched(self, run: Any, dashboard: RunDashboard) -> None:
        self.dashboard, self.run = dashboard, run
        self._publish("run", run)
