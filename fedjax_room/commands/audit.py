"""``fedjax-room audit``: verify, show and cross-check audit logs.

``DIR_OR_FILE`` is a party's state directory (its log is ``DIR/audit.jsonl``) or the log file itself.

- ``audit verify DIR_OR_FILE [--key PUB] [--no-head]``: exit 0 and one ``OK`` line with the record
  count, or exit 2 naming the first bad record and why. A directory holding no ``audit.jsonl`` of its own but
  logs below it (a whole room's state, as ``fedjax-room demo --state DIR`` leaves: ``coordinator/`` and
  ``sites/<name>/state/``) has every one of them verified, one ``OK`` line each, and each site's log
  cross-checked against the coordinator's when both are there.
- ``audit show DIR_OR_FILE [--run ID] [--kind K ...] [--last N] [--json]``: a table, or one JSON
  record per line; a log that does not verify is shown up to its first bad record, then exit 2.
- ``audit cross-check SITE_DIR COORD_DIR [--site-key PUB] [--coord-key PUB]``: exit 0 when what the
  site released and what the coordinator received agree (warnings allowed), else 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedjax_room.audit import read_log, resolve_log_path, verify_log
from fedjax_room.audit.crosscheck import cross_check
from fedjax_room.identity import fingerprint, public_key_from_bytes

__all__ = ["format_table", "logs_below", "register"]

_SHORT_HEX = 12


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command group."""
    parser = subparsers.add_parser(
        "audit",
        help="verify, show and cross-check tamper-evident audit logs",
        description="Verify, show and cross-check the signed, hash-chained audit logs that the coordinator "
        "and every site keep (STATE_DIR/audit.jsonl).",
    )
    parser.set_defaults(func=lambda args: _help(parser))
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")

    p = sub.add_parser("verify", help="check the chain, every signature and the signed head")
    p.add_argument(
        "path",
        metavar="DIR_OR_FILE",
        help="a state directory, an audit.jsonl file, or a whole room's state (every log below it is verified)",
    )
    p.add_argument("--key", metavar="PUB", help="the log must be signed by this public key (PEM file)")
    p.add_argument("--no-head", action="store_true", help="do not require the signed head (a copied log file)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="print the records as a table (or JSON lines)")
    p.add_argument("path", metavar="DIR_OR_FILE", help="a state directory or an audit.jsonl file")
    p.add_argument("--run", metavar="ID", help="only records of this run")
    p.add_argument("--kind", metavar="K", action="append", help="only records of this kind (repeatable)")
    p.add_argument("--last", metavar="N", type=int, help="only the last N records (after filtering)")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--key", metavar="PUB", help="the log must be signed by this public key (PEM file)")
    p.add_argument("--no-head", action="store_true", help="do not require the signed head (a copied log file)")
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "cross-check",
        help="check that a site's released updates and the coordinator's received updates agree",
    )
    p.add_argument("site", metavar="SITE_DIR", help="the site's state directory or audit log")
    p.add_argument("coordinator", metavar="COORD_DIR", help="the coordinator's state directory or audit log")
    p.add_argument("--site-key", metavar="PUB", help="the site log must be signed by this public key")
    p.add_argument("--coord-key", metavar="PUB", help="the coordinator log must be signed by this public key")
    p.add_argument("--no-head", action="store_true", help="do not require the signed heads")
    p.set_defaults(func=_cross_check)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)  # no subcommand: the usage, on stderr, exit 2
    return 2


def logs_below(path: str | Path) -> list[Path]:
    """The audit logs a ``verify`` of ``path`` covers: its own log, or (a directory without one) every
    ``audit.jsonl`` below it, in path order."""
    p = Path(path)
    if p.is_dir() and not resolve_log_path(p).exists():
        found = sorted(p.rglob("audit.jsonl"))
        if found:
            return found
    return [resolve_log_path(p)]


def _verify(args: argparse.Namespace) -> int:
    from fedjax_room.errors import AuditError

    logs = logs_below(args.path)
    for log in logs:
        try:
            records = verify_log(log, args.key, head=not args.no_head)
        except AuditError as exc:
            if len(logs) == 1:
                raise
            raise AuditError(f"{log}: {exc.message}", index=exc.index) from None
        first = records[0]
        key = public_key_from_bytes(bytes.fromhex(first["fields"]["public_key"]))
        print(
            f"OK: {log}: {len(records)} records by {first['writer']!r} "
            f"(key {fingerprint(key)[:16]}...); chain, signatures and head verify"
        )
    if len(logs) == 1:
        return 0
    room = Path(args.path)
    coordinator = room / "coordinator" / "audit.jsonl"
    sites = [log for log in logs if log.parent.name == "state" and log.parent.parent.parent == room / "sites"]
    ok = True
    if coordinator in logs:
        for log in sites:
            report = cross_check(log.parent, coordinator.parent, head=not args.no_head)
            print(f"{log.parent.parent.name} against the coordinator: {report.summary()}")
            for m in report.mismatches:
                print(f"MISMATCH: {m}")
            ok = ok and report.ok
    print(f"{len(logs)} logs verify" + ("" if ok else "; a cross-check found mismatches"))
    return 0 if ok else 2


def _show(args: argparse.Namespace) -> int:
    records, error = read_log(args.path, args.key, head=not args.no_head)
    shown = [
        r
        for r in records
        if (args.run is None or r["fields"].get("run_id") == args.run) and (not args.kind or r["kind"] in args.kind)
    ]
    if args.last is not None:
        shown = shown[-args.last :] if args.last > 0 else []
    if args.json:
        for r in shown:
            print(json.dumps(r, sort_keys=True))
    elif shown:
        print(format_table(shown))
    elif error is None:
        print("no records match")
    if error is not None:
        print(f"fedjax-room: error: {error.message}", file=sys.stderr)
        if records:
            note = f"(shown: the records before record {error.index}, the first that does not verify)"
            print(note, file=sys.stderr)
        return 2
    return 0


def _cross_check(args: argparse.Namespace) -> int:
    report = cross_check(
        args.site, args.coordinator, site_key=args.site_key, coordinator_key=args.coord_key, head=not args.no_head
    )
    print(report.summary())
    for m in report.mismatches:
        print(f"MISMATCH: {m}")
    for w in report.warnings:
        print(f"warning: {w}")
    return 0 if report.ok else 2


def _cell(value: Any) -> str:
    if isinstance(value, str):
        if len(value) in (64, 128) and all(c in "0123456789abcdef" for c in value):
            return value[:_SHORT_HEX] + ".."
        return value
    return json.dumps(value, sort_keys=True)


def format_table(records: list[dict[str, Any]]) -> str:
    """A readable table: index, time (UTC, to the second), writer, kind, run, round, other fields."""
    header = ("#", "TIME (UTC)", "WRITER", "KIND", "RUN", "ROUND", "DETAILS")
    rows = []
    for r in records:
        f = r["fields"]
        details = " ".join(f"{k}={_cell(v)}" for k, v in sorted(f.items()) if k not in ("run_id", "round"))
        time = r["time"][:19].replace("T", " ")
        rows.append(
            (
                str(r["index"]),
                time,
                r["writer"],
                r["kind"],
                _cell(f["run_id"]) if "run_id" in f else "",
                _cell(f["round"]) if "round" in f else "",
                details,
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = []
    for row in (header, *rows):
        cells = [c.rjust(widths[0]) if i == 0 else c.ljust(widths[i]) for i, c in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
