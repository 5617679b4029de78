"""The analyst client against a real coordinator process: auth errors, a running event loop, reconnects."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

import fedjax_room
from fedjax_room.analyst import BudgetReport, PrivacyReport, RoundResult
from fedjax_room.coordinator.store import Store
from fedjax_room.errors import ConfigError, ModelSpecError, RefusedError, UnknownIdentityError
from fedjax_room.identity import fingerprint, generate_key, public_key_bytes, save_private_key
from fedjax_room.models import logistic
from fedjax_room.sim.launch import spawn_coordinator, stop_process


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    state = tmp_path_factory.mktemp("coord")
    keys = tmp_path_factory.mktemp("analyst-keys")
    key = generate_key()
    save_private_key(key, keys / "analyst.key")
    store = Store.open(state)
    store.enroll("analyst", "analyst", public_key_bytes(key), fingerprint(key))
    store.close()
    proc, url = spawn_coordinator(state)
    shutil.copyfile(state / "coordinator.key.pub", keys / "coordinator.key.pub")  # the analyst pins it
    box = {"proc": proc, "url": url, "state": state, "key": keys / "analyst.key"}
    yield box
    stop_process(box["proc"])


@pytest.mark.slow
def test_connect_errors(coordinator, tmp_path):
    stranger = tmp_path / "stranger.key"
    save_private_key(generate_key(), stranger)
    with pytest.raises(UnknownIdentityError):
        fedjax_room.connect(
            coordinator["url"], key=stranger, coordinator_key=coordinator["state"] / "coordinator.key.pub"
        )
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        fedjax_room.connect("ws://127.0.0.1:9", key=coordinator["key"], timeout=2.0)
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError):
        fedjax_room.connect("http://example.org", key=coordinator["key"])


@pytest.mark.slow
def test_sync_api_inside_a_running_event_loop(coordinator):
    async def notebook_cell():  # as in Jupyter, where a loop is already running
        room = fedjax_room.connect(coordinator["url"], key=coordinator["key"])
        try:
            assert room.sites() == [] and isinstance(room.budget(), BudgetReport)
            kinds = [r["kind"] for r in room.audit(last=50)]
            assert "identity_enrolled" in kinds
        finally:
            room.close()

    asyncio.run(notebook_cell())


@pytest.mark.slow
def test_runs_without_sites_fail_clearly_and_local_validation(coordinator):
    with fedjax_room.connect(coordinator["url"], key=coordinator["key"]) as room:
        with pytest.raises(ModelSpecError):
            room.train({"family": "rnn"})
        with pytest.raises(ConfigError, match="needs secure_aggregation=True"):
            room.train(logistic([4], 2), secure_aggregation=False, site_noise_multiplier=1.0)
        with pytest.raises(ConfigError, match="exactly one"):
            room.train(logistic([4], 2), target_epsilon=1.0, noise_multiplier=1.0)
        run = room.train(logistic([4], 2), rounds=1, round_timeout=1.0)
        assert run.wait(30) is run
        assert run.status == "failed" and isinstance(run.error, RefusedError)
        assert "no site was connected" in run.error.message
        assert list(run.rounds()) == [] and run.history == []
        assert run.id in {r.id for r in room.runs()}
        with pytest.raises(ConfigError, match="no run"):
            room.run("run-999")


@pytest.mark.slow
def test_client_reconnects_after_the_coordinator_restarts(coordinator):
    room = fedjax_room.connect(coordinator["url"], key=coordinator["key"])
    try:
        before = [r.id for r in room.runs()]
        coordinator["proc"].kill()
        coordinator["proc"].wait(10)
        port = int(coordinator["url"].rsplit(":", 1)[1])
        coordinator["proc"], _ = spawn_coordinator(coordinator["state"], port=port)
        assert [r.id for r in room.runs()] == before  # waits for the reconnection, then answers
    finally:
        room.close()


def test_result_records_parse_plain_data():
    rr = RoundResult.from_dict(
        {"round": 2, "sites": ["a"], "dropped": [], "loss": None, "accuracy": 0.5, "epsilon": {"a": 1}}
    )
    assert rr.sites == ("a",) and rr.loss is None and rr.epsilon == {"a": 1.0}
    report = PrivacyReport.from_dict("run-1", {"b": {"epsilon": 1.0, "delta": 1e-5, "cap": 3, "remaining": 2}})
    assert report["b"].remaining == 2.0 and list(report) == ["b"] and report.max_epsilon == 1.0
    assert report.to_dict()["sites"]["b"]["cap"] == 3.0
