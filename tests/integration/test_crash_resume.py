"""kill -9 the coordinator mid-run: it resumes, the model equals an uncrashed run's, no privacy counted twice."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.models import logistic
from fedjax_room.protocol.codec import flatten_tree
from fedjax_room.protocol.evaluation import eval_rounds
from fedjax_room.sim.demo import start_room
from fedjax_room.site.ledger import Ledger

pytestmark = pytest.mark.slow

SPEC = logistic([64], 10)
CONFIG = {"rounds": 3, "target_epsilon": 2.0, "local_steps": 10, "batch_size": 32, "learning_rate": 1.0, "seed": 7}
SITES = ("site-a", "site-b")


def _room(state, secrets):
    # Same site secrets in both rooms: the same noise, so the two runs are comparable bit for bit.
    for name, secret in secrets.items():
        folder = state / "sites" / name / "state"
        folder.mkdir(parents=True)
        (folder / "secret").write_bytes(secret)
        os.chmod(folder / "secret", 0o600)
    return start_room(sites=2, dataset="digits", state_dir=state, policy={"epsilon_cap": 10.0, "min_sites": 2})


def _ledger_tags(er, name):
    return Ledger.open(er.site_dir(name) / "state" / "ledger.json", epsilon_cap=10.0, delta=1e-5).tags


def test_kill_9_mid_run_resumes_to_the_same_model(tmp_path):
    secrets = {name: os.urandom(32) for name in SITES}

    with _room(tmp_path / "reference", secrets) as er:
        client = er.connect()
        run = client.train(SPEC, **CONFIG)
        run.wait(180)
        assert run.status == "finished", run.error
        reference = flatten_tree(run.params)
        client.close()

    with _room(tmp_path / "crashed", secrets) as er:
        client = er.connect()
        run = client.train(SPEC, **CONFIG)
        rounds = run.rounds(timeout=120)
        first = next(rounds)
        assert first.round == 1
        er.restart_coordinator(kill=True)  # SIGKILL while round 2 is being trained
        run.wait(180)  # the client reconnects and follows the resumed run
        assert run.status == "finished", run.error
        assert [r.round for r in run.history] == [1, 2, 3]
        crashed = flatten_tree(run.params)
        client.close()

        for name in SITES:
            tags = _ledger_tags(er, name)
            assert tags[0] == "@size/0/count"  # the site's one DP count of its sizes (site.public_size), then the run
            tags = tags[1:]
            # each release spent once: every round's update, and the evaluations of the schedule (halfway, last)
            evals = len(eval_rounds(CONFIG["rounds"], None))
            assert len(tags) == len(set(tags)) == CONFIG["rounds"] + evals, tags
            audit = (er.site_dir(name) / "state" / "audit.jsonl").read_text()
            assert audit.count('"update_released"') == CONFIG["rounds"]
        store = Store.open(er.coordinator_dir)
        try:
            assert store.run("run-1").rounds_done == CONFIG["rounds"]
        finally:
            store.close()
        log = (er.state_dir / "coordinator" / "logs" / "coordinator.log").read_text()
        assert "resuming run run-1" in log

    assert set(crashed) == set(reference)
    for path in reference:
        np.testing.assert_array_equal(crashed[path], reference[path], err_msg=path)
