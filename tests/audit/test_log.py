"""The audit log: writing, reopening, and every tampering that verification must name."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from fedjax_room.audit import GENESIS, LOG_FILENAME, AuditLog, canonical_json, head_path, read_log, verify_log
from fedjax_room.audit.verify import RECORD_DOMAIN, record_hash, resolve_log_path
from fedjax_room.errors import AuditError, ConfigError, StateError
from fedjax_room.identity import generate_key, public_key_bytes, save_private_key, sign


def digest(n: int) -> str:
    return f"{n:064x}"


def log_file(state: Path) -> Path:
    return state / LOG_FILENAME


def lines_of(state: Path) -> list[bytes]:
    return log_file(state).read_bytes().splitlines(keepends=True)


def write_lines(state: Path, lines: list[bytes]) -> None:
    log_file(state).write_bytes(b"".join(lines))


def forge(prev_line: bytes, index: int, signing_key, *, writer: str = "site-a", kind: str = "note") -> bytes:
    """A well-formed record chained to ``prev_line`` and signed by ``signing_key``."""
    rec = {
        "v": 1,
        "index": index,
        "time": "2025-01-01T13:00:00.000000+00:00",
        "writer": writer,
        "kind": kind,
        "fields": {"text": "forged"},
        "prev": record_hash(prev_line.rstrip(b"\n")),
    }
    rec["sig"] = sign(signing_key, RECORD_DOMAIN + canonical_json(rec)).hex()
    return canonical_json(rec) + b"\n"


def expect_bad(state: Path, index: int, *, public_key=None, head: bool = True, match: str | None = None) -> AuditError:
    with pytest.raises(AuditError) as info:
        verify_log(state, public_key, head=head)
    assert info.value.index == index, info.value.message
    if match is not None:
        assert match in info.value.message
    if index >= 0:
        assert f"record {index}" in info.value.message
    return info.value


# ---------------------------------------------------------------------------------------------- writing


def test_records_chain_and_verify(site_log, key):
    records = verify_log(site_log, key.public_key())
    assert [r["index"] for r in records] == list(range(5))
    assert [r["kind"] for r in records] == [
        "log_opened",
        "policy_loaded",
        "run_approved",
        "update_released",
        "update_released",
    ]
    assert records[0]["prev"] == GENESIS
    assert records[0]["fields"]["public_key"] == public_key_bytes(key).hex()
    raw = lines_of(site_log)
    for prev_line, rec in zip(raw, records[1:], strict=False):
        assert rec["prev"] == record_hash(prev_line.rstrip(b"\n"))
    assert all(r["writer"] == "site-a" for r in records)
    times = [r["time"] for r in records]
    assert times == sorted(times) and all(t.startswith("2025-01-01T12:00:") and t.endswith("+00:00") for t in times)
    # each line is the canonical encoding of its record
    assert [canonical_json(r) + b"\n" for r in records] == raw


def test_append_returns_the_record_as_read_back(tmp_path, key):
    with AuditLog.open(tmp_path / "s", key, "coordinator") as log:
        rec = log.append("round_opened", run_id="r1", round=3, sites=("a", "b"))
        assert log.count == 2 and log.last_hash == record_hash(canonical_json(rec))
    assert rec["fields"] == {"run_id": "r1", "round": 3, "sites": ["a", "b"]}
    assert verify_log(tmp_path / "s")[-1] == rec


def test_append_fsyncs_before_returning(tmp_path, key, monkeypatch):
    with AuditLog.open(tmp_path / "s", key, "site-a") as log:
        synced: list[int] = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
        log.append("note", text="x")
        assert log._fd in synced  # the log file itself, not just the head
        monkeypatch.undo()


def test_reopen_continues_the_chain(site_log, key, clock):
    with AuditLog.open(site_log, key, "site-a", clock=clock) as log:
        assert log.count == 5
        rec = log.append("metrics_released", run_id="r1", round=1, epsilon=0.1)
    assert rec["index"] == 5
    records = verify_log(site_log, key.public_key())
    assert len(records) == 6 and records[5]["prev"] == record_hash(canonical_json(records[4]))
    assert sum(r["kind"] == "log_opened" for r in records) == 1


def test_path_may_be_the_file(tmp_path, key):
    path = tmp_path / "elsewhere" / "my.jsonl"
    with AuditLog.open(path, key, "site-a") as log:
        log.append("note", text="x")
        assert log.path == path
    assert head_path(path).exists()
    assert len(verify_log(path)) == 2
    assert resolve_log_path(tmp_path / "elsewhere") == tmp_path / "elsewhere" / LOG_FILENAME
    assert resolve_log_path(tmp_path / "new-dir") == tmp_path / "new-dir" / LOG_FILENAME


def test_key_may_be_a_pem_file(tmp_path, key):
    pem = save_private_key(key, tmp_path / "site.key")
    with AuditLog.open(tmp_path / "s", pem, "site-a") as log:
        log.append("note", text="x")
    for pub in (key.public_key(), key, public_key_bytes(key), tmp_path / "site.key.pub", str(pem)):
        assert len(verify_log(tmp_path / "s", pub)) == 2


def test_reopen_with_another_key_or_writer_is_refused(site_log, key):
    before = log_file(site_log).read_bytes()
    with pytest.raises(AuditError) as info:
        AuditLog.open(site_log, generate_key(), "site-a")
    assert info.value.index == 0 and "started by 'site-a'" in info.value.message
    with pytest.raises(AuditError):
        AuditLog.open(site_log, key, "site-b")
    assert log_file(site_log).read_bytes() == before


def test_one_writer_at_a_time(tmp_path, key):
    log = AuditLog.open(tmp_path / "s", key, "site-a")
    with pytest.raises(StateError, match="another process"):
        AuditLog.open(tmp_path / "s", key, "site-a")
    log.close()
    with pytest.raises(StateError, match="closed"):
        log.append("note", text="x")
    with AuditLog.open(tmp_path / "s", key, "site-a") as again:
        again.append("note", text="y")
    assert len(verify_log(tmp_path / "s")) == 2


def test_threads_append_safely(tmp_path, key):
    with AuditLog.open(tmp_path / "s", key, "coordinator") as log:

        def work(t: int) -> None:
            for i in range(10):
                log.append("note", thread=t, i=i)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = verify_log(tmp_path / "s")
    assert len(records) == 41
    assert sorted((r["fields"]["thread"], r["fields"]["i"]) for r in records[1:]) == [
        (t, i) for t in range(4) for i in range(10)
    ]


@pytest.mark.parametrize(
    ("kind", "fields", "match"),
    [
        ("Bad Kind", {}, "lower_snake_case"),
        ("log_opened", {}, "log_opened"),
        ("update_released", {"run_id": "r1", "round": 0}, "digest"),
        ("update_received", {"run_id": "r1", "round": 0, "digest": "a" * 64}, "site"),
        ("update_released", {"run_id": "r1", "round": "0", "digest": "a" * 64}, "round must be an int"),
        ("update_released", {"run_id": "r1", "round": 0, "digest": "A" * 64}, "digest"),
        ("note", {"x": float("nan")}, "JSON"),
        ("note", {"x": object()}, "JSON"),
    ],
)
def test_append_rejects_bad_records(tmp_path, key, kind, fields, match):
    with AuditLog.open(tmp_path / "s", key, "site-a") as log:
        with pytest.raises(ConfigError, match=match):
            log.append(kind, **fields)
        assert log.count == 1
    assert len(verify_log(tmp_path / "s")) == 1


def test_failed_write_leaves_the_log_whole(tmp_path, key, monkeypatch):
    with AuditLog.open(tmp_path / "s", key, "site-a") as log:
        log.append("note", text="before")
        real_write = os.write

        def half_then_fail(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_fail)
        with pytest.raises(AuditError, match="must not go ahead"):
            log.append("note", text="lost")
        monkeypatch.undo()
        log.append("note", text="after")
    assert [r["fields"].get("text") for r in verify_log(tmp_path / "s")] == [None, "before", "after"]


# ------------------------------------------------------------------------------------------- tampering


def test_every_edited_byte_is_caught_and_named(make_log, key):
    # Three records (log_opened, an update with every field type, a small one): every byte is replaced by
    # its low bit flipped, and every fourth byte also by a random other byte.
    state = make_log(
        "site-a",
        key,
        [
            ("update_released", {"run_id": "r1", "round": 0, "digest": digest(1), "epsilon": 0.5, "delta": 1e-5}),
            ("run_refused", {"run_id": "r2", "spec_hash": digest(2), "reason": "model_family", "ok": False}),
        ],
    )
    path = log_file(state)
    original = path.read_bytes()
    rng = random.Random(0)
    for pos in range(len(original)):
        expected = original[:pos].count(b"\n")
        old = original[pos]
        subs = {old ^ 0x01} if pos % 4 else {old ^ 0x01, rng.choice([b for b in range(256) if b != old])}
        for new in subs:
            path.write_bytes(original[:pos] + bytes([new]) + original[pos + 1 :])
            with pytest.raises(AuditError) as info:
                verify_log(state)
            assert info.value.index == expected, (pos, old, new, info.value.message)
    path.write_bytes(original)
    assert len(verify_log(state, key)) == 3


def test_inserted_whitespace_is_caught(site_log):
    lines = lines_of(site_log)
    lines[2] = lines[2].replace(b'"kind":', b'"kind": ')
    write_lines(site_log, lines)
    expect_bad(site_log, 2, match="canonical")


def test_uppercased_signature_is_caught(site_log):
    lines = lines_of(site_log)
    rec = json.loads(lines[3])
    lines[3] = lines[3].replace(rec["sig"].encode(), rec["sig"].upper().encode())
    write_lines(site_log, lines)
    expect_bad(site_log, 3)


@pytest.mark.parametrize("victim", [0, 1, 2, 3])
def test_deleted_record_is_named(site_log, victim):
    lines = lines_of(site_log)
    del lines[victim]
    write_lines(site_log, lines)
    expect_bad(site_log, victim)


def test_deleted_last_record_is_named_by_the_head(site_log):
    lines = lines_of(site_log)
    write_lines(site_log, lines[:-1])
    expect_bad(site_log, 4, match="deleted")
    write_lines(site_log, lines[:-2])
    expect_bad(site_log, 3, match="the last 2 were deleted")


def test_deleted_head_is_caught_unless_waived(site_log):
    head_path(log_file(site_log)).unlink()
    expect_bad(site_log, -1, match="no signed head")
    assert len(verify_log(site_log, head=False)) == 5


def test_edited_or_foreign_head_is_caught(site_log, tmp_path, key):
    hp = head_path(log_file(site_log))
    original = hp.read_bytes()
    hp.write_bytes(original.replace(b'"count":5', b'"count":4'))
    expect_bad(site_log, -1, match="not signed by the log's key")
    hp.write_bytes(original[:-10] + b"x" + original[-9:])
    expect_bad(site_log, -1, match="corrupt")
    # a head signed by another key, for a log that otherwise verifies
    other = tmp_path / "other"
    with AuditLog.open(other, generate_key(), "site-a") as log:
        for _ in range(4):
            log.append("note", text="x")
    hp.write_bytes(head_path(log_file(other)).read_bytes())
    expect_bad(site_log, -1)


def test_head_one_behind_is_a_crash_and_is_repaired_on_reopen(site_log, key, tmp_path):
    hp = head_path(log_file(site_log))
    saved = hp.read_bytes()
    with AuditLog.open(site_log, key, "site-a") as log:
        log.append("note", text="x")
    hp.write_bytes(saved)  # as if the writer died between the record and its head
    assert len(verify_log(site_log)) == 6
    with AuditLog.open(site_log, key, "site-a") as log:
        assert log.count == 6
    assert json.loads(hp.read_bytes())["count"] == 6
    # two behind is a rolled-back head, not a crash
    with AuditLog.open(site_log, key, "site-a") as log:
        log.append("note", text="y")
        log.append("note", text="z")
    hp.write_bytes(saved)
    expect_bad(site_log, 5, match="rolled back")


@pytest.mark.parametrize("first", [1, 2, 3])
def test_reordered_records_are_named(site_log, first):
    lines = lines_of(site_log)
    lines[first], lines[first + 1] = lines[first + 1], lines[first]
    write_lines(site_log, lines)
    expect_bad(site_log, first)


def test_reordered_and_reindexed_records_are_named(site_log, key):
    # Swap two records and fix their index fields: the signatures (and chain) still catch it.
    records = verify_log(site_log)
    lines = lines_of(site_log)
    a, b = dict(records[2], index=3), dict(records[3], index=2)
    lines[2], lines[3] = canonical_json(b) + b"\n", canonical_json(a) + b"\n"
    write_lines(site_log, lines)
    expect_bad(site_log, 2)


def test_record_appended_with_another_key_is_named(site_log):
    lines = lines_of(site_log)
    lines.append(forge(lines[-1], 5, generate_key()))
    write_lines(site_log, lines)
    expect_bad(site_log, 5, match="does not verify")


def test_record_inserted_with_another_key_is_named(site_log):
    lines = lines_of(site_log)
    lines.insert(2, forge(lines[1], 2, generate_key()))
    write_lines(site_log, lines[:-1])
    expect_bad(site_log, 2, match="does not verify")


def test_record_appended_with_the_right_key_but_no_head_update_is_a_crash_at_most(site_log, key):
    # The writer's own key may append (that is what writing is); a head one behind is accepted.
    lines = lines_of(site_log)
    lines.append(forge(lines[-1], 5, key))
    write_lines(site_log, lines)
    assert len(verify_log(site_log)) == 6


def test_whole_log_under_another_key_is_caught_with_public_key(make_log, site_log, key):
    impostor = make_log("impostor", generate_key(), writer="site-a")
    for name in (LOG_FILENAME, LOG_FILENAME + ".head"):
        (site_log / name).write_bytes((impostor / name).read_bytes())
    assert len(verify_log(site_log)) == 1  # self-consistent on its own...
    expect_bad(site_log, 0, public_key=key.public_key(), match="another key")  # ...but not the site's


def test_second_log_opened_and_writer_change_are_caught(site_log, key):
    lines = lines_of(site_log)
    lines.append(forge(lines[-1], 5, key, kind="log_opened"))
    write_lines(site_log, lines)
    expect_bad(site_log, 5, match="second log_opened")
    lines[-1] = forge(lines[-2], 5, key, writer="site-b")
    write_lines(site_log, lines)
    expect_bad(site_log, 5, match="writer")


def test_torn_last_line_is_named_and_blocks_appending(site_log, key):
    lines = lines_of(site_log)
    write_lines(site_log, [*lines, lines[-1][:40]])
    err = expect_bad(site_log, 5, match="incomplete")
    assert "interrupted" in err.message
    before = log_file(site_log).read_bytes()
    with pytest.raises(AuditError) as info:
        AuditLog.open(site_log, key, "site-a")
    assert info.value.index == 5 and "refusing to append" in info.value.message
    assert log_file(site_log).read_bytes() == before


def test_broken_tail_blocks_appending(site_log, key):
    lines = lines_of(site_log)
    lines[-1] = lines[-1].replace(b'"epsilon":0.7', b'"epsilon":0.1')
    write_lines(site_log, lines)
    with pytest.raises(AuditError) as info:
        AuditLog.open(site_log, key, "site-a")
    assert info.value.index == 4


def test_emptied_log_is_not_restarted(site_log, key):
    log_file(site_log).write_bytes(b"")
    expect_bad(site_log, 0, match="empty")
    with pytest.raises(AuditError, match="emptied"):
        AuditLog.open(site_log, key, "site-a")


def test_missing_log_and_blank_line(tmp_path, site_log):
    with pytest.raises(AuditError) as info:
        verify_log(tmp_path / "nothing-here")
    assert info.value.index == -1
    lines = lines_of(site_log)
    write_lines(site_log, [*lines[:2], b"\n", *lines[2:]])
    expect_bad(site_log, 2, match="blank")


def test_read_log_returns_the_good_prefix(site_log):
    lines = lines_of(site_log)
    lines[3] = lines[3].replace(b'"round":0', b'"round":9')
    write_lines(site_log, lines)
    records, error = read_log(site_log)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert error is not None and error.index == 3


_WRITER = """
import sys
from pathlib import Path
from fedjax_room.audit import AuditLog
from fedjax_room.identity import generate_key
state = Path(sys.argv[1])
log = AuditLog.open(state / "audit.jsonl", generate_key(), "coordinator")
i = 0
while i < 1500 and not (state / "stop").exists():
    log.append("round_opened", run_id="r", round=i, sites=["a"])
    i += 1
"""


def test_a_live_log_verifies_while_its_writer_appends(tmp_path: Path):
    """Readers (``audit verify``, tests, the sidebar) check a log the coordinator is still writing.

    The writer (another process, as in the room) appends a record and then replaces the signed head,
    so a reader can land between the two; that is not damage and must not be reported as such.
    """
    import subprocess
    import sys
    import time

    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while not head_path(tmp_path / LOG_FILENAME).exists() or len(verify_log(tmp_path)) < 3:
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.05)
        counts = []
        while writer.poll() is None:
            counts.append(len(verify_log(tmp_path)))
    finally:
        (tmp_path / "stop").touch()
        writer.wait(30)
    assert len(counts) > 5 and counts == sorted(counts) and counts[-1] > counts[0]
    assert len(verify_log(tmp_path)) == 1501
