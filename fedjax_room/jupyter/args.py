"""Pure argument parsing for the ``%room`` line magic and the ``%%room train`` cell magic.

Nothing here touches IPython or a room: :func:`parse_line` turns the text after ``%room`` into one
typed command object, and :func:`parse_spec_body` turns a ``%%room train`` cell body (YAML or JSON)
into a validated :class:`~fedjax_room.models.ModelSpec`. Every mistake raises
:class:`~fedjax_room.errors.ConfigError` with a one-line message that says what to type instead.

Commands::

    %room demo [--sites N] [--dataset D] [--non-iid ALPHA] [--state-dir DIR] [--as NAME]
    %room connect URL --key PATH [--coordinator-key PATH] [--tls-ca PATH] [--as NAME]
    %room sites | runs | budget | launch | stop
    %room audit [--last N]
    %room watch RUN_ID [--as NAME]
    %room cancel RUN_ID [--reason TEXT]
    %room query KIND [FEATURE] epsilon=E [bins=..] [bounds=lo,hi] [by=.. keys=..] [sites=..] [secure] [--as NAME]
    %%room query [defaults] [--as NAME] [--no-plot]   (cell body: one query per line)
    %room query ... --estimate   (either form: each site's verdict and ledger after; nothing spent)
    %%room train [--RUN-OPTION VALUE ...] [--as NAME] [--no-dashboard]
    %%room tune --trials K --search NAME=LO:HI|V1,V2 [--search ...] [--shape S] [--metric accuracy|loss]
                [--RUN-OPTION VALUE ...] [--as NAME]   (room.tune: only the best trial is released)

``%%room train`` takes every run option of :class:`~fedjax_room.protocol.config.RunConfig` as a flag
(``--target-epsilon 2``, ``--secure-aggregation``/``--no-secure-aggregation``, ``--exclude-below none``),
generated from its declaration (:func:`fedjax_room.protocol.options.add_run_options`); one not given takes
RunConfig's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from typing import TYPE_CHECKING, Any

import yaml

from fedjax_room.data.builtin import BUILTIN_DATASETS as DATASETS
from fedjax_room.errors import ConfigError, ModelSpecError
from fedjax_room.protocol.config import AGGREGATORS, SERVER_OPTIMIZERS
from fedjax_room.protocol.options import add_run_options, given_options

if TYPE_CHECKING:
    from fedjax_room.models import ModelSpec

__all__ = [
    "AGGREGATORS",
    "COMMANDS",
    "DATASETS",
    "SERVER_OPTIMIZERS",
    "AuditArgs",
    "AttachArgs",
    "CancelArgs",
    "ConnectArgs",
    "EstimateArgs",
    "TuneArgs",
    "QueryArgs",
    "DemoArgs",
    "HelpArgs",
    "SimpleArgs",
    "TrainArgs",
    "WatchArgs",
    "help_text",
    "parse_estimate_line",
    "parse_line",
    "parse_query_cell",
    "parse_spec_body",
    "parse_train_line",
    "parse_tune_line",
]

# AGGREGATORS and SERVER_OPTIMIZERS are the room's own (fedjax_room.protocol.config), and DATASETS the built-in
# datasets an embedded demo room can serve (fedjax_room.data.builtin), re-exported here.

#: Every sub-command of ``%room``, with a one-line summary (in ``--help`` order).
COMMANDS: dict[str, str] = {
    "demo": "start an embedded room on loopback in the background and connect to it",
    "connect": "connect to a running room as an analyst",
    "attach": "connect to a room the Clean Room sidebar shows, by its id (room-1)",
    "sites": "the enrolled sites: schema, coarse record counts, status, policy",
    "runs": "the runs this room knows about",
    "budget": "privacy spent per site against its cap",
    "estimate": "what each site would plan and decide for a run, nothing spent (%room estimate --spec VAR "
    "[options], or %%room estimate [options] with the model spec as the body)",
    "audit": "the latest coordinator audit records",
    "launch": "a form that starts a run and opens its live dashboard",
    "watch": "a live dashboard for a run that is already going (yours or another analyst's)",
    "cancel": "cancel one of your runs (the sites stop; recorded in the room's audit log)",
    "stop": "disconnect (and stop an embedded room started by %room demo)",
    "query": "a differentially private query over the sites' data (count, histogram, mean, ...), with plots",
    "train": "(cell magic, %%room train) train the model spec in the cell body; shows a live dashboard",
    "tune": "(cell magic, %%room tune --trials K --search NAME=LO:HI|V1,V2 ...) hyperparameter search over the "
    "spec in the cell body; only the best trial is released, its whole cost accounted by the sites",
}

_DEFAULT_VAR = "room"


@dataclasses.dataclass(frozen=True)
class HelpArgs:
    """``%room --help`` or ``%room CMD --help``; ``topic`` is the command ('' for the overview)."""

    topic: str = ""
    name: str = "help"


@dataclasses.dataclass(frozen=True)
class DemoArgs:
    """``%room demo``: how many sites, which dataset, optional Dirichlet label skew."""

    sites: int = 3
    dataset: str = "digits"
    non_iid: float | None = None
    var: str = _DEFAULT_VAR
    state_dir: str | None = None
    name: str = "demo"


@dataclasses.dataclass(frozen=True)
class ConnectArgs:
    """``%room connect URL --key PATH [--coordinator-key PATH] [--tls-ca PATH]``."""

    url: str
    key: str
    var: str = _DEFAULT_VAR
    coordinator_key: str | None = None
    #: a CA bundle (or the coordinator's self-signed certificate) to trust for a wss:// room
    tls_ca: str | None = None
    name: str = "connect"


@dataclasses.dataclass(frozen=True)
class AttachArgs:
    """``%room attach ROOM_ID [--as NAME]``: the sidebar's room, by its id."""

    room_id: str
    var: str = _DEFAULT_VAR
    name: str = "attach"


