"""After a kernel restart: a new connection re-attaches to a run, running or finished, and the analyst evaluates
and exports its model (a real room: coordinator and sites as processes, over websockets).

One room for the whole module (about 20 s to start on two cores): the run is started on one connection that is
then closed (the kernel died), followed to its end from a second, and read again, finished, from a third.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROUNDS = 3


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    demo = pytest.importorskip("fedjax_room.sim.demo")
    with demo.start_room(sites=2, dataset="digits", state_dir=tmp_path_factory.mktemp("room"), seed=3) as er:
        yield er


@pytest.fixture(scope="module")
def started(room):
    from fedjax_room.models import logistic

    first = room.connect()
    run = first.train(
        logistic([64], 10),
        rounds=ROUNDS,
        target_epsilon=3.0,
        local_steps=20,
        batch_size=48,
        learning_rate=0.5,
        server_optimizer="fedavg",  # this recipe's (RunConfig's defaults are for one full-batch step a round)
        server_learning_rate=1.0,
        clip_norm=1.0,
        model_average=0.0,
    )
    run_id = run.id
    first.close()  # the kernel restarts: this connection and its Run object are gone
    return run_id


def test_a_new_connection_follows_a_running_run_to_its_end(room, started):
    second = room.connect()
    try:
        run = second.run(started)
        assert run.id == started and run.status in ("pending", "running")  # attached while it still runs
        assert run.spec is not None and run.spec.num_classes == 10 and run.config["rounds"] == ROUNDS
        progress = []
        run.subscribe(progress.append, kinds={"progress"})  # inside each round: sites answered so far
        rounds = [r.round for r in run.rounds(timeout=300)]
        assert rounds == list(range(1, ROUNDS + 1))  # the rounds before it attached, then the rest, once each
        run.wait(timeout=60)
        assert run.status == "finished", run.error
        last = [(p.phase, p.answered, p.cohort) for p in progress if p.round == ROUNDS and p.phase == "train"]
        assert last == [("train", 0, 2), ("train", 1, 2), ("train", 2, 2)]  # pushed over the websocket
        assert progress[-1].round == ROUNDS and run.progress is None  # none is left open once the run ended
        assert sorted(run.privacy.sites) == ["site-a", "site-b"] and 0 < run.privacy.max_epsilon <= 3.0 + 1e-6
        assert run.params["dense_0"]["kernel"].shape == (64, 10)
    finally:
        second.close()


def test_a_finished_run_reattaches_with_its_history_and_model(room, started):
    follow = room.connect()
    try:
        live = follow.run(started).wait(timeout=300)
        assert live.status == "finished", live.error
        history, params = live.history, live.params
    finally:
        follow.close()
    third = room.connect()  # another restart, after the run ended
    try:
        run = third.run(started)
        assert run.status == "finished" and run.done and run.rounds_done == ROUNDS
        assert run.history == history  # every round's DP-noised metrics and epsilon, as the live run saw them
        again = run.params
        assert np.array_equal(again["dense_0"]["kernel"], params["dense_0"]["kernel"])
        assert np.array_equal(again["dense_0"]["bias"], params["dense_0"]["bias"])
        assert third.run(started) is run  # one Run per id on a connection
    finally:
        third.close()


def test_evaluate_and_export_the_reattached_model(room, started, tmp_path):
    from fedjax_room.data import load_builtin
    from fedjax_room.models import load, make_predict_fn

    data = load_builtin("digits", seed=11)  # the analyst's own labelled data (not any site's records)
    x, y = data.x[:300], data.y[:300]
    conn = room.connect()
    try:
        run = conn.run(started).wait(timeout=300)
        evaluation = run.evaluate((x, y))
        predicted = np.asarray(make_predict_fn(run.spec)(run.params, x)).argmax(1)
        correct = sum(1 for p, t in zip(predicted, y, strict=True) if p == t)  # the hand count
        assert evaluation.n == 300 and evaluation.accuracy == correct / 300
        for true_class in range(10):
            for said in range(10):
                count = sum(1 for p, t in zip(predicted, y, strict=True) if t == true_class and p == said)
                assert evaluation.confusion[true_class][said] == count
        assert evaluation.accuracy > 0.5  # a trained model, not chance (0.1)
        for suffix in (".msgpack", ".npz"):
            path = run.export(tmp_path / f"model{suffix}")
            model = load(path)
            assert np.array_equal(model.predict(x), predicted)
            assert model.metadata["run_id"] == started and model.metadata["rounds_done"] == ROUNDS
            assert set(model.metadata["epsilon"]) == {"site-a", "site-b"}
        np.savez(tmp_path / "mine.npz", x=x, y=y)
        assert run.evaluate(tmp_path / "mine.npz") == evaluation
    finally:
        conn.close()
