"""The one server optimiser: numpy FedAvg / FedAdam / FedYogi, bias-corrected exactly as optax defines them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_room.coordinator.store import Store
from fedjax_room.errors import ConfigError, StateError
from fedjax_room.robust.server import SERVER_OPTIMIZERS, server_optimizer


def _optax(name: str, lr: float) -> optax.GradientTransformation:
    if name == "fedadam":
        return optax.adam(lr, b1=0.9, b2=0.99, eps=1e-3)
    # optax.yogi with its accumulators starting at zero (optax.yogi itself starts them at 1e-6)
    return optax.chain(
        optax.scale_by_yogi(b1=0.9, b2=0.99, eps=1e-3, initial_accumulator_value=0.0), optax.scale_by_learning_rate(lr)
    )


def _run_optax(name: str, lr: float, params: dict, deltas: list[dict]) -> dict:
    tx = _optax(name, lr)
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for d in deltas:
        updates, state = tx.update(jax.tree.map(lambda x: -jnp.asarray(x), d), state, p)
        p = optax.apply_updates(p, updates)
    return jax.tree.map(np.asarray, p)


def _run_numpy(name: str, lr: float, params: dict, deltas: list[dict]) -> tuple[dict, dict]:
    opt = server_optimizer(name, lr)
    state = opt.init(params)
    for d in deltas:
        params, state = opt.update(d, state, params)
    return params, state


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimisers_match_optax_over_several_steps(name: str) -> None:
    rng = np.random.default_rng(3)
    params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)}}
    deltas = [
        {"dense": {"kernel": rng.normal(scale=0.1, size=(4, 3)).astype(np.float32), "bias": rng.normal(size=3)}}
        for _ in range(8)
    ]
    deltas = [jax.tree.map(lambda x: np.asarray(x, np.float32), d) for d in deltas]
    ours, state = _run_numpy(name, 0.05, params, deltas)
    theirs = _run_optax(name, 0.05, params, deltas)
    for path in ("kernel", "bias"):
        np.testing.assert_allclose(ours["dense"][path], theirs["dense"][path], rtol=0, atol=1e-6)
        assert ours["dense"][path].dtype == np.float32
    assert int(state["count"]) == 8 and set(state) == {"count", "m", "v"}


@pytest.mark.parametrize(
    "name, expected",
    # issue 15's 3-step check (lr 0.01, delta [0.1, -0.2, 0.3] three times from zero): the room's old FedAdam
    # (no bias correction) gave [0.0365, -0.0378, 0.0383]; bias-corrected, each step moves ~lr * sign(delta)
    [("fedadam", [0.0297, -0.0299, 0.0299]), ("fedyogi", [0.0296, -0.0298, 0.0298])],
)
def test_the_issue_3_step_check(name: str, expected: list[float]) -> None:
    params = {"w": np.zeros(3, np.float32)}
    delta = {"w": np.array([0.1, -0.2, 0.3], np.float32)}
    ours, _ = _run_numpy(name, 0.01, params, [delta] * 3)
    np.testing.assert_allclose(ours["w"], expected, atol=1e-4)
    np.testing.assert_allclose(ours["w"], _run_optax(name, 0.01, params, [delta] * 3)["w"], rtol=0, atol=1e-7)


def test_fedavg_moves_by_the_learning_rate_times_the_delta() -> None:
    params = {"w": np.array([1.0, 2.0], np.float32)}
    opt = server_optimizer("fedavg", 0.5)
    new, state = opt.update({"w": np.array([2.0, -4.0], np.float32)}, opt.init(params), params)
    np.testing.assert_array_equal(new["w"], np.array([2.0, 0.0], np.float32))
    assert int(state["count"]) == 1 and set(state) == {"count"}


def test_an_old_checkpoint_resumes_with_bias_correction_at_its_count(tmp_path) -> None:
    """A FedAdam state checkpointed before bias correction (count 2, zero-initialised EMAs m and v: the same tree)
    loads unchanged from the store, and its next step corrects at t = 3."""
    store = Store.open(tmp_path / "room")
    params = {"w": np.array([0.5, -0.5], np.float32)}
    d = np.array([0.1, -0.2], np.float32)
    b1, b2 = np.float32(0.9), np.float32(0.99)
    m = ((1 - b1) * d + b1 * (1 - b1) * d).astype(np.float32)  # two rounds of the same delta, from zero
    v = ((1 - b2) * d * d + b2 * (1 - b2) * d * d).astype(np.float32)
    old_state = {"count": np.asarray(2, np.int64), "m": {"w": m}, "v": {"w": v}}
    store.save_checkpoint("run-old", 2, params, old_state)
    loaded_params, loaded_state, _ = store.load_checkpoint("run-old", 2)
    store.close()
    opt = server_optimizer("fedadam", 0.01)
    new, state = opt.update({"w": d}, loaded_state, loaded_params)
    m3 = b1 * m + (1 - b1) * d
    v3 = b2 * v + (1 - b2) * d * d
    want = params["w"] + np.float32(0.01) * (m3 / (1 - b1**3)) / (np.sqrt(v3 / (1 - b2**3)) + np.float32(1e-3))
    np.testing.assert_allclose(new["w"], want, rtol=1e-6)
    assert int(state["count"]) == 3
    # and the same as optax resumed from that state
    tx = _optax("fedadam", 0.01)
    ostate = tx.init(params)
    ostate = (ostate[0]._replace(count=jnp.asarray(2, jnp.int32), mu={"w": -m}, nu={"w": v}), *ostate[1:])
    upd, _ = tx.update({"w": -jnp.asarray(d)}, ostate, params)
    np.testing.assert_allclose(new["w"], np.asarray(optax.apply_updates(params, upd)["w"]), rtol=0, atol=1e-7)


def test_bad_names_rates_and_states_are_typed_errors() -> None:
    with pytest.raises(ConfigError, match="unknown server optimizer"):
        server_optimizer("fedprox")
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="learning_rate"):
            server_optimizer("fedadam", bad)
    params = {"w": np.zeros(2, np.float32)}
    delta = {"w": np.ones(2, np.float32)}
    with pytest.raises(StateError, match="moments"):
        server_optimizer("fedadam").update(delta, {"count": np.asarray(1)}, params)  # a fedavg state
    with pytest.raises(StateError, match="do not match"):
        opt = server_optimizer("fedyogi")
        opt.update({"x": np.ones(2, np.float32)}, opt.init(params), params)
    assert SERVER_OPTIMIZERS == ("fedavg", "fedadam", "fedyogi")


def test_the_released_model_is_an_average_of_the_iterates_the_sites_train_from():
    from fedjax_room.robust.server import averaged, training_params

    opt = averaged(server_optimizer("fedavg", 1.0), 0.5)
    params = {"w": np.zeros(2, np.float32)}
    state = opt.init(params)
    assert training_params(params, state) is not params and np.all(training_params(params, state)["w"] == 0)
    released = []
    for step in (1.0, 1.0, 1.0, 1.0):  # iterates 1, 2, 3, 4
        params, state = opt.update({"w": np.full(2, step, np.float32)}, state, params)
        released.append(float(params["w"][0]))
    # round 1: the iterate; round 2: the mean of two (d = min(0.5, 1/2)); then 0.5-EMA; the initial model never
    assert released == pytest.approx([1.0, 1.5, 2.25, 3.125])
    assert float(training_params(params, state)["w"][0]) == 4.0  # the sites train from the iterate
    plain = server_optimizer("fedavg", 1.0)
    assert averaged(plain, 0.0) is plain and training_params(params, plain.init(params)) is params
    with pytest.raises(ConfigError):
        averaged(plain, 1.0)
