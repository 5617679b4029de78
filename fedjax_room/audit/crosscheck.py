"""Cross-check a site's audit log against the coordinator's.

A site records ``update_released`` (run_id, round, digest) before it sends an update; the
coordinator records ``update_received`` (run_id, round, site, digest) when one arrives, ``digest``
being the hex sha256 of the exact payload bytes on the wire. The two logs agree when:

- every update the coordinator says it received from the site matches an update the site says it
  released for the same run and round, with the same digest (otherwise: *mismatch*);
- every update the site released was received with that digest (a release the coordinator never
  recorded is only a *warning*: the site may have been a straggler or dropped out) — but a release for a
  run that the coordinator's log does not mention at all is a *mismatch*: that log was wiped or replaced;
- every ``aggregate_applied`` that lists the site has a matching ``update_received`` (otherwise:
  *mismatch*: the coordinator aggregated an update it never recorded receiving);
- the site never released two different updates for one round, and the coordinator never recorded
  two different updates from the site for one round (*mismatch*; the same digest twice is a warning).

Under secure aggregation the ``update`` carries only accounting (its payload is empty) and the
update itself travels masked: the site records ``masked_input_released`` and the coordinator
``masked_input_received``, both with the sha256 of the exact masked bytes, and the same rules
apply to them; an ``aggregate_applied`` with ``secure: true`` that lists the site also needs the
site's ``masked_input_received`` for that round.

The site's name is the ``writer`` of its log's ``log_opened`` record. Both logs are verified in full
first (:func:`~fedjax_room.audit.verify.verify_log`); a log that does not verify raises
:class:`~fedjax_room.errors.AuditError` before anything is compared.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fedjax_room.audit.verify import PublicKeyLike, verify_log
from fedjax_room.errors import ConfigError

__all__ = ["CrossCheckReport", "compare_logs", "cross_check"]

_HEX64 = re.compile(r"[0-9a-f]{64}")

Key = tuple[str, int]


@dataclass(frozen=True)
class CrossCheckReport:
    """What a cross-check found. ``ok`` when there are no mismatches (warnings are allowed)."""

    site: str
    coordinator: str
    released: int
    received: int
    matched: int
    masked_released: int = 0
    masked_received: int = 0
    masked_matched: int = 0
    mismatches: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        """One line: the verdict and the counts."""
        verdict = "OK" if self.ok else "MISMATCH"
        masked = ""
        if self.masked_released or self.masked_received:
            masked = (
                f"; masked inputs (secure aggregation): {self.masked_released} released, "
                f"{self.masked_received} received, {self.masked_matched} matched"
            )
        return (
            f"{verdict}: site {self.site!r} released {self.released} update(s), coordinator {self.coordinator!r} "
            f"received {self.received} from it, {self.matched} matched{masked}; {len(self.mismatches)} mismatch(es), "
            f"{len(self.warnings)} warning(s)"
        )


def _update_key(rec: dict[str, Any], need_site: bool) -> tuple[Key, str, str] | None:
    """``((run_id, round), digest, site)`` of an update record, or None if it is malformed."""
    f = rec["fields"]
    run_id, rnd, digest = f.get("run_id"), f.get("round"), f.get("digest")
    site = f.get("site", "")
    if not isinstance(run_id, str) or type(rnd) is not int or not isinstance(digest, str):
        return None
    if not _HEX64.fullmatch(digest) or (need_site and not isinstance(site, str)):
        return None
    return (run_id, rnd), digest, site


def _where(who: str, rec: dict[str, Any]) -> str:
    return f"{who} record {rec['index']} ({rec['kind']})"


def _short(digest: str) -> str:
    return digest[:16] + "..."


@dataclass
class _Pairing:
    """One kind of release matched between the logs: what the site released, what the coordinator received."""

    noun: str
    released: dict[Key, list[tuple[str, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    received: dict[Key, list[tuple[str, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    n_released: int = 0
    n_received: int = 0
    matched: int = 0


def _of_phase(records: list[dict[str, Any]], kinds: tuple[str, ...], phase: str) -> list[dict[str, Any]]:
    """``records`` without those of ``kinds`` that belong to another phase than ``phase``."""
    return [r for r in records if r["kind"] not in kinds or (r["fields"].get("phase") or "train") == phase]


def _pair(
    site: str,
    site_records: list[dict[str, Any]],
    coordinator_records: list[dict[str, Any]],
    kinds: tuple[str, str],
    noun: str,
    mismatches: list[str],
    warnings: list[str],
) -> _Pairing:
    """Match ``kinds[0]`` records of the site against ``kinds[1]`` records naming it in the coordinator's log."""
    released_kind, received_kind = kinds
    p = _Pairing(noun)
    for rec in site_records:
        if rec["kind"] != released_kind:
            continue
        p.n_released += 1
        parsed = _update_key(rec, need_site=False)
        if parsed is None:
            mismatches.append(f"{_where('site', rec)} is malformed: it needs run_id (str), round (int), digest (hex)")
            continue
        key, digest, _ = parsed
        p.released[key].append((digest, rec))
    for rec in coordinator_records:
        if rec["kind"] != received_kind or rec["fields"].get("site") != site:
            continue
        p.n_received += 1
        parsed = _update_key(rec, need_site=True)
        if parsed is None:
            mismatches.append(
                f"{_where('coordinator', rec)} is malformed: it needs run_id (str), round (int), digest (hex)"
            )
            continue
        key, digest, _ = parsed
        p.received[key].append((digest, rec))

    for key, entries in p.released.items():
        if len({d for d, _ in entries}) > 1:
            where = ", ".join(f"record {r['index']} ({_short(d)})" for d, r in entries)
            mismatches.append(f"site released different {noun}s for run {key[0]!r} round {key[1]}: {where}")
        elif len(entries) > 1:
            warnings.append(
                f"site released the same {noun} for run {key[0]!r} round {key[1]} {len(entries)} times "
                f"(records {', '.join(str(r['index']) for _, r in entries)})"
            )
    for key, entries in p.received.items():
        if len({d for d, _ in entries}) > 1:
            where = ", ".join(f"record {r['index']} ({_short(d)})" for d, r in entries)
            mismatches.append(
                f"coordinator recorded different {noun}s from {site!r} for run {key[0]!r} round {key[1]}: {where}"
            )
        elif len(entries) > 1:
            warnings.append(
                f"coordinator recorded the same {noun} from {site!r} for run {key[0]!r} round {key[1]} "
                f"{len(entries)} times (records {', '.join(str(r['index']) for _, r in entries)})"
            )

    for key, entries in p.received.items():
        site_digests = {d for d, _ in p.released.get(key, [])}
        for digest, rec in entries:
            if not site_digests:
                mismatches.append(
                    f"{_where('coordinator', rec)} says it received an {noun} from {site!r} for run {key[0]!r} "
                    f"round {key[1]} (digest {_short(digest)}), but the site never released one"
                )
            elif digest not in site_digests:
                site_recs = ", ".join(str(r["index"]) for _, r in p.released[key])
                site_digests_s = ", ".join(_short(d) for d in sorted(site_digests))
                mismatches.append(
                    f"{_where('coordinator', rec)} has digest {_short(digest)} for {site!r}'s {noun} to run "
                    f"{key[0]!r} round {key[1]}, but the site released {site_digests_s}"
                    f" (site record {site_recs}): the {noun} was altered or substituted"
                )
            else:
                p.matched += 1
    for key, entries in p.released.items():
        coord_digests = {d for d, _ in p.received.get(key, [])}
        for digest, rec in entries:
            if not coord_digests:
                warnings.append(
                    f"{_where('site', rec)}: {noun} for run {key[0]!r} round {key[1]} (digest {_short(digest)}) was "
                    "never recorded as received by the coordinator (a straggler, a dropout, or lost in transit)"
                )
    return p


