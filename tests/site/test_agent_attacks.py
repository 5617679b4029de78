"""A hostile coordinator against one site agent (issue 13 items 2, 4, 6, 10), with crafted messages.

* NaN-forcing global parameters cannot make a released evaluation non-finite;
* an update that cannot be encoded is replaced by zeros and still paid for: no data-dependent refusal;
* a crash between the ledger commit and the release never leads to a recomputation with reused noise;
* rounds outside ``1..rounds`` are refused, typed, and nothing is spent.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from fedjax_room.identity import generate_key
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree, unpack_tree
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureEval, SecureRelease, SecureTrain
from fedjax_room.robust.attacks import get_attack
from fedjax_room.secagg import SecAggConfig
from fedjax_room.site.ledger import Ledger

SPEC = {"family": "logistic", "input_shape": [4], "num_classes": 2, "layers": [{"type": "dense", "features": 2}]}


def _offer(run_id="run-1", **config):
    # plain unless a test asks for secure aggregation (on by default)
    cfg = {"rounds": 2, "noise_multiplier": 1.0, "local_steps": 2, "batch_size": 20, "secure_aggregation": False}
    cfg.update(config)
    return m.RunOffer(run_id=run_id, spec=SPEC, config=RunConfig.from_dict(cfg).to_dict())


def _params(scale=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense_0": {
            "bias": (scale * rng.normal(size=2)).astype(np.float32),
            "kernel": (scale * rng.normal(size=(4, 2))).astype(np.float32),
        }
    }


def _start(rnd, phase, params=None, run_id="run-1", cohort=3):
    return m.RoundStart(
        run_id=run_id,
        round=rnd,
        phase=phase,
        params=pack_tree(params if params is not None else _params()),
        cohort=cohort,
        timeout=30.0,
    )


def _secure(rnd, params=None, run_id="run-1"):
    keys = {i: generate_key().public_key().public_bytes_raw() for i in (1, 2, 3)}
    cfg = SecAggConfig(round_id=f"{run_id}/{rnd}", clients=keys, vector_length=10, modulus_bits=32)
    setup = m.SecAggSetup(run_id=run_id, round=rnd, config=cfg.to_dict(), id=1, fraction=1 / 3)
    return SecureTrain(_start(rnd, "train", params, run_id=run_id), setup)


def _secure_eval(rnd, params=None, run_id="run-1"):
    keys = {i: generate_key().public_key().public_bytes_raw() for i in (1, 2, 3)}
    cfg = SecAggConfig(round_id=f"{run_id}/{rnd}/eval", clients=keys, vector_length=3, modulus_bits=64)
    setup = m.SecAggSetup(run_id=run_id, round=rnd, config=cfg.to_dict(), id=1, fraction=1.0, phase="eval")
    return SecureEval(_start(rnd, "eval", params, run_id=run_id), setup)


def _spent(agent, run_id="run-1"):
    """The release keys the site spent budget on for this run (its ledger may also hold site-wide events)."""
    return [t for t in agent.ledger.tags if t.startswith(f"{run_id}/")]


def _accept(agent, **config):
    reply = agent.handle("offer", _offer(**config))
    assert isinstance(reply, m.RunAccept), reply
    return reply


# ----------------------------------------------------------------------------- item 2


def test_nan_forcing_params_give_a_finite_evaluation_release(factory):
    """Kernel entries of +-3e38 overflow the logits to +-inf (and inf - inf = NaN): the release stays finite."""
    agent = factory.agent()
    _accept(agent)
    huge = {
        "dense_0": {
            "bias": np.array([3e38, -3e38], np.float32),
            "kernel": np.array([[3e38, -3e38], [-3e38, 3e38], [3e38, 3e38], [-3e38, -3e38]], np.float32),
        }
    }
    reply = agent.handle("eval", _start(1, "eval", huge))
    assert isinstance(reply, m.Metrics), reply
    assert all(math.isfinite(v) for v in (reply.loss_sum, reply.count, reply.correct)), reply
    assert len(_spent(agent)) == 1


def test_per_example_eval_quantities_are_finite_and_bounded():
    """The summed quantities themselves: each example's loss is in [0, LOSS_CLIP], non-finite -> LOSS_CLIP, scaled
    to an integer in [0, GAMMA_LOSS] (protocol/evaluation.py)."""
    from fedjax_room.models import ModelSpec
    from fedjax_room.protocol.evaluation import GAMMA_LOSS
    from fedjax_room.site.evaluate import eval_fn as _eval_fn

    fn = _eval_fn(ModelSpec.from_dict(SPEC).to_json())
    x = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    params = {
        "dense_0": {
            "bias": np.zeros(2, np.float32),
            "kernel": np.array([[3e38, -3e38], [3e38, -3e38], [0, 0], [0, 0]], np.float32),
        }
    }
    loss_sum, correct = fn(params, x, y)
    assert math.isfinite(float(loss_sum)) and 0 <= int(loss_sum) <= GAMMA_LOSS * len(y)
    assert 0 <= int(correct) <= len(y)
    # the records whose logits overflow to (inf, -inf) count the clip bound (not NaN, not inf) and are not correct
    for label in (0, 1):
        loss_one, correct_one = fn(params, x[2:3], np.array([label], np.int32))
        assert int(loss_one) == GAMMA_LOSS and int(correct_one) == 0


# ----------------------------------------------------------------------------- item 4


def test_learning_rate_1e38_is_refused_at_the_offer_and_spends_nothing(factory):
    """The run option that made overflow likely is bounded (protocol/config.py): refused before anything runs."""
    agent = factory.agent(epsilon_cap=1e6)
    cfg = RunConfig.from_dict({"rounds": 2, "noise_multiplier": 1.0}).to_dict()
    reply = agent.handle("offer", m.RunOffer(run_id="run-1", spec=SPEC, config={**cfg, "learning_rate": 1e38}))
    assert isinstance(reply, m.RunRefuse) and reply.error["code"] == "config", reply
    assert _spent(agent) == []


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_non_finite_updates_are_paid_for_and_never_refused(factory, secure):
    """Updates that overflow to inf/NaN (here: a simulated attacker (sim.attacker) scaling its update by -1e39, the same
    effect a huge learning rate had) cannot be encoded: each round still spends exactly once and releases a fixed,
    data-independent zero update, instead of refusing before the ledger commit."""
    agent = factory.agent(epsilon_cap=1e6, attack=get_attack("sign_flip", scale=1e39))
    _accept(agent, rounds=6, batch_size=1, local_steps=2, secure_aggregation=secure)
    for rnd in range(1, 7):
        reply = agent.handle("train", _secure(rnd) if secure else _start(rnd, "train"))
        if secure:
            assert isinstance(reply, SecureRelease), reply
            assert not np.any(reply.vector)  # fixed point of the zero update
        else:
            assert isinstance(reply, m.Update), reply
            delta = unpack_tree(reply.payload)
            assert all(not np.any(v) for v in (delta["dense_0"]["bias"], delta["dense_0"]["kernel"]))
        assert _spent(agent) == [f"run-1/{r}/train" for r in range(1, rnd + 1)]
    assert len(_spent(agent)) == 6


def test_non_finite_update_under_distributed_dp_is_zeros_plus_noise_and_paid(factory):
    agent = factory.agent(epsilon_cap=1e6, attack=get_attack("sign_flip", scale=1e39))
    _accept(agent, rounds=2, secure_aggregation=True, site_noise_multiplier=1.0, site_clip_norm=1.0)
    reply = agent.handle("train", _secure(1))
    assert isinstance(reply, SecureRelease), reply
    assert _spent(agent) == ["run-1/1/train"] and len(agent.site_ledger.events) == 1


# ----------------------------------------------------------------------------- item 6


class _Crash(BaseException):
    """The site process dying at one instant (not an error the agent could turn into a refusal)."""


def _crash_after_commit(agent, monkeypatch):
    real = Ledger.commit

    def commit(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self is agent.ledger:
            raise _Crash("killed right after the ledger commit")
        return out

    monkeypatch.setattr(Ledger, "commit", commit)


def _prepare(factory, tmp_path, **config):
    agent = factory.agent(epsilon_cap=1e6)
    _accept(agent, **config)
    reference_state = tmp_path / "reference"
    shutil.copytree(agent.state_dir, reference_state)  # the same secret, ledger and accepted run
    reference = factory.agent(name="site-a", state=reference_state, epsilon_cap=1e6)
    return agent, reference


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_crash_between_commit_and_release_never_recomputes_train(factory, tmp_path, monkeypatch, secure):
    config = {"secure_aggregation": True} if secure else {}
    agent, reference = _prepare(factory, tmp_path, **config)
    first, other = _params(0.1, seed=1), _params(0.5, seed=2)

    def job(params):
        return _secure(1, params) if secure else _start(1, "train", params)

    # what the site would have released on the first parameters, had it not crashed
    expected = reference.handle("train", job(first))
    _crash_after_commit(agent, monkeypatch)
    with pytest.raises(_Crash):
        agent.handle("train", job(first))
    monkeypatch.undo()
    assert agent.ledger.released("run-1/1/train") is not None
    restarted = factory.agent(name="site-a", state=agent.state_dir, epsilon_cap=1e6)
    for params in (other, first):  # a hostile coordinator sends other parameters for the committed round
        reply = restarted.handle("train", job(params))
        if isinstance(reply, m.RunRefuse):
            continue  # refusing is allowed; a recomputation is not
        if secure:
            assert isinstance(reply, SecureRelease)
            np.testing.assert_array_equal(reply.vector, expected.vector)
        else:
            assert reply.payload == expected.payload
    assert len(_spent(restarted)) == 1


def test_crash_between_commit_and_release_never_recomputes_eval(factory, tmp_path, monkeypatch):
    agent, reference = _prepare(factory, tmp_path)
    first, other = _params(0.1, seed=1), _params(3.0, seed=2)
    expected = reference.handle("eval", _start(1, "eval", first))
    assert isinstance(expected, m.Metrics)
    _crash_after_commit(agent, monkeypatch)
    with pytest.raises(_Crash):
        agent.handle("eval", _start(1, "eval", first))
    monkeypatch.undo()
    restarted = factory.agent(name="site-a", state=agent.state_dir, epsilon_cap=1e6)
    for params in (other, first):
        reply = restarted.handle("eval", _start(1, "eval", params))
        if isinstance(reply, m.RunRefuse):
            continue
        assert (reply.count, reply.correct, reply.loss_sum) == (expected.count, expected.correct, expected.loss_sum)
    assert len(_spent(restarted)) == 1


def test_repeat_after_release_returns_the_stored_release(factory):
    """No crash: asked again with other parameters, train and eval answer the very release they made."""
    agent = factory.agent(epsilon_cap=1e6)
    _accept(agent, secure_aggregation=True)
    a = agent.handle("train", _secure(1, _params(0.1, 1)))
    b = agent.handle("train", _secure(1, _params(0.7, 2)))
    np.testing.assert_array_equal(a.vector, b.vector)
    assert a.update == b.update
    # a secure run's evaluation comes with its eval session: a plain round_start gets no answer
    assert agent.handle("eval", _start(1, "eval", _params(0.1, 1))) is None
    assert len(_spent(agent)) == 1
    e1 = agent.handle("eval", _secure_eval(1, _params(0.1, 1)))
    e2 = agent.handle("eval", _secure_eval(1, _params(2.0, 3)))
    assert isinstance(e1, SecureRelease) and e1.update == e2.update
    np.testing.assert_array_equal(e1.vector, e2.vector)
    assert (e1.update.count, e1.update.correct, e1.update.loss_sum) == (0.0, 0.0, 0.0)  # the counts go masked
    assert len(_spent(agent)) == 2


def test_crash_before_commit_spends_nothing_and_releases_nothing(factory, monkeypatch):
    """Killed while the ledger is being written: nothing is spent, the round can be asked again."""
    from fedjax_room.site import ledger as ledger_module

    agent = factory.agent(epsilon_cap=1e6)
    _accept(agent)
    real = ledger_module.atomic_write

    def broken(path, data):
        if path == agent.ledger.path:
            raise _Crash("killed while writing the ledger")
        return real(path, data)

    monkeypatch.setattr(ledger_module, "atomic_write", broken)
    with pytest.raises(_Crash):
        agent.handle("eval", _start(1, "eval"))
    monkeypatch.undo()
    restarted = factory.agent(name="site-a", state=agent.state_dir, epsilon_cap=1e6)
    assert _spent(restarted) == []
    assert isinstance(restarted.handle("eval", _start(1, "eval")), m.Metrics)
    assert len(_spent(restarted)) == 1


# ----------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("rnd", [0, -7, 3, 4, 5])
@pytest.mark.parametrize("phase", ["train", "eval"])
def test_rounds_outside_the_plan_are_refused_and_spend_nothing(factory, rnd, phase):
    agent = factory.agent(epsilon_cap=1e6)
    _accept(agent, rounds=2)
    reply = agent.handle(phase, _start(rnd, phase))
    assert isinstance(reply, m.RunRefuse), reply
    assert reply.error["code"] == "refused" and reply.error["reason"] == "round_range", reply.error
    assert str(rnd) in reply.error["message"] and "1..2" in reply.error["message"]
    assert _spent(agent) == []
    assert not list((agent.state_dir / "releases").rglob("*")) if (agent.state_dir / "releases").exists() else True


def test_secure_rounds_outside_the_plan_are_refused(factory):
    agent = factory.agent(epsilon_cap=1e6)
    _accept(agent, rounds=2, secure_aggregation=True)
    for rnd in (0, -7, 3):
        reply = agent.handle("train", _secure(rnd))
        assert isinstance(reply, m.RunRefuse) and reply.error["reason"] == "round_range", reply
    assert _spent(agent) == []
    assert isinstance(agent.handle("train", _secure(2)), SecureRelease)
    assert _spent(agent) == ["run-1/2/train"]
