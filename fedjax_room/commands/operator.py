"""``fedjax-room cancel --state DIR RUN_ID [--reason TEXT]``: the room operator stops any run.

The command writes a cancel request into the coordinator's store (offline, like ``revoke``); the
running coordinator acts on it at its next tick (about half a second): it records ``run_cancelled``
(``by: operator``) in its audit log, ends the run ``failed`` with reason ``cancelled`` and tells the
sites taking part (``run_end``). A coordinator that is not running acts on it when it next starts.
An analyst cancels their own runs from the client (``run.cancel()``, ``%room cancel RUN_ID``, the
sidebar's Cancel button).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run_cancel"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cancel``."""
    p = subparsers.add_parser(
        "cancel",
        help="cancel a run in a room (operator; takes effect within a second)",
        description="Cancel any run: the running coordinator records run_cancelled, ends the run and tells its "
        "sites at its next tick.",
    )
    p.add_argument("--state", required=True, type=Path, help="the coordinator's state directory")
    p.add_argument("run_id", metavar="RUN_ID", help="the run to cancel (e.g. run-3)")
    p.add_argument("--reason", default="", help="why (kept in the audit log and shown to the analyst)")
    p.set_defaults(func=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    """Record the operator's cancel request in the store."""
    from fedjax_room.coordinator.store import Store
    from fedjax_room.errors import ConfigError

    if not (Path(args.state) / "room.sqlite3").exists():
        raise ConfigError(f"{args.state} is not a coordinator state directory (no room.sqlite3)")
    store = Store.open(args.state)
    try:
        run = store.run(args.run_id)
        if run is None:
            raise ConfigError(f"no run {args.run_id!r} in room {args.state}; see `room.runs()` for the ids")
        if run.status in ("finished", "failed"):
            raise ConfigError(f"{args.run_id} is already {run.status}; nothing to cancel")
        store.request_cancel(args.run_id, "operator", args.reason)
    finally:
        store.close()
    print(f"cancel requested for {args.run_id}; the running coordinator stops it within a second")
    return 0