def _released_runs(site_records: list[dict[str, Any]]) -> dict[str, int]:
    """``{run_id: releases}`` of the site's update and masked-input releases."""
    runs: dict[str, int] = defaultdict(int)
    for rec in site_records:
        run_id = rec["fields"].get("run_id")
        if rec["kind"] in ("update_released", "masked_input_released") and isinstance(run_id, str):
            runs[run_id] += 1
    return runs


def compare_logs(site_records: list[dict[str, Any]], coordinator_records: list[dict[str, Any]]) -> CrossCheckReport:
    """Compare two already-verified logs (lists of records as :func:`verify_log` returns them)."""
    if not site_records or not coordinator_records:
        raise ConfigError("cross-check needs two non-empty audit logs")
    site = site_records[0]["writer"]
    coordinator = coordinator_records[0]["writer"]
    for kind in ("update_received", "masked_input_received"):
        if any(r["kind"] == kind for r in site_records):
            raise ConfigError(
                f"the site log (writer {site!r}) has {kind} records: it looks like a coordinator log; "
                "the arguments are SITE_DIR COORD_DIR"
            )
    for kind in ("update_released", "masked_input_released"):
        if any(r["kind"] == kind for r in coordinator_records):
            raise ConfigError(
                f"the coordinator log (writer {coordinator!r}) has {kind} records: it looks like a site log; "
                "the arguments are SITE_DIR COORD_DIR"
            )
    mismatches: list[str] = []
    warnings: list[str] = []
    updates = _pair(
        site, site_records, coordinator_records, ("update_released", "update_received"), "update", mismatches, warnings
    )
    masked_kinds = ("masked_input_released", "masked_input_received")
    # a round has a train session and, when scheduled, an eval session: each is paired on its own ("phase";
    # a record without one, from before evaluation was masked too, is the train session's)
    masked, masked_eval = (
        _pair(
            site,
            _of_phase(site_records, masked_kinds, phase),
            _of_phase(coordinator_records, masked_kinds, phase),
            masked_kinds,
            noun,
            mismatches,
            warnings,
        )
        for phase, noun in (("train", "masked input"), ("eval", "masked evaluation input"))
    )

    # a release for a run the coordinator's log never mentions: that log was wiped, replaced or is another room's
    coordinator_runs = {r["fields"].get("run_id") for r in coordinator_records if isinstance(r["fields"], dict)}
    for run_id, count in sorted(_released_runs(site_records).items()):
        if run_id not in coordinator_runs:
            mismatches.append(
                f"the site released {count} update(s) for run {run_id!r} but the coordinator's log has no record of "
                "that run at all: the coordinator log was wiped or replaced, or is another room's"
            )

    for rec in coordinator_records:
        if rec["kind"] != "aggregate_applied":
            continue
        f = rec["fields"]
        sites, run_id, rnd = f.get("sites"), f.get("run_id"), f.get("round")
        if not isinstance(sites, list) or site not in sites:
            continue
        if (run_id, rnd) not in updates.received:
            mismatches.append(
                f"{_where('coordinator', rec)} aggregated an update from {site!r} for run {run_id!r} round {rnd}, "
                "but never recorded receiving one"
            )
        if f.get("secure") is True and (run_id, rnd) not in masked.received:
            mismatches.append(
                f"{_where('coordinator', rec)} securely aggregated {site!r}'s masked input for run {run_id!r} "
                f"round {rnd}, but never recorded receiving one"
            )

    return CrossCheckReport(
        site=site,
        coordinator=coordinator,
        released=updates.n_released,
        received=updates.n_received,
        matched=updates.matched,
        masked_released=masked.n_released,  # the updates' masked inputs (an eval session's are checked, not counted)
        masked_received=masked.n_received,
        masked_matched=masked.matched,
        mismatches=tuple(mismatches),
        warnings=tuple(warnings),
    )


def cross_check(
    site_log: str | os.PathLike[str],
    coordinator_log: str | os.PathLike[str],
    *,
    site_key: PublicKeyLike | None = None,
    coordinator_key: PublicKeyLike | None = None,
    head: bool = True,
) -> CrossCheckReport:
    """Verify both logs (each a state directory or log file), then :func:`compare_logs` them.

    ``site_key`` / ``coordinator_key`` pin whose key each log must be signed by. Raises
    :class:`~fedjax_room.errors.AuditError` if either log does not verify.
    """
    site_records = verify_log(site_log, site_key, head=head)
    coordinator_records = verify_log(coordinator_log, coordinator_key, head=head)
    return compare_logs(site_records, coordinator_records)