@dataclasses.dataclass(frozen=True)
class AuditArgs:
    """``%room audit [--last N]``."""

    last: int = 20
    name: str = "audit"


@dataclasses.dataclass(frozen=True)
class WatchArgs:
    """``%room watch RUN_ID [--as NAME]``."""

    run_id: str
    var: str = "run"
    name: str = "watch"


@dataclasses.dataclass(frozen=True)
class CancelArgs:
    """``%room cancel RUN_ID [--reason TEXT]``."""

    run_id: str
    reason: str = ""
    name: str = "cancel"


@dataclasses.dataclass(frozen=True)
class SimpleArgs:
    """A command without options: ``sites``, ``runs``, ``budget``, ``launch`` or ``stop``."""

    name: str


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """``%%room train`` options. ``options`` holds only what the user set, as ``room.train`` keywords."""

    options: dict[str, Any]
    var: str = "run"
    dashboard: bool = True
    name: str = "train"


@dataclasses.dataclass(frozen=True)
class TuneArgs:
    """``%%room tune`` options: the search space and session (``room.tune``'s ``space``, ``trials``, ``shape``,
    ``metric``), and the fixed run options every trial shares (only what the user set)."""

    space: dict[str, Any]
    trials: int
    options: dict[str, Any]
    shape: float = 1.0
    metric: str = "accuracy"
    var: str = "tune"
    name: str = "tune"


@dataclasses.dataclass(frozen=True)
class EstimateArgs:
    """``%room estimate`` / ``%%room estimate``: the run options (``room.estimate`` keywords) and the variable
    holding the model spec (line form; None: the cell body, or the last spec trained)."""

    options: dict[str, Any]
    spec_var: str | None = None
    name: str = "estimate"


@dataclasses.dataclass(frozen=True)
class QueryArgs:
    """``%room query ...`` / ``%%room query``: the queries as ``Room.query`` keywords (``parse_query``'s)."""

    queries: tuple[dict[str, Any], ...]
    var: str = "query"
    plot: bool = True
    name: str = "query"
    #: ``--estimate``: ``room.estimate_query`` (what each site would do, nothing spent) instead of the query
    estimate: bool = False


