"""One embedded room (coordinator + 3 site processes on loopback) shared by several must-show tests."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import numpy as np
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.data import load_dataset
from fedjax_room.errors import ConfigError, RoleError, UnknownIdentityError
from fedjax_room.identity import fingerprint, generate_key, load_private_key, public_key_bytes
from fedjax_room.models import logistic
from fedjax_room.sim.demo import start_room
from fedjax_room.site.ledger import Ledger
from fedjax_room.transport.client import open_connection

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
FAST = {"local_steps": 10, "batch_size": 32, "learning_rate": 1.0}


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    state = tmp_path_factory.mktemp("room")
    er = start_room(
        sites=3,
        dataset="digits",
        state_dir=state,
        policy={"epsilon_cap": 10.0, "min_sites": 1},
        policies={"site-c": {"epsilon_cap": 2.0, "min_sites": 1}},
    )
    client = er.connect()
    yield er, client
    client.close()
    er.stop()


def _rows(er):
    rows = []
    for name in er.site_names:
        for part in ("train", "heldout"):
            rows.append(load_dataset(er.site_dir(name) / f"{part}.npz").x.reshape(-1, 64))
    rows.append(er.central_test().x.reshape(-1, 64))
    return np.concatenate(rows)


def _walk(obj, out):
    """Collect every array-like (numpy arrays, numeric lists) in a result."""
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _walk(dataclasses.asdict(obj), out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk(v, out)
    elif isinstance(obj, list | tuple):
        if obj and all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj):
            out.append(np.asarray(obj, np.float64))
        for v in obj:
            _walk(v, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        _walk({k: v for k, v in vars(obj).items() if not k.startswith("_")}, out)


def _assert_no_record(arrays, rows):
    row_set = {r.astype(np.float32).tobytes() for r in rows}
    for arr in arrays:
        a = np.asarray(arr, np.float64)
        candidates = []
        if a.ndim >= 1 and a.shape[-1] == 64:
            candidates.append(a.reshape(-1, 64))
        if a.ndim == 2 and a.shape[0] == 64:
            candidates.append(a.T)
        if a.size % 64 == 0 and a.size:
            candidates.append(a.reshape(-1, 64))
        for cand in candidates:
            for vec in cand:
                assert vec.astype(np.float32).tobytes() not in row_set, "a training row came back"
                dist = np.min(np.abs(rows - vec).sum(axis=1))
                assert dist > 1e-3, "an array in a result is (nearly) a data row"


def test_refused_identities_leave_the_room_running(room):
    er, client = room
    site_key = load_private_key(er.state_dir / "keys" / "site-a.key")
    pin = er.manifest_path

    async def attempts():
        with pytest.raises(UnknownIdentityError):
            await open_connection(er.url, generate_key(), role="site", name="intruder", coordinator_key=pin)
        with pytest.raises(RoleError):
            await open_connection(er.url, load_private_key(er.analyst_key), role="site", coordinator_key=pin)
        with pytest.raises(RoleError):  # a site key claiming the analyst role
            await open_connection(er.url, site_key, role="analyst", coordinator_key=pin)

    asyncio.run(attempts())
    assert {s.name for s in client.sites() if s.status == "connected"} == {"site-a", "site-b", "site-c"}


def test_analyst_api_returns_no_records(room):
    er, client = room
    rows = _rows(er)
    with pytest.raises(ConfigError, match="needs secure_aggregation=True"):
        # distributed DP without masking would show less-noised updates
        client.train(SPEC, site_noise_multiplier=1.0, secure_aggregation=False)
    seen = []
    run = client.train(SPEC, rounds=2, target_epsilon=3.0, **FAST)
    run.subscribe(lambda r: seen.append((r, client.budget())), kinds={"round"})  # a callback may call the room
    streamed = list(run.rounds(timeout=120))
    run.wait(120)
    assert run.status == "finished", run.error
    assert [r.round for r in streamed] == [1, 2]
    for _ in range(100):  # callbacks run on their own thread
        if seen and seen[-1][0].round == 2:
            break
        time.sleep(0.1)
    assert seen and seen[-1][0].round == 2 and "site-a" in seen[-1][1]
    # site-c's cap (2.0) is below the target: it refused the run, the others trained
    assert [(r.site, r.reason) for r in run.refusals] == [("site-c", "epsilon_cap")]
    assert set(streamed[-1].sites) == {"site-a", "site-b"}
    for name, p in run.privacy.sites.items():
        assert p.epsilon <= 3.0 and p.cap == 10.0, (name, p)
    sites = client.sites()
    for s in sites:
        assert s.record_count.startswith("~") and set(s.schema) == {"features", "feature_shape", "label", "classes"}
    results = [
        sites,
        client.runs(),
        streamed,
        run.history,
        run.privacy,
        run.params,
        run.refusals,
        run.error,
        run.status,
        run.spec.to_dict(),
        run.config,
        client.budget(),
        client.audit(last=1000),
        client.run(run.id).history,
        seen,
    ]
    arrays = []
    _walk(results, arrays)
    assert any(a.shape == (64, 10) for a in arrays)  # the model itself is there, and checked
    _assert_no_record(arrays, rows)
    budget = client.budget()
    assert budget["site-a"].epsilon_spent <= budget["site-a"].epsilon_cap
    audit = client.audit(last=5)
    assert len(audit) == 5 and audit[-1]["kind"] == "model_downloaded"


def test_cap_refusal_ends_the_run_and_the_ledger_never_passes_the_cap(room):
    er, client = room
    run = client.train(SPEC, rounds=12, target_epsilon=None, noise_multiplier=2.0, min_sites=3, **FAST)
    run.wait(180)
    assert run.status == "failed"
    message = run.error.message
    assert "site-c refused (epsilon_cap" in message and "needs at least 3" in message, message
    refusal = [r for r in run.refusals if r.site == "site-c"][-1]
    assert refusal.reason == "epsilon_cap" and refusal.round is not None and refusal.round > 1
    ledger = Ledger.open(er.site_dir("site-c") / "state" / "ledger.json", epsilon_cap=2.0, delta=1e-5)
    assert 0 < ledger.epsilon() <= 2.0
    assert len(ledger.tags) == len(set(ledger.tags))  # nothing counted twice
    report = client.budget()["site-c"]
    assert report.epsilon_spent <= report.epsilon_cap == 2.0 and not math.isnan(report.remaining)


def test_straggler_is_dropped_and_the_round_completes(room, fake_straggler_cls):
    er, client = room
    key = generate_key()
    store = Store.open(er.coordinator_dir)
    store.enroll("site-z", "site", public_key_bytes(key), fingerprint(key))
    store.close()
    schema = load_dataset(er.site_dir("site-a") / "train.npz").schema.to_dict()
    straggler = fake_straggler_cls(er.url, key, "site-z", schema, er.manifest_path).start()
    try:
        # plain mode: site-z is in no room manifest, so the honest sites rightly refuse a SecAgg session with it
        # (a secure round's dropouts are tests/integration/test_secure_room.py's)
        run = client.train(
            SPEC, rounds=1, target_epsilon=1.0, min_sites=2, round_timeout=20.0, secure_aggregation=False, **FAST
        )
        run.wait(120)
    finally:
        straggler.stop()
    assert run.status == "finished", run.error
    (r,) = run.history
    assert {"site-a", "site-b"} <= set(r.sites) and "site-z" not in r.sites and r.dropped == ("site-z",)
    assert any(getattr(msg, "phase", "") == "train" for msg in straggler.seen)  # it was asked, never answered
