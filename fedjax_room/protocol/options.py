"""The run options rendered for every analyst surface, from :class:`~fedjax_room.protocol.config.RunConfig`.

Each option is declared once, on :class:`RunConfig` (type, default, bounds, help text;
:func:`~fedjax_room.protocol.config.run_options` lists them). This module turns that list into what each
surface needs, so none of them repeats a name, a default or a bound (pure, light to import: the magics'
parser uses it without loading JAX):

* :func:`train_signature` / :func:`options_doc`: the keyword arguments ``Room.train`` shows to ``help()``,
  IPython's ``?`` and ``inspect.signature``;
* :func:`add_run_options` / :func:`given_options`: argparse flags (``--target-epsilon``, ``--secure-aggregation
  / --no-secure-aggregation``), used by the ``%%room train`` magic and the ``fedjax-room`` CLI. An option left
  out on the command line is *not given* (it takes :class:`RunConfig`'s default), never a copy of the default.

A surface passes on only what the user gave: "not given" is how ``RunConfig.from_dict`` knows that a
``noise_multiplier`` alone switches the default ``target_epsilon`` off, while an explicit ``target_epsilon``
next to it is a mistake it reports.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.config import OptionSpec, run_options

__all__ = ["add_run_options", "given_options", "options_doc", "parse_option", "train_signature"]

_NONE_WORDS = ("none", "null", "off")


def _selected(only: Collection[str] | None, skip: Collection[str]) -> list[OptionSpec]:
    options = list(run_options())
    known = {o.name for o in options}
    unknown = (set(only or ()) | set(skip)) - known
    if unknown:  # a surface naming an option that no longer exists must fail loudly, not drift
        raise ConfigError(f"not run options: {', '.join(sorted(unknown))}")
    return [o for o in options if (only is None or o.name in only) and o.name not in skip]


def parse_option(option: OptionSpec, text: str) -> Any:
    """One option's value from text (a command-line word), validated by the option; ``none`` for an unset one."""
    if option.nullable and text.strip().lower() in _NONE_WORDS:
        return None
    value: Any = text
    if option.type == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{option.name} must be an integer, got {text!r}") from None
    elif option.type == "float":
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{option.name} must be a number, got {text!r}") from None
    elif option.type == "bool":
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if text.strip().lower() not in words:
            raise ConfigError(f"{option.name} must be true or false, got {text!r}")
        value = words[text.strip().lower()]
    return option.check(value)


def _arg_type(option: OptionSpec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_option(option, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = option.type
    return convert


def _default_text(option: OptionSpec) -> str:
    if option.default is None:
        return "unset"
    if option.type == "bool":
        return "on" if option.default else "off"
    return f"{option.default:g}" if isinstance(option.default, float) else str(option.default)


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
    notes: Mapping[str, str] | None = None,
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> list[OptionSpec]:
    """Add a flag per run option (``only`` those / all but ``skip``) to ``parser``; returns the options added.

    A flag's default is "not given" (``argparse.SUPPRESS``: absent from the namespace; read them with
    :func:`given_options`); its help says the option's help, bounds and :class:`RunConfig` default, or
    ``notes[name]`` where this surface picks a different default. ``aliases`` adds extra flags (``--lr``).
    """
    notes, aliases = notes or {}, aliases or {}
    group = parser.add_argument_group("run options (RunConfig)")
    chosen = _selected(only, skip)
    for option in chosen:
        bounds = f"in {option.bounds_text()}; " if option.bounds_text() else ""
        note = notes.get(option.name) or f"default {_default_text(option)}"
        flags = [option.flag, *aliases.get(option.name, ())]
        kw: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
        help_text = f"{option.help} ({bounds}{note})".replace("%", "%%")
        if option.type == "bool":
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text, **kw)
        elif option.choices:
            group.add_argument(*flags, choices=option.choices, help=help_text, **kw)
        else:
            metavar = option.type.upper() if not option.nullable else f"{option.type.upper()}|none"
            group.add_argument(*flags, type=_arg_type(option), metavar=metavar, help=help_text, **kw)
    return chosen


def given_options(namespace: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The run options a parsed command line gave (as ``Room.train`` keywords), in :class:`RunConfig` order."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    return {o.name: values[o.name] for o in run_options() if o.name in values}


def train_signature(head: Iterable[inspect.Parameter] = ()) -> inspect.Signature:
    """``(head..., *, rounds: int = 5, target_epsilon: float | None = 3.0, ...)`` from :func:`run_options`."""
    params = list(head)
    for option in run_options():
        annotation = f"{option.type} | None" if option.nullable else option.type
        params.append(
            inspect.Parameter(
                option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=annotation
            )
        )
    return inspect.Signature(params)


def options_doc(indent: str = "    ") -> str:
    """One line per run option: ``name (type, default D, in [lo, hi]): help``, for a docstring."""
    lines = []
    for option in run_options():
        bounds = f", in {option.bounds_text()}" if option.bounds_text() else ""
        choices = f", one of {', '.join(option.choices)}" if option.choices else ""
        kind = f"{option.type} or None" if option.nullable else option.type
        lines.append(f"{indent}{option.name} ({kind}, default {_default_text(option)}{bounds}{choices}): {option.help}")
    return "\n".join(lines)
