"""Cross-checking what a site released against what the coordinator received."""

from __future__ import annotations

import pytest

from fedjax_room.audit import LOG_FILENAME
from fedjax_room.audit.crosscheck import compare_logs, cross_check
from fedjax_room.errors import AuditError, ConfigError
from fedjax_room.identity import generate_key


def digest(n: int) -> str:
    return f"{n:064x}"


def released(rnd: int, d: int, run: str = "r1") -> tuple[str, dict]:
    return ("update_released", {"run_id": run, "round": rnd, "digest": digest(d), "epsilon": 0.5, "delta": 1e-5})


def received(rnd: int, d: int, site: str = "site-a", run: str = "r1") -> tuple[str, dict]:
    return ("update_received", {"run_id": run, "round": rnd, "site": site, "digest": digest(d)})


def aggregated(rnd: int, sites: list[str], run: str = "r1") -> tuple[str, dict]:
    return ("aggregate_applied", {"run_id": run, "round": rnd, "sites": sites, "model_digest": digest(500 + rnd)})


@pytest.fixture
def coord_key():
    return generate_key()


@pytest.fixture
def logs(make_log, key, coord_key):
    """``logs(site_records, coord_records) -> (site_dir, coord_dir)``."""

    made = []

    def make(site_records, coord_records):
        made.append(None)
        n = len(made)
        site = make_log(f"site-a.{n}", key, site_records, writer="site-a")
        coord = make_log(f"coordinator.{n}", coord_key, coord_records, writer="coordinator")
        return site, coord

    return make


def test_agreement(logs, key, coord_key):
    site, coord = logs(
        [released(0, 1), released(1, 2)],
        [received(0, 1), received(0, 9, site="site-b"), aggregated(0, ["site-a", "site-b"]), received(1, 2)],
    )
    report = cross_check(site, coord, site_key=key.public_key(), coordinator_key=coord_key.public_key())
    assert report.ok and report.mismatches == () and report.warnings == ()
    assert (report.site, report.coordinator) == ("site-a", "coordinator")
    assert (report.released, report.received, report.matched) == (2, 2, 2)
    assert report.summary().startswith("OK: site 'site-a' released 2")


def test_release_never_received_is_a_warning(logs):
    site, coord = logs([released(0, 1), released(1, 2)], [received(0, 1)])
    report = cross_check(site, coord)
    assert report.ok
    assert len(report.warnings) == 1 and "round 1" in report.warnings[0] and "straggler" in report.warnings[0]


def test_digest_mismatch(logs):
    site, coord = logs([released(0, 1), released(1, 2)], [received(0, 1), received(1, 3)])
    report = cross_check(site, coord)
    assert not report.ok and report.matched == 1
    (m,) = report.mismatches
    assert "coordinator record 2 (update_received)" in m and "round 1" in m and "altered or substituted" in m
    assert digest(3)[:16] in m and digest(2)[:16] in m


def test_received_but_never_released(logs):
    site, coord = logs([released(0, 1)], [received(0, 1), received(1, 2)])
    report = cross_check(site, coord)
    (m,) = report.mismatches
    assert "round 1" in m and "never released" in m


def test_received_for_another_run(logs):
    site, coord = logs([released(0, 1)], [received(0, 1, run="r2")])
    report = cross_check(site, coord)
    assert len(report.mismatches) == 2 and "'r2'" in report.mismatches[0]
    assert len(report.warnings) == 1  # r1's release was never received
    assert "no record of that run" in report.mismatches[1]  # and the coordinator's log never mentions r1


def test_site_released_two_different_updates_for_one_round(logs):
    site, coord = logs([released(0, 1), released(0, 2)], [received(0, 1)])
    report = cross_check(site, coord)
    assert any("site released different updates" in m for m in report.mismatches)


def test_coordinator_recorded_two_updates_for_one_round(logs):
    site, coord = logs([released(0, 1)], [received(0, 1), received(0, 2)])
    report = cross_check(site, coord)
    assert any("coordinator recorded different updates" in m for m in report.mismatches)
    site, coord = logs([released(0, 1)], [received(0, 1), received(0, 1)])
    report = cross_check(site, coord)
    assert report.ok and any("2 times" in w for w in report.warnings)


def test_aggregated_without_receipt(logs):
    site, coord = logs([released(0, 1)], [received(0, 1), aggregated(1, ["site-a"])])
    report = cross_check(site, coord)
    (m,) = report.mismatches
    assert "aggregate_applied" in m and "never recorded receiving" in m


def test_other_sites_are_ignored(logs):
    site, coord = logs([released(0, 1)], [received(0, 1), received(0, 77, site="site-b")])
    report = cross_check(site, coord)
    assert report.ok and report.received == 1


