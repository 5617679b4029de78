"""Tamper-evident audit logs: append-only, hash-chained, Ed25519-signed JSONL, one per party.

A party's log is ``STATE_DIR/audit.jsonl`` (with its signed head ``STATE_DIR/audit.jsonl.head``);
see :mod:`fedjax_room.audit.verify` for the record format and what verification catches,
:mod:`fedjax_room.audit.log` for writing, and
:mod:`fedjax_room.audit.crosscheck` for comparing a site's log with the coordinator's.

    log = AuditLog.open(state_dir, signing_key, writer="site-a")
    log.append("update_released", run_id="r1", round=0, digest=sha256_hex, epsilon=0.4, delta=1e-5)
    records = verify_log(state_dir, public_key)   # raises AuditError(index=first bad record)
"""

from fedjax_room.audit.crosscheck import CrossCheckReport, compare_logs, cross_check
from fedjax_room.audit.log import REQUIRED_FIELDS, AuditLog
from fedjax_room.audit.verify import (
    FORMAT,
    GENESIS,
    LOG_FILENAME,
    canonical_json,
    head_path,
    read_log,
    record_hash,
    resolve_log_path,
    verify_log,
)

__all__ = [
    "FORMAT",
    "GENESIS",
    "LOG_FILENAME",
    "REQUIRED_FIELDS",
    "AuditLog",
    "CrossCheckReport",
    "canonical_json",
    "compare_logs",
    "cross_check",
    "head_path",
    "read_log",
    "record_hash",
    "resolve_log_path",
    "verify_log",
]
