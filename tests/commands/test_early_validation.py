"""Every mistake on the command line is refused before anything starts: one line on stderr, exit status 2.

"Before anything starts" is checked, not timed: the demo's process hook (``fedjax_room.sim.launch.spawn``, which
every coordinator, site and attacker process goes through) must not be reached and the state directory must not
be created. A valid command line does reach the hook (the control that shows the hook is the right one).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from fedjax_room.cli import build_parser, main
from fedjax_room.errors import ConfigError


class _Spawned(Exception):
    """Raised by the test's process hook: the demo got as far as starting a process."""


@pytest.fixture
def spawns(monkeypatch):
    from fedjax_room.sim import launch

    calls = []

    def hook(args, *_, **__):
        calls.append(list(args))
        raise _Spawned(args)

    monkeypatch.setattr(launch, "spawn", hook)
    return calls


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return int(exc.code)


def _refused(argv, capsys, spawns, state) -> str:
    """Run ``fedjax-room ARGV`` in this process; assert a one-line refusal before any process or directory."""
    code = _exit_code(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("fedjax-room"), lines
    assert "Traceback" not in err and out == ""  # nothing printed as if it had started
    assert spawns == [] and not state.exists()
    return lines[0]


DEMO_MISTAKES = {
    "rounds 0": (["--rounds", "0"], "rounds must be an integer in [1"),
    "negative target": (["--target-epsilon", "-1"], "target_epsilon = -1 is outside"),
    "no sites": (["--sites", "0"], "--sites must be an integer from 1 to 64"),
    "too many sites": (["--sites", "65"], "--sites must be an integer from 1 to 64"),
    "sites not a number": (["--sites", "three"], "--sites: invalid int value"),
    "malicious without attack": (["--malicious", "1"], "--malicious K needs --attack"),
    "more attackers than sites": (["--attack", "boost", "--malicious", "4"], "--malicious K must be an integer"),
    "median with secure aggregation": (
        ["--aggregator", "median", "--secure-aggregation"],
        "aggregator 'median' needs each site's update",
    ),
    "exclusion with secure aggregation": (
        ["--exclude-below", "0.5", "--secure-aggregation"],
        "exclude_below needs per-site anomaly flags",
    ),
    "site noise without secure aggregation": (
        ["--site-noise-multiplier", "1", "--no-secure-aggregation"],
        "site_noise_multiplier (distributed DP) needs secure_aggregation",
    ),
    "target and noise": (["--noise-multiplier", "1", "--target-epsilon", "3"], "give exactly one of target_epsilon"),
    "delta above the sites' cap": (["--delta", "1e-3"], "--delta 0.001 is above the demo sites' delta cap"),
    "min sites above sites": (["--min-sites", "5"], "--min-sites 5 is outside what this demo can do"),
    "min sites below the sites' cohort": (["--min-sites", "1"], "--min-sites 1 is outside"),
    "non-IID alpha zero": (["--non-iid", "0"], "--non-iid ALPHA must be a positive number"),
    "too many steps": (["--rounds", "1000", "--local-steps", "1000"], "DP-SGD steps is over this room's bound"),
    "secure aggregation with one site": (["--sites", "1", "--secure-aggregation"], "needs at least 2 sites"),
    "unknown dataset": (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    "unknown flag": (["--no-such-flag"], "unrecognized arguments: --no-such-flag; see fedjax-room demo --help"),
}


@pytest.mark.parametrize("case", list(DEMO_MISTAKES))
def test_each_demo_mistake_is_one_line_and_exit_2_before_any_process(case, tmp_path, capsys, spawns):
    flags, says = DEMO_MISTAKES[case]
    state = tmp_path / "state"
    line = _refused(["demo", "--state", str(state), *flags], capsys, spawns, state)
    assert says in line


def test_a_target_above_the_demo_sites_cap_names_the_option_and_not_fewer_rounds(tmp_path, capsys, spawns):
    state = tmp_path / "state"
    line = _refused(["demo", "--state", str(state), "--target-epsilon", "20"], capsys, spawns, state)
    assert "--target-epsilon 20 is above the demo sites' epsilon cap of 10" in line
    assert "use --target-epsilon 10 or less" in line and "fewer rounds" not in line


def test_a_valid_demo_command_line_does_reach_the_process_hook(tmp_path, spawns):
    # the control: the same hook, reached by a run the demo accepts (a robust aggregator: secure aggregation off)
    state = tmp_path / "state"
    with pytest.raises(_Spawned):
        main(["demo", "--state", str(state), "--aggregator", "median", "--rounds", "1"])
    assert spawns and spawns[0][0] == "coordinator" and (state / "coordinator").is_dir()


def test_the_python_demo_refuses_before_any_process_too(tmp_path, spawns):
    from fedjax_room.sim.demo import run_demo

    with pytest.raises(ConfigError, match="needs each site's update"):
        run_demo(state_dir=tmp_path / "s", aggregator="median", secure_aggregation=True)
    with pytest.raises(ConfigError, match="epsilon cap of 10"):
        run_demo(state_dir=tmp_path / "s", target_epsilon=20.0)
    assert spawns == [] and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["privacy", "epsilon", "--delta", "1e-5"],
        ["coordinator"],
        ["enroll", "--state", "x", "--name", "a", "--role", "nobody", "--public-key", "k"],
        ["no-such-command"],
    ],
)
def test_other_commands_refuse_in_one_line(argv, capsys):
    assert _exit_code(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedjax-room") and "error:" in lines[0]


def test_bare_fedjax_room_prints_its_usage_on_stderr_and_exits_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: fedjax-room") and "demo" in err


def _all_parsers(parser: argparse.ArgumentParser, name: str = "fedjax-room"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_every_flag_has_help_and_shows_its_default():
    for name, parser in _all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            shown = formatter._expand_help(action) if action.help else ""
            if action.default is not None and action.default is not False:
                assert "default" in shown, f"{name} {action.option_strings[0]}: {shown!r} does not show its default"
    demo = dict(_all_parsers(build_parser()))["fedjax-room demo"]
    shown = {a.option_strings[0]: demo._get_formatter()._expand_help(a) for a in demo._actions if a.option_strings}
    assert "default 3" in shown["--sites"] and "default 0" in shown["--seed"]
    assert "default: on, unless a robust aggregator" in shown["--secure-aggregation"]


def test_help_imports_neither_jax_nor_the_accountant():
    # what keeps --help quick: the heavy libraries load when a command runs, not when the parser is built
    code = (
        "import sys; from fedjax_room.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('jax', 'dp_accounting', 'scipy', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_privacy_commands_accountant_names_are_the_accountants():
    from fedjax_room.commands.privacy import ACCOUNTANT_NAMES
    from fedjax_room.dp.accounting import ACCOUNTANTS

    assert ACCOUNTANT_NAMES == ACCOUNTANTS