def test_swapped_arguments_are_refused(logs):
    site, coord = logs([released(0, 1)], [received(0, 1)])
    with pytest.raises(ConfigError, match="SITE_DIR COORD_DIR"):
        cross_check(coord, site)


def test_malformed_records_are_mismatches(logs):
    # compare_logs also takes records that did not pass through AuditLog.append's checks
    site, coord = logs([released(0, 1)], [received(0, 1)])
    from fedjax_room.audit import verify_log

    s, c = verify_log(site), verify_log(coord)
    s[1]["fields"]["round"] = "0"
    c[1]["fields"]["digest"] = "not-hex"
    report = compare_logs(s, c)
    assert len(report.mismatches) == 2 and all("malformed" in m for m in report.mismatches)


def test_a_log_that_does_not_verify_stops_the_check(logs, key):
    site, coord = logs([released(0, 1)], [received(0, 1)])
    path = coord / LOG_FILENAME
    path.write_bytes(path.read_bytes().replace(digest(1).encode(), digest(2).encode()))
    with pytest.raises(AuditError) as info:
        cross_check(site, coord)
    assert info.value.index == 1
    with pytest.raises(AuditError) as info:
        cross_check(site, site.parent / "coordinator.1", site_key=generate_key().public_key())
    assert info.value.index == 0


EMPTY = 404  # the digest of an empty (accounting-only) update payload


def masked_released(rnd: int, d: int, run: str = "r1") -> tuple[str, dict]:
    return ("masked_input_released", {"run_id": run, "round": rnd, "digest": digest(d)})


def masked_received(rnd: int, d: int, site: str = "site-a", run: str = "r1") -> tuple[str, dict]:
    return ("masked_input_received", {"run_id": run, "round": rnd, "site": site, "digest": digest(d)})


def secure_aggregated(rnd: int, sites: list[str], run: str = "r1") -> tuple[str, dict]:
    kind, fields = aggregated(rnd, sites, run)
    return kind, {**fields, "secure": True}


def test_secure_round_matches_masked_inputs(logs):
    site, coord = logs(
        [released(0, EMPTY), masked_released(0, 7)],
        [
            received(0, EMPTY),
            masked_received(0, 7),
            masked_received(0, 8, site="site-b"),
            secure_aggregated(0, ["site-a"]),
        ],
    )
    report = cross_check(site, coord)
    assert report.ok, report.mismatches
    assert (report.masked_released, report.masked_received, report.masked_matched) == (1, 1, 1)
    assert "masked inputs (secure aggregation): 1 released, 1 received, 1 matched" in report.summary()


def test_substituted_masked_input_is_a_mismatch(logs):
    site, coord = logs(
        [released(0, EMPTY), masked_released(0, 7)],
        [received(0, EMPTY), masked_received(0, 9), secure_aggregated(0, ["site-a"])],
    )
    report = cross_check(site, coord)
    assert not report.ok and report.masked_matched == 0
    (m,) = report.mismatches
    assert "masked input" in m and "altered or substituted" in m and digest(9)[:16] in m


def test_secure_aggregate_without_a_recorded_masked_input_is_a_mismatch(logs):
    site, coord = logs(
        [released(0, EMPTY), masked_released(0, 7)], [received(0, EMPTY), secure_aggregated(0, ["site-a"])]
    )
    report = cross_check(site, coord)
    assert not report.ok
    assert any("securely aggregated" in m and "never recorded receiving one" in m for m in report.mismatches)
    assert any("masked input" in w and "never recorded as received" in w for w in report.warnings)


def test_masked_records_in_the_wrong_log_are_refused(logs):
    site, coord = logs([masked_received(0, 7)], [received(0, 1)])
    with pytest.raises(ConfigError, match="looks like a coordinator log"):
        cross_check(site, coord)


def test_a_rounds_train_and_eval_masked_inputs_are_paired_each_with_its_own(logs):
    def phased(record, phase):
        kind, fields = record
        return kind, {**fields, "phase": phase}

    site_records = [released(0, EMPTY), phased(masked_released(0, 7), "train"), phased(masked_released(0, 8), "eval")]
    coord_records = [
        received(0, EMPTY),
        phased(masked_received(0, 7), "train"),
        phased(masked_received(0, 8), "eval"),
        secure_aggregated(0, ["site-a"]),
    ]
    report = cross_check(*logs(site_records, coord_records))
    assert report.ok, report.mismatches  # two sessions in one round, not "two different masked inputs"
    assert (report.masked_released, report.masked_received, report.masked_matched) == (1, 1, 1)  # the update's
    swapped = [*coord_records[:1], phased(masked_received(0, 8), "train"), phased(masked_received(0, 7), "eval")]
    report = cross_check(*logs(site_records, [*swapped, coord_records[-1]]))
    assert not report.ok and any("masked evaluation input" in m for m in report.mismatches)
