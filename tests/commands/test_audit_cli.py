"""``fedjax-room audit verify | show | cross-check``: exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedjax_room.audit import LOG_FILENAME, AuditLog, head_path
from fedjax_room.cli import main
from fedjax_room.identity import generate_key, load_private_key, save_private_key

ROOT = Path(__file__).resolve().parents[2]


def digest(n: int) -> str:
    return f"{n:064x}"


def make_log(state: Path, key, writer: str, records) -> Path:
    t0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    ticks = iter(range(10_000))
    with AuditLog.open(state, key, writer, clock=lambda: t0 + timedelta(seconds=next(ticks))) as log:
        for kind, fields in records:
            log.append(kind, **fields)
    return state


@pytest.fixture
def rooms(tmp_path):
    """A site and a coordinator state dir whose logs agree, plus their public key files."""
    site_key, coord_key = generate_key(), generate_key()
    save_private_key(site_key, tmp_path / "site.key")
    save_private_key(coord_key, tmp_path / "coord.key")
    site = make_log(
        tmp_path / "site",
        site_key,
        "site-a",
        [
            ("run_approved", {"run_id": "r1", "spec_hash": digest(7), "reason": ""}),
            ("update_released", {"run_id": "r1", "round": 0, "digest": digest(1), "epsilon": 0.5, "delta": 1e-5}),
            ("update_released", {"run_id": "r1", "round": 1, "digest": digest(2), "epsilon": 0.7, "delta": 1e-5}),
            ("run_approved", {"run_id": "r2", "spec_hash": digest(8), "reason": ""}),
        ],
    )
    coord = make_log(
        tmp_path / "coord",
        coord_key,
        "coordinator",
        [
            ("run_requested", {"run_id": "r1", "analyst": "ana", "spec_hash": digest(7), "config": {"rounds": 2}}),
            ("update_received", {"run_id": "r1", "round": 0, "site": "site-a", "digest": digest(1)}),
            ("update_received", {"run_id": "r1", "round": 1, "site": "site-a", "digest": digest(2)}),
        ],
    )
    return site, coord, tmp_path / "site.key.pub", tmp_path / "coord.key.pub"


def tamper(state: Path, old: bytes, new: bytes) -> None:
    path = state / LOG_FILENAME
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def test_verify_ok(rooms, capsys):
    site, _, site_pub, _ = rooms
    for target in (site, site / LOG_FILENAME):
        assert main(["audit", "verify", str(target), "--key", str(site_pub)]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and out[0].startswith("OK: ") and "5 records by 'site-a'" in out[0]


def test_verify_names_the_first_bad_record(rooms, capsys):
    site, *_ = rooms
    tamper(site, b'"epsilon":0.7', b'"epsilon":0.1')
    assert main(["audit", "verify", str(site)]) == 2
    err = capsys.readouterr().err
    assert "record 3 (update_released) on line 4" in err and "signature that does not verify" in err


def test_verify_with_the_wrong_key_fails(rooms, capsys):
    site, _, _, coord_pub = rooms
    assert main(["audit", "verify", str(site), "--key", str(coord_pub)]) == 2
    assert "record 0 (log_opened)" in capsys.readouterr().err


def test_verify_deleted_last_record_and_head(rooms, capsys):
    site, *_ = rooms
    path = site / LOG_FILENAME
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    assert main(["audit", "verify", str(site)]) == 2
    assert "record 4 is missing" in capsys.readouterr().err
    head_path(path).unlink()
    assert main(["audit", "verify", str(site)]) == 2
    assert "--no-head" in capsys.readouterr().err
    assert main(["audit", "verify", str(site), "--no-head"]) == 0
    assert "4 records" in capsys.readouterr().out


def test_show_table_and_filters(rooms, capsys):
    site, *_ = rooms
    assert main(["audit", "show", str(site)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["#", "TIME", "(UTC)", "WRITER", "KIND", "RUN", "ROUND", "DETAILS"]
    assert len(out) == 6 and "log_opened" in out[1] and "2025-01-01 12:00:00" in out[1]
    assert "update_released" in out[3] and "epsilon=0.7" in out[4] and digest(2)[:12] in out[4]
    assert main(["audit", "show", str(site), "--run", "r2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "r2" in out[1]
    assert main(["audit", "show", str(site), "--kind", "update_released", "--kind", "log_opened", "--last", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == ["2", "3"]
    assert main(["audit", "show", str(site), "--run", "nope"]) == 0
    assert "no records match" in capsys.readouterr().out


def test_show_json(rooms, capsys):
    site, *_ = rooms
    assert main(["audit", "show", str(site), "--json", "--kind", "update_released"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["index"], r["fields"]["round"], r["fields"]["digest"]) for r in rows] == [
        (2, 0, digest(1)),
        (3, 1, digest(2)),
    ]
    assert all(len(r["sig"]) == 128 for r in rows)


def test_show_a_tampered_log_up_to_the_bad_record(rooms, capsys):
    site, *_ = rooms
    tamper(site, b'"round":1', b'"round":5')
    assert main(["audit", "show", str(site), "--json"]) == 2
    captured = capsys.readouterr()
    assert [json.loads(line)["index"] for line in captured.out.splitlines()] == [0, 1, 2]
    assert "record 3" in captured.err


def test_cross_check_ok(rooms, capsys):
    site, coord, site_pub, coord_pub = rooms
    args = ["audit", "cross-check", str(site), str(coord), "--site-key", str(site_pub), "--coord-key", str(coord_pub)]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["OK: site 'site-a' released 2 update(s), coordinator 'coordinator' received 2 from it, "
                   "2 matched; 0 mismatch(es), 0 warning(s)"]  # fmt: skip


def test_cross_check_warning_still_ok(rooms, tmp_path, capsys):
    site, coord, *_ = rooms
    with AuditLog.open(site, load_private_key(tmp_path / "site.key"), "site-a") as log:
        log.append("update_released", run_id="r1", round=2, digest=digest(3), epsilon=0.9, delta=1e-5)
    assert main(["audit", "cross-check", str(site), str(coord)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("warning: site record 5") and "round 2" in out[1]


def test_cross_check_mismatch(rooms, tmp_path, capsys):
    site, coord, *_ = rooms
    with AuditLog.open(coord, load_private_key(tmp_path / "coord.key"), "coordinator") as log:
        log.append("update_received", run_id="r1", round=2, site="site-a", digest=digest(4))
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MISMATCH: site 'site-a'")
    assert out[1].startswith("MISMATCH: coordinator record 4 (update_received)") and "never released" in out[1]


def test_cross_check_of_a_broken_log_exits_2(rooms, capsys):
    site, coord, *_ = rooms
    tamper(coord, digest(2).encode(), digest(3).encode())
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2
    assert "record 3 (update_received)" in capsys.readouterr().err


def test_verify_a_directory_without_a_log(tmp_path, capsys):
    assert main(["audit", "verify", str(tmp_path)]) == 2
    assert "no audit log at" in capsys.readouterr().err


def test_audit_without_subcommand_prints_help(capsys):
    assert main(["audit"]) == 2  # a command line that does nothing: its usage, on stderr, exit 2
    assert "cross-check" in capsys.readouterr().err


def test_real_subprocess(rooms):
    _, coord, *_ = rooms
    tamper(coord, b'"round":1', b'"round":2')
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "fedjax_room", "audit", "verify", str(coord)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("fedjax-room: error: ") and "record 3 (update_received) on line 4" in proc.stderr
