"""Issue 14 section 5: a log cut to its first record without its head, and a wiped coordinator log.

Before: a log cut to record 0 with its head deleted verified OK and ``AuditLog.open`` appended to it; a
cross-check against a wiped (fresh) coordinator log exited 0 with a warning.
"""

from __future__ import annotations

import stat

import pytest

from fedjax_room.audit import LOG_FILENAME, AuditLog, head_path, verify_log
from fedjax_room.audit.crosscheck import cross_check
from fedjax_room.cli import main
from fedjax_room.errors import AuditError
from fedjax_room.identity import generate_key, save_private_key


def digest(n: int) -> str:
    return f"{n:064x}"


def _cut_to_first_record(state):
    log = state / LOG_FILENAME
    log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])
    head_path(log).unlink()


def test_a_log_cut_to_its_first_record_without_its_head_is_refused(site_log, key):
    _cut_to_first_record(site_log)
    with pytest.raises(AuditError, match="no signed head"):
        verify_log(site_log)
    with pytest.raises(AuditError, match="no signed head"):
        AuditLog.open(site_log, key, "site-a")  # nothing is appended to it
    assert len((site_log / LOG_FILENAME).read_bytes().splitlines()) == 1
    assert main(["audit", "verify", str(site_log)]) == 2
    assert len(verify_log(site_log, head=False)) == 1  # a copied file on its own, by choice


def test_a_new_log_never_has_a_record_without_a_head(tmp_path, key):
    with AuditLog.open(tmp_path / "s", key, "site-a") as log:
        assert log.count == 1
    assert head_path(tmp_path / "s" / LOG_FILENAME).exists()
    assert len(verify_log(tmp_path / "s")) == 1


def test_a_crash_while_creating_the_log_starts_it_again(tmp_path, key, monkeypatch):
    """Record 0's head is written first; if the writer dies before record 0, the next open starts over."""
    state = tmp_path / "s"

    def die(self, data):
        raise OSError("disk gone")

    monkeypatch.setattr(AuditLog, "_append_line", die)
    with pytest.raises(OSError):
        AuditLog.open(state, key, "site-a")
    monkeypatch.undo()
    assert (state / LOG_FILENAME).read_bytes() == b"" and head_path(state / LOG_FILENAME).exists()
    with AuditLog.open(state, key, "site-a") as log:
        log.append("note", text="x")
    assert [r["kind"] for r in verify_log(state)] == ["log_opened", "note"]
    # but a head that counts more than one record over an emptied log is still refused
    (state / LOG_FILENAME).write_bytes(b"")
    with pytest.raises(AuditError, match="emptied"):
        AuditLog.open(state, key, "site-a")


def test_logs_and_heads_are_private(tmp_path, key):
    state = tmp_path / "s"
    with AuditLog.open(state, key, "site-a") as log:
        log.append("note", text="x")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in (state / LOG_FILENAME, head_path(state / LOG_FILENAME)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.fixture
def agreeing(tmp_path, make_log, key):
    """A site log and a coordinator log that agree about run r1."""
    coord_key = generate_key()
    save_private_key(coord_key, tmp_path / "coord.key")
    site = make_log(
        "site-a",
        key,
        [("update_released", {"run_id": "r1", "round": 1, "digest": digest(1), "epsilon": 0.5, "delta": 1e-5})],
    )
    coord = make_log(
        "coordinator",
        coord_key,
        [
            ("run_requested", {"run_id": "r1", "analyst": "ana", "spec_hash": digest(7), "config": {}}),
            ("update_received", {"run_id": "r1", "round": 1, "site": "site-a", "digest": digest(1)}),
        ],
        writer="coordinator",
    )
    assert main(["audit", "cross-check", str(site), str(coord)]) == 0
    return site, coord, coord_key


def test_cross_check_against_a_wiped_coordinator_log_fails(agreeing, capsys):
    site, coord, coord_key = agreeing
    (coord / LOG_FILENAME).unlink()
    head_path(coord / LOG_FILENAME).unlink()
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2  # missing: no log to check against
    AuditLog.open(coord, coord_key, "coordinator").close()  # the coordinator started a fresh log
    capsys.readouterr()
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "no record of that run" in out
    report = cross_check(site, coord)
    assert not report.ok


def test_cross_check_against_a_wiped_site_log_fails(agreeing, key, capsys):
    site, coord, _ = agreeing
    (site / LOG_FILENAME).unlink()
    head_path(site / LOG_FILENAME).unlink()
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2
    AuditLog.open(site, key, "site-a").close()
    capsys.readouterr()
    assert main(["audit", "cross-check", str(site), str(coord)]) == 2
    assert "never released" in capsys.readouterr().out
