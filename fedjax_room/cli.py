"""The ``fedjax-room`` command line (also ``python -m fedjax_room``).

Each command group lives in its own module under :mod:`fedjax_room.commands` and
exposes ``register(subparsers)``, which adds its parser(s) and sets ``func`` (a
callable taking the parsed namespace and returning an exit code). This file only
assembles them and turns :class:`~fedjax_room.errors.FedRoomError` into one
readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from fedjax_room import __version__
from fedjax_room.errors import FedRoomError

__all__ = ["COMMAND_MODULES", "DefaultsFormatter", "OneLineParser", "build_parser", "main"]

#: Modules that each register one command group, in ``--help`` order.
COMMAND_MODULES = [
    "fedjax_room.commands.privacy",
    "fedjax_room.commands.train_local",
    "fedjax_room.commands.audit",
    "fedjax_room.commands.kernel",
    "fedjax_room.commands.room",
    "fedjax_room.commands.operator",
    "fedjax_room.commands.manifest",
]


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows every option's default: ``(default: 3)`` added where the help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default is not None and default is not False and default is not argparse.SUPPRESS
        if shown and action.option_strings and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    argparse prints the whole usage block (dozens of lines for ``demo``) before its error; this one prints
    ``fedjax-room demo: error: <what>; see fedjax-room demo --help``. Sub-parsers inherit the class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fedjax-room",
        description="A data clean room for federated learning with differential privacy.",
        epilog="Every command answers --help. Errors are one line on stderr and exit status 2.",
    )
    parser.add_argument("--version", action="version", version=f"fedjax-room {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, so the hint names its --help
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        owner = sub.choices.get(getattr(args, "command", None) or "", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)  # no command: the usage, on stderr, as for any other mistake
        return 2
    try:
        return int(args.func(args) or 0)
    except FedRoomError as exc:
        print(f"fedjax-room: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedjax-room: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
