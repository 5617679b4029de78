"""Fixtures for the audit tests: keys, a deterministic clock, small logs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedjax_room.audit import AuditLog
from fedjax_room.identity import generate_key


def digest(n: int) -> str:
    """A stand-in hex sha256 digest, distinct for each ``n``."""
    return f"{n:064x}"


@pytest.fixture
def clock() -> Callable[[], datetime]:
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    counter = itertools.count()
    return lambda: start + timedelta(seconds=next(counter))


@pytest.fixture
def key():
    return generate_key()


@pytest.fixture
def make_log(tmp_path: Path, clock):
    """``make_log(name, key, records=[(kind, fields), ...]) -> state dir`` (the log is closed)."""

    def make(name: str, signing_key, records=(), *, writer: str | None = None) -> Path:
        state = tmp_path / name
        with AuditLog.open(state, signing_key, writer or name, clock=clock) as log:
            for kind, fields in records:
                log.append(kind, **fields)
        return state

    return make


@pytest.fixture
def site_log(make_log, key) -> Path:
    """A site log of 5 records: log_opened, policy_loaded, run_approved, two update_released."""
    return make_log(
        "site-a",
        key,
        [
            ("policy_loaded", {"policy_digest": digest(99)}),
            ("run_approved", {"run_id": "r1", "spec_hash": digest(7), "reason": ""}),
            ("update_released", {"run_id": "r1", "round": 0, "digest": digest(1), "epsilon": 0.5, "delta": 1e-5}),
            ("update_released", {"run_id": "r1", "round": 1, "digest": digest(2), "epsilon": 0.7, "delta": 1e-5}),
        ],
    )