Parsed = (
    HelpArgs
    | EstimateArgs
    | DemoArgs
    | ConnectArgs
    | AttachArgs
    | AuditArgs
    | WatchArgs
    | CancelArgs
    | SimpleArgs
    | TrainArgs
    | QueryArgs
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`ConfigError` instead of printing and exiting."""

    def _magic(self) -> str:
        name = self.prog.split()[-1]
        return f"%%room {name}" if name == "train" else f"%room {name}"

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self._magic()}: {message}; see `{self._magic()} --help`")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ConfigError(message or f"{self._magic()}: invalid arguments")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text!r}")
    return value


def _identifier(text: str) -> str:
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"expected a Python variable name, got {text!r}")
    return text


def _sub(name: str, description: str) -> _Parser:
    return _Parser(prog=name, description=description, add_help=False, allow_abbrev=False)


def _build(name: str) -> _Parser:
    """The argparse parser for one sub-command (used both for parsing and for ``--help``)."""
    parser = _sub(name, COMMANDS[name])
    if name == "demo":
        parser.add_argument("--sites", type=_positive_int, default=3, help="number of sites (default 3)")
        parser.add_argument("--dataset", choices=DATASETS, default="digits", help="built-in dataset (default digits)")
        parser.add_argument(
            "--non-iid",
            type=_positive_float,
            default=None,
            metavar="ALPHA",
            help="Dirichlet label skew",
        )
        parser.add_argument(
            "--state-dir", metavar="DIR", help="keep the room's state (keys, ledgers, audit) here and reuse it"
        )
        parser.add_argument("--as", dest="var", type=_identifier, default=_DEFAULT_VAR, help="variable for the Room")
    elif name == "connect":
        parser.add_argument("url", help="the room's URL, e.g. ws://127.0.0.1:8765")
        parser.add_argument("--key", required=True, metavar="PATH", help="the analyst's private key file")
        parser.add_argument(
            "--coordinator-key",
            metavar="PATH",
            default=None,
            help="the coordinator's coordinator.key.pub or the room manifest, to pin its key (default: the one "
            "beside --key, or $FEDJAX_ROOM_COORDINATOR_KEY)",
        )
        parser.add_argument(
            "--tls-ca",
            metavar="PATH",
            default=None,
            help="for a wss:// room: the CA bundle, or the coordinator's self-signed certificate, to trust "
            "(default: the system's CAs)",
        )
        parser.add_argument("--as", dest="var", type=_identifier, default=_DEFAULT_VAR, help="variable for the Room")
    elif name == "attach":
        parser.add_argument("room_id", help="the room's id, as the Clean Room sidebar shows it (room-1)")
        parser.add_argument("--as", dest="var", type=_identifier, default=_DEFAULT_VAR, help="variable for the Room")
    elif name == "audit":
        parser.add_argument("--last", type=_positive_int, default=20, metavar="N", help="how many records (20)")
    elif name == "watch":
        parser.add_argument("run_id", help="the run's id, as `%%room runs` lists it")
        parser.add_argument("--as", dest="var", type=_identifier, default="run", help="variable for the Run")
    elif name == "cancel":
        parser.add_argument("run_id", help="your run's id, as `%%room runs` lists it")
        parser.add_argument("--reason", default="", help="why (kept in the audit log)")
    elif name == "estimate":
        add_run_options(parser)  # the options of a run, as %%room train takes them
        parser.add_argument(
            "--spec", dest="spec_var", type=_identifier, default=None, metavar="VAR", help="variable holding the spec"
        )
    elif name == "tune":
        add_run_options(parser)  # the options every trial shares
        add = parser.add_argument
        add(
            "--search",
            action="append",
            required=True,
            metavar="NAME=LO:HI|V1,V2",
            help="a run option to search: a range LO:HI (log-uniform for rates and norms spanning 10x or more), or "
            "values V1,V2,... drawn uniformly; repeat for more options",
        )
        add("--trials", type=_positive_int, required=True, metavar="K", help="the mean number of trials (2 or more)")
        add("--shape", type=float, default=1.0, help="the trial count's distribution shape (1: geometric)")
        add("--metric", choices=("accuracy", "loss"), default="accuracy", help="what picks the best trial")
        add("--as", dest="var", type=_identifier, default="tune", help="variable for the result (default tune)")
    elif name == "train":
        add_run_options(parser)  # every RunConfig field, generated from its declaration
        add = parser.add_argument
        add("--as", dest="var", type=_identifier, default="run", help="variable for the Run (default run)")
        add("--no-dashboard", dest="dashboard", action="store_false", help="do not show the live dashboard")
    return parser


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise ConfigError(f"%room: cannot parse {line!r}: {exc}") from None


def _is_help(tokens: list[str]) -> bool:
    return any(t in ("-h", "--help") for t in tokens)


def parse_line(line: str) -> Parsed:
    """Parse the text after ``%room`` into one command object; raises :class:`ConfigError`."""
    tokens = _split(line)
    if not tokens or tokens[0] in ("-h", "--help", "help"):
        topic = tokens[1] if len(tokens) > 1 and tokens[1] in COMMANDS else ""
        return HelpArgs(topic=topic)
    command, rest = tokens[0], tokens[1:]
    if command not in COMMANDS:
        raise ConfigError(f"%room: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see %room --help)")
    if _is_help(rest):
        return HelpArgs(topic=command)
    if command == "query":
        return _parse_query_args(rest, "")
    if command == "estimate":
        ns = _build("estimate").parse_args(rest)
        return EstimateArgs(options=given_options(ns), spec_var=ns.spec_var)
    if command in ("train", "tune"):
        raise ConfigError(
            f"%room {command} is a cell magic: write `%%room {command} [options]` with the model spec below it"
        )
    if command in ("sites", "runs", "budget", "launch", "stop"):
        if rest:
            raise ConfigError(f"%room {command} takes no arguments, got {' '.join(rest)!r}")
        return SimpleArgs(name=command)
    ns = _build(command).parse_args(rest)
    if command == "demo":
        return DemoArgs(sites=ns.sites, dataset=ns.dataset, non_iid=ns.non_iid, var=ns.var, state_dir=ns.state_dir)
    if command == "attach":
        return AttachArgs(room_id=ns.room_id, var=ns.var)
    if command == "connect":
        return ConnectArgs(url=ns.url, key=ns.key, var=ns.var, coordinator_key=ns.coordinator_key, tls_ca=ns.tls_ca)
    if command == "watch":
        return WatchArgs(run_id=ns.run_id, var=ns.var)
    if command == "cancel":
        return CancelArgs(run_id=ns.run_id, reason=ns.reason)
    return AuditArgs(last=ns.last)


def _cell_options(command: str, line: str) -> argparse.Namespace | HelpArgs:
    """The parsed options of ``%%room COMMAND`` (``line``: the text after ``COMMAND``, or including it), or its
    help."""
    tokens = _split(line)
    if tokens and tokens[0] == command:
        tokens = tokens[1:]
    if _is_help(tokens):
        return HelpArgs(topic=command)
    return _build(command).parse_args(tokens)


def parse_estimate_line(line: str) -> EstimateArgs | HelpArgs:
    """Parse the options of ``%%room estimate`` (the text after ``estimate``, or including it)."""
    ns = _cell_options("estimate", line)
    if isinstance(ns, HelpArgs):
        return ns
    return EstimateArgs(options=given_options(ns), spec_var=ns.spec_var)


def parse_train_line(line: str) -> TrainArgs | HelpArgs:
    """Parse the options of ``%%room train`` (the text after ``train``, or including it)."""
    ns = _cell_options("train", line)
    if isinstance(ns, HelpArgs):
        return ns
    return TrainArgs(options=given_options(ns), var=ns.var, dashboard=ns.dashboard)


def _search_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, str | bool | int | float) else text


def _search_entry(item: str) -> tuple[str, Any]:
    """``NAME=LO:HI`` (a range, a tuple) or ``NAME=V1,V2,...`` (values, a list) of ``--search``."""
    name, sep, spec = item.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"%%room tune: --search takes NAME=LO:HI or NAME=V1,V2,..., got {item!r}")
    if ":" in spec:
        lo, _, hi = spec.partition(":")
        return name.strip(), (_search_value(lo.strip()), _search_value(hi.strip()))
    return name.strip(), [_search_value(v.strip()) for v in spec.split(",") if v.strip()]


def parse_tune_line(line: str) -> TuneArgs | HelpArgs:
    """Parse the options of ``%%room tune`` (the text after ``tune``, or including it)."""
    ns = _cell_options("tune", line)
    if isinstance(ns, HelpArgs):
        return ns
    space: dict[str, Any] = {}
    for item in ns.search:
        name, entry = _search_entry(item)
        if name in space:
            raise ConfigError(f"%%room tune: --search {name} is given twice")
        space[name] = entry
    options = given_options(ns)
    both = sorted(set(space) & set(options))
    if both:
        raise ConfigError(f"%%room tune: {', '.join(both)} is both searched (--search) and fixed; choose one")
    return TuneArgs(space=space, trials=ns.trials, options=options, shape=ns.shape, metric=ns.metric, var=ns.var)


#: The most queries one ``%%room query`` cell may hold (each one spends epsilon and is one round trip).
MAX_CELL_QUERIES = 32


def _parse_query_args(tokens: list[str], body: str) -> QueryArgs:
    """Split the magic's own flags (``--as NAME``, ``--no-plot``) from the query text and parse the queries."""
    from fedjax_room.analyst.queries import parse_query  # the one grammar of a one-line query (analyst's)

    var, plot, words, estimate = "query", True, [], False
    it = iter(tokens)
    for token in it:
        if token == "--as":
            var = _identifier_or_error(next(it, ""))
        elif token.startswith("--as="):
            var = _identifier_or_error(token[len("--as=") :])
        elif token == "--no-plot":
            plot = False
        elif token == "--estimate":
            estimate = True
        elif token.startswith("--"):
            raise ConfigError(
                f"%room query: unknown option {token!r}; query settings are key=value (epsilon=1 bins=0,4,8), "
                "the magic's own options --as NAME, --no-plot and --estimate"
            )
        else:
            words.append(token)
    if not body.strip():
        if not words:
            raise ConfigError("%room query needs a query, e.g. `%room query count_by_label epsilon=0.5`")
        return QueryArgs(queries=(parse_query(" ".join(words)),), var=var, plot=plot, estimate=estimate)
    lines = [line.split("#", 1)[0].strip() for line in body.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ConfigError("%%room query needs one query per line in the cell body, e.g. `count_by_label epsilon=0.5`")
    if len(lines) > MAX_CELL_QUERIES:
        raise ConfigError(f"%%room query: at most {MAX_CELL_QUERIES} queries in one cell, got {len(lines)}")
    defaults: dict[str, Any] = {}
    if words:  # the cell line's settings apply to every query that does not set them itself
        defaults = parse_query(" ".join(["count", *words]))
        defaults.pop("kind")
        if "feature" in defaults:
            raise ConfigError(
                f"%%room query: the cell line takes settings (name=value, secure), not {defaults['feature']!r}"
            )
    queries = []
    for number, line in enumerate(lines, 1):
        try:
            queries.append({**defaults, **parse_query(line)})
        except ConfigError as exc:
            raise type(exc)(f"%%room query, line {number} ({line!r}): {exc}") from None
    return QueryArgs(queries=tuple(queries), var=var, plot=plot, estimate=estimate)


def _identifier_or_error(text: str) -> str:
    if not text.isidentifier():
        raise ConfigError(f"%room query: --as takes a Python variable name, got {text!r}")
    return text


def parse_query_cell(line: str, body: str) -> QueryArgs | HelpArgs:
    """Parse ``%%room query [defaults] [--as NAME] [--no-plot]`` and its body (one query per line)."""
    tokens = _split(line)
    if tokens and tokens[0] == "query":
        tokens = tokens[1:]
    if _is_help(tokens):
        return HelpArgs(topic="query")
    return _parse_query_args(tokens, body)


def parse_spec_body(body: str) -> ModelSpec:
    """A ``%%room train`` cell body (YAML or JSON) as a validated model spec."""
    from fedjax_room.models import ModelSpec  # imported here: it brings in JAX and Flax

    missing = ModelSpecError(
        "%%room train needs a model spec in the cell body, e.g. "
        '{"family": "logistic", "input_shape": [64], "num_classes": 10, '
        '"layers": [{"type": "dense", "features": 10}]}'
    )
    if not body or not body.strip():
        raise missing
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ModelSpecError(f"the model spec is neither valid YAML nor JSON{where}: {problem}") from None
    if data is None:
        raise missing
    if not isinstance(data, dict):
        raise ModelSpecError(f"the model spec must be a mapping (YAML) or object (JSON), got {type(data).__name__}")
    # Round-trip through JSON so only plain data (no YAML tags, dates, ...) reaches the validator.
    try:
        data = json.loads(json.dumps(data))
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"the model spec holds a value that is not plain data: {exc}") from None
    return ModelSpec.from_dict(data)


def _format_parser_help(name: str) -> str:
    if name == "query":
        return _QUERY_HELP
    parser = _build(name)
    parser.prog = f"%%room {name}" if name in ("train", "tune") else f"%room {name}"
    text = parser.format_help()
    if name in ("train", "tune"):
        text += "\nThe cell body is the model spec in YAML or JSON (family, input_shape, num_classes, layers).\n"
    return text


_QUERY_HELP = """\
usage: %room query KIND [FEATURE] epsilon=E [options] [--as NAME] [--no-plot]
       %%room query [options for every line] [--as NAME] [--no-plot]   (body: one query per line)

A differentially private query over every site's data (or sites=...): each site answers with noise
it adds itself and records in its privacy ledger (the same cap as training). The result shows the
total, each site's value (not under secure aggregation), a confidence interval and a plot; it is
bound to `query` (--as NAME; a cell binds the list of results). --estimate spends nothing: each site
says whether it would answer, the epsilon it would spend and its ledger after (room.estimate_query).

kinds: count, count_by_label, histogram FEATURE bins=EDGES, mean FEATURE bounds=LO,HI,
       sum FEATURE bounds=LO,HI, quantiles FEATURE quantiles=Q,.. bounds=LO,HI, missing FEATURE
options: epsilon=E (required)  bins=0,4,8,16  bounds=0,100  quantiles=0.25,0.5,0.75
         by=COLUMN keys=K1,K2 (group by a declared column)  sites=site-a,site-b  secure  timeout=S

examples:
  %room query count_by_label epsilon=0.5
  %room query histogram pixel_3 bins=0,4,8,16 epsilon=1
  %room query mean age bounds=0,100 epsilon=1 by=sex keys=0,1 secure --as ages
"""


def help_text(topic: str = "") -> str:
    """``%room --help`` (overview) or ``%room CMD --help`` (one command's options)."""
    if topic:
        if topic not in COMMANDS:
            raise ConfigError(f"%room: no help for unknown command {topic!r}")
        return _format_parser_help(topic)
    width = max(len(name) for name in COMMANDS)
    lines = [
        "%room: work with a fedjax_room clean room from a notebook.",
        "",
        "usage: %room COMMAND [options]      %%room train [options]  (cell body: model spec)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {summary}" for name, summary in COMMANDS.items()),
        "",
        "examples:",
        "  %room demo --sites 3 --dataset digits",
        "  %room connect ws://127.0.0.1:8765 --key analyst.key",
        "  %room budget",
        "  %room query count_by_label epsilon=0.5",
        "  %%room train --rounds 5 --target-epsilon 3 --aggregator median",
        "  family: logistic",
        "  input_shape: [64]",
        "  num_classes: 10",
        "  layers: [{type: dense, features: 10}]",
        "  %%room tune --trials 4 --search learning_rate=2:10 --search clip_norm=0.05,0.1,0.2 --rounds 20",
        "  (the same model spec as the body)",
        "",
        "`%room COMMAND --help` lists a command's options. Errors show as one line (UsageError: ...).",
    ]
    return "\n".join(lines) + "\n"
